"""Persistent-collection defects found in a second review: bad items written half-way (or
silently) by add_items, a file name that is not UTF-8 stopping a whole indexing run, an index
file that could not be written failing an open or a committed write, an index file of the
wrong kind trusted, and a refused rebuild that had already deleted the collection."""

import errno
import os
import re
import sqlite3
from pathlib import Path

import faiss
import numpy as np
import pytest

import xmodal.index.collection as collection_module
from xmodal.data.dataset import DataError
from xmodal.index import Collection
from xmodal.index.build import scan_folder
from xmodal.index.collection import ImageItem, TextItem


def unit(rng, n, d=8):
    X = rng.standard_normal((n, d)).astype(np.float32)
    return X / np.linalg.norm(X, axis=1, keepdims=True)


def files(tmp_path, n):
    out = []
    for j in range(n):
        f = tmp_path / f"f{j}.jpg"
        f.write_bytes(b"image %d" % j)
        out.append(str(f))
    return out


def state(c):
    return c.store.generation(), c.count(), sorted(r[0] for r in c.store.query("SELECT key FROM items"))


def test_labels_given_as_one_string_are_refused_not_split_into_letters(tmp_path):
    rng = np.random.default_rng(0)
    c = Collection.create(tmp_path / "c", dim=8)
    (p,) = files(tmp_path, 1)
    with pytest.raises(DataError, match=r"image 'x'.*labels.*'beach'"):
        c.add_items([ImageItem("x", p, labels="beach")], image_features=unit(rng, 1))
    with pytest.raises(DataError, match=r"text 't'.*labels"):
        c.add_items((), [TextItem("t", "a caption", labels="beach")], text_features=unit(rng, 1))
    assert c.count() == 0
    c.add_items([ImageItem("x", p, labels=("beach",))], image_features=unit(rng, 1))
    assert c.get_item(c.id_of("x")).labels == ["beach"]
    c.close()


@pytest.mark.parametrize("case", ["dup-across-batches", "image-and-text-key", "text-none",
                                  "features-rows", "bad-key-late", "label-not-str"])
def test_add_items_refuses_bad_items_before_writing_anything(tmp_path, case):
    """A bad item anywhere in a long add is refused naming it before any batch is encoded or
    committed (it used to commit the batches before it, or, for a key given twice in two
    batches, silently store the second as a replacement of the first)."""
    rng = np.random.default_rng(1)
    c = Collection.create(tmp_path / "c", dim=8)
    c.add_items([ImageItem("old", files(tmp_path, 1)[0])], image_features=unit(rng, 1))
    before = state(c)
    paths = files(tmp_path, 5)
    images = [ImageItem(f"k{j}", p) for j, p in enumerate(paths)]
    texts = [TextItem("k0#0", "a caption", pair_key="k0")]
    Fi, Ft = unit(rng, 5), unit(rng, 1)
    if case == "dup-across-batches":
        images[4] = ImageItem("k0", paths[4])
        match = r"item key 'k0' appears twice"
    elif case == "image-and-text-key":
        texts = [TextItem("k3", "a caption", pair_key="k0")]
        match = r"item key 'k3' appears twice"
    elif case == "text-none":
        texts = [TextItem("k0#0", None, pair_key="k0")]
        match = r"text 'k0#0'.*text must be a string"
    elif case == "features-rows":
        Fi = unit(rng, 6)
        match = r"image_features has 6 rows for 5 images"
    elif case == "bad-key-late":
        images[4] = ImageItem("k4\n", paths[4])
        match = r"control characters"
    else:
        images[4] = ImageItem("k4", paths[4], labels=["ok", None])
        match = r"image 'k4'.*labels\[1\]"
    with pytest.raises(DataError, match=match):
        c.add_items(images, texts, image_features=Fi, text_features=Ft, batch_size=2)
    assert state(c) == before
    c.close()


def test_a_path_like_image_path_is_stored_as_a_string(tmp_path):
    rng = np.random.default_rng(2)
    c = Collection.create(tmp_path / "c", dim=8)
    p = Path(files(tmp_path, 1)[0])
    rep = c.add_items([ImageItem("x", p)], image_features=unit(rng, 1))
    assert rep.added == 1 and c.get_item(c.id_of("x")).path == str(p)
    # a rerun finds it unchanged (the same path, size and time as recorded)
    assert c.add_items([ImageItem("x", p)], image_features=unit(rng, 1)).unchanged == 1
    c.close()


