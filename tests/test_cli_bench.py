import json

import pytest

from typer.testing import CliRunner

from xmodal.cli import app
from conftest import DATA, clean_exit, karpathy_file, need
from pathlib import Path
import numpy as np
from xmodal import methods
from xmodal.evaluation.bench import run_bench, summarize_seeds
from xmodal.methods import ParameterError

runner = CliRunner()


def test_bench_wikipedia_table_and_json(wikipedia, tmp_path):
    out, md = tmp_path / "runs.json", tmp_path / "table.md"
    res = runner.invoke(app, ["bench", "--dataset", "wikipedia", "--methods", "cca,scm", "--quiet",
                              "--data-dir", str(DATA), "--json", str(out), "--markdown", str(md)])
    assert res.exit_code == 0, res.output
    assert "i2t MAP" in res.output and "scm" in res.output
    records = json.loads(out.read_text())
    assert [r["method"] for r in records] == ["cca", "scm"]
    for r in records:
        assert {"dataset", "method", "params", "bits", "protocol", "i2t", "t2i", "fit_seconds",
                "encode_seconds", "device"} <= set(r)
        assert r["dataset"] == "wikipedia" and r["bits"] is None and r["device"] == "cpu"
        assert 0.2 < r["i2t"]["map"] < 0.4 and "p@10" in r["t2i"]
    assert md.read_text().startswith("| method | bits |")


def test_bench_errors_are_clear(wikipedia):
    res = runner.invoke(app, ["bench", "--dataset", "wikipedia", "--methods", "nope", "--quiet",
                              "--data-dir", str(DATA)])
    assert res.exit_code == 2 and "unknown method 'nope'" in res.output
    res = runner.invoke(app, ["bench", "--dataset", "ucm_captions", "--methods", "cca", "--quiet",
                              "--data-dir", str(DATA)])
    assert res.exit_code == 2 and "--image-encoder" in res.output
    res = runner.invoke(app, ["bench", "--dataset", "wikipedia", "--set", "oops", "--data-dir", str(DATA)])
    # a usage error saying the form (exit_code != 0 passed a crash with a traceback too)
    assert res.exit_code == 2 and "--set 'oops': expected METHOD.PARAM=VALUE" in res.output, res.output


def test_methods_listing_json():
    res = runner.invoke(app, ["methods", "--json"])
    assert res.exit_code == 0
    names = {r["name"] for r in json.loads(res.output)}
    assert {"cca", "kcca", "pls", "mlcca", "scm", "cfa"} <= names


