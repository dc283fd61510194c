"""Review of `xmodal bench` / `xmodal compare` / `xmodal methods`: records of different
configurations never pooled, truthful supervision, plugin classes redefined in one process,
names that work as the hints print them, and messages worded for where they are read."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import DATA, need
from xmodal import methods
from xmodal.cli import app
from xmodal.evaluation.bench import run_bench, summarize_seeds
from xmodal.methods import ParameterError

runner = CliRunner()


def _rec(method, seed=0, n=20, **extra):
    """A tiny classic-protocol record with per-query scores (random, seeded)."""
    rng = np.random.default_rng(seed + 100 * len(method))
    pq = {"ap": rng.random(n).tolist(), **{f"r@{k}": rng.integers(0, 2, n).tolist() for k in (1, 5, 10)}}
    d = {"map": float(np.mean(pq["ap"])), "per_query": pq}
    rec = {"dataset": "wikipedia", "method": method, "bits": None, "seed": seed, "settings": {},
           "protocol": "classic: wikipedia/test vs itself (other modality)", "i2t": dict(d),
           "t2i": dict(d), "fit_seconds": 0.0, "params": {"alpha": 1.0}, "data_digest": "d1",
           "ties": "t"}
    rec.update(extra)
    rec["params"] = {**rec["params"], "random_state": seed}  # set by the seed: no other run
    return rec


def _write(path, recs):
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return path


def _compare(*args):
    return runner.invoke(app, ["compare", *map(str, args), "--resamples", "99"])


# ------------------------------------------------------------- 1: different params never pooled
def test_seed_summaries_never_pool_records_of_other_params_or_data():
    recs = [_rec("cca", seed=s) for s in (0, 1, 2)] + [_rec("cca", seed=3, params={"alpha": 2.0})]
    out = summarize_seeds(recs)
    assert sorted(len(r.get("seeds", [r.get("seed")])) for r in out) == [1, 3]
    out = summarize_seeds([_rec("cca", seed=0), _rec("cca", seed=1, data_digest="d2")])
    assert len(out) == 2
    out = summarize_seeds([_rec("cca", seed=0), _rec("cca", seed=1, ties="other")])
    assert len(out) == 2
    # a redone seed (same seed, newer params) still replaces the older record
    out = summarize_seeds([_rec("cca", seed=0), _rec("cca", seed=1), _rec("cca", seed=0, params={"alpha": 2.0}),
                           _rec("cca", seed=1, params={"alpha": 2.0})])
    assert len(out) == 1 and out[0]["seeds"] == [0, 1] and out[0]["params"]["alpha"] == 2.0


def test_compare_refuses_to_mix_runs_of_other_params_naming_the_field(tmp_path):
    path = _write(tmp_path / "r.jsonl", [_rec("cca", seed=s) for s in (0, 1, 2)]
                  + [_rec("cca", seed=1, params={"alpha": 2.0})] + [_rec("scm")])
    # seed 1 was redone with alpha=2: seeds 0, 2 (alpha 1) and seed 1 (alpha 2) must not be averaged
    res = _compare(path, "cca", "scm")
    assert res.exit_code == 2, res.output
    assert "params (alpha)" in res.output and "--resume" in res.output
    path = _write(tmp_path / "d.jsonl", [_rec("cca", seed=0), _rec("cca", seed=1, data_digest="d2"), _rec("scm")])
    res = _compare(path, "cca", "scm")
    assert res.exit_code == 2 and "data_digest" in res.output


# ------------------------------------------------------------- 2: supervision listing
def test_supervision_says_who_uses_labels():
    assert methods.supervision(methods.get("cca")) == "unsupervised"
    assert methods.supervision(methods.get("scm")) == "supervised"
    assert methods.supervision(methods.get("graph")) == "supervised (if labelled)"
    # unsupervised training loss, but the epoch is picked by class mAP on labelled validation data
    assert methods.supervision(methods.get("dcca")) == "unsupervised (val labels)"
    assert methods.supervision(methods.get("djsrh")) == "unsupervised"  # no early stopping by default
    res = runner.invoke(app, ["methods", "--json"])
    rows = {r["name"]: r for r in json.loads(res.output)}
    assert rows["graph"]["supervision"] == "supervised (if labelled)" and rows["graph"]["supervised"] is False
    assert rows["dcca"]["supervision"] == "unsupervised (val labels)"
    res = runner.invoke(app, ["methods"])
    line = next(ln for ln in res.output.splitlines() if ln.startswith("graph "))
    assert "supervised (if labelled)" in line


# ------------------------------------------------------------- 3: a plugin class defined twice
_PLUGIN = '''
import numpy as np
from xmodal.methods import CrossModalMethod, register


@register("review_twice")
class Twice(CrossModalMethod):
    """A test method (no paper)."""

    def __init__(self, scale: float = {scale}):
        self.scale = scale
'''


def test_redefining_a_plugin_class_in_the_same_file_replaces_it(tmp_path, monkeypatch):
    import importlib

    src = tmp_path / "twice_plugin.py"
    src.write_text(_PLUGIN.format(scale=1.0))
    monkeypatch.syspath_prepend(str(tmp_path))
    builtin = methods.get("cca")  # the built-ins registered first, as in any run that names one
    try:
        importlib.import_module("twice_plugin")  # imported by name ...
        methods.load_plugin(str(src))  # ... and loaded by path ($XMODAL_PLUGINS), another module name
        assert methods.get("review_twice").__module__.startswith("xmodal_plugin_twice_plugin")
        # a notebook cell defining the class, edited and run again
        for scale in (2.0, 3.0):
            ns = {"__name__": "__main__"}
            exec(compile(_PLUGIN.format(scale=scale).replace("review_twice", "review_cell"), "<cell>", "exec"), ns)
            assert methods.get("review_cell") is ns["Twice"]
        assert methods.create("review_cell").scale == 3.0
        # another file, same name: refused
        (tmp_path / "other_plugin.py").write_text(_PLUGIN.format(scale=4.0))
        with pytest.raises(ValueError, match="registered twice"):
            importlib.import_module("other_plugin")
        # a built-in's name: refused, whatever the file
        (tmp_path / "clash_plugin.py").write_text(_PLUGIN.format(scale=1.0).replace("review_twice", "cca"))
        with pytest.raises(ValueError, match="registered twice"):
            importlib.import_module("clash_plugin")
        assert methods.get("cca") is builtin
    finally:
        methods._REGISTRY.pop("review_twice", None)
        methods._REGISTRY.pop("review_cell", None)


# ------------------------------------------------------------- 4, 8, 9: names as the hints print them
def test_compare_hint_names_work_as_typed(tmp_path):
    path = _write(tmp_path / "r.jsonl", [_rec("ridge_bridge"), _rec("ridge_bridge", seed=1, settings={"alpha": 100}),
                                         _rec("cca", seed=2)])
    res = _compare(path, "ridge_bridge", "cca")
    assert res.exit_code == 0, res.output  # the bare name: the run without --set
    res = runner.invoke(app, ["compare", str(path), "ridge_bridge", "ridge_bridge:alpha=100", "--resamples", "99"])
    assert res.exit_code == 0, res.output
    # two configurations, both named with --set values: the hint counts configurations
    path = _write(tmp_path / "s.jsonl", [_rec("ridge_bridge", settings={"alpha": 1}),
                                         _rec("ridge_bridge", seed=1, settings={"alpha": 100}), _rec("cca")])
    res = _compare(path, "ridge_bridge", "cca")
    assert res.exit_code == 2 and "2 configurations" in res.output and "records" not in res.output.split(";")[0]
    for name in ("ridge_bridge:alpha=1", "ridge_bridge:alpha=100"):
        assert name in res.output
        assert _compare(path, name, "cca").exit_code == 0


def test_compare_unknown_method_lists_the_files_methods(tmp_path):
    path = _write(tmp_path / "r.jsonl", [_rec("cca"), _rec("scm")])
    res = _compare(path, "cca", "nope")
    assert res.exit_code == 2 and "no record for method 'nope'" in res.output
    assert "the file holds: cca, scm" in res.output


def test_compare_bits_of_a_real_valued_method(tmp_path):
    path = _write(tmp_path / "r.jsonl", [_rec("pls_svd"), _rec("cca_itq", bits=32)])
    res = runner.invoke(app, ["compare", str(path), "pls_svd", "cca_itq", "--bits", "32"])
    assert res.exit_code == 2
    assert "'pls_svd' has records, but none at 32 bits" in res.output and "real-valued" in res.output
    path = _write(tmp_path / "h.jsonl", [_rec("lsh", bits=16), _rec("lsh", bits=64), _rec("cca_itq", bits=32)])
    res = runner.invoke(app, ["compare", str(path), "lsh", "cca_itq", "--bits", "32"])
    assert res.exit_code == 2 and "none at 32 bits (it has 16, 64)" in res.output


# ------------------------------------------------------------- 7, 13: --metric and the output's note
def test_compare_metric_is_case_insensitive_and_explains_ci_and_p(tmp_path):
    path = _write(tmp_path / "r.jsonl", [_rec("cca", mR=50.0), _rec("scm", seed=1, mR=60.0)])
    for given, canonical in (("MAP", "map"), ("mr", "mR"), ("R@1", "r@1")):
        res = runner.invoke(app, ["compare", str(path), "cca", "scm", "--metric", given, "--resamples", "99", "--json"])
        assert res.exit_code == 0, res.output
        assert json.loads(res.output)["metric"] == canonical
    res = _compare(path, "cca", "scm")
    assert res.exit_code == 0
    assert "bootstrap" in res.output and "sign-flip" in res.output


# ------------------------------------------------------------- 5, 6: messages
def test_bench_owned_parameter_messages():
    need("wikipedia")
    res = runner.invoke(app, ["bench", "--dataset", "wikipedia", "--methods", "lsh", "--bits", "16",
                              "--set", "lsh.bits=32", "--data-dir", str(DATA), "--quiet"])
    assert res.exit_code == 2 and "--bits" in res.output and "bits=" not in res.output.replace("lsh.bits=32", "")
    with pytest.raises(ParameterError, match=r"lsh\.bits is set by run_bench's bits argument") as exc:
        run_bench("wikipedia", ["lsh"], bits=[16], params={"lsh": {"bits": 32}}, data_dir=str(DATA))
    assert "--bits" not in str(exc.value)


def test_open_interval_rule_message():
    with pytest.raises(ParameterError, match=r"must be an integer >= 1$"):
        methods.create("dcca", epochs=0)._validate_params()
    with pytest.raises(ParameterError, match=r"must be a number > 0$"):
        methods.create("dcca", lr=0)._validate_params()
    with pytest.raises(ParameterError, match=r"must be a number in \[0, 0\.5\]$"):
        methods.create("dcca", val_fraction=0.9)._validate_params()


# ------------------------------------------------------------- 10, 11: resumed runs and tables
def test_bench_marks_reused_records_and_prints_consistent_tables(tmp_path):
    need("wikipedia")
    log, out = tmp_path / "r.jsonl", tmp_path / "r.json"
    args = ["bench", "--dataset", "wikipedia", "--methods", "cca,lsh", "--bits", "16",
            "--data-dir", str(DATA), "--resume", str(log)]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "(reused)" not in res.output
    # both tables in one format (Markdown, as the hashing tables are), fit seconds alike
    assert "| method | bits | i2t MAP" in res.output and "| method | kind | I->T 16 |" in res.output
    fit_cells = [ln.rstrip(" |").rsplit("|", 1)[-1].strip() for ln in res.output.splitlines()
                 if (ln.startswith("| cca ") or ln.startswith("| lsh | ")) and ln.count("|") >= 9]
    assert len(fit_cells) == 2 and all(c.count(".") == 1 and len(c.split(".")[1]) == 1 for c in fit_cells)
    res = runner.invoke(app, args + ["--json", str(out)])
    assert res.exit_code == 0, res.output
    progress = [ln for ln in res.output.splitlines() if ln.startswith("[bench]")]
    assert len(progress) == 2 and all("(reused)" in ln for ln in progress)
    recs = json.loads(out.read_text())  # still valid JSON, numbers untouched
    first = [json.loads(ln) for ln in log.read_text().splitlines()]
    assert recs == first and all("reused" not in r for r in recs)


# ------------------------------------------------------------- 12: metric docstrings
def test_metric_docstrings_say_fraction_or_percent():
    from xmodal.metrics import ranking

    assert ranking.mean_average_precision.__doc__ and "fraction" in ranking.mean_average_precision.__doc__
    assert "percent" in ranking.recall_at_k.__doc__ and "fraction" in ranking.recall_at_k.__doc__


def test_tables_and_plots_refuse_two_runs_of_one_method_at_one_bit_length(tmp_path):
    from xmodal.evaluation.bench import format_hashing_tables, plot_pr_curves, run_bench
    from xmodal.methods.checks import toy_dataset

    recs = run_bench(toy_dataset(), ["lsh"], bits=(16,), seed=[0, 1])
    stale = json.loads(json.dumps(recs[1]))
    stale["params"]["random_state"] = 1
    stale["ties"] = "database order"  # e.g. a record of an older xmodal, never redone
    with pytest.raises(ValueError, match=r"hashing tables: records of lsh at 16 bits on check-toy differ in ties"):
        format_hashing_tables([recs[0], stale])
    with pytest.raises(ValueError, match=r"PR curves: records of lsh .*differ in ties"):
        plot_pr_curves([recs[0], stale], tmp_path / "pr.png")
    assert "lsh" in format_hashing_tables(recs)  # one run's seeds pool as before


def test_a_plugin_subclass_of_a_deep_method_is_recorded_deep(monkeypatch):
    from xmodal import methods
    from xmodal.evaluation.bench import method_kind
    from xmodal.methods.deep.supervised import DSCMR

    @methods.register("my_dscmr_variant")
    class MyDSCMR(DSCMR):  # defined in a user's file: its module name says nothing of "deep"
        """DSCMR with another default."""

    try:
        assert method_kind("my_dscmr_variant") == "supervised (deep)"
        assert method_kind("cca") == "unsupervised" and method_kind("dcmh").endswith("(deep)")
    finally:
        methods._REGISTRY.pop("my_dscmr_variant", None)


PLUGIN = '''
import numpy as np
from xmodal.methods import register
from xmodal.methods.subspace import CCA


@register("{name}")
class Edited(CCA):
    """CCA with a tweak the student is still editing."""

    def _fit(self, X, Y, L, *, train, val):
        {body}
        return super()._fit(X, Y, L, train=train, val=val)
'''


def _plugin(path, name, body):
    path.write_text(PLUGIN.format(name=name, body=body))
    methods.load_plugin(str(path))


def test_resume_redoes_the_records_of_an_edited_plugin_and_a_plugin_bug_is_a_failure(tmp_path):
    from xmodal.data import load_dataset

    need("wikipedia")
    ds = load_dataset("wikipedia", data_dir=str(DATA))
    f, runs = tmp_path / "student_method.py", tmp_path / "runs.jsonl"
    try:
        _plugin(f, "student_cca", "pass")
        first = run_bench(ds, ["student_cca"], resume=runs)[0]
        assert len(first["method_source"]) == 16
        reused = []
        run_bench(ds, ["student_cca"], resume=runs, on_reused=reused.append)
        assert len(reused) == 1  # unchanged file: reused
        _plugin(f, "student_cca", "X = X * 1.0  # edited: no parameter changed")
        reused.clear()
        again = run_bench(ds, ["student_cca"], resume=runs, on_reused=reused.append)[0]
        assert reused == [] and again["method_source"] != first["method_source"]
        # a plugin's own bug is a reported failure; the other methods' records are kept
        _plugin(f, "student_cca", "raise TypeError('oops in my method')")
        failed = []
        recs = run_bench(ds, ["student_cca", "cca"], failures=failed)
        assert [r["method"] for r in recs] == ["cca"]
        assert failed[0]["method"] == "student_cca" and failed[0]["error"] == "TypeError: oops in my method"
        with pytest.raises(TypeError, match="oops in my method"):  # without a failures list, it propagates
            run_bench(ds, ["student_cca"])
    finally:
        methods._REGISTRY.pop("student_cca", None)


def test_a_plugins_source_digest_is_of_the_code_that_ran(tmp_path):
    f = tmp_path / "student_method2.py"
    try:
        _plugin(f, "student_cca2", "pass")
        cls = methods.get("student_cca2")
        ran = methods.source_digest(cls)
        f.write_text(f.read_text() + "\n# edited after loading, not run\n")
        assert methods.source_digest(cls) == ran  # records say what produced them
        assert methods.source_digest(methods.get("cca")) is None
    finally:
        methods._REGISTRY.pop("student_cca2", None)
