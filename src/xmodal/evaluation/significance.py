"""Is method A really better than method B on this test set? Paired randomisation tests on
per-query scores (``evaluate(..., per_query=True)``, ``xmodal bench --per-query``).

The test is Fisher's paired sign-flip randomisation test, which Smucker, Allan & Carterette
("A comparison of statistical significance tests for information retrieval evaluation",
CIKM 2007) recommend for retrieval metrics: under the null hypothesis each query's pair of
scores is exchangeable, so the observed difference is compared with the differences obtained
by swapping A and B on random subsets of queries: the sign flips and p-value of
``scipy.stats.permutation_test`` for the same seed, drawn without its Python loop over the
queries (seconds, not minutes, for 30,000 queries).
"""

from __future__ import annotations

import math
import sys
from typing import Any, Callable, Sequence

import numpy as np
from numpy.typing import ArrayLike

from ..data.dataset import DataError
from .protocol import DEFAULT_RK

# scipy holds one batch of resamples at a time, several float64 arrays of batch x n_queries
# each: this bounds one such array (64 MiB; about 0.6 GiB at the peak, whatever the number of
# queries), where unbatched resampling needs ~0.7 GiB per 1,000 queries (MSCOCO-5K mR: ~20 GiB)
RESAMPLE_BYTES = 2 ** 26


