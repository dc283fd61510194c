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

The modules: :mod:`.protocol` (the protocols), :mod:`.select`, :mod:`.significance`,
:mod:`.bench` (the runner), :mod:`.records` (the records' files, resume keys and seed pooling),
:mod:`.fingerprint` (the data's digests in the records), :mod:`.tables` and :mod:`.plots`;
:mod:`.bench` re-exports the names of the last four.
"""

from .bench import hashing_split_names, run_bench
from .plots import plot_pr_curves
from .protocol import evaluate, evaluate_folds, similarity
from .records import summarize_seeds
from .select import Selection, select_params
from .significance import compare_all, compare_records, paired_permutation_test
from .tables import format_hashing_tables, format_table

__all__ = ["evaluate", "evaluate_folds", "similarity", "select_params", "Selection", "run_bench",
           "summarize_seeds", "compare_records", "compare_all", "paired_permutation_test", "format_table",
           "format_hashing_tables", "plot_pr_curves", "hashing_split_names"]
