"""`xmodal encode`'s .npz is a dataset: load_dataset / `xmodal bench --dataset FILE.npz` read it
back (encode once, bench many times, or encode on one machine and bench on another)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import DATA, need
from xmodal.cli import app
from xmodal.data import DataError, load_dataset, load_npz

TEXT_ENCODER = "tfidf:300"  # fitted on the training texts only; cheap on 2866 articles


@pytest.fixture(scope="module")
def encoded(tmp_path_factory):
    """Wikipedia's released SIFT image features with tf-idf text features, through `xmodal encode`."""
    need("wikipedia")
    tmp = tmp_path_factory.mktemp("glue_npz")
    out = tmp / "wiki.npz"
    res = CliRunner().invoke(app, ["encode", "--dataset", "wikipedia", "--data-dir", str(DATA),
                                   "--text-encoder", TEXT_ENCODER, "--cache-dir", str(tmp / "cache"),
                                   "--out", str(out), "--quiet", "--json"])
    assert res.exit_code == 0, res.output
    return out, tmp / "cache"


def test_encoded_file_loads_back_as_the_encoded_dataset(encoded):
    from xmodal.encoders import encode_dataset

    out, cache = encoded
    ds = load_dataset(str(out))
    ref = encode_dataset(load_dataset("wikipedia", data_dir=str(DATA)), None, TEXT_ENCODER,
                         cache_dir=str(cache), quiet=True)
    assert ds.name == "wikipedia" and ds.n_images == ref.n_images == 2866
    np.testing.assert_array_equal(ds.text_to_image, ref.text_to_image)
    np.testing.assert_array_equal(ds.image_features, ref.image_features)
    np.testing.assert_array_equal(ds.text_features, ref.text_features)
    np.testing.assert_array_equal(ds.labels, ref.labels)
    assert ds.label_names == ref.label_names and ds.image_ids == ref.image_ids
    assert ds.text_ids == ref.text_ids
    assert {k: v.tolist() for k, v in ds.splits.items()} == {k: v.tolist() for k, v in ref.splits.items()}
    assert ds.meta["protocol"] == "wikipedia"
    assert ds.meta["encoding"]["text_encoder"]["spec"] == TEXT_ENCODER
    assert ds.meta["encoding"]["image_encoder"] is None  # the released SIFT features
    # bench records name the encoders that made the file's features
    assert ds.meta["text_feature"] == TEXT_ENCODER and ds.meta["image_feature"] == "sift-bovw-128"
    assert Path(ds.image_paths[0]).is_absolute() and Path(ds.root).is_absolute()
    # no field needs pickle
    with np.load(out, allow_pickle=False) as z:
        assert all(z[k].dtype != object for k in z.files)


def test_bench_on_the_file_gives_the_numbers_of_the_original(encoded, tmp_path):
    from xmodal.evaluation.bench import run_bench

    out, cache = encoded
    res = CliRunner().invoke(app, ["bench", "--dataset", str(out), "--methods", "cca",
                                   "--json", str(tmp_path / "file.json")])
    assert res.exit_code == 0, res.output
    [from_file] = json.loads((tmp_path / "file.json").read_text())
    [original] = run_bench("wikipedia", ["cca"], data_dir=str(DATA), text_encoder=TEXT_ENCODER,
                           cache_dir=str(cache))
    assert from_file["dataset"] == original["dataset"] == "wikipedia"
    assert from_file["text_encoder"] == original["text_encoder"] == TEXT_ENCODER
    assert from_file["image_encoder"] == original["image_encoder"]
    for direction in ("i2t", "t2i"):
        for key in ("map", "p@10", "p@100"):
            assert from_file[direction][key] == pytest.approx(original[direction][key], abs=1e-12)
    # a real common space, not chance: CCA scores 0.158 / 0.150 here; a random ranking 0.11
    # (10 unequal classes) and chance-level codes up to 0.139 over seeds
    assert from_file["i2t"]["map"] > 0.14 and from_file["t2i"]["map"] > 0.14


