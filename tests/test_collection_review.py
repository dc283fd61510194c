"""Persistent-collection defects found in review: a failed write that left this process a
generation ahead of the store, uploads deleted while another item used them, index files of a
previous database trusted, a follower that never followed a rebuild."""

import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from xmodal.data import DataError
from xmodal.index import Collection
from xmodal.index.collection import ImageItem, TextItem
from xmodal.index.store import Store


def unit(rng, n, d=8):
    X = rng.standard_normal((n, d)).astype(np.float32)
    return X / np.linalg.norm(X, axis=1, keepdims=True)


def test_a_failed_commit_is_rolled_back_and_the_store_stays_usable(tmp_path):
    Collection.create(tmp_path / "c", dim=4).close()
    store = Store(tmp_path / "c" / "collection.db")
    with pytest.raises(sqlite3.IntegrityError):
        with store.transaction() as c:
            c.execute("PRAGMA defer_foreign_keys = ON")  # the violation surfaces at COMMIT
            c.execute("INSERT INTO item_labels (item_id, label) VALUES (999, 'x')")
    assert not store.conn.in_transaction
    with store.transaction() as c:  # a later write still works
        Store.set_meta(c, "probe", 1)
    assert store.get_meta("probe") == 1
    assert not store.query("SELECT * FROM item_labels")
    store.close()


def test_a_failed_small_add_leaves_the_generation_as_the_store_has_it(tmp_path):
    rng = np.random.default_rng(0)
    d = tmp_path / "c"
    S = Collection.create(d, dim=8)
    a, b = tmp_path / "a.jpg", tmp_path / "b.jpg"
    a.write_bytes(b"a")
    b.write_bytes(b"b")
    S.add_items([ImageItem("a#0", str(a))], image_features=unit(rng, 1))
    gen = S.store.generation()
    # an upload 'a' whose caption key 'a#0' is already an image: the shared transaction fails
    with pytest.raises(DataError, match="already an image item"):
        S.add_items([ImageItem("a", str(b))], [TextItem("a#0", "caption", pair_key="a")],
                    image_features=unit(rng, 1), text_features=unit(rng, 1))
    assert S.store.generation() == gen and S._gen == gen
    # another process's commit is seen, not taken for this one's
    P = Collection.open(d)
    v = unit(rng, 1)
    P.add_items((), [TextItem("other", "from P")], text_features=v)
    P.close()
    hits = S.search_vector(v[0], "text", 3, exact=True)
    assert [h.key for h in hits] == ["other"] and hits[0].score == pytest.approx(1.0, abs=1e-5)
    S.close()


