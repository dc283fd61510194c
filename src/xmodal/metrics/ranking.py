"""Retrieval metrics over score or Hamming-distance rankings, vectorised and batched over queries.

Conventions (stated because papers differ):
- Rankings sort by score descending (or distance ascending). Tied items are ordered by one
  fixed random permutation of the database (``np.random.default_rng(tie_seed).permutation(n_db)``,
  ``tie_seed=0`` by default), applied before a stable sort and shared by every metric. So no
  metric depends on the order the database is stored in (a database sorted by class would
  otherwise put a query's relevant items first in every tie group and inflate MAP and P@k with
  Hamming rankings), results are deterministic, and their expectation is the average over
  random tie orders. Untied rankings are unaffected. ``tie_seed=None`` keeps database order
  for ties (as a stable sort, or FAISS's ``IndexBinaryFlat``, would).
- AP over the full ranking divides by the number of relevant items; a query with no relevant
  item scores 0 and still counts in the mean (as DCMH's ``calc_map``).
- mAP@k averages precision over the relevant items retrieved within the top k and divides by
  their number (DeepHash-pytorch's ``CalcTopMap``); a query with none in the top k scores 0 and
  counts. This is not DCMH's ``calc_map_k``, which takes the first ``min(k, R)`` relevant items
  of the whole ranking, wherever they lie.
- P@k and NDCG@k with k larger than the database use the whole ranking (P@k then divides by the
  database size, as ``total = min(k, n_db)`` in the hashing papers' ``p_topK`` code).
- Precision within Hamming radius r (P@r2) is 0 for a query with nothing within the radius,
  and such queries count in the mean (SDH / KSH ``evaluate_macro``).
- Both precision-recall curves (:func:`pr_curve`, ranking; :func:`hamming_pr_curve`, Hamming
  radius) average over the queries with at least one relevant item and leave the others out.
- Recall@K (:func:`recall_at_k`) leaves out queries with no relevant item at all (an image
  without a caption has no image->text ground truth): they are neither hits nor misses.
- Scores must be finite: NaN or infinite scores (a diverged method) are refused with a
  :class:`NonFiniteScoresError` naming how many queries have them.
- The N+10 denominator in some MATLAB evaluation code is a known bug and is not reproduced.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Iterator

import numpy as np

CHUNK = 256  # queries per batch at most
BLOCK_CELLS = CHUNK * 65536  # cells per batch at most (~134 MB per float64 matrix)


class NonFiniteScoresError(ValueError):
    """Scores with NaN or infinite values (a diverged method): no ranking can be trusted."""


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


def chunk_rows(n_db: int) -> int:
    """Queries per batch against a database of ``n_db`` items: ``CHUNK``, fewer when the
    database is so large that ``CHUNK x n_db`` would pass ``BLOCK_CELLS`` (every batch holds
    several matrices of that shape), never fewer than one."""
    return max(1, min(CHUNK, BLOCK_CELLS // max(int(n_db), 1)))


def _chunks(n: int, size: int = CHUNK) -> Iterator[slice]:
    for s in range(0, n, size):
        yield slice(s, min(s + size, n))


@lru_cache(maxsize=8)
def tie_permutation(n_db: int, tie_seed: int = 0) -> np.ndarray:
    """The fixed order in which tied database items are ranked (read-only)."""
    perm = np.random.default_rng(tie_seed).permutation(n_db)
    perm.flags.writeable = False
    return perm


def non_finite_rows(values: np.ndarray) -> int:
    """How many rows of a score matrix hold a NaN or an infinity."""
    V = np.asarray(values)
    if not np.issubdtype(V.dtype, np.floating) and not np.issubdtype(V.dtype, np.complexfloating):
        return 0
    rows = chunk_rows(V.shape[1]) if V.ndim == 2 else CHUNK
    return int(sum((~np.isfinite(V[sl])).any(axis=1).sum() for sl in _chunks(len(V), rows)))


def _refuse_non_finite(bad: int, n: int, what: str = "scores") -> None:
    if bad:
        raise NonFiniteScoresError(f"{bad} of {n} queries have non-finite {what} (NaN or inf; "
                                   "a diverged method?): refusing to rank them")


def _sort_keys(scores: np.ndarray | None, distances: np.ndarray | None) -> np.ndarray:
    """Ascending sort keys: small-range integer distances as int16 (NumPy's stable sort is then
    a radix sort, ~10x faster than on float64, in the same order), else negated scores."""
    if distances is not None:
        d = np.asarray(distances)
        if np.issubdtype(d.dtype, np.integer) or d.dtype == bool:
            if d.size and d.min() >= -32768 and d.max() <= 32767:
                return d.astype(np.int16, copy=False)
            return d
        return np.asarray(d, dtype=np.float64)
    keys = -np.asarray(scores, dtype=np.float64)
    # scores that are whole numbers (negated Hamming distances): the same order by radix sort
    if keys.size and np.abs(keys).max() <= 32767 and np.array_equal(keys, np.rint(keys)):
        return keys.astype(np.int16)
    return keys


def _rank(keys: np.ndarray, tie_seed: int | None = 0, k: int | None = None) -> np.ndarray:
    """Ranking of each row of ``keys`` (ascending), ties in the order of the fixed permutation;
    only its first ``k`` columns when ``k`` is given."""
    n_db = keys.shape[1]
    perm = None if tie_seed is None else tie_permutation(n_db, tie_seed)
    kp = keys if perm is None else keys[:, perm]
    order = None
    if k is not None and 4 * k < n_db:
        # top k without a full sort: the c smallest of every row hold all its items tied with
        # or better than its k-th, so a stable sort of those (by position) is the same top k
        kth = np.partition(kp, k - 1, axis=1)[:, k - 1:k]
        c = int((kp <= kth).sum(axis=1).max())
        if 2 * c < n_db:
            idx = np.sort(np.argpartition(kp, c - 1, axis=1)[:, :c], axis=1)
            best = np.argsort(np.take_along_axis(kp, idx, axis=1), axis=1, kind="stable")[:, :k]
            order = np.take_along_axis(idx, best, axis=1)
    if order is None:
        order = np.argsort(kp, axis=1, kind="stable")
        order = order if k is None else order[:, :k]
    return order if perm is None else perm[order]


def _block_metrics(keys: np.ndarray, R: np.ndarray | None, *, G: np.ndarray | None = None,
                   inst: np.ndarray | None = None, full_map: bool = False, map_k=(), pk=(), ndcg_k=(),
                   rk_max: int | None = None, pr_points: int | None = None, tie_seed: int | None = 0
                   ) -> dict[str, np.ndarray]:
    """Per-query values for one block of queries from ONE ranking of its rows: every metric
    reads the same order. ``keys`` sort ascending; ``R`` is boolean relevance, ``G`` graded
    gains, ``inst`` instance relevance (Recall@K)."""
    n_db = keys.shape[1]
    whole = full_map or bool(pr_points) or not n_db
    depth = None if whole else max([*map_k, *pk, *(ndcg_k if G is not None else ()),
                                    *((rk_max,) if inst is not None and rk_max is not None else ()), 1])
    order = _rank(keys, tie_seed, None if depth is None else min(depth, n_db))
    out: dict[str, np.ndarray] = {}
    if R is not None and (full_map or map_k or pk or pr_points):
        rel = np.take_along_axis(R, order, axis=1)
        hits = np.cumsum(rel, axis=1, dtype=np.int64)
        n_rel = hits[:, -1] if n_db else np.zeros(len(rel), np.int64)  # (whole ranking only)
        need_prec = full_map or map_k or pr_points
        if need_prec:
            prec = hits / np.arange(1, rel.shape[1] + 1)
            contrib = prec * rel  # precision at each relevant position, 0 elsewhere
        if full_map:
            out["ap"] = np.where(n_rel > 0, contrib.sum(axis=1) / np.maximum(n_rel, 1), 0.0)
        for k in map_k:
            kk = min(k, n_db)
            got = hits[:, kk - 1]
            out[f"ap@{k}"] = np.where(got > 0, contrib[:, :kk].sum(axis=1) / np.maximum(got, 1), 0.0)
        for k in pk:
            kk = min(k, n_db)
            out[f"p@{k}"] = hits[:, kk - 1] / kk
        if pr_points:
            levels = np.linspace(0, 1, pr_points)
            pr = np.full((len(rel), pr_points), np.nan)  # NaN: no relevant item, left out
            keep = n_rel > 0
            if keep.any():
                h, p = hits[keep].astype(np.float64), prec[keep]
                rec = h / n_rel[keep].astype(np.float64)[:, None]
                # interpolated precision: running max from the end of the ranking
                p_interp = np.maximum.accumulate(p[:, ::-1], axis=1)[:, ::-1]
                rows = np.arange(len(h))
                for i, r in enumerate(levels):
                    pr[keep, i] = p_interp[rows, np.argmax(rec >= r - 1e-12, axis=1)]
            out["pr"] = pr
    if G is not None and ndcg_k:
        Gf = np.asarray(G, dtype=np.float64)
        for k in ndcg_k:
            kk = min(k, n_db)
            disc = 1.0 / np.log2(np.arange(2, kk + 2))
            g = np.take_along_axis(Gf, order[:, :kk], axis=1)
            dcg = ((2 ** g - 1) * disc).sum(axis=1)
            top = -np.partition(-Gf, kk - 1, axis=1)[:, :kk] if kk < n_db else Gf
            ideal = -np.sort(-top, axis=1)[:, :kk]
            idcg = ((2 ** ideal - 1) * disc).sum(axis=1)
            out[f"ndcg@{k}"] = np.where(idcg > 0, dcg / np.where(idcg > 0, idcg, 1), 0.0)
    if inst is not None and rk_max is not None:
        kmax = min(rk_max, n_db)
        rel = np.take_along_axis(inst, order[:, :kmax], axis=1)
        out["first_hit"] = np.where(rel.any(axis=1), rel.argmax(axis=1), np.inf)
        out["has_truth"] = inst.any(axis=1)
    return out


def _hamming_block(d: np.ndarray, R: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-query precision and recall of Hamming-ball lookup at radii 0..bits (one bincount
    per block instead of a pass per radius). Distances above ``bits`` are never retrieved."""
    if d.size and d.min() < 0:
        raise ValueError("Hamming distances must be non-negative")
    m, width = len(d), bits + 2
    cells = (np.minimum(d, bits + 1).astype(np.int64) + (np.arange(m) * width)[:, None])
    cnt = np.bincount(cells.ravel(), minlength=m * width).reshape(m, width)[:, :-1].cumsum(axis=1)
    rh = np.bincount(cells[R], minlength=m * width).reshape(m, width)[:, :-1].cumsum(axis=1)
    n_rel = R.sum(axis=1)[:, None]
    prec = np.where(cnt > 0, rh / np.maximum(cnt, 1), 0.0)
    rec = np.where(n_rel > 0, rh / np.maximum(n_rel, 1), 0.0)
    return prec, rec


