"""Evaluation: protocols that score fitted methods, and the benchmark runner behind ``xmodal bench``."""

from .protocol import evaluate, evaluate_folds, similarity

__all__ = ["evaluate", "evaluate_folds", "similarity"]