def resample_batch(n: int) -> int:
    """Resamples per batch for ``n`` queries: ``8 * n * batch`` stays within
    :data:`RESAMPLE_BYTES`. scipy draws the same random stream whatever the batch, so the
    p-value and the interval do not depend on it."""
    return max(1, RESAMPLE_BYTES // (8 * max(1, n)))


def _sign_flip_null(x: np.ndarray, y: np.ndarray, n_resamples: int, seed: int,
                    on_progress: Callable[[int], None] | None = None) -> np.ndarray:
    """The null distribution of ``sum(x - y)`` that ``scipy.stats.permutation_test((x, y), ...,
    permutation_type="samples", random_state=seed)`` draws, value for value, without its
    Python loop over the queries of every batch (minutes for 30,000 queries): scipy's
    ``RandomState(seed)`` draws ``(batch, n, 2)`` uniforms per batch and each query's pair is
    swapped where the second is the smaller (their argsort). The stream is the same whatever
    the batch, so this one keeps its arrays smaller than scipy's."""
    rng = np.random.RandomState(seed)
    n = len(x)
    batch = max(1, RESAMPLE_BYTES // (16 * n))  # the uniforms, 2 per query and resample
    diff = x - y  # y - x is -(x - y) exactly: IEEE subtraction is symmetric
    null = np.empty(n_resamples)
    for k in range(0, n_resamples, batch):
        m = min(batch, n_resamples - k)
        u = rng.random_sample((m, n, 2))
        swap = np.ascontiguousarray((u[..., 1] < u[..., 0]).T)  # queries x resamples
        del u
        d = np.empty((n, m))
        d[...] = diff[:, None]
        np.negative(d, out=d, where=swap)
        # summed over the queries of a (resamples x queries) array laid out queries-major, as
        # scipy's is: NumPy adds each resample's queries one after another for both, and the
        # sums are the same bit for bit (a resamples-major array would be summed pairwise)
        null[k:k + m] = d.T.sum(axis=-1)
        if on_progress is not None:
            on_progress(m)
    return null


def _sign_flip_test(x: np.ndarray, y: np.ndarray, n_resamples: int, seed: int, batch: int,
                    on_progress: Callable[[int], None] | None = None) -> float:
    """Two-sided p-value of ``scipy.stats.permutation_test((x, y), sum(x - y), permutation_type=
    "samples", random_state=seed)``, the same number, fast for many queries."""
    from scipy.stats import permutation_test

    def statistic(a: np.ndarray, b: np.ndarray, axis: int) -> np.ndarray:
        return np.sum(a - b, axis=axis)

    if len(x) < 64 and 2 ** len(x) <= n_resamples:  # few queries: scipy tries every sign flip
        res = permutation_test((x, y), statistic, permutation_type="samples", vectorized=True,
                               n_resamples=n_resamples, batch=batch, alternative="two-sided",
                               random_state=seed)
        if on_progress is not None:
            on_progress(n_resamples)
        return float(res.pvalue)
    null = _sign_flip_null(x, y, n_resamples, seed, on_progress)
    observed = statistic(x, y, axis=-1)
    # scipy's p-value: a relative tolerance for sums equal in theory but not in floating point,
    # and the random draws counted with the observed one (Phipson & Smyth 2010)
    gamma = abs(np.finfo(np.float64).eps * 100 * observed)
    less = (np.count_nonzero(null <= observed + gamma) + 1) / (n_resamples + 1)
    greater = (np.count_nonzero(null >= observed - gamma) + 1) / (n_resamples + 1)
    return float(np.clip(min(less, greater) * 2, 0.0, 1.0))


def _counting(statistic: Callable[..., Any], on_progress: Callable[[int], None] | None) -> Callable[..., Any]:
    """``statistic`` that reports how many resamples each of scipy's batched calls held."""
    if on_progress is None:
        return statistic

    def counted(*samples: np.ndarray, axis: int) -> Any:
        out = statistic(*samples, axis=axis)
        if samples[0].ndim > 1:  # a batch of resamples (the 1-d call is the observed data)
            on_progress(math.prod(samples[0].shape[:-1]))
        return out

    return counted


def _progress_bar(total: int, progress: bool | None) -> Any:
    """A tqdm bar over ``total`` resamples on stderr (``progress`` None: only on a terminal)."""
    from tqdm.auto import tqdm

    from ..encoders.base import show_progress

    return tqdm(total=total, desc="resampling", unit="resample", unit_scale=True, file=sys.stderr,
                disable=not show_progress(progress), dynamic_ncols=True, leave=False)


def paired_permutation_test(a: ArrayLike, b: ArrayLike, weights: ArrayLike | None = None,
                            n_resamples: int = 9999, seed: int = 0, confidence: float = 0.95,
                            strata: ArrayLike | None = None,
                            on_progress: Callable[[int], None] | None = None) -> dict[str, float]:
    """Two-sided paired randomisation test of ``sum(w * (a - b))`` (``w`` = 1/n by default,
    i.e. the difference of the means). Returns ``difference``, ``p_value`` and a percentile
    bootstrap ``confidence`` interval of the difference over queries (``ci_low``, ``ci_high``).
    ``strata`` (one label per query, e.g. the direction) resamples each stratum's queries on
    their own, keeping its size: weights that differ between strata then add no noise of how
    many queries of each a resample drew. Resamples are drawn in batches
    (:func:`resample_batch`), so memory stays bounded however many queries there are; the
    results are those of one unbatched run with the same seed. ``on_progress`` is called with
    the number of resamples done, as they are (``2 * n_resamples`` in all: the test's, then the
    interval's)."""
    from scipy.stats import bootstrap

    # lists or arrays of one score per query (e.g. evaluate(..., per_query=True)'s "ap")
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)  # type: ignore[assignment]
    if a.ndim != 1 or a.shape != b.shape or len(a) < 2:
        raise ValueError(f"need two equally long per-query score lists (>= 2 queries), got {a.shape} and {b.shape}")
    w = np.full(len(a), 1.0 / len(a)) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != a.shape:
        raise ValueError(f"weights {w.shape} do not match the scores {a.shape}")
    batch = resample_batch(len(a))
    p_value = _sign_flip_test(w * a, w * b, n_resamples, seed, batch, on_progress)
    # resampled queries keep their weights: the sum stays an unbiased estimate of the difference
    d = w * (a - b)
    if strata is None:
        samples: tuple[np.ndarray, ...] = (d,)
    else:
        groups = np.asarray(strata)
        if groups.shape != a.shape:
            raise ValueError(f"strata {groups.shape} do not match the scores {a.shape}")
        samples = tuple(d[groups == s] for s in np.unique(groups))
    ci = bootstrap(samples, _counting(lambda *x, axis: sum(np.sum(v, axis=axis) for v in x), on_progress),
                   n_resamples=n_resamples,
                   batch=batch, confidence_level=confidence, method="percentile", random_state=seed,
                   paired=False).confidence_interval
    return {"difference": float(np.sum(w * (a - b))), "p_value": p_value,
            "ci_low": float(ci.low), "ci_high": float(ci.high)}


def _who(rec: dict, label: str) -> str:
    """How errors name a record: a bench record by its method, an evaluate() result by the
    name compare_all got it under, else by its place (A or B)."""
    if "method" in rec:
        return f"record {rec['method']!r}"
    return f"result {label}"


def _per_query(rec: dict, direction: str, key: str, label: str = "", asked: str | None = None) -> np.ndarray:
    """``rec``'s per-query ``key`` scores for ``direction``; ``asked``: the metric as the user
    named it, when it is not ``key`` itself (mR, tested on the r@K lists)."""
    held = rec.get(direction, {}).get("per_query", {})
    values = held.get(key)
    name = asked or ("map" if key == "ap" else key)  # records keep AP per query; users ask for map
    who = _who(rec, label)
    if values is None:
        names = ", ".join("map" if k == "ap" else k for k in held)
        if key.startswith("r@") and held and not any(k.startswith("r@") for k in held):
            # no Recall@K at all: a hashing record (queries against a database, class relevance)
            what = ("a hashing-protocol record" if str(rec.get("protocol", "")).startswith("hashing")
                    else "it")
            raise DataError(f"{who}: no per-query {name!r} scores for {direction}: mR and Recall@K need "
                            "instance pairs (each query's own image or caption, the classic protocol), "
                            f"and {what} holds MAP-type scores only ({names}); compare on metric map")
        if held:  # scored per query, but not with this metric
            raise DataError(f"{who}: no per-query {name!r} "
                            f"scores for {direction}; it has {names}" + (", mR" if "r@1" in held else ""))
        how = ("re-run the benchmark with per-query scores (xmodal bench --per-query; in Python "
               "run_bench(..., per_query=True))") if "method" in rec else \
            "score it again with evaluate(..., per_query=True)"
        raise DataError(f"{who}: no per-query {name!r} scores for {direction}; {how}")
    out = np.asarray([np.nan if v is None else v for v in values], dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(out))
    if len(bad):  # strict JSON writes NaN as null: a mean or a test over it means nothing
        raise DataError(f"{who}: per-query {name} scores "
                        f"for {direction} are not finite at query {bad[0]}"
                        + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""))
    return out