def test_bench_hashing_tables_resume_and_pr_plot(wikipedia, tmp_path):
    log, md, png = tmp_path / "runs.jsonl", tmp_path / "hash.md", tmp_path / "pr.png"
    args = ["bench", "--dataset", "wikipedia", "--methods", "lsh,cca_itq,sslpdp", "--bits", "16,32",
            "--labeled-fraction", "0.2", "--set", "sslpdp.max_train=300", "--set", "sslpdp.n_iter=30",
            "--data-dir", str(DATA), "--quiet", "--resume", str(log)]
    res = runner.invoke(app, args + ["--markdown", str(md), "--pr-plot", str(png)])
    assert res.exit_code == 0, res.output
    # the survey's shape: one row per method, a column per direction x bit length
    assert "| method | kind | I->T 16 | I->T 32 | T->I 16 | T->I 32 |" in res.output
    assert "| sslpdp:max_train=300,n_iter=30 | semi-supervised (20% labels) |" in res.output
    assert "wikipedia, 32 bits: MAP@100, P@100, precision within Hamming radius 2" in md.read_text()
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    recs = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(r["method"], r["bits"]) for r in recs] == [
        ("lsh", 16), ("lsh", 32), ("cca_itq", 16), ("cca_itq", 32), ("sslpdp", 16), ("sslpdp", 32)]
    by = {(r["method"], r["bits"]): r for r in recs}
    assert by[("sslpdp", 16)]["params"]["labeled_fraction"] == 0.2
    assert "codes from the hash functions" in by[("lsh", 16)]["protocol"]
    for b in (16, 32):
        assert by[("cca_itq", b)]["i2t"]["map"] > by[("lsh", b)]["i2t"]["map"] + 0.05
        assert {"map@100", "p@100", "p@r2", "pr_curve", "hamming_pr_curve"} <= set(by[("cca_itq", b)]["t2i"])
    # resume: a torn last line is redone, finished records are reused as they are
    lines = log.read_text().splitlines()
    log.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][: len(lines[-1]) // 2])
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    again = [json.loads(line) for line in log.read_text().splitlines()[:5]]
    assert again == recs[:5]
    last = json.loads(log.read_text().splitlines()[-1])
    assert (last["method"], last["bits"]) == ("sslpdp", 32)
    assert last["i2t"]["map"] == pytest.approx(recs[-1]["i2t"]["map"])  # seeded: same result


def test_bench_learned_database_codes_need_a_method_that_keeps_them(wikipedia):
    res = runner.invoke(app, ["bench", "--dataset", "wikipedia", "--methods", "lsh", "--bits", "16",
                              "--database-codes", "learned", "--quiet", "--data-dir", str(DATA)])
    # found after fitting (DCMH / SSAH keep none after a hold-out): that run's failure, exit 1
    assert res.exit_code == 1 and "keeps no learned training codes" in res.output
    assert "1 run(s) failed" in res.output
    res = runner.invoke(app, ["bench", "--dataset", "wikipedia", "--methods", "lsh", "--database-codes",
                              "nope", "--data-dir", str(DATA)])
    assert res.exit_code != 0 and "expected one of hash, learned" in res.output


def _rec(seed, m, mr, curve):
    return {"dataset": "d", "method": "x", "bits": None, "seed": seed, "settings": {}, "fit_seconds": 1.0 + seed,
            "i2t": {"map": m, "p@r2": None if seed else 0.5, "pr_curve": {"recall": [0, 1], "precision": curve}},
            "t2i": {"map": 2 * m}, "mR": mr}


def test_summarize_seeds_gives_mean_and_sample_std():
    from xmodal.evaluation.bench import format_table, summarize_seeds

    other = {**_rec(0, 0.9, 10.0, [1, 1]), "method": "y"}
    out = summarize_seeds([_rec(0, 0.2, 40.0, [1.0, 0.2]), other, _rec(1, 0.4, 50.0, [0.8, 0.4])])
    assert [r["method"] for r in out] == ["x", "y"] and out[1] is other  # alone: unchanged
    s = out[0]
    assert s["seeds"] == [0, 1] and "seed" not in s
    assert s["i2t"]["map"] == pytest.approx(0.3) and s["t2i"]["map"] == pytest.approx(0.6)
    assert s["std"]["i2t"]["map"] == pytest.approx(0.1414213, rel=1e-5)  # ddof=1
    assert s["mR"] == pytest.approx(45.0) and s["std"]["mR"] == pytest.approx(7.0710678)
    assert s["fit_seconds"] == pytest.approx(1.5)
    assert s["i2t"]["pr_curve"]["precision"] == pytest.approx([0.9, 0.3])
    assert s["i2t"]["p@r2"] is None  # missing in one seed: no mean of the rest
    assert summarize_seeds(out) == out  # idempotent
    table = format_table(out)
    assert "0.3000±0.1414" in table and "45.0±7.1" in table and "0.9000" in table


def test_bench_several_seeds(wikipedia, tmp_path):
    out, md = tmp_path / "runs.json", tmp_path / "t.md"
    res = runner.invoke(app, ["bench", "--dataset", "wikipedia", "--methods", "lsh,cca_itq", "--bits", "16",
                              "--seeds", "0,1,2", "--quiet", "--data-dir", str(DATA), "--json", str(out),
                              "--markdown", str(md)])
    assert res.exit_code == 0, res.output
    recs = json.loads(out.read_text())
    assert [(r["method"], r["seed"]) for r in recs] == [("lsh", 0), ("lsh", 1), ("lsh", 2),
                                                         ("cca_itq", 0), ("cca_itq", 1), ("cca_itq", 2)]
    assert [r["params"]["random_state"] for r in recs[:3]] == [0, 1, 2]
    lsh = [r["i2t"]["map"] for r in recs[:3]]
    assert len(set(lsh)) == 3  # independent random hyperplanes per seed
    mean = sum(lsh) / 3
    assert "over seeds 0,1,2" in res.output and f"| lsh | baseline | {mean:.4f}±" in res.output
    assert md.read_text().startswith("mean±std (sample standard deviation) over seeds 0,1,2")
    for bad in ("0,0", "a", "-1"):
        res = runner.invoke(app, ["bench", "--dataset", "wikipedia", "--methods", "lsh", "--seed", bad,
                                  "--quiet", "--data-dir", str(DATA)])
        assert res.exit_code != 0 and "--seed" in res.output


def test_a_diverged_method_is_reported_and_the_others_go_on(wikipedia, tmp_path, monkeypatch):
    # NaN embeddings (a diverged method) are refused by the metrics; the bench names the run,
    # keeps it out of the records and the --resume file, finishes the others and exits 1
    import numpy as np

    from xmodal.methods.subspace import CCA

    ordinary = CCA.encode_images

    def nan_images(self, X):
        return ordinary(self, X) * np.nan

    monkeypatch.setattr(CCA, "encode_images", nan_images)
    log, out = tmp_path / "runs.jsonl", tmp_path / "runs.json"
    res = runner.invoke(app, ["bench", "--dataset", "wikipedia", "--methods", "cca,pls", "--quiet",
                              "--data-dir", str(DATA), "--resume", str(log), "--json", str(out)])
    assert res.exit_code == 1, res.output
    assert "error: cca seed 0:" in res.output and "non-finite" in res.output
    assert "1 run(s) failed" in res.output
    assert [r["method"] for r in json.loads(out.read_text())] == ["pls"]
    assert [json.loads(line)["method"] for line in log.read_text().splitlines()] == ["pls"]


def test_resume_redoes_records_that_ranked_ties_in_database_order(wikipedia, tmp_path):
    # records from before the tie convention (no "ties" field) ranked tied scores in database
    # order; --resume recomputes them rather than mixing conventions in one table
    log = tmp_path / "runs.jsonl"
    args = ["bench", "--dataset", "wikipedia", "--methods", "lsh", "--bits", "16", "--quiet",
            "--data-dir", str(DATA), "--resume", str(log)]
    assert runner.invoke(app, args).exit_code == 0
    rec = json.loads(log.read_text())
    assert rec["ties"].startswith("one fixed random order")
    assert runner.invoke(app, args).exit_code == 0
    assert len(log.read_text().splitlines()) == 1  # same convention: reused
    del rec["ties"]
    log.write_text(json.dumps(rec) + "\n")
    assert runner.invoke(app, args).exit_code == 0
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(lines) == 2 and "ties" in lines[1]  # redone and appended


def test_data_options_reach_the_loader_and_the_records(wikipedia, tmp_path):
    log = tmp_path / "runs.jsonl"
    base = ["bench", "--dataset", "wikipedia", "--methods", "cca", "--quiet", "--data-dir", str(DATA),
            "--resume", str(log)]
    res = runner.invoke(app, base + ["--data-option", "nope=1"])
    assert res.exit_code == 2 and "its loader takes no option 'nope'" in res.output
    res = runner.invoke(app, base + ["--data-option", "with_texts=false"])
    assert res.exit_code == 0, res.output
    assert json.loads(log.read_text())["data_options"] == {"with_texts": False}
    # other loader options are other data: not taken as done
    assert runner.invoke(app, base).exit_code == 0
    recs = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(recs) == 2 and "data_options" not in recs[1]
    res = runner.invoke(app, base + ["--data-option", "oops"])
    assert res.exit_code != 0 and "KEY=VALUE" in res.output


def test_bench_data_option_instances_true_is_an_error_not_a_traceback(tmp_path):
    path = karpathy_file(tmp_path)
    res = runner.invoke(app, ["bench", "-d", str(path), "-m", "cca", "--data-option", "instances=true"])
    assert res.exit_code == 2, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)
    assert "instances" in res.output and "error:" in res.output


