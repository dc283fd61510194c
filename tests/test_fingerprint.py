"""What identifies a bench run's data (src/xmodal/evaluation/fingerprint.py): the digest of what
a loader read (records' ``data_digest``) and the cache of file digests. Tiny hand-made data."""
from __future__ import annotations

import json

import numpy as np
import pytest

from xmodal.data import PairedDataset
from xmodal.evaluation.fingerprint import (_FINGERPRINT_CACHE_SIZE, _read_fingerprint_cache,
                                           _write_fingerprint_cache, content_digest)


def _ds(**changes) -> PairedDataset:
    fields = dict(name="t", text_to_image=np.array([0, 1, 2, 2]), n_images=3,
                  image_features=np.arange(6, dtype=np.float64).reshape(3, 2),
                  text_features=np.arange(8, dtype=np.float32).reshape(4, 2) / 4,
                  texts=["a dog", "a cat", "café", "two"], labels=np.array([[1, 0], [0, 1], [1, 1]]),
                  splits={"train": np.array([0, 1]), "test": np.array([2])},
                  image_paths=["x/1.jpg", "x/2.jpg", "y/3.jpg"])
    fields.update(changes)
    return PairedDataset(**fields)


def test_content_digest_is_stable_across_versions():
    """Records carry this digest (data_digest): if it changed for the same data, --resume
    would redo every record ever made. A deliberate change of what it covers updates this."""
    assert content_digest(_ds()) == "0cac4e71c30d79528de46474de9a530488ec8c123d64675f081cd955f475a99f"
    # the loader's dtype is no difference: features and labels are hashed as float32, indices as int64
    same = _ds(image_features=np.arange(6, dtype=np.float32).reshape(3, 2),
               text_to_image=np.array([0, 1, 2, 2], dtype=np.int32), labels=np.array([[1., 0], [0, 1], [1, 1]]))
    assert content_digest(same) == content_digest(_ds())


@pytest.mark.parametrize("change", [
    dict(text_to_image=np.array([0, 1, 1, 2])),
    dict(n_images=4, image_features=np.zeros((4, 2)), image_paths=["a", "b", "c", "d"], labels=None),
    dict(splits={"train": np.array([0]), "test": np.array([1, 2])}),
    dict(splits={"train": np.array([0, 1]), "val": np.array([2])}),
    dict(splits={"train": np.array([0, 1])}),
    dict(labels=np.array([[1, 0], [0, 1], [0, 1]])),
    dict(labels=None),
    dict(texts=["a dog", "a cat", "cafe", "two"]),
    dict(texts=None),
    dict(image_paths=["x/1.jpg", "x/2.jpg", "y/4.jpg"]),
    dict(image_paths=None),
    dict(image_ids=["1", "2", "3"]),
    dict(image_features=np.arange(6, dtype=np.float64).reshape(3, 2)[::-1].copy()),
    dict(image_features=None),
    dict(text_features=np.zeros((4, 2))),
    dict(text_features=np.zeros((4, 0))),
    dict(text_features=None),
], ids=lambda c: ",".join(c))
def test_content_digest_sees_every_part_of_the_data(change):
    assert content_digest(_ds(**change)) != content_digest(_ds())


def test_content_digest_names_images_and_samples_features():
    base = content_digest(_ds())
    # image files are named, not read: the folders they sit in are no difference
    assert content_digest(_ds(image_paths=["z/1.jpg", "z/2.jpg", "z/3.jpg"])) == base
    # image ids, where the dataset has them, name the images instead of the paths
    ids = _ds(image_ids=["1", "2", "3"])
    assert content_digest(ids) == content_digest(_ds(image_ids=["1", "2", "3"], image_paths=None))
    # of many feature rows, 1024 evenly spaced ones (the first and the last among them) are hashed
    n = 3000
    rng = np.random.default_rng(0)
    F = rng.random((n, 2))
    big = dict(n_images=n, text_to_image=np.arange(n), image_features=F, text_features=None, texts=None,
               labels=None, splits={"test": np.arange(n)}, image_paths=None)
    digest = content_digest(_ds(**big))
    sampled = set(np.unique(np.linspace(0, n - 1, 1024).astype(np.int64)).tolist())
    assert len(sampled) == 1024 and {0, n - 1} <= sampled
    skipped = next(i for i in range(n) if i not in sampled)
    for row, changes in ((skipped, False), (0, True), (n - 1, True), (sorted(sampled)[500], True)):
        G = F.copy()
        G[row] += 1.0
        assert (content_digest(_ds(**{**big, "image_features": G})) != digest) == changes, row


def test_fingerprint_cache_keeps_the_most_recent_entries(tmp_path):
    path = tmp_path / "dataset-sha256.json"
    entries = {f"k{i}": {"stat": [[i, i]], "sha256": f"{i:064x}"} for i in range(_FINGERPRINT_CACHE_SIZE + 10)}
    _write_fingerprint_cache(path, entries)
    kept = _read_fingerprint_cache(path)
    assert list(kept) == [f"k{i}" for i in range(10, _FINGERPRINT_CACHE_SIZE + 10)]
    assert _FINGERPRINT_CACHE_SIZE == 256
    assert json.loads(path.read_text())["format"] == 1
    for text in ('{"format": 2, "entries": {"k": {}}}', '{"format": 1, "entries": []}', "[]", "\xff"):
        path.write_bytes(text.encode("latin-1"))
        assert _read_fingerprint_cache(path) == {}
    assert _read_fingerprint_cache(None) == {} and _read_fingerprint_cache(tmp_path / "absent.json") == {}


