"""Crash safety: a writer killed with SIGKILL at random moments (mid-transaction, mid index
file write) leaves a collection that opens, agrees with itself and accepts new writes."""

import os
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest

from xmodal.index import Collection, CollectionError
from xmodal.index.store import Store

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
