"""Retrieval metrics over score or Hamming-distance rankings, vectorised and batched over queries.

Conventions (stated because papers differ):
- Rankings sort by score descending (or distance ascending) with a stable sort, so ties keep
  database order.
- AP over the full ranking divides by the number of relevant items; a query with no relevant
  item scores 0 and still counts in the mean (as in the DCMH evaluation code).
- mAP@k divides by the relevant items retrieved within the top k (DCMH's ``calc_map_k``).
- P@k and NDCG@k with k larger than the database use the whole ranking (P@k then divides by the
  database size, as ``total = min(k, n_db)`` in the hashing papers' ``p_topK`` code).
- The N+10 denominator in some MATLAB evaluation code is a known bug and is not reproduced.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

CHUNK = 256  # queries per batch: bounds memory at CHUNK x n_db


def relevance(query_labels: np.ndarray, db_labels: np.ndarray) -> np.ndarray:
    """Boolean (n_query, n_db): relevant when the items share at least one label.

    Labels are 0/1 matrices (single-label data is one-hot, so this is 'same class'), or 1-D
    integer class arrays.
    """
    q, d = np.asarray(query_labels), np.asarray(db_labels)
    if q.ndim == 1 and d.ndim == 1:
        return q[:, None] == d[None, :]
    if q.ndim != 2 or d.ndim != 2 or q.shape[1] != d.shape[1]:
        raise ValueError(f"label matrices must agree in columns, got {q.shape} and {d.shape}")
    return (q.astype(np.float32) @ d.astype(np.float32).T) > 0


def graded_relevance(query_labels: np.ndarray, db_labels: np.ndarray) -> np.ndarray:
    """Number of shared labels, the graded relevance NDCG uses for multi-label data (1-D class
    arrays, as :func:`relevance` accepts, give 1 for the same class)."""
    q, d = np.asarray(query_labels), np.asarray(db_labels)
    if q.ndim == 1 and d.ndim == 1:
        return (q[:, None] == d[None, :]).astype(np.float32)
    if q.ndim != 2 or d.ndim != 2 or q.shape[1] != d.shape[1]:
        raise ValueError(f"label matrices must agree in columns, got {q.shape} and {d.shape}")
    return q.astype(np.float32) @ d.astype(np.float32).T


def _check_shapes(S: np.ndarray, R: np.ndarray, what: str = "relevance") -> None:
    if S.ndim != 2 or S.shape != R.shape:
        raise ValueError(f"scores {S.shape} and {what} {R.shape} differ in shape "
                         "(expected two (n_query, n_db) matrices)")


def _check_k(k: object, name: str = "k") -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"{name} must be a positive integer, got {k!r}")
    return int(k)


def _chunks(n: int, size: int = CHUNK) -> Iterator[slice]:
    for s in range(0, n, size):
        yield slice(s, min(s + size, n))


def _order(scores: np.ndarray, k: int | None = None) -> np.ndarray:
    """Ranking of each row, best first (higher score is better), stable for ties."""
    order = np.argsort(-scores, axis=1, kind="stable")
    return order if k is None else order[:, :k]


def _as_scores(scores: np.ndarray | None, distances: np.ndarray | None) -> np.ndarray:
    if (scores is None) == (distances is None):
        raise ValueError("pass exactly one of scores= or distances=")
    return np.asarray(scores, dtype=np.float64) if scores is not None else -np.asarray(distances, dtype=np.float64)


def average_precision(scores: np.ndarray | None = None, relevant: np.ndarray | None = None, k: int | None = None,
                      *, distances: np.ndarray | None = None) -> np.ndarray:
    """AP of each query (full ranking, or @k). ``relevant`` is a boolean (n_query, n_db) matrix."""
    S = _as_scores(scores, distances)
    R = np.asarray(relevant, dtype=bool)
    _check_shapes(S, R)
    if k is not None:
        k = _check_k(k)
    out = np.zeros(len(S))
    for sl in _chunks(len(S)):
        order = _order(S[sl], k)
        rel = np.take_along_axis(R[sl], order, axis=1).astype(np.float64)
        hits = np.cumsum(rel, axis=1)
        prec = hits / np.arange(1, rel.shape[1] + 1)
        denom = R[sl].sum(axis=1) if k is None else hits[:, -1]
        with np.errstate(invalid="ignore", divide="ignore"):
            out[sl] = np.where(denom > 0, (prec * rel).sum(axis=1) / np.maximum(denom, 1), 0.0)
    return out


def mean_average_precision(scores=None, relevant=None, k: int | None = None, *, distances=None) -> float:
    return float(average_precision(scores, relevant, k, distances=distances).mean())


def precision_at_k(scores=None, relevant=None, k: int = 10, *, distances=None) -> float:
    """Mean over queries of the fraction of relevant items among the top ``min(k, n_db)``."""
    S = _as_scores(scores, distances)
    R = np.asarray(relevant, dtype=bool)
    _check_shapes(S, R)
    k = min(_check_k(k), S.shape[1])
    total = 0.0
    for sl in _chunks(len(S)):
        order = _order(S[sl], k)
        total += np.take_along_axis(R[sl], order, axis=1).mean(axis=1).sum()
    return float(total / len(S))


def first_hit_rank(scores=None, relevant=None, k: int | None = None, *, distances=None) -> np.ndarray:
    """Per query, the 0-based rank of its first relevant item within the top ``k`` (the whole
    ranking when None), ``inf`` when there is none: query q counts for Recall@K iff rank < K."""
    S = _as_scores(scores, distances)
    R = np.asarray(relevant, dtype=bool)
    _check_shapes(S, R)
    kmax = S.shape[1] if k is None else min(_check_k(k), S.shape[1])
    first_hit = np.full(len(S), np.inf)
    for sl in _chunks(len(S)):
        order = _order(S[sl], kmax)
        rel = np.take_along_axis(R[sl], order, axis=1)
        has = rel.any(axis=1)
        first_hit[sl] = np.where(has, rel.argmax(axis=1), np.inf)
    return first_hit


def recall_at_k(scores=None, relevant=None, ks: tuple[int, ...] = (1, 5, 10), *, distances=None) -> dict[int, float]:
    """Recall@K with one-to-many ground truth: a query scores 1 when any relevant item is in
    its top K (image->text retrieval: any of the image's captions)."""
    if not len(ks):
        raise ValueError("ks must name at least one K")
    ks = tuple(_check_k(k, "each K") for k in ks)
    first_hit = first_hit_rank(scores, relevant, max(ks), distances=distances)
    return {k: float((first_hit < k).mean()) for k in ks}


def ndcg_at_k(scores=None, gains=None, k: int = 10, *, distances=None) -> float:
    """NDCG@k with graded gains (e.g. shared-label counts), gain 2^g - 1 and log2 discount."""
    S = _as_scores(scores, distances)
    G = np.asarray(gains, dtype=np.float64)
    _check_shapes(S, G, "gains")
    k = min(_check_k(k), S.shape[1])
    disc = 1.0 / np.log2(np.arange(2, k + 2))
    vals = np.zeros(len(S))
    for sl in _chunks(len(S)):
        order = _order(S[sl], k)
        g = np.take_along_axis(G[sl], order, axis=1)
        dcg = ((2 ** g - 1) * disc).sum(axis=1)
        ideal = -np.sort(-G[sl], axis=1)[:, :k]
        idcg = ((2 ** ideal - 1) * disc).sum(axis=1)
        vals[sl] = np.where(idcg > 0, dcg / np.where(idcg > 0, idcg, 1), 0.0)
    return float(vals.mean())


def pr_curve(scores=None, relevant=None, n_points: int = 11, *, distances=None) -> dict[str, list[float]]:
    """Precision-recall curve of a ranking: interpolated precision (max precision at recall
    >= r) at ``n_points`` recall levels from 0 to 1, averaged over queries with a relevant item."""
    S = _as_scores(scores, distances)
    R = np.asarray(relevant, dtype=bool)
    _check_shapes(S, R)
    levels = np.linspace(0, 1, _check_k(n_points, "n_points"))
    acc, n_valid = np.zeros(n_points), 0
    for sl in _chunks(len(S)):
        order = _order(S[sl])
        rel = np.take_along_axis(R[sl], order, axis=1).astype(np.float64)
        n_rel = rel.sum(axis=1)
        keep = n_rel > 0
        if not keep.any():
            continue
        rel, n_rel = rel[keep], n_rel[keep]
        hits = np.cumsum(rel, axis=1)
        prec = hits / np.arange(1, rel.shape[1] + 1)
        rec = hits / n_rel[:, None]
        # interpolated precision: running max from the end of the ranking
        prec_interp = np.maximum.accumulate(prec[:, ::-1], axis=1)[:, ::-1]
        for i, r in enumerate(levels):
            idx = np.argmax(rec >= r - 1e-12, axis=1)
            acc[i] += prec_interp[np.arange(len(rel)), idx].sum()
        n_valid += len(rel)
    return {"recall": levels.tolist(), "precision": (acc / max(n_valid, 1)).tolist()}


def hamming_pr_curve(distances: np.ndarray, relevant: np.ndarray, bits: int) -> dict[str, list[float]]:
    """Precision and recall of Hamming-ball lookup at every radius 0..bits, as hashing papers
    plot them (precision of a query with nothing retrieved counts 0)."""
    D = np.asarray(distances)
    R = np.asarray(relevant, dtype=bool)
    _check_shapes(D, R)
    n_rel = R.sum(axis=1)
    radii = np.arange(bits + 1)
    P, Rc = np.zeros(bits + 1), np.zeros(bits + 1)
    for sl in _chunks(len(D)):
        d = D[sl].astype(np.int64)
        # counts per distance value, then cumulative over the radius
        retrieved = np.stack([(d == r).sum(axis=1) for r in radii], axis=1).cumsum(axis=1)
        rel_hits = np.stack([((d == r) & R[sl]).sum(axis=1) for r in radii], axis=1).cumsum(axis=1)
        P += np.where(retrieved > 0, rel_hits / np.maximum(retrieved, 1), 0).sum(axis=0)
        Rc += np.where(n_rel[sl, None] > 0, rel_hits / np.maximum(n_rel[sl, None], 1), 0).sum(axis=0)
    return {"radius": radii.tolist(), "precision": (P / len(D)).tolist(), "recall": (Rc / len(D)).tolist()}


def precision_within_radius(distances: np.ndarray, relevant: np.ndarray, radius: int = 2) -> float:
    """Mean precision of the items within Hamming ``radius`` (0 for a query retrieving none)."""
    D = np.asarray(distances)
    R = np.asarray(relevant, dtype=bool)
    _check_shapes(D, R)
    within = D <= radius
    n = within.sum(axis=1)
    hits = (within & R).sum(axis=1)
    return float(np.where(n > 0, hits / np.maximum(n, 1), 0.0).mean())
