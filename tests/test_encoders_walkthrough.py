"""docs/encoders.md followed as a user would, with the usual mistakes: each one gets a clear
message naming the file, split or row, never a traceback or a silently ignored value."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from xmodal.cli import app
from xmodal.encoders import Encoder, EncoderError, available_encoders, encode_dataset, get_encoder


@pytest.fixture
def tiny(data_root, tmp_path) -> Path:
    """A Karpathy-format dataset.json over 4 UCM images (2 train, 1 val, 1 test), linked."""
    imgs = data_root / "ucm_captions" / "imgs"
    root = tmp_path / "tiny"
    (root / "imgs").mkdir(parents=True)
    doc = json.loads((data_root / "ucm_captions" / "dataset.json").read_text())
    recs = [doc["images"][i] for i in (0, 700, 1400, 2000)]
    for rec, split in zip(recs, ("train", "train", "val", "test")):
        rec["split"] = split
        stem = Path(rec["filename"]).stem
        (root / "imgs" / f"{stem}.jpg").symlink_to(imgs / f"{stem}.jpg")
    (root / "dataset.json").write_text(json.dumps({"dataset": "tiny", "images": recs}))
    return root


def test_ctrl_c_in_xmodal_encode_says_what_is_kept_and_the_rerun_resumes(tiny, tmp_path, monkeypatch):
    """Ctrl-C left `xmodal encode` silent (exit 130, not a word); `xmodal bench` and `xmodal
    index` say what a rerun starts from. The batches finished before it are cached."""
    from xmodal.encoders import cnn

    real = cnn.MobileNetV2Encoder.forward_batch
    calls = {"n": 0}

    def dies_on_second_batch(self, batch):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(self, batch)

    cache, out = tmp_path / "cache", tmp_path / "f.npz"
    args = ["encode", "--dataset", str(tiny / "dataset.json"), "--image-encoder", "mobilenet-v2",
            "--cache-dir", str(cache), "--out", str(out), "--batch-size", "2", "--quiet"]
    monkeypatch.setattr(cnn.MobileNetV2Encoder, "forward_batch", dies_on_second_batch)
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 130
    assert "interrupted" in res.stderr and str(cache) in res.stderr
    assert "same command" in res.stderr and "Traceback" not in res.output
    assert not out.exists()
    monkeypatch.setattr(cnn.MobileNetV2Encoder, "forward_batch", real)
    again = CliRunner().invoke(app, args + ["--json"])
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["image_encoder"] == {**json.loads(again.stdout)["image_encoder"],
                                                         "n_cached": 2, "n_computed": 2}


def test_a_misspelled_fit_split_is_refused_even_when_nothing_is_fitted(tiny, tmp_path, monkeypatch):
    """`--fit-split trian` with efficientnet-lite0 (nothing fitted) ran and wrote the file as if
    the option were right; with sift-bovw the same typo was refused. Refused before any model
    loads either way; the default `train` on a dataset without one is still fine."""
    from xmodal.data import DataError, load_dataset
    from xmodal.encoders import cnn

    def no_model(self):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(cnn.EfficientNetLite0, "_build", no_model)
    ds = load_dataset(str(tiny / "dataset.json"))
    with pytest.raises(DataError, match=r"no split 'trian'.*\['test', 'train', 'val'\]"):
        encode_dataset(ds, "efficientnet-lite0", None, fit_split="trian", cache_dir=False)
    out = tmp_path / "f.npz"
    res = CliRunner().invoke(app, ["encode", "--dataset", str(tiny), "--image-encoder", "efficientnet-lite0",
                                   "--fit-split", "trian", "--out", str(out), "--cache-dir", str(tmp_path / "c")])
    assert res.exit_code == 2 and "no split 'trian'" in res.stderr and not out.exists()
    # a dataset without a 'train' split and nothing to fit: the default fit_split is no obstacle
    ds.splits = {"test": ds.splits["test"]}
    fitted = get_encoder("bow:5").fit(["a plane at the airport", "green trees"])
    got = encode_dataset(ds, None, fitted, cache_dir=False)
    assert got.text_features.shape == (ds.n_texts, fitted.dim)


def test_bytes_as_a_text_are_told_to_be_decoded_not_filled():
    """b'...' in a list of texts was refused with the advice for a missing value (fillna)."""
    with pytest.raises(EncoderError, match=r"text 1 is b'caf\\xc3\\xa9' \(bytes\).*decode") as exc:
        get_encoder("tfidf").fit(["a plane", "caf\u00e9".encode()])
    assert "fillna" not in str(exc.value)
    with pytest.raises(EncoderError, match="text 0 is None .*fillna"):
        get_encoder("bow").fit([None])


@pytest.mark.parametrize("name", ["config.json", "tokenizer_config.json"])
def test_a_damaged_json_file_of_an_sbert_folder_is_named(tmp_path, name):
    """A cut-short config.json was reported as 'cannot load the model's tokenizer files
    (tokenizer.json, tokenizer_config.json, vocab.txt)': the file at fault was not among them."""
    from xmodal.encoders.text import MiniLM

    src = MiniLM("minilm")._folder()
    folder = tmp_path / "model"
    shutil.copytree(src, folder, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    (folder / name).write_text('{"not json')
    enc = get_encoder(f"sbert:{folder}")
    with pytest.raises(EncoderError) as exc:
        enc.encode(["a plane"], cache_dir=False)
    msg = str(exc.value)
    assert msg.startswith(f"{folder.resolve()}: cannot load the sbert:{folder} model's {name} "), msg
    assert "tokenizer files" not in msg and "copy or download the model again" in msg


@pytest.mark.parametrize("spec", ["efficientnet-lite0", "sift-bovw:4", "mobilenet-v2+efficientnet-lite0"])
@pytest.mark.parametrize("gap", [None, float("nan"), 7])
def test_an_image_path_that_is_not_a_path_is_refused_naming_the_row(spec, gap, data_root):
    """A pandas column of paths with a gap gave `skipping None: cannot read file (No such
    file or directory)` (or `skipping nan: ...`), a zero row, and a run that went on as if a
    file named "None" were missing; texts with gaps are refused naming the row."""
    ok = str(data_root / "ucm_captions" / "imgs" / "1.jpg")
    enc = get_encoder(spec)
    for call in (enc.fit,) if enc.needs_fit else (enc.encode,):
        with pytest.raises(EncoderError, match=rf"image 1 is {gap} \({type(gap).__name__}\), not a file path"):
            call([Path(ok), gap])


def test_saving_a_fitted_encoder_onto_a_folder_or_under_a_file_names_the_path(tmp_path):
    """`tf.save("models")` with models/ a folder raised IsADirectoryError naming a temporary
    '.models.xxxx.tmp' file; under a file, NotADirectoryError. Now an EncoderError naming it."""
    tf = get_encoder("tfidf").fit(["a plane at the airport", "green trees by a river"])
    (tmp_path / "models").mkdir()
    with pytest.raises(EncoderError, match=rf"^{tmp_path / 'models'}: is a folder; give the file"):
        tf.save(tmp_path / "models")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(EncoderError, match=rf"^{tmp_path / 'notes.txt' / 'tf.zip'}: cannot be written: "
                                           rf"{tmp_path / 'notes.txt'} is not a folder"):
        tf.save(tmp_path / "notes.txt" / "tf.zip")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models", "notes.txt"]
    assert not any((tmp_path / "models").iterdir())
    assert Encoder.load(tf.save(tmp_path / "models" / "tf.zip")).encode(["a plane"], cache_dir=False).shape == (1, tf.dim)


@pytest.mark.parametrize("modality", ["images", "Text", "txt"])
def test_available_encoders_refuses_a_misspelt_modality(modality):
    """available_encoders("images") returned [] as if no image encoder existed."""
    with pytest.raises(EncoderError, match=rf"modality must be 'image' or 'text', got '{modality}'"):
        available_encoders(modality)
    assert {e["modality"] for e in available_encoders("image")} == {"image"}


def test_an_empty_cache_dir_is_refused_not_the_current_folder(tmp_path, monkeypatch):
    """`--cache-dir ""` (an empty shell variable, quoted) wrote the feature cache's folders
    (`tfidf-…/`, `fitted/`) into the current folder, as Path("") is "."."""
    monkeypatch.chdir(tmp_path)
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("image,text\na.jpg,a plane\nb.jpg,a river\nc.jpg,green trees\nd.jpg,a beach\n")
    res = CliRunner().invoke(app, ["encode", "--dataset", str(pairs), "--text-encoder", "tfidf",
                                   "--cache-dir", "", "--out", "p.npz"])
    assert res.exit_code == 2 and "the feature cache folder is empty ('')" in res.stderr, res.output
    tf = get_encoder("tfidf").fit(["a plane", "a river"])
    for empty in ("", "  "):
        with pytest.raises(EncoderError, match="the feature cache folder is empty"):
            tf.encode(["a plane"], cache_dir=empty)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pairs.csv"]


def test_the_default_output_is_named_after_the_dataset_not_dot_or_dataset_json(tiny, tmp_path, monkeypatch):
    """`xmodal encode --dataset .` wrote a hidden `.bow.npz`; every Karpathy file is called
    dataset.json, so `--dataset ucm/dataset.json` and `--dataset flickr8k/dataset.json` both
    wrote `dataset.<spec>.npz`, the second over the first."""
    from xmodal.cli.encode import _default_out

    assert _default_out("ucm_captions", "efficientnet-lite0:d4+mobilenet-v2:d4", None) == \
        Path("ucm_captions.efficientnet-lite0_d4_mobilenet-v2_d4.npz")
    assert _default_out(str(tmp_path / "pairs.csv"), None, "tfidf") == Path("pairs.tfidf.npz")
    assert _default_out(str(tiny / "dataset_flickr8k.json"), "a", "b") == Path("dataset_flickr8k.a.b.npz")
    args = ["--text-encoder", "bow", "--cache-dir", str(tmp_path / "c"), "--quiet"]
    monkeypatch.chdir(tiny)
    for given in (".", "./", str(tiny / "dataset.json"), "dataset.json"):
        res = CliRunner().invoke(app, ["encode", "--dataset", given] + args)
        assert res.exit_code == 0, res.output
        assert "wrote tiny.bow.npz" in res.stdout, (given, res.stdout)
    assert sorted(p.name for p in tiny.iterdir()) == ["dataset.json", "imgs", "tiny.bow.npz"]


def _train_images_broken(tiny: Path) -> None:
    doc = json.loads((tiny / "dataset.json").read_text())
    for rec in doc["images"]:
        if rec["split"] == "train":
            f = tiny / "imgs" / f"{Path(rec['filename']).stem}.jpg"
            f.unlink()
            f.write_bytes(b"")  # e.g. a copy that never finished


def test_fitting_on_a_split_none_of_whose_images_can_be_read_says_so(tiny):
    """With every training image unreadable, `sift-bovw` said 'only 0 SIFT descriptors in 2
    fit images' and `tfidf` 'fit needs at least one item': neither said why."""
    from xmodal.data import DataError, load_dataset

    _train_images_broken(tiny)
    ds = load_dataset(str(tiny / "dataset.json"))
    with pytest.raises(EncoderError, match=r"only 0 SIFT descriptors in 2 fit images \(2 could not be "
                                           r"read; the first, .*\.jpg: empty file"):
        encode_dataset(ds, "sift-bovw:4", None, cache_dir=False, quiet=True)
    fitted = get_encoder("sift-bovw:4").fit([str(p) for p in ds.image_paths[2:]] * 3)
    with pytest.raises(DataError, match=r"dataset 'tiny': no texts to fit tfidf on: none of the 2 "
                                        r"images of split 'train' could be read"):
        encode_dataset(ds, fitted, "tfidf", cache_dir=False, quiet=True)
