"""The fold protocol (MSCOCO "1K test"): scores on disjoint blocks of the test images, averaged."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from xmodal import methods
from xmodal.cli import app
from xmodal.data import DataError, PairedDataset, one_hot
from xmodal.evaluation import evaluate, evaluate_folds
from xmodal.evaluation.bench import run_bench
from xmodal.methods import ParameterError
from conftest import DATA


def shuffled_captions(n_images: int = 60, per_image: int = 3, seed: int = 0) -> PairedDataset:
    """Images with several captions each, the captions listed in random order (not grouped by
    image), features sharing a noisy latent so retrieval is far from perfect and from chance."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n_images, 8))
    t2i = rng.permutation(np.repeat(np.arange(n_images), per_image))
    labels = one_hot(np.arange(n_images) % 4, 4)
    return PairedDataset(name="toy", n_images=n_images, text_to_image=t2i,
                         image_features=z @ rng.normal(size=(8, 20)) + rng.normal(size=(n_images, 20)),
                         text_features=z[t2i] @ rng.normal(size=(8, 12)) + 1.5 * rng.normal(size=(len(t2i), 12)),
                         labels=labels, splits={"train": np.arange(n_images), "test": np.arange(n_images)})


def test_one_fold_is_the_plain_protocol():
    ds = shuffled_captions()
    m = methods.create("cca", n_components=6).fit(ds)
    plain, folded = evaluate(m, ds), evaluate_folds(m, ds, 1)
    assert folded["folds"] == 1
    assert folded["i2t"] == plain["i2t"] and folded["mR"] == plain["mR"]


def test_folds_average_the_blocks_and_keep_query_order():
    ds = shuffled_captions()
    m = methods.create("cca", n_components=6).fit(ds)
    res = evaluate_folds(m, ds, 3, per_query=True)
    blocks = [np.arange(0, 20), np.arange(20, 40), np.arange(40, 60)]
    parts = [evaluate(m, ds.subset(b), per_query=True) for b in blocks]
    for d in ("i2t", "t2i"):
        for key in ("map", "r@1", "r@5", "p@10"):
            assert res[d][key] == pytest.approx(np.mean([p[d][key] for p in parts]))
        assert res["fold_std"][d]["map"] == pytest.approx(np.std([p[d]["map"] for p in parts], ddof=1))
    assert res["mR"] == pytest.approx(np.mean([p["mR"] for p in parts]))
    # smaller galleries: Recall@K can only rise against the full test set
    assert res["t2i"]["r@5"] >= evaluate(m, ds)["t2i"]["r@5"]
    # per-query hits sit at each caption's own position in the test set, not in fold order
    hits = np.asarray(res["t2i"]["per_query"]["r@1"])
    assert len(hits) == ds.n_texts
    for b, p in zip(blocks, parts):
        rows = np.flatnonzero(np.isin(ds.text_to_image, b))
        rows = rows[np.argsort(ds.text_to_image[rows], kind="stable")]  # subset()'s order
        np.testing.assert_array_equal(hits[rows], p["t2i"]["per_query"]["r@1"])
    np.testing.assert_array_equal(res["i2t"]["per_query"]["ap"],
                                  np.concatenate([p["i2t"]["per_query"]["ap"] for p in parts]))


def test_fold_count_is_checked():
    ds = shuffled_captions(n_images=9)
    m = methods.create("cca", n_components=4).fit(ds)
    with pytest.raises(DataError, match="fewer than 2 test images per fold"):
        evaluate_folds(m, ds, 5)
    with pytest.raises(ValueError, match="positive integer"):
        evaluate_folds(m, ds, 0)


def test_bench_records_folds_and_keeps_them_apart_on_resume(wikipedia, tmp_path):
    log = tmp_path / "runs.jsonl"
    plain = run_bench(wikipedia, ["cca"], resume=log)[0]
    folded = run_bench(wikipedia, ["cca"], resume=log, test_folds=3)[0]
    assert "test_folds" not in plain and folded["test_folds"] == 3
    assert "mean over 3 folds of about 231 images" in folded["protocol"]
    assert set(folded["fold_std"]) == {"i2t", "t2i", "mR"}
    assert folded["i2t"]["map"] != plain["i2t"]["map"]
    # a resumed run finds each record under its own protocol
    assert len(log.read_text().splitlines()) == 2
    again = run_bench(wikipedia, ["cca"], resume=log, test_folds=3)[0]
    assert again == folded and len(log.read_text().splitlines()) == 2
    with pytest.raises(ParameterError, match="lsh uses the hashing protocol"):
        run_bench(wikipedia, ["cca", "lsh"], test_folds=3)


