"""Image-encoding throughput: (a) the bare model on pre-decoded tensors vs (b) the full pipeline
from JPEG files (decode + resize in worker processes, model in the main process), same batch
size, same run. The ratio (b)/(a) says how well decoding hides behind the model (target >= 0.8,
``--target``, checked on the best worker count tried: a miss prints FAIL and exits with status 1).

    python benchmarks/encode_throughput.py [--encoder efficientnet-lite0] [--n 320]
        [--batch-size 32] [--workers 0 1 2] [--repeats 3]
    python benchmarks/encode_throughput.py --n 64 --repeats 1     # a quick look
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from xmodal.encoders import get_encoder  # noqa: E402
from xmodal.encoders.base import cpu_count  # noqa: E402
from xmodal.encoders.cnn import torch_threads  # noqa: E402
from xmodal.encoders.images import default_workers  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--encoder", default="efficientnet-lite0")
    ap.add_argument("--images", default=str(REPO.parent / "shared" / "data" / "ucm_captions" / "imgs"))
    ap.add_argument("--n", type=int, default=320)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, nargs="+", default=[None],
                    help="decode worker counts to try (default: the encoder's default)")
    ap.add_argument("--repeats", type=int, default=3, help="best of R interleaved timings")
    ap.add_argument("--target", type=float, default=0.8, help="lowest acceptable ratio (b)/(a)")
    args = ap.parse_args()
    for name in ("n", "batch_size", "repeats"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if any(w is not None and w < 0 for w in args.workers):
        ap.error(f"--workers must be 0 or more, got {args.workers}")
    if not Path(args.images).is_dir():
        ap.error(f"--images {args.images}: no such folder")

    import torch

    paths = sorted(Path(args.images).glob("*.jpg"), key=lambda p: int(p.stem) if p.stem.isdigit() else 0)
    # Byte-identical files (UCM's 103.jpg = 102.jpg) would be encoded once by (b): leave them out.
    seen: set[bytes] = set()
    unique = []
    for p in paths:
        digest = hashlib.blake2b(p.read_bytes(), digest_size=16).digest()
        if digest not in seen:
            seen.add(digest)
            unique.append(str(p))
    paths = unique[: args.n]
    if not paths:
        sys.exit(f"no .jpg images in {args.images}")
    enc = get_encoder(args.encoder)
    enc.model  # load weights outside the timings
    bs = args.batch_size
    print(f"{args.encoder}: {len(paths)} images, batch {bs}, {cpu_count()} cores, "
          f"torch {torch.__version__}")

    # (a) model only, on tensors decoded beforehand; (b) the full pipeline from files, no cache.
    # Interleaved repeats, best of each: fair when the machine's load drifts during the run.
    load = enc.load_fn()
    batches = [torch.from_numpy(np.stack([load(p) for p in paths[i:i + bs]]))
               for i in range(0, len(paths), bs)]

    def model_only(out: list | None = None) -> float:
        # the threads the pipeline's encode takes for this many images (one below SMALL_BATCH)
        with torch_threads(enc.threads, len(paths)):
            t = time.perf_counter()
            for b in batches:
                f = enc.forward_batch(b)
                if out is not None:
                    out.append(f)
            return time.perf_counter() - t

    def pipeline(w) -> float:
        enc.num_workers = w
        t = time.perf_counter()
        X = enc.encode(paths, batch_size=bs, progress=False, cache_dir=False)
        elapsed = time.perf_counter() - t
        # the same features as (a)'s, else (b) timed other work
        if X.shape != ref.shape or not np.allclose(X, ref, rtol=1e-4, atol=1e-5):
            sys.exit(f"workers={w}: the pipeline's features differ from the model's on the same "
                     f"images (largest difference {np.abs(X - ref).max() if X.shape == ref.shape else X.shape})")
        return elapsed

    def decode_only() -> float:
        t = time.perf_counter()
        for p in paths:
            load(p)
        return time.perf_counter() - t

    feats: list = []
    model_only(feats)  # warm-up, and (a)'s features to check (b)'s against
    ref = np.concatenate(feats)
    best_a, best_d, best_b = float("inf"), float("inf"), {w: float("inf") for w in args.workers}
    for _ in range(args.repeats):
        best_a = min(best_a, model_only())
        best_d = min(best_d, decode_only())
        for w in args.workers:
            best_b[w] = min(best_b[w], pipeline(w))
    rate_a = len(paths) / best_a
    print(f"(a) model forward on pre-decoded tensors: {rate_a:7.1f} images/s")
    rate_d = len(paths) / best_d
    print(f"    decode + resize + crop alone, 1 process:  {rate_d:7.1f} images/s "
          f"(no-overlap bound for (b)/(a): {rate_d / (rate_d + rate_a):.2f})")
    ratios = {}
    for w in args.workers:
        rate_b = len(paths) / best_b[w]
        label = f"default ({default_workers(len(paths), bs)})" if w is None else str(w)
        ratios[label] = rate_b / rate_a
        print(f"(b) full pipeline from files, workers={label:<11}: {rate_b:7.1f} images/s   "
              f"ratio (b)/(a) = {rate_b / rate_a:.2f}")
    label, best = max(ratios.items(), key=lambda kv: kv[1])
    verdict = "met" if best >= args.target else "FAIL"
    print(f"best ratio (b)/(a) = {best:.2f} (workers={label}); target >= {args.target:g}: {verdict}")
    if best < args.target:
        sys.exit(1)

if __name__ == "__main__":
    main()
