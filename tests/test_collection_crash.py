"""Crash safety: a writer killed with SIGKILL at random moments (mid-transaction, mid index
file write) leaves a collection that opens, agrees with itself and accepts new writes. Also failed writes
(a full disk, an unwritable index file, Ctrl-C) and damaged databases: each is named, rolled back
or rebuilt on request."""

import os
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import collection_state, fake_image_files
from xmodal.index import Collection, CollectionError
from xmodal.index.store import Store
from pathlib import Path
from xmodal.data import DataError
from xmodal.index.collection import ImageItem, TextItem
import errno
import xmodal.index.collection as collection_module
from xmodal.index.collection import UnreadableDatabaseError

WRITER = r"""
import sys
import numpy as np
from xmodal.index import Collection

coll = Collection.open(sys.argv[1])
seed = int(sys.argv[2])
rng = np.random.default_rng(seed)
for b in range(10_000):
    X = rng.standard_normal((400, 32)).astype(np.float32)
    coll.add_vectors("image", [f"s{seed}-{b}-{i}" for i in range(400)], X,
                     labels=[["even" if i % 2 == 0 else "odd"] for i in range(400)])
    coll.add_vectors("text", [f"t{seed}-{b}-{i}" for i in range(50)], X[:50], texts=["x"] * 50)
    if b % 2:
        coll.delete(keys=[f"s{seed}-{b}-{i}" for i in range(0, 400, 7)])
    print(b, flush=True)
"""


def check_consistent(path, probe):
    with Collection.open(path) as c:
        db = sqlite3.connect(path / "collection.db")
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        for modality in ("image", "text"):
            live = {r[0] for r in db.execute("SELECT id FROM items WHERE modality = ?", (modality,))}
            vec = {r[0] for r in db.execute("SELECT v.item_id FROM vectors v JOIN items i ON i.id = v.item_id "
                                            "WHERE i.modality = ?", (modality,))}
            assert live == vec  # no item without its vector, or the reverse
            for variant in ("flat", "approx"):
                assert set(c.indexes[(modality, variant)].ids().tolist()) == live, (modality, variant)
        orphans = db.execute("SELECT COUNT(*) FROM vectors WHERE item_id NOT IN (SELECT id FROM items)").fetchone()[0]
        assert orphans == 0
        db.close()
        n = c.count("image")
        if n:
            hits = c.search_vector(probe, "image", 10)
            assert len(hits) == min(10, n) and all(h.modality == "image" for h in hits)
            assert all("even" in h.labels for h in c.search_vector(probe, "image", 10, labels=["even"]))
        return n


def test_sigkill_mid_write_leaves_a_usable_collection(tmp_path):
    path = tmp_path / "c"
    Collection.create(path, dim=32, index="HNSW16").close()
    probe = np.random.default_rng(99).standard_normal(32).astype(np.float32)
    rng = np.random.default_rng(0)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    counts = []
    for round_ in range(4):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(round_)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        try:
            # Wait for a couple of committed batches, then kill at a random moment of the next.
            for _ in range(1 + round_ % 3):
                line = proc.stdout.readline()
                assert line, proc.stderr.read()
            time.sleep(float(rng.uniform(0.0, 0.25)))
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.wait(timeout=60)
        assert proc.returncode == -signal.SIGKILL
        counts.append(check_consistent(path, probe))
    assert counts == sorted(counts) and counts[-1] > 0
    # And it still takes writes (and deletes) after all that.
    with Collection.open(path) as c:
        before = c.count("image")
        c.add_vectors("image", ["after-crash"], probe[None, :])
        assert c.search_vector(probe, "image", 1)[0].key == "after-crash"
        c.delete(keys=["after-crash"])
        assert c.count("image") == before
    check_consistent(path, probe)


def test_interrupted_creation_is_reported_and_can_be_redone(tmp_path):
    path = tmp_path / "c"
    path.mkdir()
    s = Store(path / "collection.db")  # schema written, "format" never committed
    s.close()
    with pytest.raises(CollectionError, match="never completed"):
        Collection.open(path)
    assert not Collection.exists(path)
    with Collection.create(path, dim=8) as c:  # no overwrite needed for an incomplete one
        assert c.count() == 0


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