# what makes two records' queries the same test set (the method and its settings may differ)
_TASK_FIELDS = (("dataset", "dataset"), ("dataset_sha256", "dataset file (SHA-256)"),
                ("data_options", "data_options (the loader's options: another split or labels)"),
                ("data_digest", "data_digest (the data as the loader read it)"),
                ("test_folds", "test_folds"), ("protocol", "protocol"))  # folds first: the plainer word
_OPTIONAL = ("dataset_sha256", "data_digest")  # older records carry none: not compared then


def _same_task(rec_a: dict, rec_b: dict) -> None:
    """Refuse two records scored on different test sets: equally many queries is not enough."""
    for key, what in _TASK_FIELDS:
        default = 1 if key == "test_folds" else None
        # bench records say test_folds; evaluate()/evaluate_folds() results say folds
        va, vb = (rec.get(key, rec.get("folds", default) if key == "test_folds" else default)
                  for rec in (rec_a, rec_b))
        if key in _OPTIONAL and (va is None or vb is None):
            continue  # older records carry no fingerprint
        if key == "data_options":  # none given: recorded as absent
            va, vb = va or None, vb or None
        if va != vb:
            raise DataError(f"records differ in {what}: {va!r} ({rec_a.get('method')}) vs {vb!r} "
                            f"({rec_b.get('method')}); a paired test needs both methods scored on "
                            "the same test queries")


def compare_records(rec_a: dict, rec_b: dict, metric: str = "map", n_resamples: int = 9999,
                    seed: int = 0, progress: bool | None = None) -> dict[str, Any]:
    """Paired test of two benchmark records scored on the same queries: ``{"metric": m, part:
    {"a", "b", "difference", "p_value", "ci_low", "ci_high", "n_queries"}}`` with parts
    ``i2t`` and ``t2i``, or ``both`` for mR.

    ``metric``: ``"map"`` (per-query AP) or ``"r@K"``, tested per direction, or ``"mR"``, the
    mean of the six Recall@1/5/10 figures, tested jointly over both directions' queries (each
    query weighted by its share of mR). Scores are in the table's units (MAP as a fraction,
    recall in percent). A record summarised over seeds carries per-query means over its seeds.
    Records of different datasets, dataset files, protocols or ``test_folds`` are refused
    (:class:`DataError`): their queries are not the same test set. ``progress``: a bar over
    the resamples on stderr (None: only when stderr is a terminal). Metric names are taken
    in any case, as the tables print them (``MAP``, ``mR``, ``R@1``).
    """
    metric = metric_name(metric)
    with _progress_bar(_n_tests(metric) * 2 * n_resamples, progress) as bar:
        return _compare(rec_a, rec_b, metric, n_resamples, seed, bar.update)