def test_a_file_name_that_is_not_utf8_is_skipped_and_named_and_the_run_goes_on(tmp_path):
    """A photo folder copied from an old camera or a Windows share can hold a name in another
    encoding (Python gives it lone surrogates): SQLite cannot store that key or path, and the
    whole run used to stop at the first lookup with a bare UnicodeEncodeError."""
    src = tmp_path / "photos"
    src.mkdir()
    (src / "good.jpg").write_bytes(b"good")
    (src / "good.txt").write_text("a good caption\n")
    bad = os.path.join(os.fsencode(src), b"caf\xe9.jpg")
    with open(bad, "wb") as fh:
        fh.write(b"bad")
    with open(os.path.join(os.fsencode(src), b"caf\xe9.txt"), "wb") as fh:
        fh.write(b"its caption\n")
    images, texts = scan_folder(src)
    assert len(images) == 2 and len(texts) == 2
    rng = np.random.default_rng(3)
    c = Collection.create(tmp_path / "c", dim=8)
    rep = c.add_items(images, texts, image_features=unit(rng, 2), text_features=unit(rng, 2))
    assert rep.added == 2  # good.jpg and its caption
    assert [os.path.basename(p) for p in rep.skipped] == [os.fsdecode(b"caf\xe9.jpg")]
    assert sorted(r[0] for r in c.store.query("SELECT key FROM items")) == ["good.jpg", "good.jpg#0"]
    # the rerun (what `xmodal index` does next time) goes as well, and plan() agrees
    plan = c.plan(images, texts, prune=True)
    assert plan["image"]["unreadable"] == [os.fsdecode(b"caf\xe9.jpg")] and plan["removed"] == []
    rep = c.add_items(images, texts, image_features=unit(rng, 2), text_features=unit(rng, 2))
    assert rep.unchanged == 2 and len(rep.skipped) == 1
    c.close()


def test_an_index_file_that_cannot_be_written_fails_neither_the_open_nor_a_committed_write(tmp_path, monkeypatch):
    """A full disk (or an indexes/ folder this user cannot write): the index files are caches,
    SQLite holds the data. An open used to fail outright (no search at all), and a committed
    add raised as if it had failed."""
    rng = np.random.default_rng(4)
    d = tmp_path / "c"
    c = Collection.create(d, dim=8)
    X = unit(rng, 5)
    c.add_vectors("image", [f"k{j}" for j in range(5)], X)
    c.close()
    for f in (d / "indexes").glob("*.faiss"):
        f.unlink()  # the next open must write them

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(collection_module, "atomic_write_bytes", full)
    c = Collection.open(d)
    assert c.search_vector(X[2], "image", 1)[0].key == "k2"
    v = unit(rng, 1)
    rep = c.add_vectors("image", ["new"], v)  # committed: must say so
    assert rep.added == 1 and c.search_vector(v[0], "image", 1)[0].key == "new"
    assert not list((d / "indexes").glob("*.faiss"))
    monkeypatch.undo()
    c.add_vectors("text", ["t"], unit(rng, 1))  # the next write writes what is due
    assert list((d / "indexes").glob("image.flat.*.faiss"))
    c.close()
    with Collection.open(d, read_only=True) as r:
        assert r.count("image") == 6 and r.search_vector(v[0], "image", 1)[0].key == "new"


def test_an_index_file_of_the_wrong_kind_is_rebuilt_not_trusted(tmp_path):
    """An index file that loads but is not that index (another variant's, another width):
    it used to stop the open with an IndexSpecError, or answer 'exact' searches from a graph."""
    rng = np.random.default_rng(5)
    d = tmp_path / "c"
    c = Collection.create(d, dim=8, index="HNSW8")
    X = unit(rng, 40)
    c.add_vectors("image", [f"k{j}" for j in range(40)], X)
    c.close()
    (flat,) = (d / "indexes").glob("image.flat.*.faiss")
    (approx,) = (d / "indexes").glob("image.approx.*.faiss")
    a, b = flat.read_bytes(), approx.read_bytes()
    flat.write_bytes(b)
    approx.write_bytes(a)
    for read_only in (True, False):
        with Collection.open(d, read_only=read_only) as c:
            assert c.indexes[("image", "flat")].is_flat
            assert isinstance(faiss.downcast_index(c.indexes[("image", "flat")].index.index), faiss.IndexFlat)
            for j in (0, 17, 39):
                hit = c.search_vector(X[j], "image", 1, exact=True)[0]
                assert hit.key == f"k{j}" and hit.score == pytest.approx(1.0, abs=1e-5)
                assert c.search_vector(X[j], "image", 1)[0].key == f"k{j}"


