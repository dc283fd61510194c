"""Hamming top-k throughput: xmodal's ``hamming_topk`` against a raw ``faiss.IndexBinaryFlat``
in the same run, over 1,000,000 random 64-bit codes.

    python benchmarks/hamming_speed.py [--n-db 1000000] [--bits 64] [--n-query 200] [--k 100]

Prints queries/second for both paths and their ratio (xmodal / faiss); the target is >= 0.9
(``--target``): a miss prints FAIL and exits with status 1. Both paths search the same prebuilt
index contents; xmodal's includes its input checks. ``--n-db 100000 --n-query 50`` is a quick look.
"""

from __future__ import annotations

import argparse
import sys
import time

import faiss
import numpy as np

from xmodal.methods.hashing.search import build_index, hamming_topk


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-db", type=int, default=1_000_000)
    ap.add_argument("--bits", type=int, default=64)
    ap.add_argument("--n-query", type=int, default=200)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--target", type=float, default=0.9, help="lowest acceptable ratio xmodal/faiss")
    args = ap.parse_args()
    # Checked here: FAISS would assert on odd bit counts, k above the database size would
    # compare padded answers, and no query or no repeat would divide by zero.
    if args.bits < 8 or args.bits % 8:
        ap.error(f"--bits must be a positive multiple of 8, got {args.bits}")
    if args.n_db < 1:
        ap.error(f"--n-db must be at least 1, got {args.n_db}")
    if not 1 <= args.k <= args.n_db:
        ap.error(f"--k must be between 1 and --n-db ({args.n_db}), got {args.k}")
    for name in ("n_query", "repeats"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    rng = np.random.default_rng(args.seed)
    nbytes = args.bits // 8
    db = rng.integers(0, 256, size=(args.n_db, nbytes), dtype=np.uint8)
    q = rng.integers(0, 256, size=(args.n_query, nbytes), dtype=np.uint8)

    raw = faiss.IndexBinaryFlat(args.bits)
    raw.add(db)
    ours = build_index(db)

    # one untimed pass each (page faults, thread pool start-up), then interleaved timing
    D_raw, I_raw = raw.search(q, args.k)
    D_ours, I_ours = hamming_topk(q, ours, args.k)
    assert np.array_equal(D_raw, D_ours), "distances differ between the two paths"
    t_raw = t_ours = float("inf")
    for _ in range(args.repeats):
        t_raw = min(t_raw, best_of(lambda: raw.search(q, args.k), 1))
        t_ours = min(t_ours, best_of(lambda: hamming_topk(q, ours, args.k), 1))
    qps_raw, qps_ours = args.n_query / t_raw, args.n_query / t_ours
    print(f"database: {args.n_db:,} codes of {args.bits} bits; {args.n_query} queries; top-{args.k}; "
          f"faiss threads: {faiss.omp_get_max_threads()}")
    print(f"faiss.IndexBinaryFlat : {qps_raw:12,.0f} queries/s  ({t_raw * 1e3:8.1f} ms)")
    print(f"xmodal hamming_topk   : {qps_ours:12,.0f} queries/s  ({t_ours * 1e3:8.1f} ms)")
    ratio = qps_ours / qps_raw
    verdict = "met" if ratio >= args.target else "FAIL"
    print(f"ratio xmodal/faiss    : {ratio:.3f}  (target >= {args.target:g}: {verdict})")
    if ratio < args.target:
        sys.exit(1)


if __name__ == "__main__":
    main()
