"""A fitted method records the encoders of the features it was fitted on (``feature_encoders_``),
and `xmodal index --method FILE.zip` uses them by default and refuses others before encoding:
mobilenet-v2 and efficientnet-lite0 are both 1280-d, so the width check alone let a method
fitted on one build a meaningless common space from the other."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import DATA, need, ucm_caption_folder
from xmodal import methods
from xmodal.cli import app

IMAGE, TEXT = "mobilenet-v2", "bow"


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, env):
    """CCA fitted on 21 UCM images' mobilenet-v2 features and bag-of-words captions, through the
    .npz `xmodal encode` writes; saved as a method file."""
    from xmodal.data import PairedDataset, load_dataset, save_npz
    from xmodal.encoders import encode_dataset
    from xmodal.index.build import scan_folder

    root, folder, _, mp = ucm_caption_folder(tmp_path_factory, "glue_methods", step=100)
    images, texts = scan_folder(folder)
    row = {it.key: r for r, it in enumerate(images)}
    ds = PairedDataset(name="ucm21", text_to_image=[row[t.pair_key] for t in texts], n_images=len(images),
                       image_paths=[it.path for it in images], texts=[t.text for t in texts])
    save_npz(encode_dataset(ds, IMAGE, TEXT, fit_split=None, quiet=True), root / "feats.npz")
    method = methods.create("cca", n_components=8).fit(load_dataset(str(root / "feats.npz")))
    method.save(root / "m.zip")
    yield root, folder, method
    mp.undo()


def _old_format(src: Path, dst: Path) -> Path:
    """``src`` as written before ``feature_encoders_`` (and the fitted encoders' state) existed."""
    states = {"image_encoder_state_", "text_encoder_state_"}
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for name in zin.namelist():
            data = zin.read(name)
            if name == "meta.json":
                meta = json.loads(data)
                del meta["state"]["feature_encoders_"]
                meta["arrays"] = [a for a in meta["arrays"] if a not in states]
                data = json.dumps(meta, indent=1).encode()
            elif name[:-len(".npy")] in states:
                continue
            zout.writestr(name, data)  # meta.json as `save` writes it (indent=1)
    return dst


def _index(*args: str):
    return CliRunner().invoke(app, ["index", *map(str, args), "-q"])


def test_fitted_method_records_its_encoders_and_keeps_them_when_saved(fitted):
    root, _, method = fitted
    assert method.feature_encoders_ == {"image": IMAGE, "text": TEXT}
    assert methods.load(str(root / "m.zip")).feature_encoders_ == {"image": IMAGE, "text": TEXT}
    # bag of words is fitted (its vocabulary travels); mobilenet-v2 is not (nothing to keep)
    loaded = methods.load(str(root / "m.zip"))
    assert loaded.feature_encoder("image") is None
    assert loaded.feature_encoder("text").spec == TEXT and loaded.feature_encoder("text").dim == loaded.text_dim_


def test_methods_fitted_on_released_features_record_nothing(tmp_path):
    need("wikipedia")
    from xmodal.data import load_wikipedia

    train = load_wikipedia(str(DATA), with_texts=False).subset("train")
    for name, params in (("scm", {}), ("cca_itq", {"bits": 16})):
        m = methods.create(name, **params).fit(train)
        assert m.feature_encoders_ is None
        assert methods.load(str(m.save(tmp_path / f"{name}.zip"))).feature_encoders_ is None
    # refitted on encoded features, the record follows the new fit (and back)
    encoded = train.with_features()
    encoded.meta = {**train.meta, "encoding": {"image_encoder": None, "text_encoder": {"spec": "lda:10"}}}
    m = methods.create("cca", n_components=4).fit(encoded)
    assert m.feature_encoders_ == {"text": "lda:10"}
    assert m.fit(train).feature_encoders_ is None


def test_method_files_from_before_the_record_still_load(fitted, tmp_path):
    root, _, method = fitted
    old_file = _old_format(root / "m.zip", tmp_path / "old.zip")
    old = methods.load(str(old_file))
    assert getattr(old, "feature_encoders_", None) is None
    # saved again (a shard made --like an older collection), the file is the same: the space
    # fingerprint hashes it
    with zipfile.ZipFile(old_file) as a, zipfile.ZipFile(old.save(tmp_path / "again.zip")) as b:
        assert a.read("meta.json") == b.read("meta.json")
        assert sorted(a.namelist()) == sorted(b.namelist())
        assert all(a.read(n) == b.read(n) for n in a.namelist())
    new = methods.load(str(root / "m.zip"))
    with zipfile.ZipFile(root / "m.zip") as a, zipfile.ZipFile(new.save(tmp_path / "new.zip")) as b:
        assert a.read("meta.json") == b.read("meta.json")
    X = np.random.default_rng(0).normal(size=(3, method.image_dim_))
    np.testing.assert_allclose(old.encode_images(X), method.encode_images(X))


@pytest.mark.parametrize("option", [["--image-encoder", "efficientnet-lite0"], ["--text-encoder", "tfidf"],
                                    ["--image-encoder", "efficientnet-lite0", "--dry-run"]])
def test_index_refuses_other_encoders_than_the_method_records_before_encoding(fitted, tmp_path, monkeypatch,
                                                                              option):
    root, folder, _ = fitted

    def no_encoding(*a, **k):
        raise AssertionError("encoded before refusing")

    monkeypatch.setattr("xmodal.index.build.encode_items", no_encoding)
    res = _index(folder, "-c", tmp_path / "c.xmc", "--method", root / "m.zip", *option)
    assert res.exit_code == 2, res.output
    given, recorded = (option[1], IMAGE) if option[0] == "--image-encoder" else (option[1], TEXT)
    assert f"encoder {given} given, but it was fitted on {recorded} features" in res.output
    assert "m.zip" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "c.xmc").exists()