@pytest.mark.parametrize("bad, error, match", [
    (dict(index="NoSuchIndex"), "IndexSpecError", "cannot build FAISS index 'NoSuchIndex'"),
    (dict(output="nope"), "CollectionError", "output must be 'real' or 'binary', got 'nope'"),
    (dict(image_encoder="no-such-encoder"), "EncoderError", "unknown encoder 'no-such-encoder'"),
    (dict(dim=None), "CollectionError", "pass a fitted method or the vector dim")])
def test_a_refused_rebuild_leaves_the_old_collection(tmp_path, bad, error, match):
    """Collection.create(overwrite=True) deleted the old database before it checked its
    arguments: a typo in a rebuild's index spec or encoder lost the whole collection."""
    d = tmp_path / "c"
    c = Collection.create(d, dim=8)
    c.add_vectors("image", ["k"], np.ones((1, 8), np.float32))
    c.close()
    with pytest.raises(Exception, match=re.escape(match)) as exc:
        Collection.create(d, **{"dim": 8, "overwrite": True, **bad})
    assert type(exc.value).__name__ == error  # the refusal itself, not a crash on the way
    with Collection.open(d) as c:
        assert c.count() == 1 and c.id_of("k") is not None
    db = sqlite3.connect(d / "collection.db")
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db.close()


def test_a_full_disk_during_a_commit_is_named_and_nothing_of_the_write_is_kept(tmp_path):
    """SQLite's bare 'database or disk is full' named no file, and `xmodal index` died with a
    traceback; max_page_count makes SQLite hit a full disk exactly here."""
    rng = np.random.default_rng(6)
    c = Collection.create(tmp_path / "c", dim=64)
    c.add_vectors("image", ["first"], unit(rng, 1, 64))
    before = state(c)
    pages = c.store.query("PRAGMA page_count")[0][0]
    c.store.query(f"PRAGMA max_page_count = {pages + 2}")
    paths = files(tmp_path, 300)
    with pytest.raises(collection_module.CollectionError, match=r"collection\.db.*full"):
        c.add_items([ImageItem(f"k{j}", p) for j, p in enumerate(paths)],
                    image_features=unit(rng, 300, 64), batch_size=300)
    assert state(c) == before and c._gen == c.store.generation()
    c.store.query("PRAGMA max_page_count = 1073741823")  # space freed: the rerun stores it all
    assert c.add_items([ImageItem(f"k{j}", p) for j, p in enumerate(paths)],
                       image_features=unit(rng, 300, 64)).added == 300
    c.close()
    with Collection.open(tmp_path / "c") as c:
        assert c.count("image") == 301


def test_a_snapshot_that_fails_half_way_leaves_no_half_copy(tmp_path, monkeypatch):
    """A snapshot interrupted (a full disk on the copy's side) left a folder with a partial
    database beside it, which the rerun then refused as 'not an empty folder'."""
    import shutil

    c = Collection.create(tmp_path / "c", dim=8)
    c.add_vectors("image", ["k"], np.ones((1, 8), np.float32))
    (tmp_path / "c" / "encoders").mkdir()
    (tmp_path / "c" / "encoders" / "text.enc").write_bytes(b"fitted")

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(shutil, "copytree", full)
    for dest in (tmp_path / "snap", tmp_path / "empty"):
        if dest.name == "empty":
            dest.mkdir()  # an empty folder the user made stays, emptied again
        with pytest.raises(OSError):
            c.snapshot(dest)
        assert (dest.exists() and not any(dest.iterdir())) if dest.name == "empty" else not dest.exists()
    monkeypatch.undo()
    c.snapshot(tmp_path / "snap")
    c.close()
    with Collection.open(tmp_path / "snap", read_only=True) as s:
        assert s.count() == 1


