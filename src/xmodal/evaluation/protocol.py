"""Evaluation protocols: score a fitted method on a test set, both directions.

- ``classic`` (Wikipedia, Pascal, Karpathy data): queries of one modality against the other
  modality of the same test items; class relevance when labels exist, and Recall@K with
  one-to-many ground truth (an image's captions) for instance-level retrieval.
- ``hashing``: queries from the query split against a separate retrieval database.

:func:`evaluate_folds` runs the classic protocol on disjoint blocks of the test images and
averages the scores: the "1K test" of MSCOCO (five folds of 1000 images, Faghri et al. 2018
and most image-text matching papers since).
"""

from __future__ import annotations

import time
from typing import Any, Callable

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


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def mean_scores(scores: list[dict]) -> tuple[dict, dict]:
    """Mean and sample standard deviation (ddof=1) of one direction's scores over runs (seeds
    or folds); curves are averaged point by point (same recall grid / radii in every run)."""
    mean, std = {}, {}
    for key, first in scores[0].items():
        vals = [s.get(key) for s in scores]
        if all(is_number(v) for v in vals):
            a = np.asarray(vals, dtype=float)
            mean[key] = float(a.mean())
            std[key] = float(a.std(ddof=1)) if len(a) > 1 else 0.0
        elif all(isinstance(v, dict) for v in vals):
            mean[key] = {k: np.mean([v[k] for v in vals], axis=0).tolist()
                         if len({len(v[k]) for v in vals}) == 1 else first[k] for k in first}
        else:
            mean[key] = None if any(is_number(v) for v in vals) else first
    return mean, std


def fold_blocks(n_images: int, folds: int) -> list[np.ndarray]:
    """``folds`` contiguous blocks of image indices, as equal as possible (MSCOCO's 5000 test
    images give the usual five folds of 1000, in the order of the split)."""
    if not isinstance(folds, (int, np.integer)) or isinstance(folds, bool) or folds < 1:
        raise ValueError(f"folds: expected a positive integer, got {folds!r}")
    if folds > n_images // 2:
        raise DataError(f"folds={folds} leaves fewer than 2 test images per fold "
                        f"({n_images} images)")
    return np.array_split(np.arange(n_images), folds)


def evaluate_folds(method: CrossModalMethod, test: PairedDataset, folds: int = 5, *,
                   view: Callable[[Any, PairedDataset], Any] | None = None,
                   **kwargs: Any) -> dict[str, Any]:
    """The classic protocol on each of ``folds`` disjoint blocks of the test images (each with
    its own texts), every score averaged over the blocks: the MSCOCO "1K test" is
    ``evaluate_folds(method, coco_test_5k, 5)``. ``folds=1`` is :func:`evaluate` itself.

    ``view(method, block)`` adapts the method to a block first (``raw_view`` for methods that
    read raw texts or image files). Per-query scores (``per_query=True``) are put back in the
    test set's own query order, so paired tests line up with unfolded runs of other methods.
    The result adds ``folds`` and ``fold_std`` (the spread of every scalar over the blocks).
    """
    blocks = fold_blocks(test.n_images, folds)
    results = []
    for idx in blocks:
        part = test if folds == 1 else test.subset(idx, name=f"{test.name}[{idx[0]}:{idx[-1] + 1}]")
        results.append(evaluate(view(method, part) if view else method, part, **kwargs))
    if folds == 1:
        return {**results[0], "folds": 1}
    out: dict[str, Any] = {"folds": folds, "fold_std": {}}
    # subset() keeps each block's texts grouped by image: undo that order for per-query lists
    text_order = np.argsort(test.text_to_image, kind="stable")
    for d in ("i2t", "t2i"):
        per = [r[d].pop("per_query", None) for r in results]
        out[d], out["fold_std"][d] = mean_scores([r[d] for r in results])
        if per[0] is not None:
            each = {}
            for key in per[0]:
                joined = np.concatenate([p[key] for p in per])
                if d == "t2i":
                    back = np.empty_like(joined)
                    back[text_order] = joined
                    joined = back
                each[key] = joined.tolist()
            out[d]["per_query"] = each
    if "mR" in results[0]:
        out["mR"] = float(np.mean([r["mR"] for r in results]))
        out["fold_std"]["mR"] = float(np.std([r["mR"] for r in results], ddof=1))
    out["encode_seconds"] = float(sum(r["encode_seconds"] for r in results))
    return out
