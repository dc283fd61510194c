"""Evaluation: protocols that score fitted methods, and the benchmark runner behind ``xmodal bench``."""

from .protocol import evaluate, similarity

__all__ = ["evaluate", "similarity"]