def test_removing_ids_that_are_not_integers_names_them(tmp_path):
    c = Collection.create(tmp_path / "c", dim=8)
    c.add_vectors("image", ["k"], np.ones((1, 8), np.float32))
    with pytest.raises(DataError, match=r"item id 'abc'"):
        c.delete(["abc"])
    for frac in (2.5, np.float32(1.5), np.float64(1.25)):  # NumPy floats were cut to 1, item 'k'
        with pytest.raises(DataError, match="not an integer"):
            c.delete([frac])
    assert c.count() == 1
    assert c.delete([123456, -1, 2**70]) == [] and c.count() == 1
    assert c.delete(keys=["caf\udce9.jpg", "nope"]) == [] and c.id_of("caf\udce9.jpg") is None
    c.close()


def test_a_missing_or_damaged_model_file_is_named_and_the_vectors_stay_usable(tmp_path):
    """method.zip lost (a partial copy) or an encoder file damaged: the first query used to die
    with a bare FileNotFoundError, and `xmodal stats` (the space fingerprint) with it."""
    from xmodal.encoders import get_encoder

    from xmodal.data.dataset import PairedDataset
    from xmodal.methods.subspace import CCA

    rng = np.random.default_rng(7)
    words = "harbour beach forest runway plane river tower field road bridge boat snow".split()
    texts = [" ".join(rng.choice(words, 4, replace=False)) for _ in range(40)]
    enc = get_encoder("bow", "text").fit(texts)
    Ft = enc.encode(texts, progress=False)
    Fi = (np.asarray(Ft) @ rng.standard_normal((Ft.shape[1], 6)) + 0.1 * rng.standard_normal((40, 6))).astype(np.float32)
    m = CCA(n_components=3).fit(PairedDataset("t", text_to_image=np.arange(40), n_images=40,
                                              image_features=Fi, text_features=Ft))
    d = tmp_path / "c"
    c = Collection.create(d, method=m, text_encoder=enc)
    c.add_vectors("text", [f"t{j}" for j in range(40)], m.encode_texts(Ft), texts=texts)
    assert c.search_text(texts[3], k=1, target="text")[0].key == "t3"
    c.close()
    (d / "encoders" / "text.enc").write_bytes(b"PK\x03\x04 truncated")
    with Collection.open(d) as c:
        with pytest.raises(collection_module.CollectionError, match=r"text\.enc.*fitted text encoder.*--rebuild"):
            c.search_text("a photo", k=1)
        assert c.stats()["texts"] == 40
    (d / "method.zip").unlink()
    with Collection.open(d) as c:
        with pytest.raises(collection_module.CollectionError, match=r"method\.zip.*fitted method is missing"):
            c.features_to_space("text", Ft[:1])
        space = c.stats()["space"]
        v = c.item_vectors([c.id_of("t5")])[0]
        assert c.search_vector(v[0], "text", 1)[0].key == "t5"
        c.export(tmp_path / "rescue.npz")
    assert len(np.load(tmp_path / "rescue.npz")["ids"]) == 40 and space


@pytest.mark.parametrize("write", ["add", "delete"])
def test_ctrl_c_while_a_committed_write_is_mirrored_does_not_hide_it_from_this_handle(tmp_path, monkeypatch, write):
    """Ctrl-C in a notebook after COMMIT, while the in-memory indexes take the rows (an HNSW
    graph takes a while): the flat index had them, the graph not, and the handle stood at the
    new generation, so it never caught up; the committed rows stayed unsearchable there."""
    from xmodal.index.vector import VectorIndex

    rng = np.random.default_rng(8)
    c = Collection.create(tmp_path / "c", dim=8, index="HNSW8")
    X = unit(rng, 30)
    c.add_vectors("image", [f"k{j}" for j in range(30)], X)
    name = "add" if write == "add" else "remove"
    real = getattr(VectorIndex, name)
    calls = []

    def interrupted(self, *a, **k):
        calls.append(self.spec)
        if not self.is_flat:
            raise KeyboardInterrupt  # the flat index has taken the change, the graph not
        return real(self, *a, **k)

    monkeypatch.setattr(VectorIndex, name, interrupted)
    v = unit(rng, 1)
    with pytest.raises(KeyboardInterrupt):
        if write == "add":
            c.add_vectors("image", ["new"], v)
        else:
            c.delete(keys=["k4"])
    monkeypatch.undo()
    assert calls  # the interruption happened after COMMIT
    live = set(c.store.item_ids("image").tolist())
    assert ("new" in {r[0] for r in c.store.query("SELECT key FROM items")}) == (write == "add")
    c.search_vector(X[0], "image", 1)  # a search follows the store
    for variant in ("flat", "approx"):
        assert set(c.indexes[("image", variant)].ids().tolist()) == live, variant
    if write == "add":
        assert c.search_vector(v[0], "image", 1)[0].key == "new"
    else:
        assert c.search_vector(X[4], "image", 1)[0].key != "k4"
    c.add_vectors("image", ["after"], unit(rng, 1))  # and the next write works from there
    assert set(c.indexes[("image", "approx")].ids().tolist()) == set(c.store.item_ids("image").tolist())
    c.close()


