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
from ..metrics import cosine_similarity, graded_relevance, hamming_distance, relevance
from ..metrics.ranking import (NonFiniteScoresError, _block_metrics, _check_k, _chunks, _hamming_block,
                               _sort_keys, _within_radius, chunk_rows, non_finite_rows)

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


# one block of queries: (scores or None, Hamming distances or None, relevance, gains, instance relevance)
Block = tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None, np.ndarray | None, np.ndarray | None]


def _direction(method, scores, dist, rel, graded, inst_rel, bits, map_k, pk, rk,
               per_query: bool = False, *, ndcg_k: tuple[int, ...] = (10,), curves: bool = True,
               tie_seed: int | None = 0, where: str = "") -> dict[str, Any]:
    """One direction of retrieval from full (n_query, n_db) matrices (``dist`` ranks when
    given, else ``scores``); :func:`evaluate` computes them block by block instead."""
    def block(sl: slice) -> Block:
        pick = lambda a: None if a is None else a[sl]  # noqa: E731
        return (None if dist is not None else scores[sl]), pick(dist), pick(rel), pick(graded), pick(inst_rel)
    n_query, n_db = (dist if dist is not None else scores).shape
    return _score_blocks(block, n_query, n_db, bits, map_k, pk, rk, per_query, ndcg_k=ndcg_k,
                         curves=curves, tie_seed=tie_seed, where=where)


def _score_blocks(block: Callable[[slice], Block], n_query: int, n_db: int, bits: int | None,
                  map_k: tuple[int, ...], pk: tuple[int, ...], rk: tuple[int, ...], per_query: bool = False,
                  *, ndcg_k: tuple[int, ...] = (10,), curves: bool = True, tie_seed: int | None = 0,
                  where: str = "") -> dict[str, Any]:
    """Every metric of one direction, one ranking per block of queries shared by all of them
    (ties broken by the fixed permutation of :func:`~xmodal.metrics.ranking.tie_permutation`)."""
    # k beyond the database: the whole ranking (P@k divides by n_db, as the metric functions)
    map_k = tuple(_check_k(k, "map_k") for k in map_k)
    pk = tuple(_check_k(k, "pk") for k in pk)
    parts: dict[str, list] = {}
    hamming: list | None = None  # Hamming PR: precision and recall sums, queries counted
    bad = 0
    for sl in _chunks(n_query, chunk_rows(n_db)):
        S, dist, rel, graded, inst = block(sl)
        # a diverged method: count its non-finite rows over every block, then refuse
        bad += non_finite_rows(S if dist is None else dist)
        if bad:
            continue
        got = _block_metrics(_sort_keys(S, dist), rel, G=graded, inst=inst if rk else None,
                             full_map=rel is not None, map_k=map_k if rel is not None else (),
                             pk=pk if rel is not None else (),
                             ndcg_k=ndcg_k if graded is not None and rel is not None else (),
                             rk_max=max(rk) if rk and inst is not None else None,
                             pr_points=11 if curves and rel is not None else None, tie_seed=tie_seed)
        if dist is not None and rel is not None:
            got["p@r2"] = _within_radius(dist, rel, 2)
            keep = rel.any(axis=1)  # the Hamming PR curve, like pr_curve, leaves these out
            if curves:
                if hamming is None:
                    hamming = [np.zeros(bits + 1), np.zeros(bits + 1), 0]
                if keep.any():
                    p, r = _hamming_block(dist[keep], rel[keep], bits)
                    hamming = [hamming[0] + p.sum(axis=0), hamming[1] + r.sum(axis=0),
                               hamming[2] + int(keep.sum())]
        for key, v in got.items():
            parts.setdefault(key, []).append(v)
    if bad:
        raise NonFiniteScoresError(f"{where}{bad} of {n_query} queries have non-finite scores (NaN or inf; "
                                   "a diverged method?): refusing to rank them")
    each = {key: np.concatenate(v) for key, v in parts.items()}
    out: dict[str, Any] = {}
    per: dict[str, list] = {}
    if "ap" in each:
        out["map"] = float(each["ap"].mean())
        if per_query:
            per["ap"] = each["ap"].tolist()
        for k in map_k:
            out[f"map@{k}"] = float(each[f"ap@{k}"].mean())
        for k in pk:
            out[f"p@{k}"] = float(each[f"p@{k}"].mean())
        for k in ndcg_k:
            if f"ndcg@{k}" in each:
                out[f"ndcg@{k}"] = float(each[f"ndcg@{k}"].mean())
        if "pr" in each:
            pr = each["pr"]
            keep = ~np.isnan(pr[:, 0])
            out["pr_curve"] = {"recall": np.linspace(0, 1, pr.shape[1]).tolist(),
                               "precision": (pr[keep].sum(axis=0) / max(int(keep.sum()), 1)).tolist()}
        if "p@r2" in each:
            out["p@r2"] = float(each["p@r2"].mean())
            if hamming is not None:
                n = max(hamming[2], 1)
                out["hamming_pr_curve"] = {"radius": list(range(bits + 1)),
                                           "precision": (hamming[0] / n).tolist(),
                                           "recall": (hamming[1] / n).tolist()}
    if "first_hit" in each:
        # a query without ground truth (an image without a caption) is neither hit nor miss
        first = each["first_hit"][each["has_truth"]]
        for k in rk:
            hit = first < k
            out[f"r@{k}"] = 100.0 * float(hit.mean()) if len(hit) else float("nan")
            if per_query:
                per[f"r@{k}"] = hit.astype(int).tolist()
    if per_query:
        out["per_query"] = per
    return out


