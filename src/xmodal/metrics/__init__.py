"""Retrieval metrics (rankings by similarity or Hamming distance) and image-quality metrics."""

from .ranking import (NonFiniteScoresError, average_precision, first_hit_rank, graded_relevance,
                      hamming_pr_curve, mean_average_precision, ndcg_at_k, pr_curve, precision_at_k,
                      precision_within_radius, recall_at_k, relevance, tie_permutation)
from .distance import cosine_similarity, hamming_distance

__all__ = ["average_precision", "first_hit_rank", "mean_average_precision", "precision_at_k",
           "recall_at_k", "ndcg_at_k", "pr_curve", "hamming_pr_curve", "precision_within_radius", "relevance",
           "graded_relevance", "cosine_similarity", "hamming_distance", "tie_permutation", "NonFiniteScoresError"]

_IMAGE_QUALITY = ("psnr", "ssim", "ms_ssim", "ms_psnr")
__all__ += list(_IMAGE_QUALITY)


def __getattr__(name: str):
    # Image-quality metrics need scikit-image; import it only when they are asked for.
    if name in _IMAGE_QUALITY:
        from . import image_quality

        return getattr(image_quality, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
