"""The collection folder's names and primitives, shared by :class:`~xmodal.index.collection.Collection`'s parts.

The modalities, the database and method file names, the name of an index file (modality,
variant, database id, generation) and the random database id itself, the cross-process writer
lock (``write.lock``), and stored vector blobs read back as a matrix (a damaged row named). The
folder's layout as a whole is described in :mod:`xmodal.index.collection`.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from .store import CollectionError, Store

log = logging.getLogger("xmodal.index")

MODALITIES = ("image", "text")
DB_NAME = "collection.db"
METHOD_FILE = "method.zip"


def _blob_rows(blobs: Sequence[bytes | None], dtype: Any, width: int, ids: Sequence[int] | None,
               what: str, db: Path) -> np.ndarray:
    """Stored vector blobs as a ``(len(blobs), width)`` matrix; a blob of the wrong length (a
    damaged or hand-edited row) is a :class:`CollectionError` naming its item, not NumPy's
    "buffer size must be a multiple of element size" about no item in particular."""
    size = np.dtype(dtype).itemsize * width
    joined = b"".join(b for b in blobs if b is not None)
    if len(joined) != size * len(blobs) or any(b is None for b in blobs):
        r = next(r for r, b in enumerate(blobs) if b is None or len(b) != size)
        got = "none" if blobs[r] is None else f"{len(blobs[r])} bytes"
        item = f"item {int(ids[r])}" if ids is not None else f"row {r}"
        raise CollectionError(f"{db}: the stored {what} of {item} is damaged ({got}, not "
                              f"{size}); restore the collection from a copy or rebuild it (--rebuild)")
    return np.frombuffer(joined, dtype=dtype).reshape(len(blobs), width)


def _new_db_id() -> str:
    return secrets.token_hex(8)


def _give_db_id(store: Store) -> None:
    """Give a database made before database ids its own (two processes opening it at once
    agree on one: the first insert wins)."""
    with store.transaction() as c:
        c.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('db_id', ?)", (json.dumps(_new_db_id()),))


def _index_name(modality: str, variant: str, db_id: str, gen: int) -> str:
    return f"{modality}.{variant}.{db_id}.g{gen}.faiss"


@contextmanager
def _write_lock(folder: Path, wait: bool = True) -> Iterator[bool]:
    """The collection's cross-process writer lock (``flock`` on ``write.lock``). Yields True
    when held; with ``wait=False`` (work a writer would do anyway) False if another process
    holds it now, instead of waiting."""
    said = False
    while True:
        fh = open(folder / "write.lock", "a+")
        try:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not wait:
                    fh.close()
                    yield False
                    return
                if not said:
                    # another `xmodal index` (or a server's write) holds it, maybe for
                    # minutes: say so rather than hang without a word
                    log.warning("%s: waiting for another process writing to this collection", folder)
                    said = True
                fcntl.flock(fh, fcntl.LOCK_EX)
            if _still_there(fh, folder / "write.lock"):
                break
            # a refused Collection.create removed the file (and maybe its folder) while we
            # waited: a lock on it excludes no one, so lock the file there now
            fh.close()
        except BaseException:
            fh.close()
            raise
    try:
        yield True
    finally:
        fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()


def _still_there(fh: Any, path: Path) -> bool:
    """Whether the open lock file ``fh`` is still the file at ``path`` (not unlinked)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    own = os.fstat(fh.fileno())
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


def _drop_lock_file(folder: Path, made: bool) -> None:
    """Called holding ``folder``'s writer lock, after a refused Collection.create: remove
    ``write.lock`` when that call ``made`` it or it is all the folder holds. A process waiting
    on the lock meanwhile sees its file gone once it gets it and locks the new one
    (:func:`_write_lock`)."""
    try:
        if made or [p.name for p in folder.iterdir()] == ["write.lock"]:
            (folder / "write.lock").unlink()
    except OSError:  # a folder this process cannot list or change: left as it is
        pass