def run(*args, env=None):
    return CliRunner().invoke(app, [str(a) for a in args], env=env)


def test_bench_json_not_writable_is_refused_up_front(tmp_path, monkeypatch):
    import xmodal.evaluation.bench as bench_mod

    def ran(*a, **k):
        raise AssertionError("ran the bench before checking --json")

    monkeypatch.setattr(bench_mod, "run_bench", ran)
    import os

    ro = Path("/proc")  # a folder no one, root included, can create a file in
    if not ro.is_dir() or os.name != "posix":
        pytest.skip("no /proc")
    res = run("bench", "-d", "wikipedia", "-m", "cca", "--json", ro / "r.json")
    clean_exit(res)
    assert str(ro / "r.json") in res.output and "cannot write" in res.output


def test_bench_json_write_failing_at_the_end_points_to_resume(tmp_path, monkeypatch):
    import xmodal.evaluation.bench as bench_mod

    rec = {"dataset": "x", "method": "cca", "bits": None, "seed": 0, "fit_seconds": 0.0,
           "i2t": {"map": 0.5}, "t2i": {"map": 0.5}}

    monkeypatch.setattr(bench_mod, "run_bench", lambda *a, **k: [rec])
    monkeypatch.setattr(bench_mod, "format_table", lambda *a, **k: "table")

    def denied(records, path):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(bench_mod, "write_json", denied)
    res = run("bench", "-d", "wikipedia", "-m", "cca", "--quiet", "--json", tmp_path / "r.json",
              "--resume", tmp_path / "r.jsonl")
    clean_exit(res)
    assert "No space left" in res.output and str(tmp_path / "r.jsonl") in res.output


