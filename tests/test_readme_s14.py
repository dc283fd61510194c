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
    recs = run_bench("wikipedia", ["lsh"], bits=(16, 32), data_dir=str(DATA),
                     database_codes="learned", failures=failures)
    assert recs == [] and [(f["method"], f["bits"]) for f in failures] == [("lsh", 16), ("lsh", 32)]


def test_test_folds_refusal_agrees_in_number(wikipedia):
    with pytest.raises(ParameterError, match=r"lsh uses the hashing protocol"):
        run_bench("wikipedia", ["cca", "lsh"], bits=(16,), data_dir=str(DATA), test_folds=2)
    with pytest.raises(ParameterError, match=r"lsh, cvh use the hashing protocol"):
        run_bench("wikipedia", ["lsh", "cvh"], bits=(16,), data_dir=str(DATA), test_folds=2)


def test_index_with_a_method_file_of_other_features_refuses_before_encoding(wikipedia, tmp_path,
                                                                           monkeypatch):
    # README: `xmodal index --method cca.xmodal` after the README's Python snippet (CCA fitted on
    # Wikipedia's own SIFT/LDA features, no encoders recorded) encoded every image with the
    # default encoders, then said "pass the encoders it was fitted with", which it names none of
    from PIL import Image

    import xmodal.index.build as build
    from xmodal import methods

    wiki = wikipedia
    methods.create("cca", n_components=4).fit(wiki.subset("train")).save(tmp_path / "cca.xmodal")
    src = tmp_path / "photos"
    src.mkdir()
    for i in range(3):
        Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(src / f"{i}.jpg")
        (src / f"{i}.txt").write_text(f"caption {i}\n")

    def no_encoding(*a, **k):
        raise AssertionError("encoded before refusing")

    monkeypatch.setattr(build, "encode_items", no_encoding)
    res = runner.invoke(app, ["index", str(src), "-c", str(tmp_path / "c.xmc"),
                              "--method", str(tmp_path / "cca.xmodal"), "--quiet"])
    assert res.exit_code == 2, res.output
    out = " ".join(res.output.split())
    assert "image features of 128 columns" in out and "efficientnet-lite0 gives 1280" in out, out
    assert "records no encoders" in out, out
    assert not (tmp_path / "c.xmc").exists()


def test_bench_output_under_a_file_names_that_file(tmp_path):
    # `--json runs/wiki.json` with a file named `runs` said "cannot create its folder (File exists)"
    (tmp_path / "runs").write_text("")
    res = runner.invoke(app, ["bench", "--methods", "cca", "--quiet", "--data-dir", str(DATA),
                              "--json", str(tmp_path / "runs" / "wiki.json")])
    assert res.exit_code == 2
    out = " ".join(res.output.replace("│", " ").split())
    assert f"{tmp_path / 'runs'} is a file, not a folder" in out, out
