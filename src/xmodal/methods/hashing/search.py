"""Hamming top-k search over packed codes through FAISS binary indexes.

``hamming_topk`` is what retrieval over hash codes costs in practice: one exhaustive XOR +
popcount scan (``faiss.IndexBinaryFlat``), with FAISS's heap-based top-k selection and its own
threads. ``benchmarks/hamming_speed.py`` compares it with a raw ``IndexBinaryFlat`` in one run.
"""

from __future__ import annotations

import numpy as np

try:  # faiss is a core dependency, but keep the error readable when it is missing
    import faiss
except ImportError as exc:  # pragma: no cover
    raise ImportError("xmodal.methods.hashing.search needs faiss (pip install faiss-cpu)") from exc


def _as_codes(C: np.ndarray, what: str) -> np.ndarray:
    C = np.asarray(C)
    if C.ndim == 1:
        C = C[None, :]
    if C.ndim != 2 or C.dtype != np.uint8:
        raise ValueError(f"{what}: expected a 2-D uint8 array of packed codes, got "
                         f"{C.dtype} with shape {C.shape}")
    return np.ascontiguousarray(C)


def build_index(db_codes: np.ndarray) -> "faiss.IndexBinaryFlat":
    """An exhaustive binary index holding ``db_codes`` (packed uint8 rows, ``bits/8`` bytes)."""
    db = _as_codes(db_codes, "db_codes")
    if db.shape[1] == 0:
        raise ValueError("db_codes: codes must have at least one byte (8 bits)")
    index = faiss.IndexBinaryFlat(db.shape[1] * 8)
    index.add(db)
    return index


def hamming_topk(query_codes: np.ndarray, db_codes: np.ndarray | "faiss.IndexBinary",
                 k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` database items nearest each query in Hamming distance.

    ``db_codes`` is a packed code matrix or an index from :func:`build_index` (reuse it across
    calls to skip the copy). Returns ``(distances int32, indices int64)``, each (n_query, k),
    nearest first, with fewer columns when the database holds fewer than ``k`` items (none for
    an empty one); ties are broken by FAISS (not necessarily database order).
    """
    q = _as_codes(query_codes, "query_codes")
    index = db_codes if isinstance(db_codes, faiss.IndexBinary) else build_index(db_codes)
    if q.shape[1] * 8 != index.d:
        raise ValueError(f"query codes have {q.shape[1] * 8} bits but the database has {index.d}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise ValueError(f"k must be an integer, got {k!r}")
    if not 1 <= k:
        raise ValueError(f"k must be at least 1, got {k}")
    k = min(int(k), index.ntotal)
    if k == 0:  # an empty database: FAISS asserts k > 0
        return np.zeros((len(q), 0), np.int32), np.zeros((len(q), 0), np.int64)
    D, I = index.search(q, k)
    return D.astype(np.int32, copy=False), I
