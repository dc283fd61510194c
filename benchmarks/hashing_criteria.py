"""Check a hashing table (the JSON-lines file of ``xmodal bench --resume``) against issue 4's
quality criteria, per dataset, bit length >= 32 and direction:

- every learned method beats LSH;
- every supervised method beats every unsupervised one (baselines LSH and CCA-ITQ aside),
  within the shallow and within the deep family, and the best supervised beats the best
  unsupervised overall.

Records of several seeds (``xmodal bench --seeds 0,1,2``) are compared by their means.
Prints each violation, then a count; any violation prints FAIL and exits with status 1;
records of two tables for one cell (other protocols, encoders or settings) exit with status 2.

    python benchmarks/hashing_criteria.py runs/wiki_hash.jsonl runs/ucm_hash.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from xmodal.evaluation.bench import summarize_seeds


def _what(r: dict) -> str:
    return ", ".join(f"{k} {r[k]}" for k in ("protocol", "encoders", "settings", "params") if r.get(k))


def check(records: list[dict], min_bits: int = 32) -> list[str]:
    problems = []
    # several seeds of one cell: compare their means
    by: dict[tuple, dict] = {}
    for r in summarize_seeds(records):
        if not r.get("bits"):
            continue
        key = (r["dataset"], r["method"], r["bits"])
        if key in by:  # another protocol, encoder or setting: which one is the table's?
            raise ValueError(f"{' '.join(map(str, key))}: two tables' records ({_what(by[key])} | "
                             f"{_what(r)}); give each table's records in files of their own")
        by[key] = r
    for ds in sorted({k[0] for k in by}):
        for bits in sorted({k[2] for k in by if k[0] == ds and k[2] >= min_bits}):
            rows = {m: r for (d, m, b), r in by.items() if d == ds and b == bits}
            for d in ("i2t", "t2i"):
                score = {m: r[d]["map"] for m, r in rows.items()}
                kind = {m: r.get("kind", "") for m, r in rows.items()}
                if "lsh" in score:
                    for m, v in score.items():
                        if m != "lsh" and v <= score["lsh"]:
                            problems.append(f"{ds} {bits} {d}: {m} {v:.4f} <= lsh {score['lsh']:.4f}")
                for family in ("shallow", "deep"):
                    deep = family == "deep"
                    sup = {m: v for m, v in score.items() if kind[m].startswith("supervised")
                           and kind[m].endswith("(deep)") == deep}
                    uns = {m: v for m, v in score.items() if kind[m].startswith("unsupervised")
                           and kind[m].endswith("(deep)") == deep}
                    for s, sv in sup.items():
                        for u, uv in uns.items():
                            if sv <= uv:
                                problems.append(f"{ds} {bits} {d}: supervised {s} {sv:.4f} <= "
                                                f"unsupervised {u} {uv:.4f} ({family})")
                sup_all = [v for m, v in score.items() if kind[m].startswith("supervised")]
                uns_all = [v for m, v in score.items() if kind[m].startswith("unsupervised")]
                if sup_all and uns_all and max(sup_all) <= max(uns_all):
                    problems.append(f"{ds} {bits} {d}: best supervised {max(sup_all):.4f} <= "
                                    f"best unsupervised {max(uns_all):.4f}")
    return problems


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+")
    ap.add_argument("--min-bits", type=int, default=32)
    args = ap.parse_args()
    records = []
    try:
        for f in args.files:
            for no, line in enumerate(Path(f).read_text().splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{f}:{no}: not a JSON record ({exc.msg})") from None
                if not isinstance(rec, dict):
                    raise ValueError(f"{f}:{no}: not a JSON object")
                if rec.get("bits"):  # the records the check reads
                    missing = [k for k in ("dataset", "method") if k not in rec]
                    missing += [f"{d}.map" for d in ("i2t", "t2i")
                                if not isinstance(rec.get(d), dict) or "map" not in rec[d]]
                    if missing:
                        raise ValueError(f"{f}:{no}: no {', '.join(missing)} in the record")
                records.append(rec)
        problems = check(records, args.min_bits)
    except OSError as exc:
        print(f"error: {exc.filename}: {exc.strerror}", file=sys.stderr)
        sys.exit(2)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    print("\n".join(problems) if problems else "all criteria met")
    print(f"{len(problems)} violation(s) over {len(records)} records"
          + (": FAIL" if problems else ""))
    if problems:
        sys.exit(1)


if __name__ == "__main__":
    main()
