"""The notebook path of a researcher comparing methods from Python (README, "In Python"):
fit, score under both protocols, pair two methods, tabulate and plot evaluate() results
without going through the bench records."""

from __future__ import annotations

import numpy as np
import pytest

from xmodal import methods
from xmodal.data import DataError
from xmodal.methods import CrossModalMethod
from xmodal.methods.base import interval


class MeanBridge(CrossModalMethod):
    """Image features -> text feature space by ridge regression (a student's own method;
    not registered: evaluate needs only the interface)."""

    _parameter_rules = {"alpha": interval(0, None, closed="neither")}

    def __init__(self, alpha: float = 10.0):
        self.alpha = alpha

    def _fit(self, X, Y, L, *, train, val):
        self.mx_, self.my_ = X.mean(axis=0), Y.mean(axis=0)
        Xc = X - self.mx_
        self.W_ = np.linalg.solve(Xc.T @ Xc + self.alpha * np.eye(X.shape[1]), Xc.T @ (Y - self.my_))

    def _encode_images(self, X):
        return (X - self.mx_) @ self.W_

    def _encode_texts(self, Y):
        return Y - self.my_


def test_the_evaluation_entry_points_are_one_import_away():
    import xmodal.evaluation as ev

    for name in ("evaluate", "evaluate_folds", "select_params", "run_bench", "compare_records",
                 "compare_all", "paired_permutation_test", "summarize_seeds", "format_table",
                 "format_hashing_tables", "plot_pr_curves", "hashing_split_names"):
        assert name in ev.__all__ and callable(getattr(ev, name)), name


def test_a_notebook_afternoon_on_wikipedia(wikipedia, tmp_path):
    from xmodal.evaluation import (compare_all, compare_records, evaluate, format_hashing_tables,
                                   format_table, hashing_split_names, plot_pr_curves)

    train, test = wikipedia.subset("train"), wikipedia.subset("test")
    fitted = {"cca": methods.create("cca", n_components=10).fit(train),
              "scm": methods.create("scm").fit(train),
              "mine": MeanBridge().fit(train)}
    res = {n: evaluate(m, test, per_query=True) for n, m in fitted.items()}
    assert res["cca"]["i2t"]["map"] == pytest.approx(0.2412, abs=5e-4)  # README's figure
    assert res["scm"]["t2i"]["map"] == pytest.approx(0.2256, abs=5e-4)
    assert len(res["mine"]["i2t"]["per_query"]["ap"]) == test.n_images

    # metric names as the tables print them, in any case (as `xmodal compare --metric`)
    lower, upper = compare_records(res["cca"], res["scm"], "map", n_resamples=199), \
        compare_records(res["cca"], res["scm"], "MAP", n_resamples=199)
    assert lower == upper and lower["i2t"]["difference"] < 0 and lower["i2t"]["p_value"] < 0.05
    assert compare_records(res["cca"], res["scm"], "MR", n_resamples=99)["metric"] == "mR"
    assert compare_records(res["cca"], res["scm"], "R@10", n_resamples=99)["metric"] == "r@10"
    pairs = compare_all(res, "map", n_resamples=99)
    assert [(p["a"], p["b"]) for p in pairs] == [("cca", "scm"), ("cca", "mine"), ("scm", "mine")]

    # tables and curves straight from evaluate() results, one row / line per name
    table = format_table(res, markdown=True)
    rows = {line.split(" | ")[0].strip("| "): line for line in table.splitlines()[2:]}
    assert list(rows) == ["cca", "scm", "mine"] and "0.2412" in rows["cca"]
    png = plot_pr_curves(res, tmp_path / "pr.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # the hashing protocol by hand, with the splits the bench would use
    q, db = hashing_split_names(wikipedia)
    assert (q, db) == ("query", "database")
    lsh = methods.create("lsh", bits=16, random_state=0).fit(train)
    hres = {"lsh": evaluate(lsh, wikipedia.subset(q), wikipedia.subset(db), map_k=(100,))}
    assert 0.1 < hres["lsh"]["i2t"]["map"] < 0.2
    hashing = format_hashing_tables(hres)
    assert "| lsh |" in hashing and "16" in hashing
    assert plot_pr_curves(hres, tmp_path / "hpr.png", curve="hamming_pr_curve").exists()


def test_results_that_are_neither_records_nor_named_are_a_clear_error(wikipedia, tmp_path):
    from xmodal.evaluation import evaluate, format_table, plot_pr_curves

    test = wikipedia.subset("test")
    r = evaluate(methods.create("cca", n_components=4).fit(wikipedia.subset("train")), test,
                 pk=(10,), ndcg_k=())
    for call in (lambda: plot_pr_curves([r], tmp_path / "x.png"), lambda: format_table([r])):
        with pytest.raises(DataError, match=r"records\[0\]: .*evaluate\(\).*name -> result"):
            call()
    with pytest.raises(DataError, match="'cca': not a result of evaluate"):
        format_table({"cca": {"map": 0.3}})


def test_two_settings_of_one_method_are_two_lines_as_they_are_two_rows(wikipedia, tmp_path):
    # format_table showed cca:n_components=5 and cca:n_components=10; the plot refused them
    # as "records of cca ... differ in settings"
    from xmodal.evaluation import format_hashing_tables, format_table, plot_pr_curves, run_bench

    recs = [r for k in (5, 10) for r in run_bench(wikipedia, ["cca"], params={"cca": {"n_components": k}})]
    assert "cca:n_components=5" in format_table(recs) and "cca:n_components=10" in format_table(recs)
    assert plot_pr_curves(recs, tmp_path / "two.png").exists()
    hrecs = [r for reg in (0.01, 0.1) for r in run_bench(wikipedia, ["cvh"], bits=[16],
                                                         params={"cvh": {"reg": reg}})]
    assert plot_pr_curves(hrecs, tmp_path / "two_hash.png").exists()
    # the hashing tables name rows as the plot names lines (config_label less the label budget)
    tables = format_hashing_tables(hrecs)
    assert "| cvh:reg=0.01 | unsupervised |" in tables and "| cvh:reg=0.1 | unsupervised |" in tables


def test_a_result_without_per_query_scores_says_how_to_get_them_in_python(wikipedia):
    from xmodal.evaluation import compare_all, compare_records, evaluate

    train, test = wikipedia.subset("train"), wikipedia.subset("test")
    a = evaluate(methods.create("cca", n_components=4).fit(train), test, pk=(10,), ndcg_k=())
    b = evaluate(methods.create("cca", n_components=8).fit(train), test, pk=(10,), ndcg_k=(), per_query=True)
    with pytest.raises(DataError, match=r"result A: no per-query 'map' scores for i2t; score it again with "
                                        r"evaluate\(\.\.\., per_query=True\)"):
        compare_records(a, b)
    with pytest.raises(DataError, match=r"result 'small': no per-query"):
        compare_all({"small": a, "big": b})


def test_every_public_evaluation_function_says_what_it_takes_and_returns():
    import inspect

    import xmodal.evaluation as ev
    import xmodal.evaluation.bench as bench

    for name in [*ev.__all__, "prepare_dataset", "as_records", "check_record", "read_jsonl", "write_json"]:
        f = getattr(ev, name, None) or getattr(bench, name)
        if inspect.isclass(f):
            continue
        sig = inspect.signature(f)
        assert f.__doc__ and f.__doc__.strip(), f"{name}: no docstring"
        assert sig.return_annotation is not inspect.Signature.empty, f"{name}: no return type"
        untyped = [p for p, v in sig.parameters.items() if v.annotation is inspect.Parameter.empty]
        assert not untyped, f"{name}: untyped {untyped}"