@pytest.mark.parametrize("what", ["folder", "binary", "empty", "blank"])
def test_compare_names_a_file_that_is_no_records_file(tmp_path, what):
    path = tmp_path / "recs"
    if what == "folder":
        path.mkdir()
    elif what == "binary":
        path.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00\x00")
    elif what == "empty":
        path.write_bytes(b"")
    else:
        path.write_text("\n  \n")
    res = run("compare", path, "a", "b")
    clean_exit(res)
    assert str(path) in res.output
    if what in ("folder", "binary"):
        assert "not a records file" in res.output
    else:
        assert "holds no records" in res.output and "the file holds: \n" not in res.output


def _record(method, seed=0, n=20, **extra):
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
    recs = [_record("cca", seed=s) for s in (0, 1, 2)] + [_record("cca", seed=3, params={"alpha": 2.0})]
    out = summarize_seeds(recs)
    assert sorted(len(r.get("seeds", [r.get("seed")])) for r in out) == [1, 3]
    out = summarize_seeds([_record("cca", seed=0), _record("cca", seed=1, data_digest="d2")])
    assert len(out) == 2
    out = summarize_seeds([_record("cca", seed=0), _record("cca", seed=1, ties="other")])
    assert len(out) == 2
    # a redone seed (same seed, newer params) still replaces the older record
    out = summarize_seeds([_record("cca", seed=0), _record("cca", seed=1), _record("cca", seed=0, params={"alpha": 2.0}),
                           _record("cca", seed=1, params={"alpha": 2.0})])
    assert len(out) == 1 and out[0]["seeds"] == [0, 1] and out[0]["params"]["alpha"] == 2.0