def _as_keys(scores, distances) -> tuple[np.ndarray, str]:
    if (scores is None) == (distances is None):
        raise ValueError("pass exactly one of scores= or distances=")
    return (np.asarray(scores), "scores") if scores is not None else (np.asarray(distances), "distances")


def _per_query(scores, distances, relevant, what="relevance", tie_seed: int | None = 0,
               **wanted) -> dict[str, np.ndarray]:
    """Run :func:`_block_metrics` over query chunks of full matrices and join the results."""
    V, kind = _as_keys(scores, distances)
    R = np.asarray(relevant) if what == "gains" else np.asarray(relevant, dtype=bool)  # gains: float per block
    _check_shapes(V, R, what)
    if len(V) and V.shape[1] == 0:  # a top-k of nothing would index an empty axis
        raise ValueError("the database is empty: there is nothing to rank")
    _refuse_non_finite(non_finite_rows(V), len(V), kind)
    parts = []
    for sl in _chunks(len(V), chunk_rows(V.shape[1])):
        keys = _sort_keys(V[sl] if kind == "scores" else None, V[sl] if kind == "distances" else None)
        if what == "gains":
            parts.append(_block_metrics(keys, None, G=R[sl].astype(np.float64), tie_seed=tie_seed, **wanted))
        elif what == "instance":
            parts.append(_block_metrics(keys, None, inst=R[sl], tie_seed=tie_seed, **wanted))
        else:
            parts.append(_block_metrics(keys, R[sl], tie_seed=tie_seed, **wanted))
    if not parts:
        return {}
    return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}


