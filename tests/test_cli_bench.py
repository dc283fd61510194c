import json

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
                "encode_seconds"} <= set(r)
        assert r["dataset"] == "wikipedia" and r["bits"] is None
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
    assert res.exit_code != 0


def test_methods_listing_json():
    res = runner.invoke(app, ["methods", "--json"])
    assert res.exit_code == 0
    names = {r["name"] for r in json.loads(res.output)}
    assert {"cca", "kcca", "pls", "mlcca", "scm", "cfa"} <= names
