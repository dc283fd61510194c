"""Evaluation: protocols that score fitted methods, and the benchmark runner behind ``xmodal bench``."""

from .protocol import evaluate, evaluate_folds, similarity
from .select import Selection, select_params

__all__ = ["evaluate", "evaluate_folds", "similarity", "select_params", "Selection"]
