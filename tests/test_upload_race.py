"""An upload over HTTP and a delete in another process (``xmodal remove``) at the same time.

The server wrote an upload into ``files/`` (named by content hash; an existing file of the same
bytes was left as it was) before its add took the collection's writer lock. A delete in another
process of the item that used that file found no item using it any more and removed it: the
upload then failed (the file gone under it), or could have been stored pointing at nothing.
The interleaving is made exact here: the other process runs to its end inside the server's
encoding step, before or after that step reads the file."""

import hashlib
import io
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from xmodal.index import Collection
from xmodal.service import create_app


class MeanColour:
    """A stand-in image encoder (the slow step of an upload): mean RGB and size of a file,
    unreadable files masked out as the real encoders do."""

    spec = "mean-colour"
    dim = 4

    def __init__(self, hook=None):
        self.hook = hook  # hook(when, items): the other process's turn

    def encode(self, items, batch_size=None, progress=None, cache_dir=None, return_mask=False):
        items = [str(i) for i in items]
        if self.hook:
            self.hook("before", items)
        out = np.zeros((len(items), 4), np.float32)
        ok = np.zeros(len(items), bool)
        for r, p in enumerate(items):
            try:
                with Image.open(p) as im:
                    a = np.asarray(im.convert("RGB"), np.float32)
            except OSError:
                continue
            out[r] = [*a.reshape(-1, 3).mean(0) / 255.0, a.shape[0] / 100.0]
            ok[r] = True
        if self.hook:
            self.hook("after", items)
        return (out, ok) if return_mask else out


def png(colour, size=(24, 16)):
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "PNG")
    return buf.getvalue()


def remove_in_another_process(path, key):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-m", "xmodal.cli", "remove", "-c", str(path), "--key", key],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.fixture
def served(tmp_path):
    path = tmp_path / "c.xmc"
    coll = Collection.create(path, dim=4)
    enc = MeanColour()
    coll.encoder = lambda modality: enc  # this collection's "image encoder" (dim 4, no method)
    client = TestClient(create_app(coll))  # public read; writes need a key
    from xmodal.service.auth import create_key

    key = create_key(coll, "write", "test")
    yield coll, enc, client, {"X-API-Key": key}
    coll.close()


def upload(client, headers, data, key):
    return client.post("/api/items", files={"file": ("x.png", data, "image/png")},
                       data={"key": key}, headers=headers)


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_delete_in_another_process_cannot_remove_an_upload_in_flight(served, when):
    coll, enc, client, headers = served
    data = png((200, 30, 40))
    r = upload(client, headers, data, "first")
    assert r.status_code == 201, r.text
    dest = coll.path / "files" / f"{hashlib.sha256(data).hexdigest()}.png"
    assert dest.exists()
    turns = []

    def other_process(moment, items):
        if moment == when and not turns:
            # the item using the same bytes is removed elsewhere while this upload encodes
            turns.append(remove_in_another_process(coll.path, "first"))

    enc.hook = other_process
    r = upload(client, headers, data, "second")
    assert turns, "the other process never ran"
    assert r.status_code == 201, r.text
    assert coll.id_of("first") is None
    item = coll.get_item(coll.id_of("second"))
    assert Path(item.path) == dest.resolve() and dest.exists()  # stored, and its file is there
    assert dest.read_bytes() == data
    hit = coll.search_vector(np.asarray([200 / 255, 30 / 255, 40 / 255, 0.16], np.float32), "image", 1)
    assert hit[0].key == "second"
    assert client.get(f"/api/items/{item.id}/thumbnail").status_code == 200
    # nothing staged is left behind
    assert sorted(f.name for f in (coll.path / "files").iterdir()) == [dest.name]


def test_a_failed_upload_leaves_no_staged_copy_and_keeps_a_used_file(served):
    coll, enc, client, headers = served
    data = png((10, 200, 10))
    assert upload(client, headers, data, "kept").status_code == 201
    dest = coll.path / "files" / f"{hashlib.sha256(data).hexdigest()}.png"

    def unreadable(moment, items):  # the encoder fails on the upload
        if moment == "before":
            for p in items:
                Path(p).write_bytes(b"not an image any more")

    enc.hook = unreadable
    try:
        r = upload(client, headers, data, "broken")
    finally:
        enc.hook = None
    assert r.status_code == 400 and coll.id_of("broken") is None
    # the used file was never touched (the encoder read this request's own copy)
    assert dest.read_bytes() == data and coll.id_of("kept") is not None
    assert sorted(f.name for f in (coll.path / "files").iterdir()) == [dest.name]


def test_writes_inside_writing_join_it(tmp_path):
    # Collection.writing(): the lock the upload's placement is made under; an add inside it
    # does not wait for itself, and another process's write waits for the whole group
    coll = Collection.create(tmp_path / "c.xmc", dim=4)
    with coll.writing():
        coll.add_vectors("image", ["a"], np.eye(1, 4, dtype=np.float32))
        coll.delete(keys=["a"])
        coll.add_vectors("image", ["b"], np.eye(1, 4, dtype=np.float32))
        env = dict(os.environ, OMP_NUM_THREADS="1")
        other = subprocess.run(
            [sys.executable, "-c", "import sys; import xmodal.index.collection as cm\n"
             "with cm._write_lock(cm.Path(sys.argv[1]), wait=False) as got: print(got)",
             str(coll.path)], capture_output=True, text=True, env=env, timeout=120)
        assert other.stdout.strip() == "False", other.stderr
    assert coll.count("image") == 1
    with Collection.open(tmp_path / "c.xmc") as again:
        assert again.count("image") == 1 and again.id_of("b") is not None
    coll.close()


def test_stale_staged_uploads_are_swept_at_start_and_fresh_ones_kept(tmp_path):
    # a server killed between staging an upload and its clean-up leaves files/.upload-*;
    # the next writable start removes those past the TTL, never one that may be in flight
    from xmodal.service.app import STAGED_UPLOAD_TTL, create_app

    coll = Collection.create(tmp_path / "c.xmc", dim=4)
    files = coll.path / "files"
    files.mkdir(exist_ok=True)
    stale, fresh, kept = files / ".upload-aa.png", files / ".upload-bb.png", files / "abc.png"
    for f in (stale, fresh, kept):
        f.write_bytes(b"x")
    old = time.time() - STAGED_UPLOAD_TTL - 60
    os.utime(stale, (old, old))
    os.utime(kept, (old, old))
    create_app(coll)
    assert not stale.exists() and fresh.exists() and kept.exists()