def average_precision(scores: np.ndarray | None = None, relevant: np.ndarray | None = None, k: int | None = None,
                      *, distances: np.ndarray | None = None, tie_seed: int | None = 0) -> np.ndarray:
    """AP of each query (full ranking, or @k). ``relevant`` is a boolean (n_query, n_db) matrix."""
    if k is not None:
        k = _check_k(k)
    per = _per_query(scores, distances, relevant, tie_seed=tie_seed,
                     full_map=k is None, map_k=() if k is None else (k,))
    return per.get("ap" if k is None else f"ap@{k}", np.zeros(0))


def mean_average_precision(scores: np.ndarray | None = None, relevant: np.ndarray | None = None,
                           k: int | None = None, *, distances: np.ndarray | None = None,
                           tie_seed: int | None = 0) -> float:
    """Mean over queries of :func:`average_precision` (full ranking, or AP@k): a fraction in
    [0, 1]. :func:`xmodal.evaluation.protocol.evaluate` reports MAP on this scale too (its
    Recall@K and mR are in percent)."""
    return float(average_precision(scores, relevant, k, distances=distances, tie_seed=tie_seed).mean())


def precision_at_k(scores: np.ndarray | None = None, relevant: np.ndarray | None = None, k: int = 10, *,
                   distances: np.ndarray | None = None, tie_seed: int | None = 0) -> float:
    """Mean over queries of the fraction of relevant items among the top ``min(k, n_db)``."""
    k = _check_k(k)
    return float(_per_query(scores, distances, relevant, tie_seed=tie_seed, pk=(k,))[f"p@{k}"].mean())


