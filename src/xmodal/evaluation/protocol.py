"""Evaluation protocols: score a fitted method on a test set, both directions.

- ``classic`` (Wikipedia, Pascal, Karpathy data): queries of one modality against the other
  modality of the same test items; class relevance when labels exist, and Recall@K with
  one-to-many ground truth (an image's captions) for instance-level retrieval.
- ``hashing``: queries from the query split against a separate retrieval database.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from ..data.dataset import DataError, PairedDataset
from ..methods.base import CrossModalMethod
from ..metrics import (average_precision, cosine_similarity, first_hit_rank, graded_relevance,
                       hamming_distance, hamming_pr_curve, ndcg_at_k, pr_curve, precision_at_k,
                       precision_within_radius, relevance)

DEFAULT_PK = (1, 5, 10, 50, 100)
DEFAULT_RK = (1, 5, 10)


def similarity(method: CrossModalMethod, Q: np.ndarray, D: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """(scores, hamming distances or None). Methods may define ``score(Q, D)`` to override."""
    if hasattr(method, "score"):
        return np.asarray(method.score(Q, D)), None
    if method.output == "binary":
        dist = hamming_distance(Q, D)
        return -dist.astype(np.float64), dist
    return cosine_similarity(Q, D), None


def _direction(method, scores, dist, rel, graded, inst_rel, bits, map_k, pk, rk,
               per_query: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {}
    each: dict[str, list] = {}
    if rel is not None:
        ap = average_precision(scores, rel)
        out["map"] = float(ap.mean())
        if per_query:
            each["ap"] = ap.tolist()
        for k in map_k:
            if k < scores.shape[1]:
                out[f"map@{k}"] = float(average_precision(scores, rel, k).mean())
        for k in pk:
            if k <= scores.shape[1]:
                out[f"p@{k}"] = precision_at_k(scores, rel, k)
        out["ndcg@10"] = ndcg_at_k(scores, graded, 10)
        out["pr_curve"] = pr_curve(scores, rel)
        if dist is not None:
            out["p@r2"] = precision_within_radius(dist, rel, 2)
            out["hamming_pr_curve"] = hamming_pr_curve(dist, rel, bits)
    if inst_rel is not None and rk:
        first = first_hit_rank(scores, inst_rel, max(rk))
        for k in rk:
            hit = first < k
            out[f"r@{k}"] = 100.0 * float(hit.mean())
            if per_query:
                each[f"r@{k}"] = hit.astype(int).tolist()
    if per_query:
        out["per_query"] = each
    return out


def evaluate(method: CrossModalMethod, queries: PairedDataset, database: PairedDataset | None = None,
             *, map_k: tuple[int, ...] = (), pk: tuple[int, ...] = DEFAULT_PK,
             rk: tuple[int, ...] = DEFAULT_RK, per_query: bool = False) -> dict[str, Any]:
    """Both directions of retrieval. Without ``database`` the queries' own other modality is
    searched (classic protocol, Recall@K included); with it, the database (hashing protocol).

    Returns ``{"i2t": {...}, "t2i": {...}, "encode_seconds": s}``; mAP and P@k need labels,
    Recall@K (in percent) and ``mR`` need the classic protocol. ``per_query`` adds each
    direction's ``per_query`` dict: every query's AP (``"ap"``) and Recall@K hit (0/1,
    ``"r@K"``), in query order, for paired significance tests (:mod:`.significance`).
    """
    same = database is None
    db = queries if same else database
    for ds in (queries, db):
        if ds.image_features is None or ds.text_features is None:
            raise DataError(f"dataset {ds.name!r} lacks features; encode it first")
    t0 = time.perf_counter()
    qi = method.encode_images(queries.image_features)
    qt = method.encode_texts(queries.text_features)
    di = qi if same else method.encode_images(db.image_features)
    dt = qt if same else method.encode_texts(db.text_features)
    encode_seconds = time.perf_counter() - t0
    bits = getattr(method, "bits", None)

    has_labels = queries.labels is not None and db.labels is not None
    res: dict[str, Any] = {}
    for direction, Q, D, q_lab, d_lab in (
        ("i2t", qi, dt, queries.labels, db.text_labels),
        ("t2i", qt, di, queries.text_labels, db.labels),
    ):
        scores, dist = similarity(method, Q, D)
        rel = graded = None
        if has_labels:
            rel = relevance(q_lab, d_lab)
            graded = graded_relevance(q_lab, d_lab)
        inst = None
        if same:
            t2i = queries.text_to_image
            inst = (np.arange(queries.n_images)[:, None] == t2i[None, :]) if direction == "i2t" \
                else (t2i[:, None] == np.arange(queries.n_images)[None, :])
        res[direction] = _direction(method, scores, dist, rel, graded, inst, bits, map_k, pk, rk, per_query)
    if same and rk:
        rs = [res[d][f"r@{k}"] for d in ("i2t", "t2i") for k in rk]
        res["mR"] = float(np.mean(rs))
    res["encode_seconds"] = encode_seconds
    return res
