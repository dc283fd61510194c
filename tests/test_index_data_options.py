"""`xmodal index --data-option KEY=VALUE` passes loader options, as `xmodal bench` does: a small
copy of a dataset whose loader splits it (Pascal Sentences) indexes without splits."""
from __future__ import annotations

from typer.testing import CliRunner

from test_data_layouts import _pascal
from xmodal.cli import app
from xmodal.index import Collection

ENC = ["--method", "cca", "--image-encoder", "efficientnet-lite0", "--text-encoder", "tfidf", "--quiet"]


def test_index_passes_loader_options_and_the_split_error_says_how(tmp_path):
    src = _pascal(tmp_path / "pascal", per_class=3)
    r = CliRunner().invoke(app, ["index", str(src), "-c", str(tmp_path / "c.xmc"), *ENC])
    assert r.exit_code == 2
    assert "class aeroplane has 3 images" in r.output and "n_val_per_class" in r.output
    r = CliRunner().invoke(app, ["index", str(src), "-c", str(tmp_path / "c.xmc"), *ENC,
                                 "--data-option", "n_val_per_class=0", "--data-option", "n_test_per_class=0"])
    assert r.exit_code == 0, r.output
    # the command closed its collection: a read-only open right after finds it merged
    with Collection.open(tmp_path / "c.xmc", read_only=True) as coll:
        assert coll.count("image") == 6 and coll.count("text") == 30


def test_index_refuses_loader_options_for_a_plain_folder_and_unknown_ones(tmp_path):
    src = _pascal(tmp_path / "pascal", per_class=3)
    r = CliRunner().invoke(app, ["index", str(src / "dataset" / "bird"), "-c", str(tmp_path / "c.xmc"), *ENC,
                                 "--data-option", "split=official"])
    assert r.exit_code == 2 and "loader options (split)" in r.output and "not a dataset folder" in r.output
    r = CliRunner().invoke(app, ["index", str(src), "-c", str(tmp_path / "c.xmc"), *ENC,
                                 "--data-option", "no_such_option=1"])
    assert r.exit_code == 2 and "no_such_option" in r.output
    assert not (tmp_path / "c.xmc").exists()


def test_an_sbert_folder_whose_path_holds_a_plus_is_one_encoder(tmp_path):
    # build's spec helpers split every '+': a model folder named like 'm+tfidf' was taken for
    # an sbert part plus a fitted tf-idf part (the encoders' own is_concat knows better).
    from xmodal.index.build import _needs_fit, _spec

    folder = tmp_path / "m+tfidf"
    folder.mkdir()
    assert not _needs_fit(f"sbert:{folder}")
    assert _spec(f"sbert:{folder}") == f"sbert:{folder}"
    assert _needs_fit("minilm+tfidf") and _spec(" minilm + tfidf ") == "minilm+tfidf"


def test_encode_takes_data_options_as_bench_and_index_do(tmp_path):
    """`xmodal encode` had no --data-option: a partial NUS-WIDE / MIRFlickr / Flickr copy, whose
    loader's error says to pass --data-option n_query=..., could not be encoded at all."""
    import json

    from typer.testing import CliRunner

    from xmodal.cli import app
    from xmodal.data import load_dataset

    pairs = tmp_path / "pairs.jsonl"
    rows = [{"image": f"img{i}.jpg", "text": f"a {lab} seen from above {i}", "label": lab,
             "split": "train" if i < 8 else "test"} for i, lab in enumerate(["harbor", "beach"] * 5)]
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "p.npz"
    opt = 'label_names=["harbor", "beach"]'
    res = CliRunner().invoke(app, ["encode", "--dataset", str(pairs), "--text-encoder", "tfidf",
                                   "--data-option", opt, "--out", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    assert load_dataset(str(out)).label_names == ["harbor", "beach"]  # the option's order, not sorted
    res = CliRunner().invoke(app, ["encode", "--dataset", str(pairs), "--text-encoder", "tfidf",
                                   "--data-option", 'label_names=["beach"]', "--out", str(tmp_path / "q.npz")])
    assert res.exit_code == 2 and "harbor" in res.output, res.output
    res = CliRunner().invoke(app, ["encode", "--dataset", str(pairs), "--text-encoder", "tfidf",
                                   "--data-option", "no_such_option=1", "--out", str(tmp_path / "r.npz")])
    assert res.exit_code == 2 and "no_such_option" in res.output, res.output
