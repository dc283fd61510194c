"""Deep real-valued cross-modal methods, trained with PyTorch on frozen features.

Modules: :mod:`.cca` (DCCA, DCCAE), :mod:`.autoencoder` (Corr-AE), :mod:`.supervised` (ACMR,
DSCMR), :mod:`.ranking` (VSE++, contrastive heads, universal weighting metric learning),
:mod:`.graph` (joint graph regularisation) and :mod:`.transformer` (TERAN-style re-ranker).
Methods that read raw captions or image files (``raw_inputs``) are evaluated through
:func:`raw_view`.
"""

from . import autoencoder, cca, graph, ranking, supervised, transformer  # noqa: F401  (registers)
from ._raw import raw_view

__all__ = ["raw_view"]