def first_hit_rank(scores: np.ndarray | None = None, relevant: np.ndarray | None = None,
                   k: int | None = None, *, distances: np.ndarray | None = None,
                   tie_seed: int | None = 0) -> np.ndarray:
    """Per query, the 0-based rank of its first relevant item within the top ``k`` (the whole
    ranking when None), ``inf`` when there is none: query q counts for Recall@K iff rank < K."""
    kmax = np.iinfo(np.int64).max if k is None else _check_k(k)  # clipped to n_db per block
    per = _per_query(scores, distances, relevant, "instance", tie_seed=tie_seed, rk_max=kmax)
    return per.get("first_hit", np.zeros(0))


def recall_at_k(scores: np.ndarray | None = None, relevant: np.ndarray | None = None,
                ks: tuple[int, ...] = (1, 5, 10), *, distances: np.ndarray | None = None,
                tie_seed: int | None = 0) -> dict[int, float]:
    """Recall@K with one-to-many ground truth: a query scores 1 when any relevant item is in
    its top K (image->text retrieval: any of the image's captions). Queries with no relevant
    item at all (an image without a caption) are left out; NaN when no query has one.

    Returns fractions in [0, 1] (0.25 = a quarter of the queries); note that
    :func:`xmodal.evaluation.protocol.evaluate` and the bench tables report Recall@K and mR in
    percent (25.0)."""
    if not len(ks):
        raise ValueError("ks must name at least one K")
    ks = tuple(_check_k(k, "each K") for k in ks)
    per = _per_query(scores, distances, relevant, "instance", tie_seed=tie_seed, rk_max=max(ks))
    first, has = per.get("first_hit", np.zeros(0)), per.get("has_truth", np.zeros(0, bool))
    return {k: float((first[has] < k).mean()) if has.any() else float("nan") for k in ks}


