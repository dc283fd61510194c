"""Evaluation: protocols that score fitted methods, and the benchmark runner behind ``xmodal bench``.

From Python (a notebook), everything is here:

- :func:`evaluate` (one fitted method; classic protocol without ``database``, hashing
  protocol with one: :func:`hashing_split_names` gives the bench's query and database splits),
  :func:`evaluate_folds` (the classic protocol on disjoint blocks of the test images),
  :func:`select_params` (cross-validated parameter search);
- :func:`run_bench` (what ``xmodal bench`` runs: records with seeds, ``labeled_fraction``,
  ``database_codes``, ``hashing_db``, ``per_query``, ``test_folds``), :func:`summarize_seeds`;
- :func:`compare_records` / :func:`compare_all` (paired significance tests of bench records or
  of ``evaluate(..., per_query=True)`` results), :func:`paired_permutation_test` (any two
  per-query score lists);
- :func:`format_table`, :func:`format_hashing_tables`, :func:`plot_pr_curves`: bench records,
  or a dict of ``evaluate`` results by name.
"""

from .bench import (format_hashing_tables, format_table, hashing_split_names, plot_pr_curves, run_bench,
                    summarize_seeds)
from .protocol import evaluate, evaluate_folds, similarity
from .select import Selection, select_params
from .significance import compare_all, compare_records, paired_permutation_test

__all__ = ["evaluate", "evaluate_folds", "similarity", "select_params", "Selection", "run_bench",
           "summarize_seeds", "compare_records", "compare_all", "paired_permutation_test", "format_table",
           "format_hashing_tables", "plot_pr_curves", "hashing_split_names"]
