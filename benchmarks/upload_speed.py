"""Single-item adds (an upload, ``POST /api/items``) on a large collection: the catch-up path
(the index file is left as it is until the changes since it was written pass the rewrite
threshold; the next open catches it up from the store) against a forced rewrite of the
modality's whole index file on every add (``Collection.always_rewrite``, the behaviour before),
same run, same collection, same machine.

    python benchmarks/upload_speed.py              # 200,000 random 256-d vectors, 20 adds each way
    python benchmarks/upload_speed.py --n 20000    # a quicker look

Prints seconds per add for both and the ratio rewrite / catch-up, plus what a reader process
pays to follow those adds (a refresh: catch-up in memory, no index file read).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from xmodal.index import Collection  # noqa: E402
from xmodal.index.collection import REWRITE_BELOW_BYTES, REWRITE_FRACTION, REWRITE_MIN_CHANGES  # noqa: E402


def timed_adds(coll: Collection, reader: Collection, rng: np.random.Generator, dim: int, adds: int,
               tag: str) -> tuple[float, float]:
    """Mean seconds of ``adds`` one-item adds (encoded vectors: the write path only), and the
    median seconds the reader's refresh takes to follow each."""
    took, follow = [], []
    for j in range(adds):
        v = rng.standard_normal((1, dim)).astype(np.float32)
        t = time.perf_counter()
        coll.add_vectors("image", [f"{tag}-{j}"], v)
        took.append(time.perf_counter() - t)
        t = time.perf_counter()
        reader.refresh()
        follow.append(time.perf_counter() - t)
    return float(np.mean(took)), float(np.median(follow))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200_000, help="items in the collection")
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--adds", type=int, default=20, help="single-item adds timed each way")
    ap.add_argument("--index", default="Flat", help="FAISS spec of the collection's index")
    ap.add_argument("--dir", default=None, help="where to make the collection (default: a temp dir)")
    args = ap.parse_args()
    if args.dim < 1:
        ap.error(f"--dim must be at least 1, got {args.dim}")
    # Both paths must be the ones named: under REWRITE_BELOW_BYTES every add rewrites the file
    # (the ratio would compare the rewrite with itself), and the catch-up adds must stay under
    # the rewrite threshold.
    if args.n * 4 * args.dim < REWRITE_BELOW_BYTES:
        ap.error(f"--n {args.n} x --dim {args.dim}: an index under {REWRITE_BELOW_BYTES // 2**20} MiB "
                 f"is rewritten on every add, so there is no catch-up path to time; "
                 f"use --n >= {-(-REWRITE_BELOW_BYTES // (4 * args.dim))}")
    most = int(max(REWRITE_MIN_CHANGES, REWRITE_FRACTION * args.n))
    if not 1 <= args.adds <= most:
        ap.error(f"--adds must be between 1 and {most} (more would make the catch-up path rewrite "
                 f"too), got {args.adds}")
    root = Path(tempfile.mkdtemp(prefix="upload_speed_", dir=args.dir))
    rng = np.random.default_rng(0)
    try:
        path = root / "c.xmc"
        t = time.perf_counter()
        coll = Collection.create(path, dim=args.dim, index=args.index)
        for start in range(0, args.n, 50_000):
            m = min(50_000, args.n - start)
            coll.add_vectors("image", [f"i{start + j}" for j in range(m)],
                             rng.standard_normal((m, args.dim)).astype(np.float32))
        size = sum(f.stat().st_size for f in (path / "indexes").glob("image.*.faiss"))
        print(f"collection: {args.n} x {args.dim}-d, index {args.index}, image index files "
              f"{size / 2**20:.0f} MiB, built in {time.perf_counter() - t:.1f} s")
        reader = Collection.open(path, read_only=True, follow=True)  # another process following the writer
        coll.always_rewrite = True
        full, _ = timed_adds(coll, reader, rng, args.dim, args.adds, "full")
        coll.always_rewrite = False
        files = sorted(p.name for p in (path / "indexes").glob("image.*"))
        delta, follow = timed_adds(coll, reader, rng, args.dim, args.adds, "delta")
        if sorted(p.name for p in (path / "indexes").glob("image.*")) != files:
            sys.exit("the catch-up adds rewrote the index file: the two timings are of one path")
        assert reader.count("image") == coll.count("image") == args.n + 2 * args.adds
        assert reader.indexes[("image", "flat")].ntotal == args.n + 2 * args.adds
        t = time.perf_counter()
        Collection.open(path, read_only=True, follow=True).close()  # older file + catch-up of the delta adds
        reopen = time.perf_counter() - t
        print(f"one-item add, whole index file rewritten: {full * 1000:8.1f} ms")
        print(f"one-item add, catch-up (file left alone): {delta * 1000:8.1f} ms")
        print(f"ratio rewrite / catch-up: {full / delta:.1f}x")
        # (before this change a reader reloaded the whole file on every write)
        print(f"reader following one add (refresh, in memory, median): {follow * 1000:.1f} ms; "
              f"a fresh read-only open (older file + catch-up): {reopen:.2f} s")
        reader.close()
        coll.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
