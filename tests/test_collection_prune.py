"""The ``deleted`` log (how a process holding indexes catches up with another's deletions) is
pruned, so it does not grow by one row per deleted item forever; a reader or an index file
older than the pruned rows must then reload from the store, never miss a deletion."""

import os
import sqlite3
import subprocess
import sys

import numpy as np
import pytest

import xmodal.index.collection as collection_module
from xmodal.index import Collection
from xmodal.index.store import Store

N = 300
KEEP = 5


@pytest.fixture(autouse=True)
def small_log(monkeypatch):
    monkeypatch.setattr(collection_module, "DELETED_LOG_KEEP", KEEP, raising=False)


def make(path, n=N, spec="Flat"):
    X = np.random.default_rng(0).standard_normal((n, 16)).astype(np.float32)
    c = Collection.create(path, dim=16, index=spec)
    c.add_vectors("image", [f"i{j}" for j in range(n)], X)
    c.add_vectors("text", [f"t{j}" for j in range(20)], X[:20], texts=["x"] * 20,
                  pair_keys=[f"i{j}" for j in range(20)])
    return c, X


def db_rows(path, sql):
    db = sqlite3.connect(path / "collection.db")
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def live(path, modality):
    return {r[0] for r in db_rows(path, f"SELECT id FROM items WHERE modality = '{modality}'")}


def assert_exact(c, path):
    for (modality, variant), idx in c.indexes.items():
        assert set(idx.ids().tolist()) == live(path, modality), (modality, variant)


def log_size(path):
    return db_rows(path, "SELECT COUNT(*) FROM deleted")[0][0]


def test_the_log_is_pruned_and_an_old_follower_reloads(tmp_path):
    path = tmp_path / "c"
    c, X = make(path)
    follower = Collection.open(path, read_only=True, follow=True)
    assert not follower.store.immutable and follower.count("image") == N
    # many deletions, one at a time and in batches (images take their captions with them)
    for j in range(0, 40):
        c.delete(keys=[f"i{j}"])
    c.delete(keys=[f"i{j}" for j in range(40, 100)])
    deleted = 100 + 20
    assert log_size(path) <= 2 * KEEP  # bounded, not one row per deletion ever
    floor = Store(path / "collection.db", read_only=True, follow=True).deleted_floor()
    assert floor > 0 and db_rows(path, "SELECT MIN(seq) FROM deleted")[0][0] == floor + 1
    # the follower's marks are far below the floor: a catch-up from the log would miss the
    # pruned deletions; it reloads instead
    assert follower.refresh() is True
    assert_exact(follower, path)
    assert follower.count("image") == N - 100 and follower.count("text") == 0
    assert follower.search_vector(X[0], "image", 1)[0].key != "i0"
    # a follower just behind (within the kept rows) still catches up from the log alone
    c.delete(keys=["i100"])
    reads = []
    real = follower._load_indexes
    follower._load_indexes = lambda: reads.append(1) or real()
    assert follower.refresh() is True and reads == []
    assert_exact(follower, path)
    assert deleted + 1 == db_rows(path, "SELECT seq FROM sqlite_sequence WHERE name = 'deleted'")[0][0]
    follower.close()
    c.close()


def test_a_writer_behind_the_floor_reloads_before_it_writes(tmp_path):
    # a second writing process (here: a second object) holding indexes from before the pruning
    path = tmp_path / "c"
    c, X = make(path)
    other = Collection.open(path)
    c.delete(keys=[f"i{j}" for j in range(30)])
    c.add_vectors("image", ["i50"], X[:1] + 1.0)  # a replaced key deletes too
    c.add_vectors("image", ["i31"], X[:1] + 2.0)
    other.add_vectors("image", ["o1"], X[:1] + 3.0)
    assert_exact(other, path)
    assert other.count("image") == N - 30 + 1
    assert other.search_vector(X[:1] + 1.0, "image", 1)[0].key == "i50"
    c.close()
    other.close()


def test_an_old_index_file_opened_after_pruning_serves_the_live_set(tmp_path, monkeypatch):
    # index files are not rewritten on these deletes (thresholds high), so the newest file on
    # disk predates every pruned row; opening it must still leave the deleted items out
    monkeypatch.setattr(collection_module, "REWRITE_BELOW_BYTES", 0, raising=False)
    monkeypatch.setattr(collection_module, "REWRITE_MIN_CHANGES", 10_000, raising=False)
    path = tmp_path / "c"
    c, X = make(path, spec="HNSW16")
    files_before = sorted(f.name for f in (path / "indexes").glob("image.*.faiss"))
    c.delete(keys=[f"i{j}" for j in range(0, 200, 3)])
    c.close()
    assert sorted(f.name for f in (path / "indexes").glob("image.*.faiss")) == files_before
    assert Store(path / "collection.db", read_only=True, follow=True).deleted_floor() > 0
    with Collection.open(path) as again:
        assert_exact(again, path)
        assert again.count("image") == N - 67
        for j in (0, 3, 198):
            assert again.search_vector(X[j], "image", 1, exact=True)[0].key != f"i{j}"
        assert again.search_vector(X[1], "image", 1, exact=True)[0].key == "i1"
    with Collection.open(path, read_only=True) as ro:
        assert_exact(ro, path)


CRASHER = r"""
import os
import sys
import xmodal.index.collection as cm
from xmodal.index.store import Store

cm.DELETED_LOG_KEEP = 5
real = Store.set_meta
def die(conn, key, value):
    if key == "deleted_floor":
        os._exit(9)  # killed after the log rows are deleted, before the COMMIT
    return real(conn, key, value)
Store.set_meta = staticmethod(die)
c = cm.Collection.open(sys.argv[1])
c.delete(keys=[f"i{j}" for j in range(100, 150)])
os._exit(3)
"""


def test_a_crash_while_pruning_loses_nothing(tmp_path):
    path = tmp_path / "c"
    c, X = make(path)
    c.delete(keys=[f"i{j}" for j in range(20, 26)])  # 6 rows: under 2 * KEEP, not pruned yet
    c.close()
    follower = Collection.open(path, read_only=True, follow=True)
    before_log = db_rows(path, "SELECT seq, item_id FROM deleted ORDER BY seq")
    before_items = live(path, "image")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-c", CRASHER, str(path)], capture_output=True, text=True,
                          env=env)
    assert done.returncode == 9, done.stderr
    # the deletion and the pruning were one transaction: neither happened
    assert db_rows(path, "SELECT seq, item_id FROM deleted ORDER BY seq") == before_log
    assert live(path, "image") == before_items
    assert not db_rows(path, "SELECT value FROM meta WHERE key = 'deleted_floor'")
    assert follower.refresh() is False
    assert_exact(follower, path)
    with Collection.open(path) as again:  # and the next writer prunes and deletes as asked
        assert_exact(again, path)
        again.delete(keys=[f"i{j}" for j in range(100, 150)])
        assert again.count("image") == N - 6 - 50
    assert log_size(path) == KEEP
    assert follower.refresh() is True
    assert_exact(follower, path)
    follower.close()