def ndcg_at_k(scores: np.ndarray | None = None, gains: np.ndarray | None = None, k: int = 10, *,
              distances: np.ndarray | None = None, tie_seed: int | None = 0) -> float:
    """NDCG@k with graded gains (e.g. shared-label counts), gain 2^g - 1 and log2 discount."""
    k = _check_k(k)
    return float(_per_query(scores, distances, gains, "gains", tie_seed=tie_seed, ndcg_k=(k,))[f"ndcg@{k}"].mean())


def _mean_curve(pr: np.ndarray, n_points: int) -> list[float]:
    keep = ~np.isnan(pr[:, 0]) if len(pr) else np.zeros(0, bool)
    return (pr[keep].sum(axis=0) / max(int(keep.sum()), 1)).tolist() if keep.any() else [0.0] * n_points


def pr_curve(scores: np.ndarray | None = None, relevant: np.ndarray | None = None, n_points: int = 11, *,
             distances: np.ndarray | None = None,
             tie_seed: int | None = 0) -> dict[str, list[float]]:
    """Precision-recall curve of a ranking: interpolated precision (max precision at recall
    >= r) at ``n_points`` recall levels from 0 to 1, averaged over queries with a relevant item."""
    n_points = _check_k(n_points, "n_points")
    per = _per_query(scores, distances, relevant, tie_seed=tie_seed, pr_points=n_points)
    levels = np.linspace(0, 1, n_points)
    return {"recall": levels.tolist(), "precision": _mean_curve(per.get("pr", np.zeros((0, n_points))), n_points)}


def hamming_pr_curve(distances: np.ndarray, relevant: np.ndarray, bits: int) -> dict[str, list[float]]:
    """Precision and recall of Hamming-ball lookup at every radius 0..bits, as hashing papers
    plot them (precision of a query with nothing retrieved counts 0), averaged over the
    queries with at least one relevant item, as :func:`pr_curve` is."""
    D = np.asarray(distances)
    R = np.asarray(relevant, dtype=bool)
    _check_shapes(D, R)
    bits = _check_k(bits, "bits")  # the code length
    if D.size and D.max() > bits:
        raise ValueError(f"distances reach {D.max()}, beyond bits={bits}: pass the code length")
    P, Rc, n_valid = np.zeros(bits + 1), np.zeros(bits + 1), 0
    for sl in _chunks(len(D), chunk_rows(D.shape[1])):
        keep = R[sl].any(axis=1)
        if keep.any():
            p, r = _hamming_block(D[sl][keep], R[sl][keep], bits)
            P += p.sum(axis=0)
            Rc += r.sum(axis=0)
            n_valid += int(keep.sum())
    n = max(n_valid, 1)
    return {"radius": list(range(bits + 1)), "precision": (P / n).tolist(), "recall": (Rc / n).tolist()}


def precision_within_radius(distances: np.ndarray, relevant: np.ndarray, radius: int = 2) -> float:
    """Mean precision of the items within Hamming ``radius`` (0 for a query retrieving none,
    which counts in the mean, as SDH / KSH ``evaluate_macro``)."""
    D = np.asarray(distances)
    R = np.asarray(relevant, dtype=bool)
    _check_shapes(D, R)
    return float(_within_radius(D, R, radius).mean()) if len(D) else 0.0


def _within_radius(D: np.ndarray, R: np.ndarray, radius: int) -> np.ndarray:
    within = D <= radius
    n = within.sum(axis=1)
    hits = (within & R).sum(axis=1)
    return np.where(n > 0, hits / np.maximum(n, 1), 0.0)
