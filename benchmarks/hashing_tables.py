"""MAP tables of the cross-modal hashing methods: methods x bits x direction, per dataset.

    python benchmarks/hashing_tables.py --dataset wikipedia --out results/wiki.jsonl
    python benchmarks/hashing_tables.py --dataset ucm_captions --image-encoder efficientnet-lite0 \
        --text-encoder minilm --out results/ucm.jsonl
    python benchmarks/hashing_tables.py --render results/wiki.jsonl results/ucm.jsonl

Protocol (the hashing protocol of ``xmodal.evaluation``): fit on the ``train`` split (with
``val`` for early stopping where the dataset has one), queries = ``query`` split (test),
database = ``database`` split (train), database codes from the learned hash functions.
Every (method, bits) record is appended to ``--out`` as one JSON line as soon as it is done,
so an interrupted run keeps what it finished; ``--render`` prints the markdown tables.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from xmodal import methods
from xmodal.data import load_dataset
from xmodal.evaluation.protocol import evaluate

ORDER = ["lsh", "cca_itq", "cvh", "imh", "cmfh", "lssh", "djsrh", "jdsh", "ucch", "sslpdp",
         "scm_orth", "scm_seq", "seph", "dlfh", "dcmh", "ssah"]
KIND = {"lsh": "baseline", "cca_itq": "unsupervised", "cvh": "unsupervised", "imh": "unsupervised",
        "cmfh": "unsupervised", "lssh": "unsupervised", "djsrh": "unsupervised (deep)",
        "jdsh": "unsupervised (deep)", "ucch": "unsupervised (deep)", "sslpdp": "semi-supervised (10% labels)",
        "scm_orth": "supervised", "scm_seq": "supervised", "seph": "supervised", "dlfh": "supervised",
        "dcmh": "supervised (deep)", "ssah": "supervised (deep)"}


def run(args: argparse.Namespace) -> None:
    ds = load_dataset(args.dataset)
    if args.image_encoder or args.text_encoder:
        from xmodal.encoders import encode_dataset

        ds = encode_dataset(ds, image_encoder=args.image_encoder, text_encoder=args.text_encoder,
                            quiet=True)
    train, query, database = ds.subset("train"), ds.subset("query"), ds.subset("database")
    val = ds.subset("val") if "val" in ds.splits else None
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = set()
    if out.exists():
        for line in out.read_text().splitlines():
            r = json.loads(line)
            done.add((r["method"], r["bits"]))
    for name in args.methods.split(","):
        for bits in (int(b) for b in args.bits.split(",")):
            if (name, bits) in done:
                continue
            m = methods.create(name, bits=bits, random_state=args.seed)
            t0 = time.perf_counter()
            m.fit(train, val=val) if val is not None else m.fit(train)
            fit_s = time.perf_counter() - t0
            res = evaluate(m, query, database, map_k=(50, 100), pk=(10, 50, 100))
            rec = {"dataset": ds.name, "method": name, "bits": bits, "fit_seconds": round(fit_s, 2),
                   **{f"{d}_{k}": v for d in ("i2t", "t2i") for k, v in res[d].items()
                      if not k.endswith("curve")}}
            with out.open("a") as f:
                f.write(json.dumps(rec) + "\n")
            print(f"{ds.name} {name:9s} {bits:4d}  i2t {rec['i2t_map']:.4f}  t2i {rec['t2i_map']:.4f}"
                  f"  ({fit_s:.1f}s)", flush=True)


def render(paths: list[str], published: dict | None = None) -> str:
    rows = [json.loads(line) for p in paths for line in Path(p).read_text().splitlines() if line.strip()]
    out = []
    for dsname in dict.fromkeys(r["dataset"] for r in rows):
        recs = {(r["method"], r["bits"]): r for r in rows if r["dataset"] == dsname}
        bits = sorted({b for _, b in recs})
        names = [n for n in ORDER if any(k[0] == n for k in recs)]
        out.append(f"### {dsname}: MAP (full ranking), image->text | text->image\n")
        out.append("| method | kind | " + " | ".join(f"I->T {b}" for b in bits) + " | "
                   + " | ".join(f"T->I {b}" for b in bits) + " |")
        out.append("|---|---|" + "---|" * (2 * len(bits)))
        for n in names:
            cells = [f"{recs[(n, b)][f'{d}_map']:.4f}" if (n, b) in recs else "-"
                     for d in ("i2t", "t2i") for b in bits]
            out.append(f"| {n} | {KIND.get(n, '')} | " + " | ".join(cells) + " |")
        out.append("")
        out.append(f"### {dsname}: MAP@100, P@100 and precision within Hamming radius 2 at 64 bits\n")
        out.append("| method | I->T MAP@100 | T->I MAP@100 | I->T P@100 | T->I P@100 | I->T P@r2 | T->I P@r2 | fit s |")
        out.append("|---|---|---|---|---|---|---|---|")
        for n in names:
            r = recs.get((n, 64))
            if r is None:
                continue
            out.append(f"| {n} | {r.get('i2t_map@100', float('nan')):.4f} | {r.get('t2i_map@100', float('nan')):.4f} | "
                       f"{r['i2t_p@100']:.4f} | {r['t2i_p@100']:.4f} | {r['i2t_p@r2']:.4f} | {r['t2i_p@r2']:.4f} | "
                       f"{r['fit_seconds']:.0f} |")
        out.append("")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset")
    ap.add_argument("--methods", default=",".join(ORDER))
    ap.add_argument("--bits", default="16,32,64,128")
    ap.add_argument("--image-encoder")
    ap.add_argument("--text-encoder")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out")
    ap.add_argument("--render", nargs="+")
    args = ap.parse_args()
    if args.render:
        print(render(args.render))
    elif args.dataset and args.out:
        run(args)
    else:
        ap.error("give --dataset and --out, or --render FILES")


if __name__ == "__main__":
    sys.exit(main())