def test_an_upload_file_that_cannot_be_removed_does_not_fail_the_committed_add(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    c = Collection.create(tmp_path / "c", dim=8)
    files = c.path / "files"
    files.mkdir()
    old, new = files / ("a" * 64 + ".png"), files / ("b" * 64 + ".png")
    old.write_bytes(b"old")
    new.write_bytes(b"new")
    c.add_items([ImageItem("x", str(old))], [TextItem("x#0", "cap", pair_key="x")],
                image_features=unit(rng, 1), text_features=unit(rng, 1))
    real_unlink = Path.unlink

    def refuse(self, missing_ok=False):
        if self.parent.name == "files":
            raise PermissionError(13, "Permission denied", str(self))
        return real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", refuse)
    vi, vt = unit(rng, 1), unit(rng, 1)
    # the image replaced (its old file unused afterwards) and a new caption: both committed
    rep = c.add_items([ImageItem("x", str(new))], [TextItem("x#1", "cap 2", pair_key="x")],
                      image_features=vi, text_features=vt)
    assert rep.replaced == 1 and rep.added == 1
    assert c.search_vector(vi[0], "image", 1, exact=True)[0].key == "x"
    assert c.search_vector(vt[0], "text", 1, exact=True)[0].key == "x#1"
    assert c._gen == c.store.generation()
    c.close()


def moved_upload(tmp_path):
    """A collection whose item 'one' was uploaded at A.xmc (its path names A's files/), then
    moved to B.xmc, where the same bytes are uploaded again as item 'two' (path in B)."""
    data = b"\x89PNG same bytes"
    name = "ab" * 32 + ".png"
    A = tmp_path / "A.xmc"
    c = Collection.create(A, dim=8)
    (A / "files").mkdir()
    (A.resolve() / "files" / name).write_bytes(data)
    c.add_items([ImageItem("one", str(A.resolve() / "files" / name))], image_features=np.ones((1, 8), "f4"))
    c.close()
    B = tmp_path / "B.xmc"
    shutil.move(A, B)
    c = Collection.open(B)
    f = B.resolve() / "files" / name
    c.add_items([ImageItem("two", str(f))], image_features=np.ones((1, 8), "f4"))
    return c, f


def test_deleting_an_upload_keeps_the_file_an_item_of_the_moved_collection_uses(tmp_path):
    c, f = moved_upload(tmp_path)
    c.delete(keys=["two"])
    assert f.exists()  # 'one' still shows it
    assert c.uploads_in_use([f.name]) == {f.name}
    assert c.get_item(c.id_of("one")).path == str(f)
    c.delete(keys=["one"])
    assert not f.exists()  # now no item uses it
    assert c.uploads_in_use([f.name]) == set()
    c.close()


def test_a_snapshot_of_a_moved_collection_carries_its_uploads(tmp_path):
    c, f = moved_upload(tmp_path)
    c.delete(keys=["two"])
    snap = c.snapshot(tmp_path / "snap.xmc")
    c.close()
    with Collection.open(snap, read_only=True) as s:
        p = Path(s.get_item(s.id_of("one")).path)
        assert p == (snap / "files" / f.name).resolve() and p.read_bytes() == f.read_bytes()


def test_an_index_file_of_the_previous_build_is_not_trusted(tmp_path):
    """A rebuild restarts item ids: a file the previous database left in indexes/ (a process
    that wrote it late, an rsync of another build over the folder) holds other items' vectors
    under the same ids, and must not be caught up as if it were this database's."""
    rng = np.random.default_rng(3)
    d = tmp_path / "c"
    old = Collection.create(d, dim=8)
    old.add_vectors("image", [f"old{j}" for j in range(3)], unit(rng, 3))
    old.add_vectors("text", ["t"], unit(rng, 1))
    old.close()
    stale = {f.name: f.read_bytes() for f in (d / "indexes").glob("*.faiss")}
    new = Collection.create(d, dim=8, overwrite=True)  # the rebuild: more items than before
    X = unit(rng, 6)
    new.add_vectors("image", [f"new{j}" for j in range(6)], X)
    new.close()
    for f in (d / "indexes").glob("*.faiss"):  # the new files not written (yet), the old back
        f.unlink()
    for name, data in stale.items():
        (d / "indexes" / name).write_bytes(data)
    for read_only in (True, False):
        with Collection.open(d, read_only=read_only) as c:
            for j in range(6):
                hit = c.search_vector(X[j], "image", 1, exact=True)[0]
                assert hit.key == f"new{j}" and hit.score == pytest.approx(1.0, abs=1e-5)
    # the writable open wrote files of its own and removed the stale ones
    names = sorted(f.name for f in (d / "indexes").glob("*.faiss"))
    assert names and not set(names) & set(stale)


def test_an_older_collection_without_a_database_id_gets_one_when_opened_for_writing(tmp_path):
    rng = np.random.default_rng(4)
    d = tmp_path / "c"
    c = Collection.create(d, dim=8)
    X = unit(rng, 4)
    c.add_vectors("image", [f"k{j}" for j in range(4)], X)
    c.close()
    db = sqlite3.connect(d / "collection.db")
    db.execute("DELETE FROM meta WHERE key = 'db_id'")
    db.commit()
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    with Collection.open(d, read_only=True) as ro:  # files it cannot tell as its own: rebuilt
        assert ro._db_id is None
        assert ro.search_vector(X[1], "image", 1, exact=True)[0].key == "k1"
    with Collection.open(d) as w:
        db_id = w._db_id
        assert db_id and w.store.get_meta("db_id") == db_id
        assert w.search_vector(X[2], "image", 1, exact=True)[0].key == "k2"
    with Collection.open(d) as again:
        assert again._db_id == db_id
    assert all(f".{db_id}.g" in f.name for f in (d / "indexes").glob("*.faiss"))


def test_a_follower_follows_a_rebuild_beside_a_live_writer(tmp_path):
    """`serve --read-only` beside a writer: after a rebuild the new database has a live writer
    (its WAL not merged); the follower reopens it as a follower, not as an immutable file."""
    d = tmp_path / "c"
    c = Collection.create(d, dim=8)
    c.add_vectors("text", ["old"], np.ones((1, 8), "f4"))
    c.close()
    F = Collection.open(d, read_only=True, follow=True)
    assert not F.store.immutable and F.count("text") == 1
    W = Collection.create(d, dim=8, overwrite=True)  # the rebuild; its writer stays open
    W.add_vectors("text", ["new"], np.ones((1, 8), "f4"))
    assert Path(str(d / "collection.db") + "-wal").stat().st_size > 0
    F.refresh()
    assert [h.key for h in F.search_vector(np.ones(8, "f4"), "text", 5)] == ["new"]
    assert not F.store.immutable and F.read_only
    W.add_vectors("text", ["newer"], 2 * np.ones((1, 8), "f4"))  # and its later writes
    assert sorted(h.key for h in F.search_vector(np.ones(8, "f4"), "text", 5)) == ["new", "newer"]
    W.close()
    F.close()
