"""Similarities between query and database codes."""

from __future__ import annotations

import numpy as np

try:  # FAISS computes Hamming matrices in C; NumPy is the fallback
    import faiss as _faiss
except ImportError:  # pragma: no cover
    _faiss = None


def cosine_similarity(Q: np.ndarray, D: np.ndarray, center: np.ndarray | None = None) -> np.ndarray:
    """Cosine similarity matrix; with ``center`` both sides are centred first (normalised
    correlation, the measure of Rasiwasia et al. 2010)."""
    Q = np.asarray(Q, dtype=np.float64)
    D = np.asarray(D, dtype=np.float64)
    if center is not None:
        Q, D = Q - center, D - center
    Q = Q / np.maximum(np.linalg.norm(Q, axis=1, keepdims=True), 1e-12)
    D = D / np.maximum(np.linalg.norm(D, axis=1, keepdims=True), 1e-12)
    return Q @ D.T


def _words(C: np.ndarray) -> np.ndarray:
    """View packed codes as 64-bit words where the length allows (8x fewer popcounts)."""
    C = np.ascontiguousarray(C, dtype=np.uint8)
    return C.view(np.uint64) if C.shape[1] % 8 == 0 else C


def hamming_distance(Q: np.ndarray, D: np.ndarray, chunk: int = 64) -> np.ndarray:
    """Full Hamming distance matrix between packed uint8 code rows.

    Computed by FAISS (``faiss.hammings``, the XOR + popcount kernel behind its binary
    indexes) when it is installed, else by a batched NumPy XOR + popcount; both are exact.
    Codes of any other dtype are refused: unpacked ±1 or 0/1 bit rows cast to bytes would give
    wrong distances (two ±1 codes one bit apart come out 7 apart).
    """
    Q, D = np.asarray(Q), np.asarray(D)
    for side, C in (("query", Q), ("database", D)):
        if C.dtype != np.uint8:
            raise ValueError(f"{side} codes have dtype {C.dtype}: Hamming distances need packed "
                             "bits, uint8 rows of 8 bits per byte (e.g. np.packbits(B > 0, axis=1) "
                             "or xmodal.methods.base.pack_codes for ±1 codes)")
    if Q.ndim != 2 or D.ndim != 2 or Q.shape[1] != D.shape[1]:
        raise ValueError(f"codes differ in length: {Q.shape} and {D.shape}")
    out = np.empty((len(Q), len(D)), dtype=np.int32)
    if _faiss is not None and Q.size and D.size:
        Qc, Dc = np.ascontiguousarray(Q), np.ascontiguousarray(D)
        _faiss.hammings(_faiss.swig_ptr(Qc), _faiss.swig_ptr(Dc), len(Qc), len(Dc), Qc.shape[1],
                        _faiss.swig_ptr(out))
        return out
    Qw, Dw = _words(Q), _words(D)
    for s in range(0, len(Q), chunk):
        x = np.bitwise_xor(Qw[s:s + chunk, None, :], Dw[None, :, :])
        out[s:s + chunk] = np.bitwise_count(x).sum(axis=2, dtype=np.int32)
    return out
