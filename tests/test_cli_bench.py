import json

import pytest

from typer.testing import CliRunner

from xmodal.cli import app
from conftest import DATA

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
    assert "| sslpdp | semi-supervised (20% labels) |" in res.output
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
