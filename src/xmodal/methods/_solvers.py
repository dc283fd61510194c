"""Shared linear-algebra solvers for the subspace family."""

from __future__ import annotations

import numpy as np
from scipy import linalg


def inv_sqrt_psd(C: np.ndarray, eps: float = 1e-10) -> np.ndarray:
    """C^{-1/2} of a symmetric positive (semi-)definite matrix by eigendecomposition."""
    w, V = linalg.eigh(C)
    w = np.maximum(w, eps * max(w.max(), eps))
    return (V / np.sqrt(w)) @ V.T


def ridge(C: np.ndarray, reg: float) -> np.ndarray:
    """Add ``reg`` times the mean eigenvalue to the diagonal (scale-free regularisation)."""
    d = C.shape[0]
    return C + reg * (np.trace(C) / d + 1e-12) * np.eye(d)


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