def test_a_release_folder_is_hashed_with_each_file_named_by_its_path_in_the_folder(tmp_path, monkeypatch):
    """Wikipedia's release: the lists, then texts/<id>.xml; a file is named by its path in the
    folder (texts/t1.xml), not its bare name, so a file moved between subfolders is other data."""
    import hashlib

    from xmodal.evaluation.fingerprint import dataset_fingerprint

    monkeypatch.setenv("XMODAL_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "wikipedia"
    files = {"categories.list": "art\nbiology\n", "trainset_txt_img_cat.list": "t1\ti1\t1\nt2\ti2\t2\n",
             "testset_txt_img_cat.list": "t3\ti3\t1\n",
             **{f"texts/t{i}.xml": f"<text>article t{i}</text>" for i in (1, 2, 3)}}
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    want = hashlib.sha256(b"".join(n.encode() + b"\0" + t.encode() for n, t in files.items())).hexdigest()
    assert dataset_fingerprint(str(root)) == want
    assert dataset_fingerprint(str(root), cache_dir=False) == want


def test_files_modified_within_two_seconds_of_the_hash_are_not_cached(tmp_path, monkeypatch):
    """A same-size rewrite within a coarse mtime tick keeps the time: a digest is cached only
    when every file is older than 2 s (the newest counts), with the clock fixed here."""
    import os
    import types

    import xmodal.evaluation.fingerprint as fingerprint

    folder = tmp_path / "karpathy"
    folder.mkdir()
    old, new = folder / "dataset_a.json", folder / "dataset_b.json"
    old.write_text('{"images": []}')
    new.write_text('{"images": [], "x": 1}')
    t_old, t_new = 1_700_000_000 * 10**9, 1_700_000_100_500_000_000  # a fractional second counts
    os.utime(old, ns=(t_old, t_old))
    os.utime(new, ns=(t_new, t_new))
    cache = tmp_path / "cache"
    for now, cached in ((t_new / 1e9 + 1.9, False), (t_new / 1e9 + 2.0, False), (t_new / 1e9 + 2.1, True)):
        if (cache / fingerprint.FINGERPRINT_CACHE).exists():
            (cache / fingerprint.FINGERPRINT_CACHE).unlink()
        monkeypatch.setattr(fingerprint, "time", types.SimpleNamespace(time=lambda now=now: now))
        fingerprint.dataset_fingerprint(str(folder), cache_dir=cache)
        entries = fingerprint._read_fingerprint_cache(cache / fingerprint.FINGERPRINT_CACHE)
        assert bool(entries) == cached, now - t_new / 1e9
        if cached:
            (entry,) = entries.values()
            assert entry["stat"] == [[old.stat().st_size, t_old], [new.stat().st_size, t_new]]


def _aged_tree(root, seconds_ago: float = 60.0) -> None:
    import os
    import time

    t = int((time.time() - seconds_ago) * 1e9)
    for f in root.rglob("*"):
        os.utime(f, ns=(t, t))


def test_cache_entries_of_big_releases_and_of_the_older_layouts_keep_their_keys(tmp_path, monkeypatch):
    """Two releases of many files each keep an entry of their own (a digest of their paths as
    key), and an entry written for a Karpathy folder (its files' absolute paths as key, as
    before the release loaders) is still found."""
    import xmodal.evaluation.fingerprint as fingerprint

    cache = tmp_path / "cache"
    opened = []
    monkeypatch.setattr(fingerprint, "open", lambda f, *a, **k: opened.append(f) or open(f, *a, **k), raising=False)
    releases = []
    for name in ("a", "b"):
        root = tmp_path / name / "mirflickr25k"
        from xmodal.data.mirflickr import MIRFLICKR_LABELS
        for i in range(1, fingerprint._BIG_CACHE_ENTRY + 2):
            (root / "mirflickr" / "meta" / "tags").mkdir(parents=True, exist_ok=True)
            (root / "mirflickr" / "meta" / "tags" / f"tags{i}.txt").write_text(f"{name}\r\n")
        (root / "mirflickr25k_annotations_v080").mkdir()
        for c, label in enumerate(MIRFLICKR_LABELS):
            (root / "mirflickr25k_annotations_v080" / f"{label}.txt").write_text(f"{c % 6 + 1}\r\n")
        _aged_tree(root)
        releases.append(root)
    digests = [fingerprint.dataset_fingerprint(str(r), cache_dir=cache) for r in releases]
    n = len(opened)
    assert digests[0] != digests[1]
    assert [fingerprint.dataset_fingerprint(str(r), cache_dir=cache) for r in releases] == digests
    assert len(opened) == n  # both found in the cache
    keys = list(fingerprint._read_fingerprint_cache(cache / fingerprint.FINGERPRINT_CACHE))
    assert len(keys) == 2 and all(k.startswith("sha256:") and len(k) == 7 + 64 for k in keys)

    karpathy = tmp_path / "flickr8k"
    karpathy.mkdir()
    (karpathy / "dataset_flickr8k.json").write_text('{"images": []}')
    _aged_tree(karpathy)
    st = (karpathy / "dataset_flickr8k.json").stat()
    key = json.dumps([str((karpathy / "dataset_flickr8k.json").resolve())])
    fingerprint._write_fingerprint_cache(cache / fingerprint.FINGERPRINT_CACHE, {
        key: {"stat": [[st.st_size, st.st_mtime_ns]], "sha256": "ab" * 32}})
    assert fingerprint.dataset_fingerprint(str(karpathy), cache_dir=cache) == "ab" * 32
