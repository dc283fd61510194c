"""Quality of the space `xmodal index` fits by name: the fixed DEFAULT_METHOD_PARAMS against
parameters chosen by cross-validation on the source's own pairs (PARAM_GRIDS), both fitted on
the same random samples of UCM-Captions' training images and scored on its test split (mR and
class mAP, mean of both directions), in the same run. The test split is never seen by the
search; it only measures the outcome.

    python benchmarks/index_params.py                     # samples of 20, 40, 80, 200 images and all
    python benchmarks/index_params.py --sizes 50,500 --repeats 5
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from xmodal import methods
from xmodal.data import load_dataset
from xmodal.encoders import encode_dataset
from xmodal.evaluation import evaluate
from xmodal.evaluation.select import fold_score
from xmodal.index import build


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="20,40,80,200,all", help="training images per sample")
    ap.add_argument("--repeats", type=int, default=3, help="random samples per size")
    ap.add_argument("--method", default=build.DEFAULT_METHOD)
    args = ap.parse_args()
    # checked before the (slow) features are loaded
    sizes = [x.strip() for x in args.sizes.split(",")]
    bad = [x for x in sizes if x != "all" and not (x.isdigit() and int(x) >= 2)]
    if bad or not sizes:
        ap.error(f"--sizes: {', '.join(bad) or 'none given'}: each size is 'all' or a number of images >= 2")
    if args.repeats < 1:
        ap.error(f"--repeats must be at least 1, got {args.repeats}")
    if args.method not in methods.available():
        ap.error(f"--method {args.method!r}: no such method")
    ds = encode_dataset(load_dataset("ucm_captions"), build.DEFAULT_IMAGE_ENCODER,
                        build.DEFAULT_TEXT_ENCODER, quiet=True)
    train_rows, test = ds.splits["train"], ds.subset("test")
    too_many = [x for x in sizes if x != "all" and int(x) > len(train_rows)]
    if too_many:
        ap.error(f"--sizes {', '.join(too_many)}: the training split has {len(train_rows)} images")
    rng = np.random.default_rng(0)
    print("images | fixed mR | fixed mAP | searched mR | searched mAP | ratio mR (searched / fixed) | "
          "search s | chosen (last sample)")
    for size in sizes:
        n = len(train_rows) if size == "all" else int(size)
        fixed, searched, seconds = [], [], []
        for _ in range(1 if n == len(train_rows) else args.repeats):
            train = ds.subset(np.sort(rng.choice(train_rows, n, replace=False)))
            params = build._default_params(args.method, None, ds.image_features.shape[1],
                                           ds.text_features.shape[1], train.n_texts)
            t0 = time.perf_counter()
            chosen = build._searched_params(args.method, None, params, train, quiet=True)
            seconds.append(time.perf_counter() - t0)
            for p, out in ((params, fixed), (chosen, searched)):
                res = evaluate(methods.create(args.method, **p).fit(train), test)
                out.append((fold_score(res, "mR"), fold_score(res, "map")))
        f, s = np.mean(fixed, axis=0), np.mean(searched, axis=0)
        print(f"{n} | {f[0]:.1f} | {f[1]:.3f} | {s[0]:.1f} | {s[1]:.3f} | {s[0] / max(f[0], 1e-9):.2f}x "
              f"| {np.mean(seconds):.0f} | {chosen}", flush=True)


if __name__ == "__main__":
    main()
