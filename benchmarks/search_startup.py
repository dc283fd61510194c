"""Start-up time of ``xmodal search`` for one text query: the MiniLM encoder run on transformers
directly (now) against the same encoder run through sentence-transformers (before), both in
fresh interpreters in the same run, on the same collection.

The baseline interpreter swaps ``MiniLM._compute`` for the sentence-transformers code path the
encoder used before (``SentenceTransformer(folder).encode``), so both runs do the same work
except for that library: its import and its pipeline. Runs alternate (before, now, before,
...) and the best of each is kept, fair when the machine's load drifts. Also times the two bare
imports. The ratio before/now above 1 means the change pays. The two searches must print the
same hits: if not, FAIL and exit status 1.

    python benchmarks/search_startup.py -c my.xmc          # an existing collection (minilm texts)
    python benchmarks/search_startup.py --images 12        # builds one from 12 UCM images first
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "ucm_captions"

# The encoder before this change: sentence-transformers' pipeline inside the same batching.
BEFORE = '''
import xmodal.encoders.text as t

def _compute(self, items, batch_size, bar):
    import torch
    from sentence_transformers import SentenceTransformer
    from xmodal.encoders.base import chunks
    from xmodal.encoders.cnn import torch_threads

    model = SentenceTransformer(t._minilm_dir(), device="cpu")
    order = sorted(range(len(items)), key=lambda i: len(items[i]))
    with torch_threads(None, len(items)), torch.inference_mode():
        for rows in chunks(order, batch_size):
            pos = [order[r] for r in rows]
            yield pos, model.encode([items[p] for p in pos], batch_size=batch_size,
                                    convert_to_numpy=True, show_progress_bar=False), []

t.MiniLM._compute = _compute
'''
RUN_CLI = "import sys; from xmodal.cli import main; sys.argv = ['xmodal'] + sys.argv[1:]; main()"


def timed(code: str, args: list[str], env: dict) -> tuple[float, float, str]:
    """(wall seconds, CPU seconds (user + system), stdout) of a fresh interpreter running
    ``code``. CPU time barely moves when other jobs share the cores; wall time does."""
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([sys.executable, "-c", code, *args], stdout=out, stderr=err, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        dt = time.perf_counter() - t0
        out.seek(0)
        err.seek(0)
        if proc.returncode:
            sys.exit(f"failed: {code[:60]!r}...\n{err.read()[-2000:]}")
        return dt, usage.ru_utime + usage.ru_stime, out.read()


def small_collection(folder: Path, n_images: int, env: dict) -> Path:
    """A collection of ``n_images`` UCM-Captions images (two per class) with their captions."""
    doc = json.loads((DATA / "dataset.json").read_text())
    imgs = folder / "imgs"
    imgs.mkdir(parents=True)
    for k, im in enumerate(doc["images"][::50][:n_images]):
        stem = Path(im["filename"]).stem
        src = next(DATA.joinpath("imgs").glob(f"{stem}.*"))
        shutil.copy(src, imgs / src.name)
        (imgs / f"{src.stem}.txt").write_text("\n".join(s["raw"] for s in im["sentences"]))
    coll = folder / "c.xmc"
    subprocess.run([sys.executable, "-c", RUN_CLI, "index", str(imgs), "-c", str(coll)],
                   check=True, env=env, capture_output=True)
    return coll


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-c", "--collection", type=Path, help="a collection whose text encoder is minilm")
    ap.add_argument("--images", type=int, default=12, help="images of the collection built when -c is absent")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    if args.repeats < 1:
        ap.error(f"--repeats must be at least 1, got {args.repeats}")
    if args.collection is None and not 1 <= args.images <= 42:
        ap.error(f"--images must be between 1 and 42 (two per UCM class), got {args.images}")
    if args.collection is not None and not (args.collection / "collection.db").is_file():
        ap.error(f"-c {args.collection}: not a collection (no collection.db)")
    with tempfile.TemporaryDirectory() as tmp:
        # A private feature cache: nothing cached from other runs, same conditions for both.
        env = {**os.environ, "XMODAL_CACHE": str(Path(tmp) / "cache")}
        coll = args.collection
        if coll is None:
            print(f"building a {args.images}-image collection from {DATA} ...", flush=True)
            coll = small_collection(Path(tmp), args.images, env)
        search = ["search", "-c", str(coll), "a plane parked on a runway", "-k", "3"]
        runs = {"import torch": ("import torch", []),
                "import sentence_transformers": ("import sentence_transformers", []),
                "from transformers import AutoModel, AutoTokenizer":
                    ("from transformers import AutoModel, AutoTokenizer", []),
                "xmodal search, before (sentence-transformers)": (BEFORE + RUN_CLI, search),
                "xmodal search, now (transformers)": (RUN_CLI, search)}
        wall = {name: float("inf") for name in runs}
        cpu = dict(wall)
        outputs: dict[str, str] = {}
        for _ in range(args.repeats):
            for name, (code, argv) in runs.items():
                dt, ct, out = timed(code, argv, env)
                wall[name], cpu[name] = min(wall[name], dt), min(cpu[name], ct)
                outputs[name] = out
    before, now = "xmodal search, before (sentence-transformers)", "xmodal search, now (transformers)"
    differ = outputs[before] != outputs[now]
    print(f"collection {coll}, best of {args.repeats}, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"  {'':52s} {'wall':>8s} {'CPU':>8s}")
    for name in runs:
        print(f"  {name:52s} {wall[name]:7.2f}s {cpu[name]:7.2f}s")
    print(f"xmodal search start-up ratio (before / now): wall {wall[before] / wall[now]:.2f}x, "
          f"CPU {cpu[before] / cpu[now]:.2f}x")
    if differ:  # a faster start that answers otherwise is not faster
        sys.exit(f"FAIL: the two searches printed different results:\n--- before\n{outputs[before]}"
                 f"--- now\n{outputs[now]}")


if __name__ == "__main__":
    main()
