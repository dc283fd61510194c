"""A method fitted on the features of a *fitted* encoder (tf-idf, bag of words, LDA, tags,
SIFT bag of visual words) carries that encoder's fitted state, through `xmodal encode`'s .npz
and the method file, into `xmodal index --method m.zip`. Before, the indexer refitted the
encoder on the new source's own texts/images: another vocabulary, so features whose columns
meant other words than the method was fitted on (a meaningless common space, no error).

Also: re-encoding one side of an encoded dataset keeps the other side's encoder record, and
`build_collection` on an existing collection refuses a method, index or encoder other than the
collection's instead of silently ignoring it."""

from __future__ import annotations

import dataclasses
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import need
from xmodal import methods
from xmodal.cli import app

# Both fitted; a fixed width so the method's width check alone cannot tell the refit apart.
IMAGE, TEXT = "sift-bovw:8", "tfidf:50"


def _folder(dest: Path, start: int, step: int) -> Path:
    """UCM-Captions images ``start, start+step, ...`` with their captions as sidecar .txt files."""
    from xmodal.data import load_ucm_captions

    ds = load_ucm_captions()
    dest.mkdir(parents=True)
    for i in range(start, ds.n_images, step):
        src = Path(ds.image_paths[i])
        shutil.copy(src, dest / src.name)
        (dest / (src.stem + ".txt")).write_text(
            "\n".join(t for t, j in zip(ds.texts, ds.text_to_image) if j == i))
    return dest


def _dataset(folder: Path):
    from xmodal.data import PairedDataset
    from xmodal.index.build import scan_folder

    images, texts = scan_folder(folder)
    row = {it.key: r for r, it in enumerate(images)}
    return PairedDataset(name=folder.name, text_to_image=[row[t.pair_key] for t in texts],
                         n_images=len(images), image_paths=[it.path for it in images],
                         texts=[t.text for t in texts])