def test_compare_refuses_to_mix_runs_of_other_params_naming_the_field(tmp_path):
    path = _write(tmp_path / "r.jsonl", [_record("cca", seed=s) for s in (0, 1, 2)]
                  + [_record("cca", seed=1, params={"alpha": 2.0})] + [_record("scm")])
    # seed 1 was redone with alpha=2: seeds 0, 2 (alpha 1) and seed 1 (alpha 2) must not be averaged
    res = _compare(path, "cca", "scm")
    assert res.exit_code == 2, res.output
    assert "params (alpha)" in res.output and "--resume" in res.output
    path = _write(tmp_path / "d.jsonl", [_record("cca", seed=0), _record("cca", seed=1, data_digest="d2"), _record("scm")])
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
    path = _write(tmp_path / "r.jsonl", [_record("ridge_bridge"), _record("ridge_bridge", seed=1, settings={"alpha": 100}),
                                         _record("cca", seed=2)])
    res = _compare(path, "ridge_bridge", "cca")
    assert res.exit_code == 0, res.output  # the bare name: the run without --set
    res = runner.invoke(app, ["compare", str(path), "ridge_bridge", "ridge_bridge:alpha=100", "--resamples", "99"])
    assert res.exit_code == 0, res.output
    # two configurations, both named with --set values: the hint counts configurations
    path = _write(tmp_path / "s.jsonl", [_record("ridge_bridge", settings={"alpha": 1}),
                                         _record("ridge_bridge", seed=1, settings={"alpha": 100}), _record("cca")])
    res = _compare(path, "ridge_bridge", "cca")
    assert res.exit_code == 2 and "2 configurations" in res.output and "records" not in res.output.split(";")[0]
    for name in ("ridge_bridge:alpha=1", "ridge_bridge:alpha=100"):
        assert name in res.output
        assert _compare(path, name, "cca").exit_code == 0


def test_compare_unknown_method_lists_the_files_methods(tmp_path):
    path = _write(tmp_path / "r.jsonl", [_record("cca"), _record("scm")])
    res = _compare(path, "cca", "nope")
    assert res.exit_code == 2 and "no record for method 'nope'" in res.output
    assert "the file holds: cca, scm" in res.output


def test_compare_bits_of_a_real_valued_method(tmp_path):
    path = _write(tmp_path / "r.jsonl", [_record("pls_svd"), _record("cca_itq", bits=32)])
    res = runner.invoke(app, ["compare", str(path), "pls_svd", "cca_itq", "--bits", "32"])
    assert res.exit_code == 2
    assert "'pls_svd' has records, but none at 32 bits" in res.output and "real-valued" in res.output
    path = _write(tmp_path / "h.jsonl", [_record("lsh", bits=16), _record("lsh", bits=64), _record("cca_itq", bits=32)])
    res = runner.invoke(app, ["compare", str(path), "lsh", "cca_itq", "--bits", "32"])
    assert res.exit_code == 2 and "none at 32 bits (it has 16, 64)" in res.output


# ------------------------------------------------------------- 7, 13: --metric and the output's note
def test_compare_metric_is_case_insensitive_and_explains_ci_and_p(tmp_path):
    path = _write(tmp_path / "r.jsonl", [_record("cca", mR=50.0), _record("scm", seed=1, mR=60.0)])
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


def test_learned_codes_of_a_method_without_them_fail_that_run_only(wikipedia):
    # `--database-codes learned` with a method that keeps no training codes (LSH) used to
    # abort the whole bench with exit 2 after the earlier methods had been fitted, their
    # table lost; it is that run's failure (exit 1), the others are printed
    res = runner.invoke(app, ["bench", "--dataset", "wikipedia", "--methods", "dlfh,lsh", "--bits", "16",
                              "--database-codes", "learned", "--quiet", "--data-dir", str(DATA)])
    assert res.exit_code == 1, res.output
    assert "| dlfh |" in res.output and "| lsh |" not in res.output
    assert "LSH keeps no learned training codes" in res.output
    failures: list[dict] = []
    recs = run_bench("wikipedia", ["lsh"], bits=(16, 32), data_dir=str(DATA),
                     database_codes="learned", failures=failures)
    assert recs == [] and [(f["method"], f["bits"]) for f in failures] == [("lsh", 16), ("lsh", 32)]


def test_bench_output_under_a_file_names_that_file(tmp_path):
    # `--json runs/wiki.json` with a file named `runs` said "cannot create its folder (File exists)"
    (tmp_path / "runs").write_text("")
    res = runner.invoke(app, ["bench", "--methods", "cca", "--quiet", "--data-dir", str(DATA),
                              "--json", str(tmp_path / "runs" / "wiki.json")])
    assert res.exit_code == 2
    out = " ".join(res.output.replace("│", " ").split())
    assert f"{tmp_path / 'runs'} is a file, not a folder" in out, out