def test_index_uses_the_recorded_encoders_when_none_are_given(fitted, tmp_path):
    from xmodal.index import Collection

    root, folder, _ = fitted
    res = _index(folder, "-c", tmp_path / "c.xmc", "--method", root / "m.zip")
    assert res.exit_code == 0, res.output
    # one given (the same as recorded), the other from the record
    res2 = _index(folder, "-c", tmp_path / "d.xmc", "--method", root / "m.zip", "--image-encoder", IMAGE)
    assert res2.exit_code == 0, res2.output
    for name in ("c.xmc", "d.xmc"):
        coll = Collection.open(tmp_path / name)
        assert coll.stats()["encoders"] == {"image": IMAGE, "text": TEXT}
        assert coll.stats()["images"] == 21 and coll.stats()["texts"] == 105


def test_method_without_a_record_keeps_the_width_check(fitted, tmp_path):
    root, folder, _ = fitted
    old = _old_format(root / "m.zip", tmp_path / "old.zip")
    # nothing recorded: a text encoder of another width is still refused (tfidf:20 vs the
    # captions' whole bag-of-words vocabulary)
    res = _index(folder, "-c", tmp_path / "c.xmc", "--method", old, "--image-encoder", IMAGE,
                 "--text-encoder", "tfidf:20")
    assert res.exit_code == 2 and "does not take the encoders' features" in res.output
    assert not (tmp_path / "c.xmc" / "collection.db").exists()


def test_method_fitted_by_the_indexer_records_the_collections_encoders(fitted, tmp_path):
    from xmodal.index import build_collection

    _, folder, _ = fitted
    coll = build_collection(folder, tmp_path / "c.xmc", method="cca", image_encoder=IMAGE,
                            text_encoder=TEXT, quiet=True)
    assert coll.method.feature_encoders_ == {"image": IMAGE, "text": TEXT}
    # with the collection's fitted bag of words: its method file indexes other folders with it
    assert coll.method.feature_encoder("text").state_hash() == coll.encoder("text").state_hash()


runner = CliRunner()


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
