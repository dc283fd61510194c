"""Shared linear-algebra solvers for the subspace family."""

from __future__ import annotations

import numpy as np
from scipy import linalg


def inv_sqrt_psd(C: np.ndarray, eps: float = 1e-10) -> np.ndarray:
    """C^{-1/2} of a symmetric positive (semi-)definite matrix by eigendecomposition."""
    w, V = linalg.eigh(C)
    w = np.maximum(w, eps * max(w.max(), eps))
    return (V / np.sqrt(w)) @ V.T


def numerical_rank(C: np.ndarray, mean: np.ndarray) -> int:
    """Rank of a covariance matrix ``C`` of columns with means ``mean``, judged scale-free and
    at float32 resolution.

    A column whose spread is below float32 rounding of its values is constant; the rest are
    standardised and the eigenvalues of their correlation matrix up to ``d * eps32^2`` times the
    largest (singular values under sqrt(d) eps32) count as rounding, not data: features are
    stored in float32, so a direction they fix exactly (histograms or topic proportions that
    sum to one) shows up only at that level."""
    sd = np.sqrt(np.maximum(np.diag(C), 0.0))
    eps32 = float(np.finfo(np.float32).eps)
    varying = (sd > 0) & (sd > eps32 * np.abs(mean))
    if not varying.any():
        return 0
    R = C[np.ix_(varying, varying)] / np.outer(sd[varying], sd[varying])
    w = linalg.eigvalsh(R)
    return int((w > varying.sum() * eps32 ** 2 * w.max()).sum())


def correlated_pairs(rho: np.ndarray, rank: int | None = None) -> np.ndarray:
    """Mask of the canonical pairs that exist: within ``rank`` (the smaller view's numerical
    rank) and with a correlation above rounding of the leading one. The others have correlation
    0 and a direction set by rounding: one side's projection is ~0, the other's is noise that
    only changes that side's norms under cosine scoring."""
    keep = rho > 1e-9 * max(float(rho[0]) if len(rho) else 0.0, 1e-300)
    if rank is not None:
        keep[rank:] = False
    return keep


def ridge(C: np.ndarray, reg: float) -> np.ndarray:
    """Add ``reg`` times the mean eigenvalue to the diagonal (scale-free regularisation: no
    absolute floor, which would dominate features of small units; 1 only when C is zero)."""
    d = C.shape[0]
    mean_eig = np.trace(C) / d
    return C + reg * (mean_eig if mean_eig > 0 else 1.0) * np.eye(d)


def cca_from_covariances(Cxx: np.ndarray, Cyy: np.ndarray, Cxy: np.ndarray,
                         n_components: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Solve max a'Cxy b s.t. a'Cxx a = b'Cyy b = 1 for the leading ``n_components`` pairs.

    Whitening turns the generalised eigenproblem into one SVD:
    T = Cxx^{-1/2} Cxy Cyy^{-1/2} = U S V', A = Cxx^{-1/2} U, B = Cyy^{-1/2} V.
    Returns (A, B, canonical correlations).
    """
    Wx, Wy = inv_sqrt_psd(Cxx), inv_sqrt_psd(Cyy)
    U, s, Vt = linalg.svd(Wx @ Cxy @ Wy, full_matrices=False)
    k = min(n_components, len(s))
    return Wx @ U[:, :k], Wy @ Vt[:k].T, s[:k]


def center_kernel_train(K: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Double-centre a training kernel; return it with the column means and grand mean."""
    col = K.mean(axis=0)
    grand = float(col.mean())
    return K - col[None, :] - col[:, None] + grand, col, grand


def center_kernel_test(K: np.ndarray, col: np.ndarray, grand: float) -> np.ndarray:
    """Centre a test-by-train kernel with the training statistics."""
    return K - col[None, :] - K.mean(axis=1, keepdims=True) + grand