def test_a_full_disk_during_a_commit_is_named_and_nothing_of_the_write_is_kept(tmp_path):
    """SQLite's bare 'database or disk is full' named no file, and `xmodal index` died with a
    traceback; max_page_count makes SQLite hit a full disk exactly here."""
    rng = np.random.default_rng(6)
    c = Collection.create(tmp_path / "c", dim=64)
    c.add_vectors("image", ["first"], unit(rng, 1, 64))
    before = collection_state(c)
    pages = c.store.query("PRAGMA page_count")[0][0]
    c.store.query(f"PRAGMA max_page_count = {pages + 2}")
    paths = fake_image_files(tmp_path, 300)
    with pytest.raises(collection_module.CollectionError, match=r"collection\.db.*full"):
        c.add_items([ImageItem(f"k{j}", p) for j, p in enumerate(paths)],
                    image_features=unit(rng, 300, 64), batch_size=300)
    assert collection_state(c) == before and c._gen == c.store.generation()
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


def _vectors(path, n=30, dim=8):
    X = np.random.default_rng(0).standard_normal((n, dim)).astype(np.float32)
    with Collection.create(path, dim=dim) as c:
        c.add_vectors("image", [f"k{i}" for i in range(n)], X, labels=[["a"]] * n)
    return X


@pytest.mark.parametrize("damage", ["truncated", "garbage", "header-only"])
def test_a_damaged_database_is_named_kept_and_rebuilt_on_request(tmp_path, damage):
    path = tmp_path / "c"
    X = _vectors(path)
    db = path / "collection.db"
    raw = db.read_bytes()
    if damage == "truncated":  # a copy cut short (full disk), the header intact
        db.write_bytes(raw[: len(raw) // 2])
    elif damage == "garbage":
        db.write_bytes(np.random.default_rng(1).bytes(len(raw)))
    else:
        db.write_bytes(b"SQLite format 3\0")
    before = db.read_bytes()
    # Opening, and creating without overwrite, name the file and the cures, and leave it be.
    for attempt in (lambda: Collection.open(path), lambda: Collection.exists(path),
                    lambda: Collection.create(path, dim=8)):
        with pytest.raises(UnreadableDatabaseError) as exc:
            attempt()
        assert str(db) in str(exc.value) and "--rebuild" in str(exc.value)
    assert db.read_bytes() == before
    # A rebuild (overwrite) is what it is for: it starts again instead of refusing.
    with Collection.create(path, dim=8, overwrite=True) as c:
        assert c.count() == 0
        c.add_vectors("image", ["new"], X[:1])
        assert c.search_vector(X[0], "image", 1)[0].key == "new"


def test_build_collection_rebuilds_over_a_damaged_database(tmp_path, monkeypatch):
    from xmodal.index import build_collection

    path = tmp_path / "c"
    _vectors(path)
    (path / "collection.db").write_bytes(b"not a database at all" * 100)
    # the rebuild gets past the existence check (which cannot read the file) to create
    seen = {}

    def fake_create(cls_path, **kw):
        seen["overwrite"] = kw.get("overwrite")
        raise CollectionError("stop here")

    monkeypatch.setattr(Collection, "create", staticmethod(fake_create))
    monkeypatch.setattr("xmodal.index.build._scan", lambda *a: ([], []))
    monkeypatch.setattr("xmodal.index.build._check_method", lambda *a, **k: None)
    with pytest.raises(UnreadableDatabaseError):
        build_collection("src", path, method=object())
    with pytest.raises(CollectionError, match="stop here"):
        build_collection("src", path, method=object(), overwrite=True)
    assert seen == {"overwrite": True}


def test_a_locked_database_is_not_called_damaged(tmp_path):
    import sqlite3

    path = tmp_path / "c"
    _vectors(path)
    hold = sqlite3.connect(path / "collection.db", isolation_level=None)
    hold.execute("PRAGMA locking_mode=EXCLUSIVE")
    hold.execute("BEGIN EXCLUSIVE")
    try:
        import xmodal.index.store as store_mod

        real = store_mod.sqlite3.connect

        def quick(*a, **k):  # do not wait 30 s for the lock
            k["timeout"] = 0.05
            return real(*a, **k)

        store_mod.sqlite3.connect = quick
        try:
            with pytest.raises(CollectionError) as exc:
                Collection.create(path, dim=8, overwrite=True)
        finally:
            store_mod.sqlite3.connect = real
        assert not isinstance(exc.value, UnreadableDatabaseError)
    finally:
        hold.execute("ROLLBACK")
        hold.close()
    with Collection.open(path) as c:  # nothing was deleted
        assert c.count("image") == 30


def test_scanning_a_source_skips_a_damaged_collection_inside_it(tmp_path):
    """`xmodal index . -c my.xmc` leaves collections inside the source out; one whose database
    is damaged (or half made) failed the whole scan with that database's error."""
    from xmodal.index.build import scan_folder

    src = tmp_path / "photos"
    (src / "beach").mkdir(parents=True)
    (src / "beach" / "a.jpg").write_bytes(b"\xff\xd8 not decoded by a scan")
    for name, db in (("old.xmc", b"garbage" * 50), ("half.xmc", b"")):
        (src / name / "thumbs").mkdir(parents=True)
        (src / name / "collection.db").write_bytes(db)
        (src / name / "thumbs" / "t.jpg").write_bytes(b"x")
    images, _ = scan_folder(src)
    assert [it.key for it in images] == ["beach/a.jpg"]
    assert (src / "half.xmc" / "collection.db").read_bytes() == b""  # a scan writes nothing there


@pytest.mark.parametrize("key,value", [("dim", "'\"x\"'"), ("dim", "'\"²\"'"), ("dim", "'not json'"), ("output", None),
                                       ("fdim", "'-3'"), ("format", "'{'")])
def test_a_damaged_meta_value_is_named(tmp_path, key, value):
    import sqlite3

    path = tmp_path / "c"
    _vectors(path)
    db = sqlite3.connect(path / "collection.db")
    if value is None:
        db.execute("DELETE FROM meta WHERE key = ?", (key,))
    else:
        db.execute(f"UPDATE meta SET value = {value} WHERE key = ?", (key,))
    db.commit()
    db.close()
    with pytest.raises(CollectionError, match=f"collection.db: meta '{key}' is (missing or )?damaged"):
        Collection.open(path)


@pytest.mark.parametrize("where", ["open", "export", "item_vectors"])
def test_a_damaged_vector_row_is_named_by_its_item(tmp_path, where):
    import sqlite3

    path = tmp_path / "c"
    _vectors(path)
    c = Collection.open(path) if where != "open" else None
    db = sqlite3.connect(path / "collection.db")
    db.execute("UPDATE vectors SET code = x'010203' WHERE item_id = 5")  # 3 bytes, not 8 floats
    db.commit()
    db.close()
    with pytest.raises(CollectionError, match=r"collection.db: the stored vector of item 5 is damaged "
                                              r"\(3 bytes, not 32\)"):
        if where == "open":
            for f in (path / "indexes").glob("*"):
                f.unlink()  # built from the database
            Collection.open(path)
        elif where == "export":
            c.export(tmp_path / "v.npz")
        else:
            c.item_vectors([4, 5])
    assert not (tmp_path / "v.npz").exists()
    if c is not None:
        c.close()


def test_cli_index_over_a_damaged_collection_says_so_without_a_traceback(tmp_path, monkeypatch):
    """`xmodal index SRC -c DAMAGED --rebuild --index HNSW16` and `... --text-encoder minilm`
    (no --rebuild) died in the CLI's own option checks with an UnreadableDatabaseError
    traceback, before build_collection could refuse or rebuild."""
    from typer.testing import CliRunner

    from xmodal.cli import app

    path = tmp_path / "c"
    _vectors(path)
    (path / "collection.db").write_bytes(b"not a database at all" * 100)
    src = tmp_path / "src"
    src.mkdir()
    seen = {}

    def fake_build(source, coll, **kw):
        seen.update(kw)
        raise CollectionError("stopped by the test")

    monkeypatch.setattr("xmodal.index.build_collection", fake_build)
    monkeypatch.setattr("xmodal.index.build.build_collection", fake_build)
    for extra in (["--rebuild", "--index", "HNSW16", "--method", "cca_itq"], ["--text-encoder", "minilm"]):
        res = CliRunner().invoke(app, ["index", str(src), "-c", str(path), *extra])
        assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
        assert "Traceback" not in res.output


def test_a_damaged_meta_format_is_rebuilt_on_request(tmp_path):
    """A 'format' meta value that is not JSON is named with --rebuild as its cure, so a rebuild
    (overwrite) must replace it, not die on the same message; without overwrite it stays."""
    import sqlite3

    path = tmp_path / "c"
    X = _vectors(path)
    db = sqlite3.connect(path / "collection.db")
    db.execute("UPDATE meta SET value = '{' WHERE key = 'format'")
    db.commit()
    db.close()
    with pytest.raises(CollectionError, match="--rebuild"):
        Collection.create(path, dim=8)
    with pytest.raises(CollectionError, match="meta 'format' is damaged"):
        Collection.open(path)  # left as it was
    with Collection.create(path, dim=8, overwrite=True) as c:
        assert c.count() == 0
        c.add_vectors("image", ["new"], X[:1])
        assert c.search_vector(X[0], "image", 1)[0].key == "new"


def test_ctrl_c_during_an_add_says_what_the_collection_kept(tmp_path, monkeypatch):
    """Ctrl-C in `xmodal index` half-way through a long add: the batches committed are kept,
    and the message says how many items the collection holds now and held before the run,
    so the user sees what was kept before running the same command again to continue."""
    from typer.testing import CliRunner

    import xmodal.index.build as build
    import xmodal.index.collection as collection_mod
    from xmodal.cli import app
    from xmodal.encoders import get_encoder
    from xmodal.index.collection import TextItem

    enc = get_encoder("bow", "text").fit(["a river", "two planes"], progress=False)
    path = tmp_path / "c.xmc"
    with Collection.create(path, dim=enc.dim, text_encoder=enc) as c:
        c.add_items(texts=[TextItem("old", "a river")])
    texts = [TextItem(f"t{i}", f"river {i}") for i in range(300)]  # two batches of 256
    monkeypatch.setattr(build, "scan_source", lambda *a, **k: ([], texts))
    real, calls = collection_mod.encode_items, []

    def encode_then_interrupt(*a, **k):
        calls.append(1)
        if len(calls) == 2:  # the first batch is committed by now
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(collection_mod, "encode_items", encode_then_interrupt)
    src = tmp_path / "src"
    src.mkdir()
    res = CliRunner().invoke(app, ["index", str(src), "-c", str(path)])
    assert res.exit_code == 130, res.output
    assert "interrupted" in res.output and "run the same command again" in res.output
    assert "257 texts" in res.output and "1 text before" in res.output, res.output
    with Collection.open(path) as c:
        assert c.count("text") == 257


def test_an_interrupted_add_closes_its_progress_bar(tmp_path, monkeypatch):
    """The bar is closed as the interruption passes, not later by the garbage collector:
    else its last line is drawn after `xmodal index`'s "interrupted: ..." message."""
    from tqdm import tqdm

    import xmodal.index.collection as collection_mod
    from xmodal.encoders import get_encoder
    from xmodal.index.collection import TextItem

    enc = get_encoder("bow", "text").fit(["a river", "two planes"], progress=False)
    coll = Collection.create(tmp_path / "c.xmc", dim=enc.dim, text_encoder=enc)
    real, calls = collection_mod.encode_items, []

    def encode_then_interrupt(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(collection_mod, "encode_items", encode_then_interrupt)
    with pytest.raises(KeyboardInterrupt) as exc:
        coll.add_items(texts=[TextItem(f"t{i}", f"river {i}") for i in range(10)], batch_size=4, progress=True)
    assert not [b for b in list(tqdm._instances) if str(b.desc).startswith("adding")]
    del exc
    assert coll.count("text") == 4  # the first batch is kept
    coll.close()
