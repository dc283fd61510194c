"""Defects met walking through README.md as a new user (session 14)."""

import pytest
from typer.testing import CliRunner

from xmodal.cli import app
from xmodal.methods import ParameterError
from xmodal.evaluation.bench import run_bench
from conftest import DATA

runner = CliRunner()


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
    recs = run_bench("wikipedia", ["lsh", "dlfh"], bits=(16,), data_dir=str(DATA),
                     database_codes="learned", failures=failures)
    assert [r["method"] for r in recs] == ["dlfh"]
    assert [(f["method"], f["bits"]) for f in failures] == [("lsh", 16)]


def test_test_folds_refusal_agrees_in_number(wikipedia):
    with pytest.raises(ParameterError, match=r"lsh uses the hashing protocol"):
        run_bench("wikipedia", ["cca", "lsh"], bits=(16,), data_dir=str(DATA), test_folds=2)
    with pytest.raises(ParameterError, match=r"lsh, cvh use the hashing protocol"):
        run_bench("wikipedia", ["lsh", "cvh"], bits=(16,), data_dir=str(DATA), test_folds=2)
