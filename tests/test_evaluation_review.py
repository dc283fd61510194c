"""Defects found by the review of the evaluation code: resampling memory, the hashing
database, and inputs in the wrong format (codes not packed, -1/1 labels)."""

import tracemalloc

import numpy as np
import pytest

from xmodal.evaluation import significance
from xmodal.evaluation.significance import paired_permutation_test, resample_batch


# ------------------------------------------------------------ significance: bounded memory
def test_resampling_is_batched_to_a_bounded_size(monkeypatch):
    import scipy.stats

    seen = {}
    for fname in ("permutation_test", "bootstrap"):
        real = getattr(scipy.stats, fname)

        def spy(*args, _real=real, _name=fname, **kw):
            seen[_name] = kw.get("batch")
            return _real(*args, **kw)

        monkeypatch.setattr(scipy.stats, fname, spy)
    n = 6000
    rng = np.random.default_rng(0)
    paired_permutation_test(rng.random(n), rng.random(n), n_resamples=9)
    assert seen["permutation_test"] == seen["bootstrap"] == resample_batch(n)
    assert 1 <= resample_batch(n) and 8 * n * resample_batch(n) <= significance.RESAMPLE_BYTES
    assert resample_batch(10 ** 9) == 1  # never 0, however many queries


def test_batched_resampling_gives_the_unbatched_results(monkeypatch):
    rng = np.random.default_rng(3)
    for n in (10, 400):  # exact (2^10 sign flips) and random resampling
        a, b = rng.random(n), rng.random(n)
        monkeypatch.setattr(significance, "RESAMPLE_BYTES", 2 ** 40)  # one batch
        whole = paired_permutation_test(a, b, n_resamples=999, seed=5)
        monkeypatch.setattr(significance, "RESAMPLE_BYTES", 8 * n * 7)  # batches of 7
        assert resample_batch(n) == 7
        assert paired_permutation_test(a, b, n_resamples=999, seed=5) == whole


def test_resampling_memory_stays_within_the_batch_bound(monkeypatch):
    monkeypatch.setattr(significance, "RESAMPLE_BYTES", 2 ** 21)
    rng = np.random.default_rng(0)
    n = 2000  # unbatched: several 999 x 2000 float64 arrays at once, over 100 MiB at the peak
    a, b = (rng.random(n) < 0.5).astype(float), (rng.random(n) < 0.5).astype(float)
    tracemalloc.start()
    try:
        paired_permutation_test(a, b, n_resamples=999)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 40 * 2 ** 20, f"peak {peak / 2 ** 20:.0f} MiB"