def test_a_collection_whose_stored_index_spec_is_now_refused_still_opens_and_answers_exactly(tmp_path, caplog):
    """A spec an older xmodal accepted (HNSW over PQ codes scores by L2, now refused) must not
    lock the user out of the collection: it opens, warns once naming the spec, and the flat
    index answers."""
    from xmodal.index.store import Store

    rng = np.random.default_rng(0)
    X = rng.standard_normal((50, 16)).astype(np.float32)
    with Collection.create(tmp_path / "c", output="real", dim=16, index="HNSW16") as c:
        c.add_vectors("image", [f"i{j}" for j in range(50)], X)
    with Collection.open(tmp_path / "c") as c, c.store.transaction() as conn:
        Store.set_meta(conn, "index", "HNSW32,PQ8")  # as an older version would have stored it
    with caplog.at_level("WARNING", logger="xmodal.index"):
        with Collection.open(tmp_path / "c") as c:
            hits = c.search_vector(X[7], "image", 3)
            c.add_vectors("image", ["new"], X[8:9] + 0.01)
    assert hits[0].key == "i7"
    warned = [r for r in caplog.records if "HNSW32,PQ8" in r.getMessage()]
    assert len(warned) == 1 and "flat" in warned[0].getMessage()


def test_an_add_while_the_approximate_index_waits_for_training_vectors_reads_no_vectors(tmp_path, monkeypatch):
    """IVF256 trains on 39 x 256 vectors; below that every write re-read the whole vectors
    table only for the index to refuse to train."""
    rng = np.random.default_rng(1)
    X = rng.standard_normal((300, 16)).astype(np.float32)
    with Collection.create(tmp_path / "c", output="real", dim=16, index="IVF256,Flat") as c:
        c.add_vectors("image", [f"i{j}" for j in range(300)], X)
        calls = []
        real = c.store.vectors
        monkeypatch.setattr(c.store, "vectors", lambda *a, **k: calls.append(a) or real(*a, **k))
        c.add_vectors("image", ["one"], X[:1] + 0.5)
        assert calls == []
        assert c.search_vector(X[3], "image", 1)[0].key == "i3"


def test_a_reader_catching_up_reads_no_vectors_while_the_approximate_index_waits_to_train(tmp_path, monkeypatch):
    """A server beside a writer caught up after each write by reading every stored vector,
    only for the untrained IVF index to refuse them again."""
    rng = np.random.default_rng(2)
    X = rng.standard_normal((300, 16)).astype(np.float32)
    with Collection.create(tmp_path / "c", output="real", dim=16, index="IVF64,Flat") as writer:
        writer.add_vectors("image", [f"i{j}" for j in range(300)], X)
        with Collection.open(tmp_path / "c") as reader:
            assert reader.search_vector(X[3], "image", 1)[0].key == "i3"
            calls = []
            real = reader.store.vectors
            monkeypatch.setattr(reader.store, "vectors", lambda *a, **k: calls.append(a) or real(*a, **k))
            for j in range(3):
                writer.add_vectors("image", [f"late{j}"], X[j:j + 1] + 0.5)
                assert reader.search_vector(X[j] + 0.5, "image", 1)[0].key == f"late{j}"
            assert calls == []