# ------------------------------------------------------------- session 16: a first reader's run
@pytest.mark.parametrize("args, says", [
    (["--set", ".n_components=5"], "expected METHOD.PARAM=VALUE"),
    (["--set", "cca.=5"], "expected METHOD.PARAM=VALUE"),
    (["--set", "cca.n_components=5", "--set", "cca.n_components=6"], "cca.n_components given twice"),
    (["--data-option", "split=a", "--data-option", "split=b"], "split given twice"),
])
def test_bench_refuses_empty_or_repeated_set_and_data_option_keys(args, says):
    # a repeated --set silently kept its last value; an empty method or parameter name was
    # reported as "parameters given for ''" / "unknown parameter ;"
    res = runner.invoke(app, ["bench", "-d", "wikipedia", "-m", "cca", "--quiet", *args])
    clean_exit(res)
    assert says in res.output


@pytest.mark.parametrize("content", [b"my notes, one line\n", b"\x89PNG\r\n\x1a\n\xff\xfe\x00"])
def test_resume_file_that_is_no_records_file_is_refused_and_left_alone(tmp_path, content):
    # a one-line text file was taken for a torn record and emptied; a binary file raised
    # UnicodeDecodeError (exit 1 with a traceback)
    path = tmp_path / "notes.txt"
    path.write_bytes(content)
    res = runner.invoke(app, ["bench", "-d", "wikipedia", "-m", "cca", "--quiet", "--resume", str(path)])
    clean_exit(res)
    assert str(path) in res.output and "not a records file" in res.output
    assert path.read_bytes() == content


def test_bench_interrupted_says_what_is_kept_and_exits_130(tmp_path, monkeypatch):
    import xmodal.evaluation.bench as bench_mod

    def interrupted(*args, resume=None, **kw):
        if resume:  # the first record finished, then Ctrl-C
            with open(resume, "a") as f:
                f.write(json.dumps(_record("cca")) + "\n")
        raise KeyboardInterrupt

    monkeypatch.setattr(bench_mod, "run_bench", interrupted)
    path = tmp_path / "r.jsonl"
    res = runner.invoke(app, ["bench", "-d", "wikipedia", "-m", "cca", "--quiet", "--resume", str(path)])
    clean_exit(res, 130)
    assert "interrupted" in res.output and f"1 record(s) kept in {path}" in res.output
    assert "the same command continues" in res.output
    res = runner.invoke(app, ["bench", "-d", "wikipedia", "-m", "cca", "--quiet"])
    clean_exit(res, 130)
    assert "interrupted" in res.output and "--resume" in res.output


def test_compare_names_what_the_file_holds_and_the_file(tmp_path):
    path = _write(tmp_path / "r.jsonl", [_record("cca"), _record("scm")])
    # a --dataset the file does not hold: said so, with the datasets it holds
    res = _compare(path, "cca", "scm", "--dataset", "wiki")
    clean_exit(res)
    assert "no records of dataset 'wiki'" in res.output and "wikipedia" in res.output
    # two records files: compare reads one
    other = _write(tmp_path / "s.jsonl", [_record("scm")])
    res = _compare(path, other, "cca", "scm")
    clean_exit(res)
    assert "reads one records file" in res.output
    # a refused pair names the file it came from, as every other error does
    path = _write(tmp_path / "m.jsonl", [_record("cca"), _record("scm", dataset="ucm_captions")])
    res = _compare(path, "cca", "scm")
    clean_exit(res)
    assert f"error: {path}: records differ in dataset" in res.output


def test_labeled_fraction_that_no_method_takes_is_said(wikipedia):
    # it was ignored in silence: a reader could take the table for a 10%-label run
    res = runner.invoke(app, ["bench", "-d", "wikipedia", "-m", "cca", "--quiet", "--labeled-fraction", "0.1"])
    assert res.exit_code == 0, res.output
    assert "warning: --labeled-fraction 0.1: no method here takes a label budget (cca)" in res.output