def _without_encoder_state(src: Path, dst: Path) -> Path:
    """``src`` as written before methods carried their encoders' state: the specs recorded in
    ``feature_encoders_``, no state members."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        meta = json.loads(zin.read("meta.json"))
        dropped = [a for a in meta["arrays"] if a.endswith("_encoder_state_")]
        assert dropped, "the fitted method records no encoder state"
        meta["arrays"] = [a for a in meta["arrays"] if a not in dropped]
        zout.writestr("meta.json", json.dumps(meta, indent=1))
        for name in zin.namelist():
            if name != "meta.json" and name[:-len(".npy")] not in dropped:
                zout.writestr(name, zin.read(name))
    return dst


def _index(*args) -> object:
    return CliRunner().invoke(app, ["index", *map(str, args), "-q"])


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, env):
    """PLS fitted on 21 UCM images (SIFT words) and their 105 captions (tf-idf), through the
    .npz of `xmodal encode`; a folder of 21 other images and captions to index with it; the
    encoders as fitted on the first 21 (the feature cache's fitted state: what encoding used)."""
    need("ucm_captions")
    from xmodal.data import load_dataset, save_npz
    from xmodal.encoders import encode_dataset, get_encoder
    from xmodal.encoders.dataset import fit_cached

    root = tmp_path_factory.mktemp("fitted_encoders")
    a, b = _folder(root / "a", 0, 100), _folder(root / "b", 50, 100)
    ds = _dataset(a)
    encoded = encode_dataset(ds, IMAGE, TEXT, fit_split=None, quiet=True)
    save_npz(encoded, root / "a.npz")
    method = methods.create("pls", n_components=4).fit(load_dataset(str(root / "a.npz")))
    method.save(root / "m.zip")
    ref = {"image": fit_cached(get_encoder(IMAGE), list(ds.image_paths)),
           "text": fit_cached(get_encoder(TEXT), list(ds.texts))}
    return root, a, b, method, ref, encoded


@pytest.fixture(scope="module")
def indexed(fitted):
    """Folder b indexed with the method file (`xmodal index b -c c.xmc --method m.zip`)."""
    root, _, b, _, _, _ = fitted
    res = _index(b, "-c", root / "c.xmc", "--method", root / "m.zip")
    assert res.exit_code == 0, res.output
    return root / "c.xmc"


# ----------------------------------------------------------------- 1. the state travels
def test_index_with_a_method_file_uses_the_encoders_it_was_fitted_with(fitted, indexed):
    from xmodal.index import Collection
    from xmodal.index.build import scan_folder

    root, _, b, method, ref, _ = fitted
    images, texts = scan_folder(b)
    coll = Collection.open(indexed)
    assert coll.stats()["encoders"] == {"image": IMAGE, "text": TEXT}
    for modality in ("image", "text"):
        assert coll.encoder(modality).state_hash() == ref[modality].state_hash(), modality
    T = ref["text"].encode([t.text for t in texts], cache_dir=False)
    np.testing.assert_array_equal(coll.encoder("text").encode([t.text for t in texts], cache_dir=False), T)
    # what the collection stored: the method's projection of the original encoder's features
    stored, _ = coll.item_vectors([coll.id_of(t.key) for t in texts])
    want = method.encode_texts(T)
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    np.testing.assert_allclose(stored, want, atol=1e-5)
    stored, _ = coll.item_vectors([coll.id_of(i.key) for i in images])
    want = method.encode_images(ref["image"].encode([i.path for i in images], cache_dir=False))
    np.testing.assert_allclose(stored, want / np.linalg.norm(want, axis=1, keepdims=True), atol=1e-5)
    coll.close()


def test_encoded_file_and_method_file_keep_the_fitted_state(fitted, tmp_path):
    from xmodal.data import load_dataset

    root, _, _, method, ref, _ = fitted
    with np.load(root / "a.npz", allow_pickle=False) as z:
        for side in ("image", "text"):
            assert z[f"encoder_state_{side}"].dtype == np.uint8
        meta = json.loads(str(z["xmodal_meta"]))["meta"]
    # the JSON record says which state, the bytes are a member of their own
    assert meta["encoding"]["text_encoder"]["state_hash"] == ref["text"].state_hash()
    assert "state" not in meta["encoding"]["text_encoder"]
    ds = load_dataset(str(root / "a.npz"))
    assert isinstance(ds.meta["encoding"]["text_encoder"]["state"], bytes)
    for m in (method, methods.load(str(root / "m.zip")),
              methods.load(str(methods.load(str(root / "m.zip")).save(tmp_path / "again.zip")))):
        for side in ("image", "text"):
            assert m.feature_encoder(side).state_hash() == ref[side].state_hash()
    # refitted on features without a fitted encoder, the state goes with the old fit
    plain = dataclasses.replace(ds, meta={})
    refit = methods.create("pls", n_components=4).fit(plain)
    assert refit.feature_encoder("text") is None and refit.feature_encoders_ is None
    with zipfile.ZipFile(refit.save(tmp_path / "plain.zip")) as zf:
        assert not [n for n in zf.namelist() if "encoder_state" in n]


def test_a_method_file_with_a_fitted_encoder_spec_and_no_state_is_refused(fitted, tmp_path, monkeypatch):
    from xmodal.index import CollectionError, build_collection, plan_collection

    root, _, b, _, _, _ = fitted
    old = _without_encoder_state(root / "m.zip", tmp_path / "old.zip")
    assert methods.load(str(old)).feature_encoders_ == {"image": IMAGE, "text": TEXT}

    def no_encoding(*a, **k):
        raise AssertionError("encoded before refusing")

    monkeypatch.setattr("xmodal.index.build.encode_items", no_encoding)
    for call in (build_collection, plan_collection):
        with pytest.raises(CollectionError, match=f"{old}.*{TEXT}") as err:
            call(b, tmp_path / "c.xmc", method=str(old), quiet=True) if call is build_collection \
                else call(b, tmp_path / "c.xmc", method=str(old))
        assert "refit" in str(err.value) and IMAGE in str(err.value)
    res = _index(b, "-c", tmp_path / "c.xmc", "--method", old, "--text-encoder", TEXT)
    assert res.exit_code == 2 and str(old) in res.output and TEXT in res.output, res.output
    assert not (tmp_path / "c.xmc" / "collection.db").exists()


def test_a_fitted_encoder_object_other_than_the_methods_is_refused(fitted, indexed, tmp_path):
    from xmodal.encoders import get_encoder
    from xmodal.index import CollectionError, plan_collection
    from xmodal.index.build import scan_folder

    root, _, b, _, ref, _ = fitted
    refitted = get_encoder(TEXT).fit([t.text for t in scan_folder(b)[1]], progress=False)
    with pytest.raises(CollectionError, match="fitted on other items"):
        plan_collection(b, tmp_path / "new.xmc", method=str(root / "m.zip"), text_encoder=refitted)
    with pytest.raises(CollectionError, match=f"{indexed}.*text_encoder {TEXT} fitted on other items"):
        plan_collection(b, indexed, text_encoder=refitted)
    # the very encoder it was fitted with is accepted
    assert plan_collection(b, tmp_path / "new.xmc", method=str(root / "m.zip"),
                           text_encoder=ref["text"])["action"] == "create"
    assert plan_collection(b, indexed, text_encoder=ref["text"])["action"] == "update"


# -------------------------------------------------- 2. one side re-encoded, the other kept
def test_reencoding_one_side_keeps_the_other_sides_encoder_record(fitted):
    from xmodal.encoders import encode_dataset

    _, _, _, _, ref, ds = fitted  # encoded in memory: the raw texts are still there
    again = encode_dataset(ds, None, "bow:30", fit_split=None, quiet=True)
    enc = again.meta["encoding"]
    assert enc["text_encoder"]["spec"] == "bow:30"
    assert enc["image_encoder"]["spec"] == IMAGE
    assert enc["image_encoder"]["state"] == ds.meta["encoding"]["image_encoder"]["state"]
    np.testing.assert_array_equal(again.image_features, ds.image_features)
    m = methods.create("pls", n_components=4).fit(again)
    assert m.feature_encoders_ == {"image": IMAGE, "text": "bow:30"}
    assert m.feature_encoder("image").state_hash() == ref["image"].state_hash()
    # a side whose features are not kept does not keep its record either
    bare = dataclasses.replace(ds, image_features=None, text_features=None)
    assert encode_dataset(bare, None, "bow:30", fit_split=None, quiet=True).meta["encoding"][
        "image_encoder"] is None


# ------------------------------------------- 3. an existing collection keeps what it has
def test_build_on_an_existing_collection_refuses_other_options(fitted, indexed, tmp_path):
    from xmodal.data import load_dataset
    from xmodal.index import Collection, CollectionError, build_collection

    root, _, b, _, _, _ = fitted
    other = methods.create("pls", n_components=3).fit(load_dataset(str(root / "a.npz")))
    other.save(tmp_path / "other.zip")
    gen = Collection.open(indexed).store.generation()
    for kwargs, named in (({"method": "kcca"}, "method"), ({"method": "cca"}, "method"),
                          ({"method": str(tmp_path / "other.zip")}, "method"),
                          ({"method_params": {"n_components": 3}}, "method_params"),
                          ({"index": "HNSW32"}, "index"), ({"rerank": True}, "rerank"),
                          ({"text_encoder": "bow:50"}, "text_encoder"),
                          ({"image_encoder": "sift-bovw:16"}, "image_encoder")):
        with pytest.raises(CollectionError, match="existing collection") as err:
            build_collection(b, indexed, quiet=True, **kwargs)
        assert str(indexed) in str(err.value) and named in str(err.value), (kwargs, str(err.value))
    assert Collection.open(indexed).store.generation() == gen
    # the collection's own values, or none, are accepted
    for kwargs in ({}, {"method": None}, {"method": "pls"}, {"method": str(root / "m.zip")},
                   {"method_params": {"n_components": 4}}, {"index": "Flat"},
                   {"image_encoder": IMAGE, "text_encoder": TEXT}):
        coll = build_collection(b, indexed, quiet=True, **kwargs)
        assert coll.count("text") == 105
        coll.close()
    # the CLI passes None for options not typed: a rerun with none adds to the collection,
    # one typing the default method (cca, not the collection's pls) is refused
    res = _index(b, "-c", indexed)
    assert res.exit_code == 0, res.output
    res = _index(b, "-c", indexed, "--method", "cca")
    assert res.exit_code != 0 and "cca" in res.output and "it has" in res.output and "pls" in res.output, res.output


def test_a_shard_like_a_collection_refuses_a_method_or_encoders(fitted, indexed, tmp_path):
    from xmodal.index import Collection, CollectionError, build_collection, plan_collection

    _, _, b, _, _, _ = fitted
    for kwargs in ({"method": "cca"}, {"method_params": {"n_components": 2}}, {"text_encoder": "bow:50"}):
        for call in (build_collection, plan_collection):
            if call is plan_collection and "method_params" in kwargs:
                continue  # a dry run takes no method parameters
            with pytest.raises(CollectionError, match="would be ignored"):
                call(b, tmp_path / "shard.xmc", like=indexed, **kwargs)
    assert not Collection.exists(tmp_path / "shard.xmc")
