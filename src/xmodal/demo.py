"""``make demo``: the main job end to end on real data.

1. Wikipedia (classic SIFT/LDA features): fit the CCA family, print the results table next to
   the published figures.
"""

from __future__ import annotations

import argparse
import sys
import time

from .evaluation.bench import format_table, run_bench

PUBLISHED_WIKIPEDIA = {"cca": (0.249, 0.196), "scm": (0.277, 0.226)}  # Rasiwasia et al. 2010


def _header(text: str) -> None:
    print(f"\n=== {text} ===", flush=True)


def wikipedia_subspace(data_dir: str | None) -> list[dict]:
    _header("Wikipedia, classic protocol (693 test pairs, 10 categories): the CCA family")
    records = run_bench("wikipedia", ["cca", "kcca", "pls", "mlcca", "scm", "cfa"], data_dir=data_dir)
    print(format_table(records))
    print("published (Rasiwasia et al. 2010, same features): "
          + ", ".join(f"{m} {a:.3f}/{b:.3f}" for m, (a, b) in PUBLISHED_WIKIPEDIA.items()))
    return records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m xmodal.demo", description=__doc__)
    parser.add_argument("--data-dir", default=None, help="dataset root (default $XMODAL_DATA, ../shared/data)")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    wikipedia_subspace(args.data_dir)
    print(f"\ndemo finished in {time.perf_counter() - t0:.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