def metric_name(metric: str) -> str:
    """``metric`` as the tests name it (``map``, ``mR``, ``r@K``), given in any case; anything
    else is a ValueError."""
    name = {"map": "map", "mr": "mR"}.get(str(metric).lower(), str(metric).lower())
    if name not in ("map", "mR") and not (name.startswith("r@") and name[2:].isdigit()):
        raise ValueError(f"metric {metric!r}: expected map, mR or r@K")
    return name


def _n_tests(metric: str) -> int:
    return 1 if metric == "mR" else 2  # mR: both directions at once


def _compare(rec_a: dict, rec_b: dict, metric: str, n_resamples: int, seed: int,
             on_progress: Callable[[int], None] | None, names: tuple[str, str] = ("A", "B")) -> dict[str, Any]:
    la, lb = names
    _same_task(rec_a, rec_b)
    if metric == "mR":
        parts = []
        for j, d in enumerate(("i2t", "t2i")):
            ha = np.mean([_per_query(rec_a, d, f"r@{k}", la, "mR") for k in DEFAULT_RK], axis=0)
            hb = np.mean([_per_query(rec_b, d, f"r@{k}", lb, "mR") for k in DEFAULT_RK], axis=0)
            _same_queries(ha, hb, d)
            parts.append((ha, hb, np.full(len(ha), 100.0 / (2 * len(ha))), np.full(len(ha), j)))
        a, b, w, strata = (np.concatenate(x) for x in zip(*parts))
        # the interval resamples each direction's queries on its own (their weights differ)
        return {"metric": "mR", "both": {"a": float(np.sum(w * a)), "b": float(np.sum(w * b)),
                                         **paired_permutation_test(a, b, w, n_resamples, seed, strata=strata,
                                                                   on_progress=on_progress),
                                         "n_queries": len(a)}}
    key, scale = ("ap", 1.0) if metric == "map" else (metric, 100.0)
    out: dict[str, Any] = {"metric": metric}
    for d in ("i2t", "t2i"):
        a, b = scale * _per_query(rec_a, d, key, la), scale * _per_query(rec_b, d, key, lb)
        _same_queries(a, b, d)
        out[d] = {"a": float(a.mean()), "b": float(b.mean()),
                  **paired_permutation_test(a, b, None, n_resamples, seed, on_progress=on_progress),
                  "n_queries": len(a)}
    return out


def _same_queries(a: np.ndarray, b: np.ndarray, direction: str) -> None:
    if a.shape != b.shape:
        raise DataError(f"{direction}: the records hold {len(a)} and {len(b)} queries; "
                        "a paired test needs both methods scored on the same queries")


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (Holm, "A simple sequentially rejective multiple test
    procedure", Scand. J. Statistics 1979): with several comparisons at once, reject where the
    adjusted p is below the level; the family-wise error rate then stays at that level."""
    p = np.asarray(p_values, dtype=np.float64)
    m = len(p)
    order = np.argsort(p, kind="stable")
    adj = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out = np.empty(m)
    out[order] = adj
    return out.tolist()


def compare_all(records: dict[str, dict], metric: str = "map", n_resamples: int = 9999,
                seed: int = 0, progress: bool | None = None) -> list[dict[str, Any]]:
    """Every pair of ``records`` (method name -> record) with :func:`compare_records`, and each
    part's ``p_holm``: its p-value adjusted over all the tests made here (every pair, every
    direction). ``progress``: one bar over all the pairs' resamples, as for compare_records.
    Returns one dict per pair, ``{"a": name, "b": name, **compare_records(...)}``."""
    metric = metric_name(metric)
    names = list(records)
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]
    with _progress_bar(len(pairs) * _n_tests(metric) * 2 * n_resamples, progress) as bar:
        out = [{"a": a, "b": b, **_compare(records[a], records[b], metric, n_resamples, seed, bar.update,
                                                names=(repr(a), repr(b)))}
               for a, b in pairs]
    parts = [(r, d) for r in out for d in ("i2t", "t2i", "both") if d in r]
    for (r, d), adj in zip(parts, holm([r[d]["p_value"] for r, d in parts])):
        r[d]["p_holm"] = adj
    return out
