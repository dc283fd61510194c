"""Session 14 robustness review of the persistent collection: a damaged database that only a
rebuild can mend, and searches racing another process's deletes."""

import numpy as np
import pytest

from xmodal.index import Collection, CollectionError
from xmodal.index.collection import UnreadableDatabaseError


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


def test_a_search_racing_another_process_delete_still_answers_k(tmp_path):
    """Items deleted by another writer between the FAISS search and the item read used to be
    dropped, so a search over 29 items asked for 5 answered 3."""
    path = tmp_path / "c"
    X = _vectors(path)
    reader, writer = Collection.open(path), Collection.open(path)
    try:
        top = [h.id for h in reader.search_vector(X[0], "image", 5)]
        real = reader.search_vectors
        raced = []

        def racing(*a, **k):
            out = real(*a, **k)
            if not raced:  # the other process's delete lands right after the index answered
                raced.append(writer.delete(ids=top[:2]))
            return out

        reader.search_vectors = racing
        hits = reader.search_vector(X[0], "image", 5)
        assert len(hits) == 5 and not set(top[:2]) & {h.id for h in hits}
        # the batch path (one FAISS search for several queries) likewise
        top = [h.id for h in reader.search_vector(X[1], "image", 5)]
        raced.clear()
        batch = reader._search_rows((X[1:3], None), 5, "image", {})
        assert [len(r) for r in batch] == [5, 5]
    finally:
        reader.close()
        writer.close()


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
