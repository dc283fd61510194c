"""Image encoders, the feature cache, bad-file handling, encode_dataset and `xmodal encode`,
on real UCM-Captions images."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from xmodal.encoders import EncoderError, Encoder, available_encoders, encode_dataset, get_encoder

AIRPLANE = [101, 102, 104, 105]   # UCM class 1 (103.jpg is a byte copy of 102.jpg)
BEACH = [301, 302, 303, 304]      # UCM class 3


@pytest.fixture(scope="module")
def imgs(data_root) -> Path:
    path = data_root / "ucm_captions" / "imgs"
    if not path.exists():
        pytest.skip(f"{path} not present")
    return path


def paths(imgs: Path, ids) -> list[str]:
    return [str(imgs / f"{i}.jpg") for i in ids]


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, imgs) -> dict[str, str]:
    """Every kind of unusable image file, made here."""
    from PIL import Image

    d = tmp_path_factory.mktemp("bad")
    good = (imgs / "101.jpg").read_bytes()
    (d / "empty.jpg").write_bytes(b"")
    (d / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (d / "notes.jpg").write_text("this is a text file renamed to .jpg\n")
    # 20000 x 10000 = 2e8 pixels, beyond 2x Pillow's MAX_IMAGE_PIXELS, yet a tiny 1-bit PNG.
    Image.new("1", (20000, 10000)).save(d / "bomb.png", optimize=True)
    return {k: str(d / f) for k, f in [("empty", "empty.jpg"), ("truncated", "truncated.jpg"),
                                       ("text", "notes.jpg"), ("bomb", "bomb.png")]}


@pytest.fixture(scope="module")
def effnet():
    return get_encoder("efficientnet-lite0")


def _cos(X):
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    return Xn @ Xn.T


# ---------------------------------------------------------------- registry
def test_registry_and_spec_errors():
    names = {r["name"] for r in available_encoders()}
    assert {"efficientnet-lite0", "mobilenet-v2", "sift-bovw", "timm", "open_clip", "minilm",
            "tfidf", "bow", "lda", "tags"} <= names
    assert {r["name"] for r in available_encoders("image")} >= {"efficientnet-lite0", "sift-bovw"}
    with pytest.raises(EncoderError, match="unknown encoder 'resnet-999'"):
        get_encoder("resnet-999")
    with pytest.raises(EncoderError, match="takes no argument"):
        get_encoder("minilm:3")
    with pytest.raises(EncoderError, match="is a text encoder"):
        get_encoder("tfidf", modality="image")
    with pytest.raises(EncoderError, match="integer"):
        get_encoder("sift-bovw:many")
    enc = get_encoder("sift-bovw")
    assert enc.needs_fit and enc.dim == 128 and enc.modality == "image"
    with pytest.raises(EncoderError, match="not fitted"):
        enc.encode(["x.jpg"], cache_dir=False)


# ----------------------------------------------------------- pretrained CNNs
@pytest.mark.parametrize("spec", ["efficientnet-lite0", "mobilenet-v2"])
def test_pretrained_cnn_features(spec, imgs, effnet):
    enc = effnet if spec == "efficientnet-lite0" else get_encoder(spec)
    assert (enc.modality, enc.dim, enc.needs_fit) == ("image", 1280, False)
    p = paths(imgs, AIRPLANE + BEACH)
    X = enc.encode(p, batch_size=3, progress=False, cache_dir=False)
    assert X.shape == (8, 1280) and X.dtype == np.float32 and np.isfinite(X).all()
    assert (X >= 0).all()  # pooled post-ReLU6 activations
    # Deterministic, and independent of batching / worker processes.
    X2 = enc.encode(p[::-1], batch_size=8, progress=False, cache_dir=False)[::-1]
    np.testing.assert_allclose(X, X2, rtol=1e-4, atol=1e-4)
    # Real ImageNet features separate airport scenes from beaches.
    S = _cos(X)
    same = np.r_[S[:4, :4][np.triu_indices(4, 1)], S[4:, 4:][np.triu_indices(4, 1)]].mean()
    cross = S[:4, 4:].mean()
    assert same > cross + 0.05, (spec, same, cross)


def test_view_averaged_features_are_rotation_invariant(imgs, tmp_path):
    """``:d4`` averages over the eight symmetries of the crop, so a turned or mirrored copy of
    an image gets the same features; the plain encoder (and ``:flip`` for a turn) does not."""
    from PIL import Image

    src = imgs / "101.jpg"
    turned, mirrored = tmp_path / "turned.png", tmp_path / "mirrored.png"
    with Image.open(src) as im:
        im.transpose(Image.Transpose.ROTATE_90).save(turned)
        im.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(mirrored)
    p = [str(src), str(turned), str(mirrored)]
    feats = {spec: get_encoder(spec).encode(p, progress=False, cache_dir=False)
             for spec in ("mobilenet-v2", "mobilenet-v2:flip", "mobilenet-v2:d4")}

    def gap(X, i):  # largest difference from the original image's features, relative
        return np.abs(X[0] - X[i]).max() / np.abs(X[0]).max()

    assert gap(feats["mobilenet-v2"], 1) > 0.05 and gap(feats["mobilenet-v2"], 2) > 0.05
    assert gap(feats["mobilenet-v2:flip"], 2) < 1e-4 and gap(feats["mobilenet-v2:flip"], 1) > 0.05
    assert gap(feats["mobilenet-v2:d4"], 1) < 1e-4 and gap(feats["mobilenet-v2:d4"], 2) < 1e-4
    # The average of the views, not one of them: close to, but not equal to, the plain features.
    cos = feats["mobilenet-v2"][0] @ feats["mobilenet-v2:d4"][0] / (
        np.linalg.norm(feats["mobilenet-v2"][0]) * np.linalg.norm(feats["mobilenet-v2:d4"][0]))
    assert 0.8 < cos < 0.9999
    with pytest.raises(EncoderError, match="unknown view set 'd8'"):
        get_encoder("efficientnet-lite0:d8")
    # view sets compose with concatenation (the UCM-Captions results use this spec)
    both = get_encoder("efficientnet-lite0:d4+mobilenet-v2:d4")
    assert both.dim == 2560 and [p.views for p in both.parts] == ["d4", "d4"]


@pytest.mark.parametrize("spec", ["efficientnet-lite0", "mobilenet-v2"])
def test_pretrained_classifier_sees_airplanes(spec, imgs, effnet):
    """Weights and preprocessing are right: the ImageNet classifier head (unused for features)
    puts an aircraft class in the top 5 for most UCM airplane tiles and for no beach tile."""
    import torch

    enc = effnet if spec == "efficientnet-lite0" else get_encoder(spec)
    aircraft = {403, 404, 405, 895, 908}  # carrier, airliner, airship, warplane, wing
    hits = {}
    for name, ids in (("airplane", range(101, 113)), ("beach", range(301, 313))):
        batch = torch.from_numpy(np.stack([enc.load_fn()(p) for p in paths(imgs, ids)]))
        with torch.inference_mode():
            top5 = enc.model(enc.preprocess(batch)).topk(5, dim=1).indices.tolist()
        hits[name] = sum(bool(aircraft & set(t)) for t in top5)
    assert hits["airplane"] >= 7 and hits["beach"] <= 1, hits


# -------------------------------------------------------------------- cache
def test_cache_hit_does_no_model_work(imgs, tmp_path, monkeypatch):
    p = paths(imgs, AIRPLANE + BEACH[:2])
    enc = get_encoder("mobilenet-v2")
    X1 = enc.encode(p, batch_size=4, progress=False, cache_dir=tmp_path)
    assert enc.report_.n_computed == 6 and enc.report_.n_cached == 0
    fresh = get_encoder("mobilenet-v2")

    def boom(*a, **k):
        raise AssertionError("model ran on a cache hit")

    monkeypatch.setattr(fresh, "forward_batch", boom)
    X2 = fresh.encode(p + p[:2], batch_size=4, progress=False, cache_dir=tmp_path)
    assert fresh.report_.n_computed == 0 and fresh.report_.n_cached == 8
    np.testing.assert_array_equal(X2[:6], X1)
    np.testing.assert_array_equal(X2[6:], X1[:2])
    # The key is the content, not the path: a copy elsewhere is a hit too.
    copy = tmp_path / "copy.jpg"
    copy.write_bytes(Path(p[0]).read_bytes())
    X3 = fresh.encode([str(copy)], progress=False, cache_dir=tmp_path)
    np.testing.assert_array_equal(X3[0], X1[0])
    # Another encoder never reads this encoder's entries.
    assert len(list(tmp_path.glob("mobilenet-v2-*"))) == 1
    assert not list(tmp_path.rglob(".tmp-*"))  # no half-written files left


def test_interrupted_run_resumes(imgs, tmp_path, monkeypatch):
    p = paths(imgs, AIRPLANE + BEACH)
    enc = get_encoder("mobilenet-v2")
    real = enc.forward_batch
    calls = {"n": 0}

    def dies_on_third_batch(batch):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # e.g. Ctrl-C in the middle of a run
        return real(batch)

    monkeypatch.setattr(enc, "forward_batch", dies_on_third_batch)
    with pytest.raises(KeyboardInterrupt):
        enc.encode(p, batch_size=2, progress=False, cache_dir=tmp_path)
    again = get_encoder("mobilenet-v2")
    X = again.encode(p, batch_size=2, progress=False, cache_dir=tmp_path)
    assert again.report_.n_cached == 4 and again.report_.n_computed == 4
    ref = get_encoder("mobilenet-v2").encode(p, batch_size=2, progress=False, cache_dir=False)
    np.testing.assert_allclose(X, ref, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- bad files
def test_bad_files_are_skipped_and_reported(imgs, bad_files, effnet, tmp_path, caplog):
    good = paths(imgs, [101, 301])
    missing = str(tmp_path / "missing.jpg")
    items = [good[0], bad_files["empty"], bad_files["truncated"], bad_files["text"],
             bad_files["bomb"], missing, good[1]]
    with caplog.at_level(logging.WARNING, logger="xmodal.encoders"):
        X, ok = effnet.encode(items, batch_size=2, progress=False, cache_dir=tmp_path,
                              return_mask=True)
    assert ok.tolist() == [True, False, False, False, False, False, True]
    assert np.isfinite(X).all() and not X[~ok].any()
    r = effnet.report_
    assert r.n_skipped == 5 and r.n_computed == 2
    reasons = dict(r.skipped)
    assert "empty" in reasons[bad_files["empty"]]
    assert "truncated" in reasons[bad_files["truncated"]]
    assert "not an image" in reasons[bad_files["text"]]
    assert "decompression bomb" in reasons[bad_files["bomb"]]
    assert "cannot read" in reasons[missing]
    lines = [rec.getMessage() for rec in caplog.records]
    for f in items[1:6]:
        assert sum(f in line and line.startswith("skipping") for line in lines) == 1, f
    assert any("skipped 5 of 7" in line for line in lines)
    ref = effnet.encode(good, progress=False, cache_dir=False)
    np.testing.assert_allclose(X[ok], ref, rtol=1e-4, atol=1e-4)


def test_sift_bovw(imgs, bad_files, tmp_path):
    fit_paths = paths(imgs, AIRPLANE + BEACH)
    enc = get_encoder("sift-bovw:24").fit(fit_paths + [bad_files["text"]], progress=False)
    assert enc.dim == 24 and enc.centers_.shape == (24, 128)
    # Same data, same vocabulary.
    again = get_encoder("sift-bovw:24").fit(fit_paths, progress=False)
    np.testing.assert_array_equal(enc.centers_, again.centers_)
    X, ok = enc.encode(fit_paths + [bad_files["bomb"]], batch_size=4, progress=False,
                       cache_dir=False, return_mask=True)
    assert ok.tolist() == [True] * 8 + [False]
    assert X.shape == (9, 24) and np.allclose(X[:8].sum(axis=1), 1.0, atol=1e-5)
    # Save/load round trip (zip of JSON + .npy, no pickle) encodes identically.
    enc.save(tmp_path / "sift.zip")
    loaded = Encoder.load(tmp_path / "sift.zip")
    np.testing.assert_array_equal(loaded.encode(fit_paths[:3], progress=False, cache_dir=False),
                                  X[:3])
    # The fitted state is part of the cache key.
    other = get_encoder("sift-bovw:24").fit(paths(imgs, [501, 502, 503, 504]), progress=False)
    assert other.cache_key() != enc.cache_key() == loaded.cache_key()


def test_optional_hub_encoders():
    """timm / open_clip extras: real code path with a small random architecture when usable."""
    try:
        import timm  # noqa: F401
    except ImportError as exc:
        with pytest.raises(EncoderError, match="timm extra is not usable"):
            get_encoder("timm:resnet18@random")
        pytest.skip("timm is not installed, because timm 1.0.x imports torchvision at import time "
                    "(timm/layers/create_norm.py, timm/data/transforms.py) and torchvision cannot "
                    f"be installed against torch 2.13 in this environment ({exc})")
    enc = get_encoder("timm:resnet18@random")
    assert enc.dim == 512


def test_optional_open_clip():
    try:
        import open_clip  # noqa: F401
    except ImportError as exc:
        with pytest.raises(EncoderError, match="openclip extra is not usable"):
            get_encoder("open_clip:RN50@random")
        pytest.skip("open_clip is not installed, because open_clip 3.x imports torchvision at import "
                    "time (open_clip/utils.py, open_clip/transform.py) and torchvision cannot be "
                    f"installed against torch 2.13 in this environment ({exc})")
    enc = get_encoder("open_clip:RN50@random")
    assert enc.dim == 1024


# ------------------------------------------------------------ encode_dataset
@pytest.fixture(scope="module")
def small_ucm(ucm):
    """12 UCM images (8 train, 4 test) of 3 classes with their 60 captions."""
    train = [100, 101, 102, 300, 301, 302, 500, 501]
    test = [103, 303, 503, 502]
    sub = ucm.subset(train + test, name="ucm_small")
    sub.splits = {"train": np.arange(8), "test": np.arange(8, 12)}
    return sub


def test_encode_dataset_drops_bad_images(small_ucm, bad_files, tmp_path, caplog):
    ds = small_ucm
    ds.image_paths = list(ds.image_paths)
    ds.image_paths[2] = bad_files["truncated"]   # a training image
    ds.image_paths[9] = bad_files["empty"]       # a test image
    with caplog.at_level(logging.WARNING, logger="xmodal.encoders"):
        out = encode_dataset(ds, "sift-bovw:16", "tfidf", cache_dir=tmp_path, quiet=True)
    assert out.n_images == 10 and out.n_texts == 50
    assert out.image_features.shape == (10, 16) and out.text_features.shape[0] == 50
    assert np.isfinite(out.image_features).all()
    assert out.splits["train"].tolist() == list(range(7))
    assert out.splits["test"].tolist() == [7, 8, 9]
    kept_ids = [ds.image_ids[i] for i in range(12) if i not in (2, 9)]
    assert out.image_ids == kept_ids and out.name == ds.name
    assert [t for t in out.texts] == [ds.texts[j] for j in range(60) if ds.text_to_image[j] not in (2, 9)]
    assert sum("dropped 2 of 12 images" in r.getMessage() for r in caplog.records) == 1
    info = out.meta["encoding"]
    assert {s["file"] for s in info["skipped"]} == {bad_files["truncated"], bad_files["empty"]}
    # tf-idf vocabulary comes from training captions only.
    tfidf = get_encoder("tfidf").fit([t for t, i in zip(ds.texts, ds.text_to_image) if i < 8])
    assert info["text_encoder"]["dim"] == tfidf.dim
    # Second run: fitted states and features all come from the cache.
    out2 = encode_dataset(ds, "sift-bovw:16", "tfidf", cache_dir=tmp_path, quiet=True)
    info2 = out2.meta["encoding"]
    assert info2["image_encoder"]["n_computed"] == 0 and info2["text_encoder"]["n_computed"] == 0
    np.testing.assert_array_equal(out2.image_features, out.image_features)
    np.testing.assert_array_equal(out2.text_features, out.text_features)


def test_encode_dataset_errors(small_ucm):
    from xmodal.data import DataError

    with pytest.raises(DataError, match="no split 'val'"):
        encode_dataset(small_ucm, None, "tfidf", cache_dir=False, fit_split="val")
    no_imgs = small_ucm.subset(np.arange(12), name="x")
    no_imgs.image_paths = None
    with pytest.raises(DataError, match="image_paths"):
        encode_dataset(no_imgs, "mobilenet-v2", None, cache_dir=False)
    with pytest.raises(DataError, match="no split 'train' to fit"):
        encode_dataset(no_imgs, None, "tfidf", cache_dir=False)
    # An already fitted encoder object is used as it is (no split needed, state kept).
    fitted = get_encoder("tfidf:7").fit(small_ucm.texts[:20])
    out = encode_dataset(no_imgs, None, fitted, cache_dir=False, quiet=True)
    assert out.text_features.shape == (60, 7)
    np.testing.assert_array_equal(out.text_features, fitted.encode(no_imgs.texts, cache_dir=False))


def test_cli_encode(imgs, ucm, tmp_path):
    """`xmodal encode` on a Karpathy-format dataset of 6 UCM images (linked, not copied)."""
    from typer.testing import CliRunner

    from xmodal.cli import app

    root = tmp_path / "tiny"
    (root / "imgs").mkdir(parents=True)
    doc = json.loads((imgs.parent / "dataset.json").read_text())
    recs = [doc["images"][i] for i in (100, 101, 103, 300, 301, 302)]  # 103.jpg = 102.jpg
    for k, rec in enumerate(recs):
        rec["split"] = "train" if k % 3 else "test"
        stem = Path(rec["filename"]).stem
        (root / "imgs" / f"{stem}.jpg").symlink_to(imgs / f"{stem}.jpg")
    (root / "dataset.json").write_text(json.dumps({"dataset": "tiny", "images": recs}))
    out = tmp_path / "feats.npz"
    args = ["encode", "--dataset", str(root / "dataset.json"), "--image-encoder", "mobilenet-v2",
            "--text-encoder", "bow", "--cache-dir", str(tmp_path / "cache"), "--out", str(out),
            "--quiet", "--json"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["n_images"] == 6 and summary["image_encoder"]["n_computed"] == 6
    z = np.load(out)
    assert z["image_features"].shape == (6, 1280) and z["text_features"].shape[0] == 30
    assert z["split_train"].tolist() == [1, 2, 4, 5] and len(z["text_to_image"]) == 30
    res2 = CliRunner().invoke(app, args)
    assert json.loads(res2.stdout)["image_encoder"]["n_computed"] == 0
    bad = CliRunner().invoke(app, ["encode", "--dataset", str(root), "--image-encoder", "nope"])
    assert bad.exit_code == 2 and "unknown encoder 'nope'" in bad.output


def test_queries_run_on_one_torch_thread(imgs, monkeypatch):
    """A query or a few uploads run on one thread (spinning OpenMP threads made single queries
    10-20x slower on a loaded machine); batches use every core; the setting is restored."""
    import torch

    from xmodal.encoders import cnn

    monkeypatch.setattr(cnn, "cpu_count", lambda: 3)
    seen = []
    enc = get_encoder("efficientnet-lite0")
    monkeypatch.setattr(enc, "forward_batch", lambda b: (seen.append(torch.get_num_threads()),
                                                         np.zeros((len(b), enc.dim), np.float32))[1])
    before = torch.get_num_threads()
    enc.encode(paths(imgs, [1]), progress=False, cache_dir=False)
    enc.encode(paths(imgs, range(1, cnn.SMALL_BATCH + 1)), progress=False, cache_dir=False)
    enc.threads = 2  # an explicit setting wins
    enc.encode(paths(imgs, [1]), progress=False, cache_dir=False)
    assert seen[0] == 1 and set(seen[1:-1]) == {3} and seen[-1] == 2
    assert torch.get_num_threads() == before


def test_an_encoder_file_without_its_spec_or_not_an_object_names_the_problem(tmp_path):
    import json
    import zipfile

    from xmodal.encoders.base import FORMAT, Encoder, EncoderError

    for doc, says in (({"format": FORMAT, "arrays": []}, "no field 'spec'"), ([1, 2], "not an xmodal encoder")):
        path = tmp_path / "bad.zip"
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("encoder.json", json.dumps(doc))
        with pytest.raises(EncoderError, match=says) as err:
            Encoder.load(path)
        assert str(path) in str(err.value)


def test_an_encoder_file_whose_fitted_state_lacks_a_field_names_it(tmp_path):
    import json
    import zipfile

    from xmodal.encoders import get_encoder
    from xmodal.encoders.base import Encoder, EncoderError

    enc = get_encoder("tfidf:20", "text")
    enc.fit(["a red car", "a blue car", "two red planes", "a green field"])
    good = enc.save(tmp_path / "good.zip")
    with zipfile.ZipFile(good) as zin:
        doc = json.loads(zin.read("encoder.json"))
    doc["state"], doc["arrays"] = {}, []  # cut short: the vocabulary is gone
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as zout:
        zout.writestr("encoder.json", json.dumps(doc))
    with pytest.raises(EncoderError, match="has no field") as err:
        Encoder.load(bad)
    assert str(bad) in str(err.value) and "vocabulary" in str(err.value)
