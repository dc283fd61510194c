"""Text-query speed of a collection: one thread against every core for single queries, and a
batch of queries (``Collection.search_texts``, ``xmodal search --queries``) against the same
queries one at a time, all measured in the same run on the same collection.

Single queries run on one torch thread (``xmodal.encoders.cnn.SMALL_BATCH``): the ratio
"every core / one thread" above 1 means the choice pays on this machine now. Run it once on a
quiet machine and once beside a busy job (``--busy 2`` starts that many spinning processes):
where other work holds the cores, OpenMP threads spin waiting for each other and a
single MiniLM query gets many times slower with several threads. Every way's hits are checked
against one-at-a-time's (scores equal to rounding, rank by rank): a miss exits with status 1.

    python benchmarks/query_speed.py                          # the demo collection, or builds one
    python benchmarks/query_speed.py -c my.xmc --busy 2
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import sys
import tempfile
import time
from pathlib import Path

from xmodal.encoders import cnn
from xmodal.index import Collection, build_collection

WORDS = ["many", "buildings", "planes", "cars", "trees", "a", "river", "road", "beach", "parked",
         "green", "near", "the", "white", "houses", "ships", "harbor", "runway", "some", "dense"]


def _spin(stop) -> None:
    while not stop.is_set():
        pass


def queries(n: int) -> list[str]:
    return [" ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(4 + i % 5)) for i in range(n)]


def latencies(coll: Collection, qs: list[str]) -> tuple[list[float], list]:
    """Seconds of each query sent alone, and its hits."""
    times, hits = [], []
    for q in qs:
        t0 = time.perf_counter()
        hits.append(coll.search_text(q, 10))
        times.append(time.perf_counter() - t0)
    return times, hits


def same_hits(a: list, b: list, what: str) -> None:
    """The two ways must answer alike: scores equal to rounding rank by rank (the encodings
    are equal to rounding, so near-ties may swap keys, never scores)."""
    for q, (x, y) in enumerate(zip(a, b)):
        sx, sy = [h.score for h in x], [h.score for h in y]
        if len(sx) != len(sy) or any(abs(u - v) > 1e-4 for u, v in zip(sx, sy)):
            sys.exit(f"{what}: query {q} got other hits ({sx[:3]} vs {sy[:3]}); the timings compare "
                     f"different answers")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-c", "--collection", type=Path, default=Path("demo-output/ucm.xmc"),
                    help="a collection with a torch text encoder (built from UCM-Captions if absent)")
    ap.add_argument("--n", type=int, default=64, help="queries")
    ap.add_argument("--busy", type=int, default=0, help="spinning processes to start beside the run")
    args = ap.parse_args()
    if args.n < 1:
        ap.error(f"--n must be at least 1, got {args.n}")
    if args.busy < 0:
        ap.error(f"--busy must be 0 or more, got {args.busy}")
    with tempfile.TemporaryDirectory() as tmp:
        path = args.collection
        if not Collection.exists(path):
            path = Path(tmp) / "ucm.xmc"
            print(f"{args.collection} not found; building {path} from ucm_captions (minutes)...", flush=True)
            build_collection("ucm_captions", path, quiet=True).close()
        coll = Collection.open(path, read_only=True)
        qs = queries(args.n)
        stop = mp.Event()
        busy = [mp.Process(target=_spin, args=(stop,), daemon=True) for _ in range(args.busy)]
        for p in busy:
            p.start()
        try:
            coll.search_texts(qs[:8], 10)  # load the models before timing
            one_t, one_hits = latencies(coll, qs)
            small = cnn.SMALL_BATCH
            cnn.SMALL_BATCH = 0  # every core even for one query (the behaviour before)
            try:
                every_t, every_hits = latencies(coll, qs)
            finally:
                cnn.SMALL_BATCH = small
            t0 = time.perf_counter()
            batch_hits = coll.search_texts(qs, 10)
            batch = time.perf_counter() - t0
        finally:
            stop.set()
            for p in busy:
                p.join()
        coll.close()
    same_hits(one_hits, every_hits, "one thread vs every core")
    same_hits(one_hits, batch_hits, "one at a time vs batch")
    one, every, alone = statistics.median(one_t), statistics.median(every_t), sum(one_t)
    print(f"collection {path}, {args.n} text queries, {args.busy} busy process(es) beside")
    print(f"single query, median: one thread {one * 1e3:.1f} ms, every core ({cnn.cpu_count()}) "
          f"{every * 1e3:.1f} ms; ratio (every core / one thread): {every / one:.2f}x")
    print(f"batch of {args.n}: {batch:.3f} s; the same queries one at a time (one thread) {alone:.3f} s; "
          f"ratio (one at a time / batch): {alone / batch:.2f}x")


if __name__ == "__main__":
    main()
