"""Collection build and storage, pinned where mutation testing found them untested: the store's
chunking, deletion log and transactions (store.py), item checks and reports (items.py),
encoding helpers (encoding.py), and the build's folder scan, dataset items and the items a
built collection holds (build.py). Small collections with a cheap stand-in image encoder."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from xmodal.data import PairedDataset
from xmodal.data.dataset import DataError
from xmodal.index import build as build_mod
from xmodal.index import collection as collection_mod
from xmodal.index.build import _default_params, build_collection, items_from_dataset, scan_folder
from xmodal.index.encoding import _class_path, _encode_query, _load_class, encode_items
from xmodal.index.items import MAX_ID, MAX_KEY_LEN, AddReport, Hit, _checked_labels, _ids, check_key, thumb_file
from xmodal.index.store import SQL_VARS, CollectionError, ReadOnlyError, Store, UnreadableDatabaseError, in_chunks


# ------------------------------------------------------------------ store.py
def test_in_chunks_binds_every_value_once_in_pieces_sqlite_takes():
    assert list(in_chunks([])) == []
    for n in (1, SQL_VARS, SQL_VARS + 1, 2 * SQL_VARS + 5):
        parts = list(in_chunks(range(n)))
        assert [v for chunk, _ in parts for v in chunk] == list(range(n))
        assert all(len(chunk) <= SQL_VARS and marks.count("?") == len(chunk) and marks.count(",") == len(chunk) - 1
                   for chunk, marks in parts)
        assert len(parts) == -(-n // SQL_VARS) and all(type(chunk) is list for chunk, _ in parts)
    assert list(in_chunks(k for k in "ab")) == [(["a", "b"], "?,?")]  # any iterable, read once


def _store(tmp_path: Path) -> Store:
    return Store(tmp_path / "collection.db")


def _add(store: Store, keys, modality="image"):
    with store.transaction() as c:
        for k in keys:
            c.execute("INSERT INTO items (key, modality, added_at) VALUES (?, ?, 0)", (k, modality))
            iid = c.execute("SELECT id FROM items WHERE key = ?", (k,)).fetchone()[0]
            c.execute("INSERT INTO vectors (item_id, code) VALUES (?, ?)", (iid, k.encode()))


def test_the_deletion_log_is_trimmed_past_twice_keep_and_older_states_reload(tmp_path):
    s = _store(tmp_path)
    _add(s, [f"k{i}" for i in range(6)])
    assert Store.marks(s.conn) == (6, 0)
    floors = []
    for i in range(5):
        with s.transaction() as c:
            c.execute("DELETE FROM items WHERE key = ?", (f"k{i}",))
            floors.append(Store.trim_deleted(c, 2))
    # 4 rows past the floor (= 2 * keep) are kept; the 5th trims down to the last 2
    assert floors == [0, 0, 0, 0, 3]
    assert [r[0] for r in s.query("SELECT seq FROM deleted ORDER BY seq")] == [4, 5]
    assert s.deleted_floor() == 3 and Store.marks(s.conn) == (6, 5)
    assert s.changes_since(6, 2) is None  # that state saw deletions the log no longer has
    added, gone = s.changes_since(4, 3)
    assert [(r[0], r[1], r[2]) for r in added] == [(6, "image", b"k5")]  # id 5 was added, then deleted
    assert gone == [(4, "image"), (5, "image")]
    with s.transaction() as c:  # the log grows past the floor again until it holds 2 * keep
        c.execute("DELETE FROM items WHERE key = 'k5'")
        assert Store.trim_deleted(c, 2) == 3
    assert [r[0] for r in s.query("SELECT seq FROM deleted ORDER BY seq")] == [4, 5, 6]
    with s.transaction() as c:  # keep 0: every row past the floor is dropped
        assert Store.trim_deleted(c, 0) == 6
    assert s.query("SELECT seq FROM deleted") == [] and s.deleted_floor() == 6
    s.close()


def test_a_log_never_written_is_never_trimmed(tmp_path):
    s = _store(tmp_path)
    with s.transaction() as c:
        assert Store.trim_deleted(c, 0) == 0
    assert s.deleted_floor() == 0 and s.changes_since(0, 0) == ([], [])
    s.close()


def test_a_failed_transaction_keeps_nothing_and_the_next_one_works(tmp_path):
    s = _store(tmp_path)
    _add(s, ["a"])
    with pytest.raises(sqlite3.IntegrityError):
        with s.transaction() as c:
            Store.bump_generation(c)
            c.execute("INSERT INTO items (key, modality, added_at) VALUES ('b', 'image', 0)")
            c.execute("INSERT INTO items (key, modality, added_at) VALUES ('a', 'image', 0)")
    assert [r[0] for r in s.query("SELECT key FROM items")] == ["a"] and s.generation() == 0
    with s.transaction() as c:
        assert Store.bump_generation(c) == 1
        assert Store.bump_generation(c) == 2
    assert s.generation() == 2 and s.get_meta("nothing", "dflt") == "dflt"
    s.close()


def test_vectors_come_in_id_order_per_modality_and_by_chunks(tmp_path):
    s = _store(tmp_path)
    _add(s, [f"i{j}" for j in range(SQL_VARS + 3)])
    _add(s, ["t0", "t1"], "text")
    ids, codes, fvecs = s.vectors("text")
    assert ids.tolist() == [SQL_VARS + 4, SQL_VARS + 5] and codes == [b"t0", b"t1"] and fvecs == [None, None]
    want = list(range(SQL_VARS + 5, 0, -1)) + [10 ** 9]  # every id, reversed, and one that has none
    ids, codes, fvecs = s.vectors_of(np.asarray(want))
    assert ids.tolist() == list(range(1, SQL_VARS + 6)) and fvecs == [None] * (SQL_VARS + 5)
    assert codes[0] == b"i0" and codes[-1] == b"t1"
    assert sorted(s.item_ids("image").tolist()) == list(range(1, SQL_VARS + 4))
    s.close()


def test_damaged_meta_and_foreign_databases_are_named(tmp_path):
    s = _store(tmp_path)
    with s.transaction() as c:
        c.execute("INSERT INTO meta (key, value) VALUES ('bad', 'not json')")
    with pytest.raises(UnreadableDatabaseError, match="meta 'bad' is damaged"):
        s.get_meta("bad")
    with pytest.raises(UnreadableDatabaseError):
        s.all_meta()
    s.close()
    other = tmp_path / "other.db"
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE photos (x)")
    con.commit()
    con.close()
    with pytest.raises(CollectionError, match="not an xmodal collection.*photos"):
        Store(other)


def test_a_read_only_store_refuses_writes_and_unmerged_wal(tmp_path):
    s = _store(tmp_path)
    _add(s, ["a"])
    s.close()
    wal = tmp_path / "collection.db-wal"
    if wal.exists() and wal.stat().st_size:
        Store(tmp_path / "collection.db").close()
    ro = Store(tmp_path / "collection.db", read_only=True)
    assert ro.read_only and ro.immutable
    assert ro.query("SELECT key FROM items") == [("a",)]
    with pytest.raises(ReadOnlyError, match=re.escape(f"{tmp_path}: the collection is open read-only: opened read-only (--read-only)")):
        with ro.transaction():
            pass
    with ro.reading() as c:
        assert c.execute("SELECT count(*) FROM items").fetchone() == (1,)
    ro.close()
    wal.write_bytes(b"x" * 10)
    with pytest.raises(CollectionError, match="not yet merged"):
        Store(tmp_path / "collection.db", read_only=True)


# ------------------------------------------------------------------ items.py
def test_ids_are_whole_numbers_within_sqlite_range():
    assert _ids([1, 2.0, np.int64(3), np.float32(4.0), "5"]) == [1, 2, 3, 4, 5]
    assert _ids([MAX_ID, MAX_ID + 1, -MAX_ID - 1, -MAX_ID - 2]) == [MAX_ID, -MAX_ID - 1]
    for bad in (2.5, np.float64(0.5), "x", None):
        with pytest.raises(DataError, match="not an integer"):
            _ids([bad])


def test_keys_and_labels_are_checked_naming_the_item():
    assert check_key(" a") == " a" and check_key("k" * MAX_KEY_LEN) == "k" * MAX_KEY_LEN
    for bad in ("", "k" * (MAX_KEY_LEN + 1), 3):
        with pytest.raises(DataError, match="non-empty string"):
            check_key(bad)
    with pytest.raises(DataError, match="control characters"):
        check_key("a\x1fb")
    assert _checked_labels("x", None) == []
    assert _checked_labels("x", (3, np.int64(4), "b")) == ["3", "4", "b"]
    with pytest.raises(DataError, match="x: labels must be a list of strings, not the single string"):
        _checked_labels("x", "beach")
    with pytest.raises(DataError, match="got int"):
        _checked_labels("x", 5)
    for bad in (True, np.bool_(True), 1.5, "bad\udcff"):
        with pytest.raises(DataError, match=r"x: labels\[1\]"):
            _checked_labels("x", ["ok", bad])


def test_add_reports_count_and_merge_and_hits_serialise():
    a = AddReport(added=1, replaced=2, unchanged=3, moved=4, relabelled=5, ids=[1], skipped=["p"], removed=6)
    assert a.counts() == {"added": 1, "replaced": 2, "moved": 4, "relabelled": 5, "unchanged": 3,
                          "skipped": 1, "removed": 6}
    a.merge(AddReport(added=10, replaced=20, unchanged=30, ids=[7, 8]))
    assert (a.added, a.replaced, a.unchanged, a.ids) == (11, 22, 3, [1, 7, 8])
    h = Hit(id=1, score=0.5, modality="image", key="k", labels=("a",))
    assert h.to_dict() == {"id": 1, "score": 0.5, "modality": "image", "key": "k", "path": None, "text": None,
                           "labels": ["a"], "pair_id": None}
    assert Hit(id=1, score=0.5, modality="image", key="k", shard="s").to_dict()["shard"] == "s"
    assert thumb_file(Path("t"), "abc", 128) == Path("t/abc_128_v2.jpg")
    assert thumb_file(Path("t"), "abc", 256, ".jpg") == Path("t/abc_256.jpg")


# ------------------------------------------------------------------ encoding.py
class _Plain:
    """An encoder without ``return_mask``: every row taken as read."""

    spec = "plain"

    def encode(self, items, batch_size=None, progress=None):
        return [[float(len(x))] for x in items]


class _Masked:
    spec = "masked"

    def encode(self, items, progress=None, cache_dir=None, return_mask=False):
        return np.ones((len(items), 2)), np.asarray([x != "bad" for x in items])


def test_encoding_helpers():
    F, ok = encode_items(_Plain(), ["ab", "c"])
    assert F.dtype == np.float32 and F.tolist() == [[2.0], [1.0]] and ok.tolist() == [True, True]
    assert _encode_query(_Plain(), "abc").tolist() == [[3.0]]
    assert _encode_query(_Masked(), ["a", "b"]).shape == (2, 2)
    with pytest.raises(DataError, match="query bad: the masked encoder"):
        _encode_query(_Masked(), ["a", "bad"])
    assert _load_class(_class_path(AddReport())) is AddReport
    assert _load_class("xmodal.index.items:Hit") is Hit


# ------------------------------------------------------------------ build.py
def _png(path: Path, colour=(10, 20, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path)


def test_scan_folder_takes_images_in_order_with_their_sidecar_captions_and_labels(tmp_path):
    src = tmp_path / "src"
    _png(src / "b.png")
    _png(src / "a.jpg")
    (src / "a.txt").write_text("\ufefffirst\n\n  second  \n", encoding="utf-8")
    (src / "b.png.txt").write_text("bee\n")
    _png(src / "sub" / "c.png")
    (src / "sub" / "c.txt").write_text("sea")
    _png(src / ".hidden.png")
    _png(src / ".cache" / "x.png")
    _png(src / "old.xmc" / "thumb.png")
    (src / "old.xmc" / "collection.db").write_bytes(b"")
    (src / "notes.txt").write_text("not an image")
    images, texts = scan_folder(src)
    assert [(i.key, i.labels) for i in images] == [("a.jpg", []), ("b.png", []), ("sub/c.png", ["sub"])]
    assert [i.path for i in images] == [str((src / k).resolve()) for k in ("a.jpg", "b.png", "sub/c.png")]
    assert [(t.key, t.text, t.pair_key, t.labels) for t in texts] == [
        ("a.jpg#0", "first", "a.jpg", []), ("a.jpg#1", "second", "a.jpg", []),
        ("b.png#0", "bee", "b.png", []), ("sub/c.png#0", "sea", "sub/c.png", ["sub"])]
    (src / "a.txt").write_bytes(b"caf\xe9")
    with pytest.raises(DataError, match=r"a\.txt: captions must be UTF-8"):
        scan_folder(src)
    with pytest.raises(DataError, match="not a folder"):
        scan_folder(tmp_path / "not_here")


def test_scan_folder_refuses_an_empty_folder(tmp_path):
    (tmp_path / "e").mkdir()
    with pytest.raises(DataError, match="no images found"):
        scan_folder(tmp_path / "e")


def test_items_from_a_dataset_keep_ids_labels_and_caption_numbers(tmp_path):
    root = tmp_path / "ds"
    paths = [str(root / "imgs" / f"{i}.jpg") for i in range(3)]
    ds = PairedDataset(name="d", text_to_image=np.asarray([1, 0, 1, 2]), n_images=3, image_paths=paths,
                       texts=["b0", "a0", "b1", "c0"], labels=np.asarray([[1, 0, 0], [0, 1, 1], [0, 0, 0]]),
                       label_names=["x", "y", "z"], root=str(root))
    images, texts = items_from_dataset(ds)
    assert [i.key for i in images] == ["imgs/0.jpg", "imgs/1.jpg", "imgs/2.jpg"]
    assert [list(i.labels) for i in images] == [["x"], ["y", "z"], []]
    assert [(t.key, t.text, t.pair_key) for t in texts] == [
        ("imgs/1.jpg#0", "b0", "imgs/1.jpg"), ("imgs/0.jpg#0", "a0", "imgs/0.jpg"),
        ("imgs/1.jpg#1", "b1", "imgs/1.jpg"), ("imgs/2.jpg#0", "c0", "imgs/2.jpg")]
    assert texts[0].labels == ["y", "z"]
    ds.label_names = None  # unnamed label columns: their numbers
    assert [list(i.labels) for i in items_from_dataset(ds)[0]] == [["0"], ["1", "2"], []]
    ds.image_ids = ["p", "q", "r"]
    images, texts = items_from_dataset(ds)
    assert [i.key for i in images] == ["p", "q", "r"] and texts[2].key == "q#1"
    ds.image_ids, ds.root, ds.labels = None, str(tmp_path / "elsewhere"), None
    images, _ = items_from_dataset(ds)
    assert [i.key for i in images] == paths and all(i.labels == [] for i in images)
    ds.image_paths = None
    with pytest.raises(DataError, match="'d' has no image files"):
        items_from_dataset(ds)


def test_default_params_clamp_components_to_what_the_data_allows():
    assert _default_params("cca", None, 100, 50, 200) == {"n_components": 50, "reg": 1e-2}
    assert _default_params("cca", None, 100, 80, 30)["n_components"] == 29
    assert _default_params("cca", None, 100, 80, 1)["n_components"] == 1
    assert _default_params("cca", {"n_components": 90}, 10, 10, 5)["n_components"] == 90  # asked for: kept
    assert _default_params("cca", {"reg": 0.5, "nonsense": 1}, 8, 9, 100) == {"n_components": 8, "reg": 0.5}


class MeanColour:
    """A stand-in image encoder: mean RGB of a file; unreadable files masked out."""

    spec = "mean-colour-test"
    dim = 3

    def encode(self, items, batch_size=None, progress=None, cache_dir=None, return_mask=False):
        out = np.zeros((len(items), 3), np.float32)
        ok = np.zeros(len(items), bool)
        for r, p in enumerate(items):
            try:
                with Image.open(p) as im:
                    out[r] = np.asarray(im.convert("RGB"), np.float32).reshape(-1, 3).mean(0) / 255.0
                ok[r] = True
            except OSError:
                pass
        return (out, ok) if return_mask else out


@pytest.fixture
def fake_encoder(monkeypatch):
    enc = MeanColour()
    real = collection_mod.get_encoder
    monkeypatch.setattr(collection_mod, "get_encoder",
                        lambda spec, modality=None: enc if spec == MeanColour.spec else real(spec, modality))
    return enc


def _photos(src: Path, n: int) -> None:
    rng = np.random.default_rng(0)
    for i in range(n):
        label = "even" if i % 2 == 0 else "odd"
        _png(src / label / f"p{i}.png", tuple(int(v) for v in rng.integers(0, 255, 3)))
        (src / label / f"p{i}.txt").write_text(f"photo {i} {label}\nanother line {i}\n")


def _stored(coll):
    return coll.store.query("SELECT i.key, i.modality, i.path, i.text, p.key FROM items i "
                            "LEFT JOIN items p ON p.id = i.pair_id ORDER BY i.id")


def test_a_built_collection_holds_exactly_the_source_items_in_order(tmp_path, fake_encoder):
    src = tmp_path / "src"
    _photos(src, 5)
    (src / "odd" / "broken.png").write_bytes(b"not a png")
    (src / "odd" / "broken.txt").write_text("lost caption\n")
    coll = build_collection(src, tmp_path / "c.xmc", image_encoder=fake_encoder, text_encoder="tfidf:20",
                            quiet=True, search=False, batch_size=2)
    try:
        images, texts = scan_folder(src)
        good = [i for i in images if not i.key.endswith("broken.png")]
        rows = _stored(coll)
        assert [r[0] for r in rows if r[1] == "image"] == [i.key for i in good]
        assert [r[2] for r in rows if r[1] == "image"] == [i.path for i in good]
        assert [(r[0], r[3], r[4]) for r in rows if r[1] == "text"] == [
            (t.key, t.text, t.pair_key) for t in texts if t.pair_key != "odd/broken.png"]
        assert coll.last_add.skipped == [str((src / "odd" / "broken.png").resolve())]
        labels = dict(coll.store.query("SELECT i.key, l.label FROM item_labels l JOIN items i ON i.id = l.item_id "
                                       "WHERE i.modality = 'image'"))
        assert labels == {i.key: i.labels[0] for i in good}
        assert coll.count("image") == 5 and coll.count("text") == 10
    finally:
        coll.close()
    # a rerun resumes: nothing re-added; a new photo is added, a deleted one pruned
    _png(src / "even" / "p9.png", (1, 2, 3))
    (src / "odd" / "p1.png").unlink()
    coll = build_collection(src, tmp_path / "c.xmc", quiet=True, prune=True)
    try:
        rep = coll.last_add
        assert (rep.added, rep.unchanged, rep.removed) == (1, 12, 3)
        assert [r[0] for r in _stored(coll) if r[1] == "image"] == [
            "even/p0.png", "even/p2.png", "even/p4.png", "odd/p3.png", "even/p9.png"]
    finally:
        coll.close()


def test_held_twice_pairs_each_new_image_with_the_first_older_one(tmp_path, fake_encoder):
    src = tmp_path / "src"
    _photos(src, 3)
    coll = build_collection(src, tmp_path / "c.xmc", image_encoder=fake_encoder, text_encoder="tfidf:20",
                            quiet=True, search=False)
    try:
        import shutil

        shutil.copy(src / "even" / "p0.png", tmp_path / "copy.png")
        from xmodal.index import ImageItem

        rep = coll.add_items([ImageItem("zz/copy.png", str(tmp_path / "copy.png"))], progress=False)
        assert build_mod._held_twice(coll, rep.ids) == [("zz/copy.png", "even/p0.png")]
        assert build_mod._held_twice(coll, [coll.id_of("odd/p1.png")]) == []
    finally:
        coll.close()


def test_method_files_are_told_from_registry_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert build_mod._is_method_file(Path("cca")) and not build_mod._is_method_file(object())
    assert build_mod._is_method_file("gone.zip") and not build_mod._is_method_file("cca")
    for name in ("cca", "mine", "m.xmodal", ".hidden"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "cca").write_bytes(b"x")
    assert not build_mod._is_method_file("cca")  # a registry name that is also a file here
    assert all(build_mod._is_method_file(n) for n in ("mine", "m.xmodal", ".hidden", "sub/cca"))
    with pytest.raises(CollectionError, match="mine: not a saved xmodal method"):
        build_mod._fitted_method("mine")
    assert build_mod._fitted_method("cca") is None and build_mod._fitted_method(Path("nope.zip")) is None
    with pytest.raises(CollectionError, match="gone.zip: no such fitted method file"):
        build_mod._check_method("gone.zip", "Flat", "src", [])


def test_encoder_specs_and_option_words():
    assert build_mod._spec(" tfidf ") == "tfidf" and build_mod._spec(" a + b ") == "a+b"
    assert build_mod._spec(MeanColour()) == MeanColour.spec and build_mod._spec(object()) is None
    O = build_mod.OtherOption
    assert build_mod._argument_words(O("method", "pca", "cca")) == "method 'pca' (it has 'cca')"
    assert build_mod._argument_words(O("index", "HNSW32", None)) == "index HNSW32 (it has none)"
    assert build_mod._argument_words(O("rerank", True, False, "why")) == "rerank (why)"
    assert build_mod._argument_words(O("rerank", False, True, "why")) == "rerank=False (why)"
    assert build_mod._argument_words(O("text_encoder", "tfidf", "tfidf", "fitted elsewhere")) == \
        "text_encoder tfidf fitted elsewhere"
    assert build_mod._argument_words(O("method", object(), "cca", "other")) == "method object object (other)"


def test_too_few_captioned_images_are_refused_counting_the_skipped():
    from xmodal.index import TextItem

    one = [TextItem("a#0", "x", "a"), TextItem("a#1", "y", "a")]
    with pytest.raises(CollectionError, match=r"only 1 captioned image to fit method 'cca' on; "):
        build_mod._check_method("cca", "Flat", "src", one)
    with pytest.raises(CollectionError, match=r"on \(1 unreadable image skipped\)"):
        build_mod._check_method("cca", "Flat", "src", one, skipped=1)
    with pytest.raises(CollectionError, match=r"on \(3 unreadable images skipped\)"):
        build_mod._check_method("cca", "Flat", "src", one, skipped=3)
    with pytest.raises(CollectionError, match="no captions to fit"):
        build_mod._check_method("cca", "Flat", "src", [])
    build_mod._check_method("cca", "Flat", "src", one + [TextItem("b#0", "z", "b")])


def test_the_parameter_search_grid_is_capped_by_the_smallest_training_fold(monkeypatch):
    from xmodal.evaluation import select

    seen = {}

    def fake_select(name, grid, ds, base, folds, max_images, split):
        seen.update(grid=grid, n_images=ds.n_images, folds=folds, max_images=max_images, split=split)
        return select.Selection(params={**base, "n_components": 8, "reg": 1.0}, score=50.0, metric="mR",
                                folds=folds, n_images=ds.n_images)

    monkeypatch.setattr(select, "select_params", fake_select)

    def ds(n_images, captioned, dx=64, dy=32):
        t2i = np.repeat(np.arange(captioned), 2)
        return PairedDataset(name="d", text_to_image=t2i, n_images=n_images,
                             image_features=np.ones((n_images, dx)), text_features=np.ones((len(t2i), dy)))

    base = {"n_components": 64, "reg": 1e-2}
    assert build_mod._searched_params("cca", None, base, ds(20, 14), True) is base  # too few images
    assert not seen
    out = build_mod._searched_params("cca", None, base, ds(22, 20), True)
    # 20 captioned images (the 2 without captions left out), 3 folds: 13 train, 12 components at most
    assert seen["grid"] == {"n_components": [8, 12], "reg": [0.1, 1.0, 10.0]} and seen["n_images"] == 20
    assert (seen["folds"], seen["max_images"], seen["split"]) == (3, 1000, None) and out["reg"] == 1.0
    build_mod._searched_params("cca", {"reg": 5.0}, base, ds(3000, 3000, 256, 256), True)
    # 1000 images searched at most: 666 train; the given reg is not searched
    assert seen["grid"] == {"n_components": [8, 16, 32, 64, 128]} and seen["n_images"] == 3000
    assert build_mod._searched_params("pls", None, base, ds(20, 20), True) is base  # no grid


class _Recorder:
    """Records the keyword arguments it is encoded with."""

    spec = "recorder"

    def __init__(self, modality=None):
        self.modality, self.calls = modality, []

    def encode(self, items, **kw):
        self.calls.append(kw)
        return np.zeros((len(items), 2)), np.ones(len(items), bool)


def test_items_encode_without_bars_and_queries_past_the_cache():
    enc = _Recorder()
    encode_items(enc, ["a"])
    encode_items(enc, ["a"], progress=None, batch_size=7)
    _encode_query(enc, "q")
    assert enc.calls == [{"batch_size": None, "progress": False, "return_mask": True},
                         {"batch_size": 7, "progress": None, "return_mask": True},
                         {"progress": False, "cache_dir": False, "return_mask": True}]


def test_an_encoder_object_of_the_other_modality_is_refused():
    from xmodal.encoders import EncoderError
    from xmodal.index.encoding import get_encoder

    img, txt = _Recorder("image"), _Recorder("text")
    assert get_encoder(img, "image") is img and get_encoder(txt) is txt and get_encoder(_Recorder(), "text")
    with pytest.raises(EncoderError, match="'recorder' is an image encoder, but a text encoder is needed here"):
        get_encoder(img, "text")
    with pytest.raises(EncoderError, match="'recorder' is a text encoder, but an image encoder is needed here"):
        get_encoder(txt, "image")


class _Projecting:
    """What CrossModalMethod.encode_images / encode_texts ask of a method (before the sign)."""

    image_dim_ = text_dim_ = 2

    def _check_fitted(self):
        pass

    def _check_input(self, X, dim, what):
        return X

    def _encode_images(self, X):
        return X + 1

    def _encode_texts(self, Y):
        return Y - 1


def test_the_float_projection_takes_each_modality_through_its_own_side():
    from xmodal.index.encoding import _float_projection

    z = np.zeros((1, 2))
    img, txt = _float_projection(_Projecting(), "image", z), _float_projection(_Projecting(), "text", z)
    assert img.tolist() == [[1.0, 1.0]] and txt.tolist() == [[-1.0, -1.0]] and txt.dtype == np.float32


def test_decodes_tells_an_image_from_a_damaged_file(tmp_path):
    from xmodal.index.items import _decodes

    _png(tmp_path / "ok.png")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    assert _decodes(str(tmp_path / "ok.png")) is True and _decodes(str(tmp_path / "bad.png")) is False


def test_a_store_cascades_deletes_logs_them_and_follows_another_writer(tmp_path):
    s = _store(tmp_path)
    assert s.query("PRAGMA journal_mode") == [("wal",)] and s.query("PRAGMA foreign_keys") == [(1,)]
    follower = Store(tmp_path / "collection.db", follow=True)
    assert follower.read_only and not follower.immutable
    _add(s, ["a", "b"])
    with s.transaction() as c:
        c.execute("DELETE FROM items WHERE key = 'a'")
    assert s.query("SELECT item_id FROM vectors") == [(2,)]  # its vector went with it
    assert follower.query("SELECT item_id, modality FROM deleted") == [(1, "image")]
    assert Store.marks(follower.conn) == (2, 1)
    follower.close()
    s.conn.execute("DROP TABLE deleted")  # a collection of an xmodal without the log
    assert Store.marks(s.conn) == (2, None)
    s.close()


def test_a_store_of_another_format_is_left_untouched(tmp_path):
    db = tmp_path / "collection.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    con.execute("INSERT INTO meta VALUES ('format', '99')")
    con.commit()
    con.close()
    s = Store(db)
    assert s.get_meta("format") == 99
    assert [r[0] for r in s.query("SELECT name FROM sqlite_master WHERE type = 'table'")] == ["meta"]
    assert s.query("PRAGMA journal_mode") == [("delete",)]
    s.close()


def test_symlinked_sub_folders_are_followed_once_each(tmp_path):
    import os

    src, disk = tmp_path / "src", tmp_path / "disk"
    _png(src / "a.png")
    _png(disk / "lib" / "b.png")
    os.symlink(disk / "lib", src / "linked")
    os.symlink(disk / "lib", src / "again")  # a second link to the same folder: walked once
    os.symlink(src, src / "loop")  # a link into the folder itself: never walked
    _png(src / "real" / "c.png")
    os.symlink(src / "real", src / "zz_to_real")  # its target is walked under its own name
    _png(tmp_path / "src_more" / "d.png")
    os.symlink(tmp_path / "src_more", src / "more")  # a sibling whose name starts like the folder's: outside it
    images, _ = scan_folder(src)
    assert [i.key for i in images] == ["a.png", "again/b.png", "more/d.png", "real/c.png"]
    assert images[1].path == str((disk / "lib" / "b.png").resolve()) and images[1].labels == ["again"]
    os.symlink(src / "y_loop.png", src / "x_loop.png")  # a symlink loop: kept as is (then skipped as unreadable)
    os.symlink(src / "x_loop.png", src / "y_loop.png")
    images, _ = scan_folder(src)
    assert [(i.key, i.path) for i in images if "loop" in i.key] == [
        ("x_loop.png", str(src / "x_loop.png")), ("y_loop.png", str(src / "y_loop.png"))]


def test_sources_that_are_not_there_or_take_no_loader_options_are_named(tmp_path):
    from xmodal.index.build import scan_source

    with pytest.raises(DataError, match=r"nosuch: no such file or folder \(nor a dataset name: "):
        scan_source("nosuch")
    for given in ("no/such", "nosuch.json", "./nosuch"):
        with pytest.raises(DataError, match="no such file or folder$"):
            scan_source(given)
    _png(tmp_path / "imgs" / "a.png")
    with pytest.raises(DataError, match="loader options \\(n_val\\) apply to a dataset"):
        scan_source(tmp_path / "imgs", {"n_val": 1})
    assert [i.key for i in scan_source(tmp_path / "imgs")[0]] == ["a.png"]


class _FittedStub:
    image_dim_, text_dim_ = 5, 2
    feature_encoders_ = None


class _Dim:
    def __init__(self, spec, dim):
        self.spec, self._dim = spec, dim

    @property
    def dim(self):
        if self._dim is None:
            raise RuntimeError("known once encoded")
        return self._dim


def test_a_fitted_method_of_other_widths_is_refused_before_encoding():
    build_mod._check_widths(_FittedStub(), "m.zip", _Dim("i", 5), _Dim("t", 2))
    build_mod._check_widths(_FittedStub(), "m.zip", _Dim("i", None), _Dim("t", 2))
    with pytest.raises(CollectionError, match=r"m\.zip: .* takes image features of 5 columns, but the image encoder "
                                              r"i gives 3; it records no encoders"):
        build_mod._check_widths(_FittedStub(), "m.zip", _Dim("i", 3), _Dim("t", 2))
    rec = _FittedStub()
    rec.feature_encoders_ = {"text": "tfidf"}
    with pytest.raises(CollectionError, match=r"text features of 2 columns, but the text encoder t gives 4; "
                                              r"pass the encoders it was fitted with"):
        build_mod._check_widths(rec, "m.zip", _Dim("i", 5), _Dim("t", 4))


def test_an_existing_collection_names_each_option_it_was_not_made_with(tmp_path, fake_encoder):
    src = tmp_path / "src"
    _photos(src, 3)
    coll = build_collection(src, tmp_path / "c.xmc", image_encoder=fake_encoder, text_encoder="tfidf:20",
                            quiet=True, search=False, method_params={"n_components": 2})
    try:
        assert build_mod.other_options(coll, {"method": "cca", "index": "Flat", "rerank": False,
                                              "method_params": {"n_components": 2},
                                              "image_encoder": MeanColour.spec, "text_encoder": "tfidf:20"}) == []
        got = build_mod.other_options(coll, {"index": "HNSW32", "rerank": True,
                                             "method_params": {"n_components": 3, "reg": 0.01},
                                             "image_encoder": "efficientnet-lite0", "text_encoder": " tfidf:20 "})
        assert [(o.name, o.asked, o.has) for o in got] == [
            ("method_params", {"n_components": 3}, coll.meta["method"]["params"]),
            ("index", "HNSW32", "Flat"), ("rerank", True, False), ("image_encoder", "efficientnet-lite0", MeanColour.spec)]
        with pytest.raises(build_mod.OtherOptionsError, match=r"c\.xmc: an existing collection .* asked for "
                                                              r"method 'pls' \(it has 'cca'\); index HNSW32 \(it has Flat\)"):
            build_mod._refuse_other_options(coll, {"method": "pls", "index": "HNSW32", "rerank": False})
        build_mod._refuse_other_options(coll, {"rerank": False, "index": "Flat"})  # rerank False: not asked
    finally:
        coll.close()


def test_encoders_come_from_the_call_else_the_method_else_the_defaults():
    class Rec:
        feature_encoders_ = {"image": "efficientnet-lite0"}

    assert build_mod._resolve_encoders(None, "cca", None, None) == (build_mod.DEFAULT_IMAGE_ENCODER,
                                                                     build_mod.DEFAULT_TEXT_ENCODER)
    assert build_mod._resolve_encoders(Rec(), "m.zip", None, "bow") == ("efficientnet-lite0", "bow")
    assert build_mod._resolve_encoders(Rec(), "m.zip", " efficientnet-lite0 ", None)[0] == " efficientnet-lite0 "
    with pytest.raises(CollectionError, match="m.zip: .*image encoder mobilenet-v2 given, but it was fitted on "
                                              "efficientnet-lite0 features"):
        build_mod._resolve_encoders(Rec(), "m.zip", "mobilenet-v2", None)
    assert build_mod._needs_fit("minilm + tfidf:9") and build_mod._needs_fit("bow")
    assert not build_mod._needs_fit("minilm") and not build_mod._needs_fit("efficientnet-lite0+mobilenet-v2")


def test_a_rerun_keeps_what_the_source_lost_unless_asked_to_prune(tmp_path, fake_encoder):
    src = tmp_path / "src"
    _photos(src, 3)
    build_collection(src, tmp_path / "c.xmc", image_encoder=fake_encoder, text_encoder="tfidf:20",
                     quiet=True, search=False).close()
    (src / "odd" / "p1.png").unlink()
    coll = build_collection(src, tmp_path / "c.xmc", quiet=True)
    try:
        assert coll.count("image") == 3 and coll.last_add.removed == 0 and coll.id_of("odd/p1.png")
    finally:
        coll.close()


def test_a_supervised_method_is_fitted_on_the_folder_labels(tmp_path, fake_encoder):
    src = tmp_path / "src"
    _photos(src, 6)
    coll = build_collection(src, tmp_path / "c.xmc", method="mlcca", image_encoder=fake_encoder,
                            text_encoder="tfidf:20", quiet=True, search=False)
    try:
        assert coll.stats()["method"] == "mlcca" and coll.count("image") == 6
    finally:
        coll.close()


class _TextOfUnknownWidth:
    """A text encoder whose width only encoding tells (the check after encoding catches it)."""

    spec, modality = "unknown-width-text", "text"

    @property
    def dim(self):
        raise RuntimeError("known once encoded")

    def encode(self, items, batch_size=None, progress=None, return_mask=False):
        F = np.asarray([[len(t), t.count(" "), 1.0] for t in items], np.float32)
        return (F, np.ones(len(items), bool)) if return_mask else F


def test_a_fitted_method_refusing_the_text_features_is_named_before_the_collection_exists(tmp_path, fake_encoder):
    from xmodal import methods

    rng = np.random.default_rng(0)
    ds = PairedDataset(name="r", text_to_image=np.arange(20), n_images=20, image_features=rng.normal(size=(20, 3)),
                       text_features=rng.normal(size=(20, 4)))
    fitted = methods.create("cca", n_components=2).fit(ds)
    src = tmp_path / "src"
    _photos(src, 3)
    with pytest.raises(CollectionError, match="this fitted method does not take the encoders' features"):
        build_collection(src, tmp_path / "c.xmc", method=fitted, image_encoder=fake_encoder,
                         text_encoder=_TextOfUnknownWidth(), quiet=True)
    assert not (tmp_path / "c.xmc").exists()


def test_a_plan_says_what_a_build_would_do_and_prunes_only_when_asked(tmp_path, fake_encoder):
    from xmodal.index.build import plan_collection

    src = tmp_path / "src"
    _photos(src, 3)
    plan = plan_collection(src, tmp_path / "c.xmc", method_params={"n_components": 2}, text_encoder="tfidf:20")
    assert plan == {"source": str(src), "collection": str(tmp_path / "c.xmc"), "images": 3, "texts": 6,
                    "action": "create", "method": "cca", "params": {"n_components": 2}}
    assert not (tmp_path / "c.xmc").exists()
    build_collection(src, tmp_path / "c.xmc", image_encoder=fake_encoder, text_encoder="tfidf:20",
                     quiet=True, search=False).close()
    (src / "odd" / "p1.png").unlink()
    kept, pruned = plan_collection(src, tmp_path / "c.xmc"), plan_collection(src, tmp_path / "c.xmc", prune=True)
    assert kept["action"] == pruned["action"] == "update" and kept["images"] == 2
    assert "removed" not in kept and [r["key"] for r in pruned["removed"]] == ["odd/p1.png", "odd/p1.png#0", "odd/p1.png#1"]


def test_an_sbert_folder_with_a_plus_in_its_path_keeps_its_spec(tmp_path):
    folder = tmp_path / "models" / "a + b"
    folder.mkdir(parents=True)
    assert build_mod._spec(f" sbert:{folder} ") == f"sbert:{folder}"  # one model, not two parts stripped


def test_a_plan_refuses_bad_method_params_and_another_method_file_is_another_method(tmp_path, fake_encoder):
    from xmodal import methods
    from xmodal.index.build import plan_collection

    src = tmp_path / "src"
    _photos(src, 3)
    from xmodal.methods.base import ParameterError

    with pytest.raises(ParameterError, match="nonsense"):
        plan_collection(src, tmp_path / "new.xmc", method_params={"nonsense": 1})
    coll = build_collection(src, tmp_path / "c.xmc", image_encoder=fake_encoder, text_encoder="tfidf:20",
                            quiet=True, search=False)
    try:
        own = coll.path / coll.meta["method"]["file"]
        assert build_mod.other_options(coll, {"method": own}) == []
        rng = np.random.default_rng(0)
        ds = PairedDataset(name="r", text_to_image=np.arange(20), n_images=20,
                           image_features=rng.normal(size=(20, 3)), text_features=rng.normal(size=(20, 20)))
        other = methods.create("cca", n_components=2).fit(ds).save(tmp_path / "other.zip")
        got = build_mod.other_options(coll, {"method": other})
        assert [(o.name, o.reason) for o in got] == [("method", "another fitted method than its cca")]
        assert build_mod.other_options(coll, {"method": coll.method}) == []  # a method object, by content
        got = build_mod.other_options(coll, {"method": methods.load(str(other))})
        assert [(o.name, o.reason) for o in got] == [("method", "another fitted method than its cca")]
        with pytest.raises(ParameterError, match="nonsense"):  # the collection's method's own rules
            build_mod.other_options(coll, {"method_params": {"nonsense": 1}})
    finally:
        coll.close()


def test_a_model_file_digest_reads_member_names_and_contents_not_write_times(tmp_path):
    import hashlib
    import time
    import zipfile

    from xmodal.index.encoding import _digest_file

    def digest(members, name):
        with zipfile.ZipFile(tmp_path / name, "w") as zf:
            for member, data in members.items():
                zf.writestr(zipfile.ZipInfo(member, time.localtime(time.time() + len(name))[:6]), data)
        h = hashlib.sha256()
        _digest_file(h, tmp_path / name)
        return h.hexdigest()

    base = digest({"meta.json": b"{}", "w.npy": b"123"}, "a.zip")
    assert digest({"w.npy": b"123", "meta.json": b"{}"}, "later.zip") == base  # order and times aside
    assert digest({"meta.json": b"{}", "w.npy": b"124"}, "b.zip") != base
    assert digest({"ab": b"c"}, "c.zip") != digest({"a": b"bc"}, "d.zip")


def test_a_method_recording_a_fitted_encoder_without_its_state_is_refused():
    class Old:
        feature_encoders_ = {"text": "tfidf"}

        def feature_encoder(self, modality):
            return None

    with pytest.raises(CollectionError, match="m.zip: fitted on the features of a fitted text encoder tfidf, but "
                                              "the file does not keep their fitted state"):
        build_mod._resolve_encoders(Old(), "m.zip", None, None)


def test_audit_details_are_stored_with_sorted_keys(tmp_path):
    s = _store(tmp_path)
    with s.transaction() as c:
        Store.audit(c, "me", "add", {"b": 1, "a": 2}, remote="1.2.3.4")
        Store.audit(c, "me", "note", "as is")
    assert s.query("SELECT actor, action, detail, remote FROM audit ORDER BY id") == [
        ("me", "add", '{"a": 2, "b": 1}', "1.2.3.4"), ("me", "note", "as is", None)]
    s.close()


def test_a_rerun_that_moves_nothing_says_nothing_of_moves(tmp_path, fake_encoder, capsys):
    src = tmp_path / "src"
    _photos(src, 3)
    build_collection(src, tmp_path / "c.xmc", image_encoder=fake_encoder, text_encoder="tfidf:20",
                     quiet=True, search=False).close()
    capsys.readouterr()
    build_collection(src, tmp_path / "c.xmc", quiet=False).close()
    err = capsys.readouterr().err
    assert "moved" not in err and "relabelled" not in err and "skipping" not in err


def test_the_sidecar_that_names_the_whole_file_wins(tmp_path):
    """a.jpg and a.png share a.txt, but a.jpg.txt is a.jpg's own: it wins for a.jpg."""
    from PIL import Image

    from xmodal.index.build import scan_folder

    for name in ("a.jpg", "a.png"):
        Image.new("RGB", (8, 8)).save(tmp_path / name)
    (tmp_path / "a.txt").write_text("shared caption\n")
    (tmp_path / "a.jpg.txt").write_text("the jpg's own caption\n")
    images, texts = scan_folder(tmp_path)
    by_image = {}
    for t in texts:
        by_image.setdefault(t.pair_key, []).append(t.text)
    assert by_image == {"a.jpg": ["the jpg's own caption"], "a.png": ["shared caption"]}