def _rewrite(src: Path, dst: Path, **changes) -> Path:
    with np.load(src, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    for k, v in changes.items():
        if v is None:
            arrays.pop(k)
        else:
            arrays[k] = v
    np.savez(dst, **arrays)
    return dst


def test_file_from_before_the_meta_record_still_loads(encoded, tmp_path):
    out, _ = encoded
    old = load_dataset(str(_rewrite(out, tmp_path / "old.npz", xmodal_meta=None)))
    new = load_dataset(str(out))
    assert old.name == "old" and old.n_images == new.n_images and old.meta == {}
    np.testing.assert_array_equal(old.text_features, new.text_features)
    assert old.splits.keys() == new.splits.keys() and old.label_names is None


def test_files_that_are_not_xmodal_feature_files_are_refused_by_name(encoded, tmp_path):
    out, _ = encoded
    with np.load(out, allow_pickle=False) as z:
        T, L, t2i = z["text_features"].copy(), z["labels"], z["text_to_image"]
    T[7, 3] = np.nan
    cases = [
        (dict(text_to_image=None), "array 'text_to_image' missing"),
        (dict(text_features=T), "array 'text_features' row 7 holds NaN"),
        (dict(image_features=np.zeros((5, 128), np.float32)), "array 'image_features' has 5 rows"),
        (dict(image_features=np.zeros(2866, np.float32)), "array 'image_features' must be a 2-D"),
        (dict(labels=L * 3), "array 'labels' must hold only 0 and 1"),
        (dict(text_to_image=t2i + 1), "array 'text_to_image' row 2865 names image 2866"),
        (dict(split_test=np.array([0, 9999])), "array 'split_test' names an image index outside"),
        (dict(image_ids=np.array(["a", 1] * 1433, dtype=object)), "array 'image_ids' cannot be read without pickle"),
        (dict(xmodal_meta=np.asarray("{not json")), "array 'xmodal_meta' is not JSON"),
        (dict(xmodal_meta=np.asarray(json.dumps({"format": 99}))), "newer xmodal"),
        (dict(xmodal_meta=np.asarray(json.dumps({"format": None}))), "format must be a whole number >= 1, got None"),
        (dict(xmodal_meta=np.asarray(json.dumps({"format": "x"}))), "format must be a whole number >= 1, got 'x'"),
        (dict(encoder_state_text=np.zeros(5, np.float32)), "array 'encoder_state_text' must be a 1-D uint8"),
    ]
    for i, (changes, message) in enumerate(cases):
        bad = _rewrite(out, tmp_path / f"bad{i}.npz", **changes)
        with pytest.raises(DataError, match="bad%d.npz: .*" % i) as err:
            load_npz(bad)
        assert message in str(err.value), (message, str(err.value))
    (tmp_path / "text.npz").write_text("not numpy")
    with pytest.raises(DataError, match="text.npz: not a .npz file"):
        load_dataset(str(tmp_path / "text.npz"))
    with open(tmp_path / "one.npz", "wb") as f:
        np.save(f, np.zeros(3))
    with pytest.raises(DataError, match="one.npz: holds a single .npy array"):
        load_dataset(str(tmp_path / "one.npz"))
    with pytest.raises(DataError, match="gone.npz: no such file"):
        load_dataset(str(tmp_path / "gone.npz"))
    # the CLI says it in one line, no traceback
    res = CliRunner().invoke(app, ["bench", "--dataset", str(tmp_path / "bad1.npz"), "--methods", "cca"])
    assert res.exit_code != 0 and "row 7 holds NaN" in res.output and "Traceback" not in res.output


def test_the_file_keeps_the_fitted_text_encoder_for_what_is_fitted_on_it(encoded, tmp_path):
    # The file named tfidf:300 but not its vocabulary: a method fitted on it and used on new
    # texts (`xmodal index --method`) got a tf-idf refitted on them, other columns entirely.
    from xmodal import methods
    from xmodal.data import save_npz
    from xmodal.encoders import get_encoder
    from xmodal.encoders.dataset import fit_cached

    out, cache = encoded
    wiki = load_dataset("wikipedia", data_dir=str(DATA))
    train_texts = [t for t, i in zip(wiki.texts, wiki.text_to_image) if i in set(wiki.splits["train"].tolist())]
    ref = fit_cached(get_encoder(TEXT_ENCODER), train_texts, cache_dir=str(cache))
    with np.load(out, allow_pickle=False) as z:
        assert z["encoder_state_text"].dtype == np.uint8 and "encoder_state_image" not in z.files
    ds = load_dataset(str(out))
    assert ds.meta["encoding"]["text_encoder"]["state_hash"] == ref.state_hash()
    m = methods.create("cca", n_components=8).fit(ds.subset("train"))
    enc = m.feature_encoder("text")
    assert enc.state_hash() == ref.state_hash() and m.feature_encoder("image") is None
    texts = wiki.texts[:5]
    np.testing.assert_array_equal(enc.encode(texts, cache_dir=False), ref.encode(texts, cache_dir=False))
    # written again, the state stays (and the JSON record holds no bytes)
    again = load_dataset(str(save_npz(ds, tmp_path / "again.npz")))
    assert again.meta["encoding"]["text_encoder"]["state"] == ds.meta["encoding"]["text_encoder"]["state"]


def test_a_failed_rewrite_keeps_the_previous_file(encoded, tmp_path, monkeypatch):
    from xmodal.data import save_npz

    out, _ = encoded
    ds = load_dataset(str(out))
    target = tmp_path / "keep.npz"
    save_npz(ds, target)
    before = target.read_bytes()

    def broken(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken)
    with pytest.raises(OSError, match="disk full"):
        save_npz(ds, target)
    assert target.read_bytes() == before and zipfile.is_zipfile(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.npz"]  # no temporary file left