def _check_label_sets(queries: PairedDataset, db: PairedDataset) -> None:
    """Class relevance compares label columns: the two datasets must share one label set
    (checked before anything is encoded)."""
    def what(lab: np.ndarray) -> str:
        return f"{lab.shape[1]} classes (label columns)" if lab.ndim == 2 else "1-D class indices"
    ql, dl = np.asarray(queries.labels), np.asarray(db.labels)
    if ql.ndim != dl.ndim or (ql.ndim == 2 and ql.shape[1] != dl.shape[1]):
        raise DataError(f"queries {queries.name!r} have {what(ql)} but database {db.name!r} has "
                        f"{what(dl)}: relevance needs one label set")


def protocol_of(queries: PairedDataset, database: PairedDataset | None = None, folds: int = 1) -> str:
    """Which queries were ranked against which database, in words: a result's ``protocol``
    (bench records say the same), so that :mod:`.significance` never pairs a classic result
    with a hashing one, or two different databases."""
    if database is not None:
        return f"hashing: {queries.name} vs {database.name}, database codes from the hash functions"
    protocol = f"classic: {queries.name} vs itself (other modality)"
    if folds != 1:
        protocol += f", mean over {folds} folds of about {queries.n_images // folds} images"
    return protocol


def evaluate(method: CrossModalMethod, queries: PairedDataset, database: PairedDataset | None = None,
             *, map_k: tuple[int, ...] = (), pk: tuple[int, ...] = DEFAULT_PK,
             rk: tuple[int, ...] = DEFAULT_RK, per_query: bool = False, ndcg_k: tuple[int, ...] = (10,),
             curves: bool = True, tie_seed: int | None = 0) -> dict[str, Any]:
    """Both directions of retrieval. Without ``database`` the queries' own other modality is
    searched (classic protocol, Recall@K included); with it, the database (hashing protocol).

    Returns ``{"i2t": {...}, "t2i": {...}, "protocol": str, "encode_seconds": s}`` (``protocol``:
    :func:`protocol_of`); mAP and P@k need labels,
    and a k beyond the database means the whole ranking (``p@k`` then divides by the
    database size, ``map@k`` is the full MAP), as in :mod:`xmodal.metrics.ranking`;
    Recall@K (in percent) and ``mR`` need the classic protocol. ``per_query`` adds each
    direction's ``per_query`` dict: every query's AP (``"ap"``) and Recall@K hit (0/1,
    ``"r@K"``), in query order, for paired significance tests (:mod:`.significance`).
    Images without a caption have no image->text ground truth: they are left out of i2t
    Recall@K and its per-query lists (they still count in class mAP, which has ground truth
    for them). ``ndcg_k`` and ``curves`` (both precision-recall curves) can be turned off
    when not needed. Ties are broken by one fixed permutation of the database drawn from
    ``tie_seed`` (None: database order); see :mod:`xmodal.metrics.ranking`. Scores are
    computed block by block of queries, never as one (n_query, n_db) matrix; NaN or infinite
    scores (a diverged method) raise :class:`~xmodal.metrics.ranking.NonFiniteScoresError`
    (a ValueError) naming the direction and how many queries have them.

    Each direction's dict holds ``map`` (MAP over the full ranking), ``map@K`` (for
    ``map_k``), ``p@K``, ``ndcg@K``, ``pr_curve`` (``{recall, precision}``, 11 points) and,
    with a database, ``p@r2`` and ``hamming_pr_curve`` (binary methods); ``r@K`` in percent
    (classic protocol); top-level ``mR``. The hashing protocol scores class relevance only,
    so queries or a database without labels are refused (:class:`DataError`) rather than
    scored as nothing.
    """
    same = database is None
    db = queries if same else database
    for ds in (queries, db):
        if ds.image_features is None or ds.text_features is None:
            raise DataError(f"dataset {ds.name!r} lacks features; encode it first")
    has_labels = queries.labels is not None and db.labels is not None
    if not same and not has_labels:
        missing = [f"{what} {ds.name!r}" for what, ds in (("queries", queries), ("database", db))
                   if ds.labels is None]
        raise DataError(f"{' and '.join(missing)}: no labels; the hashing protocol (queries against a "
                        "database) scores class relevance only, so nothing could be scored (label both, "
                        "or evaluate(method, queries) for the classic protocol's Recall@K)")
    if has_labels and not same:
        _check_label_sets(queries, db)
    t0 = time.perf_counter()
    qi = method.encode_images(queries.image_features)
    qt = method.encode_texts(queries.text_features)
    di = qi if same else method.encode_images(db.image_features)
    dt = qt if same else method.encode_texts(db.text_features)
    encode_seconds = time.perf_counter() - t0
    bits = getattr(method, "bits", None)
    if bits is None and method.output == "binary" and np.ndim(qi) == 2:
        bits = 8 * np.shape(qi)[1]  # packed codes: no distance passes 8 bits per byte

    res: dict[str, Any] = {}
    for direction, Q, D, q_lab, d_lab in (
        ("i2t", qi, dt, queries.labels, db.text_labels),
        ("t2i", qt, di, queries.text_labels, db.labels),
    ):
        def block(sl: slice, Q=Q, D=D, q_lab=q_lab, d_lab=d_lab, direction=direction) -> Block:
            scores, dist = similarity(method, Q[sl], D)
            rel = graded = inst = None
            if has_labels:
                rel = relevance(q_lab[sl], d_lab)
                graded = graded_relevance(q_lab[sl], d_lab) if ndcg_k else None
            if same and rk:
                t2i, images = queries.text_to_image, np.arange(queries.n_images)
                inst = (images[sl, None] == t2i[None, :]) if direction == "i2t" \
                    else (t2i[sl, None] == images[None, :])
            return (scores if dist is None else None), dist, rel, graded, inst
        res[direction] = _score_blocks(block, len(Q), len(D), bits, map_k, pk, rk, per_query, ndcg_k=ndcg_k,
                                       curves=curves, tie_seed=tie_seed, where=f"{direction}: ")
    if same and rk:
        rs = [res[d][f"r@{k}"] for d in ("i2t", "t2i") for k in rk]
        res["mR"] = float(np.mean(rs))
    res["protocol"] = protocol_of(queries, database)
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
    test set's own query order, so that runs of several methods with the same ``folds`` pair
    query by query; a folded run is never paired with an unfolded one (each query was ranked
    against another database: :mod:`.significance` refuses the pair). The result adds
    ``folds`` and ``fold_std`` (the spread of every scalar over the blocks).
    """
    blocks = fold_blocks(test.n_images, folds)
    results = []
    for idx in blocks:
        part = test if folds == 1 else test.subset(idx, name=f"{test.name}[{idx[0]}:{idx[-1] + 1}]")
        results.append(evaluate(view(method, part) if view else method, part, **kwargs))
    if folds == 1:
        return {**results[0], "folds": 1}
    out: dict[str, Any] = {"folds": folds, "fold_std": {}, "protocol": protocol_of(test, folds=folds)}
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
