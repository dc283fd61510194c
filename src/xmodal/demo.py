"""``make demo``: the main job end to end on real data.

1. Wikipedia (classic SIFT/LDA features): fit the CCA family, print the results table next to
   the published figures.
2. UCM-Captions from the raw files: encode images (EfficientNet-Lite0) and captions (MiniLM),
   cached on disk; fit subspace, hashing and deep methods; print class mAP and Recall@K.
3. Build a persistent UCM-Captions collection and search it with three text queries and one
   image query, as ``xmodal search`` would.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from .evaluation.bench import format_table, run_bench

PUBLISHED_WIKIPEDIA = {"cca": (0.249, 0.196), "scm": (0.277, 0.226)}  # Rasiwasia et al. 2010
UCM_REAL = ["cca", "scm", "contrastive"]
UCM_HASHING = ["lsh", "cca_itq", "seph"]
TEXT_QUERIES = ["an airplane parked at the airport", "a river flowing through green land",
                "many cars parked in a parking lot"]


def _header(text: str) -> None:
    print(f"\n=== {text} ===", flush=True)


def wikipedia_subspace(data_dir: str | None) -> list[dict]:
    _header("1. Wikipedia, classic protocol (693 test pairs, 10 categories): the CCA family")
    records = run_bench("wikipedia", ["cca", "kcca", "pls", "mlcca", "scm", "cfa"], data_dir=data_dir)
    print(format_table(records))
    print("published (Rasiwasia et al. 2010, same features): "
          + ", ".join(f"{m} {a:.3f}/{b:.3f}" for m, (a, b) in PUBLISHED_WIKIPEDIA.items()))
    return records


def ucm_methods(data_dir: str | None, quiet: bool) -> list[dict]:
    _header("2. UCM-Captions from raw files (efficientnet-lite0 + minilm): test split, 210 images x 5 captions")
    records = run_bench("ucm_captions", UCM_REAL, data_dir=data_dir, image_encoder="efficientnet-lite0",
                        text_encoder="minilm", quiet=quiet)
    print(format_table(records))
    _header("   hashing protocol, 64 bits: 210 test queries against the 1680-image training database")
    hashing = run_bench("ucm_captions", UCM_HASHING, bits=[64], data_dir=data_dir,
                        image_encoder="efficientnet-lite0", text_encoder="minilm", quiet=True)
    print(format_table(hashing))
    return records + hashing


def ucm_collection(data_dir: str | None, out: Path, quiet: bool) -> Path:
    from .data import load_ucm_captions
    from .index import Collection, build_collection

    _header(f"3. Search engine: a UCM-Captions collection at {out}")
    ds = load_ucm_captions(data_dir)
    dataset_json = Path(ds.root) / "dataset.json"
    build_collection(str(dataset_json), out, overwrite=True, quiet=quiet).close()
    with Collection.open(out) as coll:
        print(f"{coll.count('image')} images, {coll.count('text')} captions indexed")
        for q in TEXT_QUERIES:
            print(f'\nxmodal search --collection {out} "{q}" -k 5')
            for h in coll.search_text(q, k=5):
                print(f"  {h.score:.3f}  {h.key:<8} {Path(h.path).name if h.path else ''}  {','.join(h.labels)}")
        img = ds.image_paths[ds.image_ids.index("1650")]  # a river scene (class 16)
        print(f"\nxmodal search --collection {out} --image {img} -k 5 --distinct   (captions for an image)")
        for h in coll.search_image(img, k=5, distinct=True):
            print(f"  {h.score:.3f}  {h.text}")
    print(f"\nserve it:  xmodal serve --collection {out} --host 127.0.0.1 --port 8000"
          "   (web page at /, API docs at /docs)")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m xmodal.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=None, help="dataset root (default $XMODAL_DATA, ../shared/data)")
    parser.add_argument("--collection", default="demo-output/ucm.xmc", help="where to build the demo collection")
    parser.add_argument("--quick", action="store_true", help="only the Wikipedia table")
    args = parser.parse_args(argv)
    quiet = not sys.stderr.isatty()
    t0 = time.perf_counter()
    wikipedia_subspace(args.data_dir)
    if not args.quick:
        ucm_methods(args.data_dir, quiet)
        out = Path(args.collection)
        out.parent.mkdir(parents=True, exist_ok=True)
        ucm_collection(args.data_dir, out, quiet)
    print(f"\ndemo finished in {time.perf_counter() - t0:.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
