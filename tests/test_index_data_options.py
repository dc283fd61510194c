"""`xmodal index --data-option KEY=VALUE` passes loader options, as `xmodal bench` does: a small
copy of a dataset whose loader splits it (Pascal Sentences) indexes without splits."""
from __future__ import annotations

from typer.testing import CliRunner

from test_data_unseen import _pascal
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
