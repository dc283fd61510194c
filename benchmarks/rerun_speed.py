"""Re-running ``xmodal index`` on an unchanged folder: with recorded file stats (path, size,
mtime) against reading and hashing every image again, in the same run.

    python benchmarks/rerun_speed.py [--n 300] [--side 700] [--repeats 3]

Builds a collection of ``--n`` noise JPEGs (about 1 MB each, so the files dominate), then times
reruns two ways: as they run now (stats recorded: unchanged files are not read), and with the
stats table emptied before each rerun (every file read and hashed: the behaviour before stats
were kept). Prints both times and their ratio (hashing / stats). The page cache is warm for
both, which flatters hashing: a cold disk makes reading every file far slower still. Runs
alternate (hashed, stats, hashed, ...), best of each; after them the collection must hold the
items of the first build, unchanged (same ids and keys): a rerun that re-added
or dropped anything exits with status 1.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from xmodal.index import Collection, build_collection


def make_folder(folder: Path, n: int, side: int, seed: int) -> int:
    rng = np.random.default_rng(seed)
    words = ["red", "roof", "road", "river", "field", "tree", "car", "plane"]
    total = 0
    for i in range(n):
        p = folder / f"img{i:05d}.jpg"
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(p, quality=95)
        (folder / f"img{i:05d}.txt").write_text(" ".join(rng.choice(words, 5)))
        total += p.stat().st_size
    return total


def items(c: Collection) -> list[tuple[int, str, str]]:
    """(id, modality, key) of every item: a rerun of an unchanged folder keeps them all."""
    out = []
    while batch := c.list_items(offset=len(out), limit=1000):
        out += [(h.id, h.modality, h.key) for h in batch]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--side", type=int, default=700, help="image side in pixels")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    for name in ("n", "side", "repeats"):
        if getattr(args, name) < 1:
            ap.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    with tempfile.TemporaryDirectory() as tmp:
        src, dest = Path(tmp) / "imgs", Path(tmp) / "c.xmc"
        src.mkdir()
        os.environ.setdefault("XMODAL_CACHE", str(Path(tmp) / "cache"))
        size = make_folder(src, args.n, args.side, args.seed)
        print(f"{args.n} images, {size / 2**20:.0f} MiB; first build (encodes and fits)...", flush=True)
        with build_collection(src, dest, text_encoder="tfidf", quiet=True) as c:
            first = items(c)

        def rerun(forget: bool) -> float:
            if forget:
                with Collection.open(dest) as c, c.store.transaction() as conn:
                    conn.execute("DELETE FROM file_stats")
            t0 = time.perf_counter()
            build_collection(src, dest, quiet=True).close()
            return time.perf_counter() - t0

        rerun(False)  # warm both paths' caches and imports alike
        t_hash = t_stat = float("inf")
        for _ in range(args.repeats):  # interleaved: drift on a shared machine hits both alike
            t_hash = min(t_hash, rerun(True))
            t_stat = min(t_stat, rerun(False))
        with Collection.open(dest, read_only=True) as c:
            if items(c) != first:
                sys.exit("the reruns changed the collection's items: they did more than check files")
    print(f"rerun, every file hashed:  {t_hash:.3f} s")
    print(f"rerun, file stats:         {t_stat:.3f} s")
    print(f"ratio (hashed / stats):    {t_hash / t_stat:.2f}x")


if __name__ == "__main__":
    main()
