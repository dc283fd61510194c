"""Collection.create refused for its arguments leaves nothing behind that it made."""

import multiprocessing
import time

import pytest

from xmodal.index import Collection, CollectionError
from xmodal.index.vector import IndexSpecError


@pytest.mark.parametrize("bad", [dict(dim=None), dict(dim=8, index="NoSuchIndex"), dict(dim=8, output="ternary"),
                                 dict(dim=8, text_encoder="no-such-encoder")])
def test_a_refused_create_leaves_no_folder_it_made(tmp_path, bad):
    # it left an empty folder holding only write.lock, which `xmodal search` then took for a
    # collection folder ("no collection here"); parents it had to make go too
    target = tmp_path / "new" / "deeper" / "c.xmc"
    with pytest.raises((CollectionError, IndexSpecError, ValueError, KeyError)):
        Collection.create(target, **bad)
    assert not (tmp_path / "new").exists()
    Collection.create(target, dim=8).close()  # a corrected rerun works
    assert Collection.open(target).dim == 8


def test_a_refused_create_keeps_a_folder_that_was_there(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    with pytest.raises(CollectionError):
        Collection.create(folder)  # no dim
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CollectionError):
        Collection.create(empty)
    assert empty.is_dir() and not list(empty.iterdir())  # the folder stays, its lock file goes
    # and one with a collection in it is untouched by a refused overwrite
    Collection.create(tmp_path / "full", dim=4).close()
    before = sorted(p.name for p in (tmp_path / "full").iterdir())
    with pytest.raises(IndexSpecError):
        Collection.create(tmp_path / "full", dim=4, index="NoSuchIndex", overwrite=True)
    assert sorted(p.name for p in (tmp_path / "full").iterdir()) == before
    assert Collection.open(tmp_path / "full").dim == 4


def _create_when_told(path: str, go) -> None:
    go.wait(20)
    Collection.create(path, dim=8).close()


@pytest.mark.parametrize("existed", [False, True])
def test_a_concurrent_creator_waiting_on_the_lock_still_makes_the_collection(tmp_path, existed):
    # A refused create removes write.lock (and the folder it made) while holding the lock;
    # another creator waiting on that lock file meanwhile must not then write into a removed
    # folder or hold a lock no one else sees: it locks again and creates the collection.
    target = tmp_path / "c.xmc"
    if existed:
        target.mkdir()
    ctx = multiprocessing.get_context("fork")
    go = ctx.Event()
    child = ctx.Process(target=_create_when_told, args=(str(target), go))
    child.start()  # forked before any lock is held
    orig = Collection._create.__func__

    def slow_refusal(cls, path, **kw):
        go.set()
        time.sleep(1.0)  # the other creator reaches the lock and waits on it meanwhile
        return orig(cls, path, **kw)

    Collection._create = classmethod(slow_refusal)
    try:
        with pytest.raises(CollectionError):
            Collection.create(target)  # no dim: refused
    finally:
        Collection._create = classmethod(orig)
    child.join(30)
    assert child.exitcode == 0
    assert Collection.open(target).dim == 8