def test_cli_folds_and_clear_parameter_errors(wikipedia, tmp_path):
    runner = CliRunner()
    out = tmp_path / "r.json"
    res = runner.invoke(app, ["bench", "--dataset", "wikipedia", "--methods", "cca", "--quiet",
                              "--data-dir", str(DATA), "--test-folds", "3", "--json", str(out)])
    assert res.exit_code == 0, res.output
    assert json.loads(out.read_text())[0]["test_folds"] == 3
    res = runner.invoke(app, ["bench", "--dataset", "wikipedia", "--methods", "cca", "--quiet",
                              "--data-dir", str(DATA), "--set", "cca.n_componets=5"])
    assert res.exit_code == 2
    assert "cca: unknown parameter n_componets; it takes n_components" in res.output
    res = runner.invoke(app, ["bench", "--dataset", "wikipedia", "--methods", "cca", "--quiet",
                              "--data-dir", str(DATA), "--set", "cca.n_components=-1"])
    assert res.exit_code == 2 and "n_components=-1" in res.output


def test_bench_output_files_may_name_new_folders(wikipedia, tmp_path):
    runner = CliRunner()
    base = ["bench", "--dataset", "wikipedia", "--methods", "cca", "--quiet", "--data-dir", str(DATA)]
    res = runner.invoke(app, base + ["--json", str(tmp_path / "a" / "r.json"), "--markdown",
                                     str(tmp_path / "b" / "t.md"), "--resume", str(tmp_path / "c" / "r.jsonl")])
    assert res.exit_code == 0, res.output
    assert all((tmp_path / p).is_file() for p in ("a/r.json", "b/t.md", "c/r.jsonl"))
    (tmp_path / "file").write_text("x")
    res = runner.invoke(app, base + ["--json", str(tmp_path / "file" / "r.json")])
    assert res.exit_code == 2 and "cannot create its folder" in res.output


def test_test_folds_refusal_agrees_in_number(wikipedia):
    with pytest.raises(ParameterError, match=r"lsh uses the hashing protocol"):
        run_bench("wikipedia", ["cca", "lsh"], bits=(16,), data_dir=str(DATA), test_folds=2)
    with pytest.raises(ParameterError, match=r"lsh, cvh use the hashing protocol"):
        run_bench("wikipedia", ["lsh", "cvh"], bits=(16,), data_dir=str(DATA), test_folds=2)


def test_default_is_five_folds_and_one_fold_keeps_the_test_sets_query_order():
    ds = shuffled_captions(n_images=60)
    m = methods.create("cca", n_components=6).fit(ds)
    assert evaluate_folds(m, ds)["folds"] == 5
    # folds=1 scores the test set itself: per-query lists in its own (shuffled) caption order
    one, plain = evaluate_folds(m, ds, 1, per_query=True), evaluate(m, ds, per_query=True)
    assert one["t2i"]["per_query"] == plain["t2i"]["per_query"]
    assert set(one) == set(plain) | {"folds"}  # evaluate()'s result itself: no fold_std
    assert {k: v for k, v in one.items() if k not in ("folds", "encode_seconds")} == \
        {k: v for k, v in plain.items() if k != "encode_seconds"}


def test_two_images_per_fold_is_the_least_allowed():
    ds = shuffled_captions(n_images=9)
    m = methods.create("cca", n_components=4).fit(ds)
    res = evaluate_folds(m, ds, 4)  # blocks of 3, 2, 2, 2 images
    assert res["folds"] == 4 and len(res["i2t"]) > 0


def test_view_adapts_the_method_to_each_block_and_its_result_is_scored():
    ds = shuffled_captions()
    m = methods.create("cca", n_components=6).fit(ds)
    other = methods.create("cca", n_components=2).fit(ds)
    seen = []

    def view(method, block):
        seen.append((method, block.name, block.n_images))
        return other

    res = evaluate_folds(m, ds, 3, view=view)
    assert seen == [(m, "toy[0:20]", 20), (m, "toy[20:40]", 20), (m, "toy[40:60]", 20)]
    assert res["i2t"]["map"] == pytest.approx(evaluate_folds(other, ds, 3)["i2t"]["map"])
    assert res["i2t"]["map"] != pytest.approx(evaluate_folds(m, ds, 3)["i2t"]["map"])


def test_fold_spread_of_mr_is_the_sample_std_and_encode_time_is_summed(monkeypatch):
    from xmodal.evaluation import protocol

    ds = shuffled_captions()
    m = methods.create("cca", n_components=6).fit(ds)
    parts = [evaluate(m, ds.subset(np.arange(i, i + 20))) for i in (0, 20, 40)]
    real = protocol.evaluate

    def timed(*args, **kwargs):
        return {**real(*args, **kwargs), "encode_seconds": 0.25}

    monkeypatch.setattr(protocol, "evaluate", timed)
    res = evaluate_folds(m, ds, 3)
    assert res["fold_std"]["mR"] == pytest.approx(np.std([p["mR"] for p in parts], ddof=1))
    assert res["encode_seconds"] == pytest.approx(0.75)
