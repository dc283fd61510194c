"""A persistent, searchable collection of images and texts in one learned common space.

Layout of a collection directory::

    collection.db            SQLite (WAL): items, labels, vectors, settings, keys, audit log
    method.zip               the fitted cross-modal method (``method.save``)
    encoders/<modality>.*    fitted feature encoders (pretrained ones are recreated by spec)
    indexes/<modality>.<variant>.<db_id>.g<generation>.faiss   FAISS caches of the vectors table
    thumbs/, files/          thumbnails and images uploaded over HTTP (named by content hash)

SQLite is the source of truth and every write is one transaction that also bumps a generation
number. Index files carry the generation they reflect in their name and are written to a
temporary file and ``os.replace``d. A file of an older generation is still a good start: item
ids are never reused and an id's vector never changes, so on open the newest file is loaded
and caught up from the store (the live ids it lacks added, the ids it has that are gone
tombstoned or removed). A write therefore changes the in-memory indexes, commits, and
rewrites a modality's files only once the catch-up they would need exceeds
``max(REWRITE_MIN_CHANGES, REWRITE_FRACTION * items in the file)`` (or the file is under
``REWRITE_BELOW_BYTES``, cheap to rewrite): a write costs the items it changes, not the
collection, and a crash at any moment still opens as the committed state. A process holding
indexes follows another's writes the same way, in memory: the rows added since (ids above
the largest it has seen) and the ``deleted`` log (a trigger fills it in each deleting
transaction) since the last entry it has seen. The log keeps the last ``DELETED_LOG_KEEP``
rows (older ones are pruned in a deleting transaction, which records the floor in the meta
table): a process further behind than the floor reloads instead. Index files do not depend on
the log: opening one compares its ids with the store's live ids.

Item ids are stable within one database only: a rebuild (or another collection copied over
this one) starts them again. Each database therefore has a random id (``db_id`` in its meta,
given at creation, or to an older collection on its first writable open) that its index files
carry in their names; a file of another id (or of none) is never loaded, and a writer removes
it. A read-only open of an older collection without one builds its indexes from the store.
"""

from __future__ import annotations

import copy
import fcntl
import functools
import hashlib
import importlib
import secrets
import json
import logging
import os
import sqlite3
import sys
import threading
import time
import zipfile
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from .._fs import atomic_write, atomic_write_bytes
from ..data.dataset import DataError
from .store import SCHEMA_VERSION, CollectionError, ReadOnlyError, Store, read_only_error  # noqa: F401 (re-exported)
from .store import UnreadableDatabaseError, in_chunks
from .store import writable as store_writable
from .vector import IndexFileError, IndexSpecError, VectorIndex, normalize_spec, prepare, split_spec

log = logging.getLogger("xmodal.index")

MODALITIES = ("image", "text")
DB_NAME = "collection.db"
METHOD_FILE = "method.zip"
MAX_KEY_LEN = 512
MAX_ID = 2**63 - 1  # SQLite INTEGER: larger ids cannot exist (and cannot even be bound)
# A modality's index files are rewritten once the catch-up from them (items added or deleted
# since they were written) exceeds max(REWRITE_MIN_CHANGES, REWRITE_FRACTION * their items),
# or always when they are under REWRITE_BELOW_BYTES (as cheap to write as to catch up).
REWRITE_MIN_CHANGES = 1024
REWRITE_FRACTION = 0.05
REWRITE_BELOW_BYTES = 1 << 20
# The deleted log keeps the last DELETED_LOG_KEEP rows (pruned once it holds twice that, in a
# deleting transaction): a process further behind than that reloads its indexes from the store.
DELETED_LOG_KEEP = 4096


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


class CollectionExistsError(CollectionError):
    """Creating a collection where a complete one already is (without overwrite)."""


def writable(path: Path) -> bool:
    """Whether this process may write the collection folder and its database."""
    return store_writable(path, path / DB_NAME)


def _open_store(db: Path, read_only: bool | None = None) -> Store:
    """The store at ``db`` (read-only where this process cannot write it, unless told); a file
    that is not an SQLite database is a clear error."""
    if read_only is None:
        read_only = not writable(db.parent)
    try:
        return Store(db, read_only=read_only)
    except sqlite3.OperationalError as exc:
        # locked past the timeout, an I/O error, a file this user cannot open: not damage
        raise CollectionError(f"{db}: cannot open the collection database ({exc})") from None
    except sqlite3.DatabaseError as exc:  # SQLITE_CORRUPT, SQLITE_NOTADB: the file is damaged
        raise UnreadableDatabaseError(
            f"{db}: not a readable collection database ({exc}); restore the collection from a copy "
            f"made earlier (`xmodal snapshot`), or start again: `xmodal index SOURCE -c {db.parent} "
            f"--rebuild` deletes it") from None


@contextmanager
def _write_lock(folder: Path, wait: bool = True) -> Iterator[bool]:
    """The collection's cross-process writer lock (``flock`` on ``write.lock``). Yields True
    when held; with ``wait=False`` (work a writer would do anyway) False if another process
    holds it now, instead of waiting."""
    with open(folder / "write.lock", "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                yield False
                return
            # another `xmodal index` (or a server's write) holds it, maybe for minutes: say so
            # rather than hang without a word
            log.warning("%s: waiting for another process writing to this collection", folder)
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _ids(ids: Iterable[int]) -> list[int]:
    """Item ids as ints, those SQLite cannot hold dropped: no item has them. One that is no
    whole number is a :class:`DataError` naming it."""
    out = []
    for x in ids:
        try:
            i = int(x)
            if isinstance(x, (float, np.floating)) and i != x:
                raise ValueError
        except (TypeError, ValueError):
            raise DataError(f"item id {x!r}: not an integer") from None
        if -MAX_ID - 1 <= i <= MAX_ID:
            out.append(i)
    return out


THUMB_SIZES = (128, 256, 512)  # thumbnail sizes the service makes (thumb_file)
# v2: decoded upright (EXIF orientation) with transparency on white; older names not reused
THUMB_SUFFIXES = ("_v2.jpg", ".jpg")  # the current name first, then the older ones


def thumb_file(thumbs: Path, tag: str, size: int, suffix: str = THUMB_SUFFIXES[0]) -> Path:
    """Where the service caches an item's thumbnail of ``size`` (``tag``: its content hash,
    or ``id<N>`` for an item stored without one); another of ``THUMB_SUFFIXES``: where an
    older xmodal cached it."""
    return thumbs / f"{tag}_{size}{suffix}"
_sep_files = os.sep + "files" + os.sep  # uploads are stored as <collection>/files/<sha256>.<ext>


@dataclass
class ImageItem:
    key: str
    path: str
    labels: Sequence[str] = ()


@dataclass
class TextItem:
    key: str
    text: str
    pair_key: str | None = None  # the key of the image this text describes
    labels: Sequence[str] = ()


@dataclass
class Hit:
    id: int
    score: float
    modality: str
    key: str
    path: str | None = None
    text: str | None = None
    labels: list[str] = field(default_factory=list)
    pair_id: int | None = None
    shard: str | None = None  # set by xmodal.index.shards: ids are unique within a shard only

    def to_dict(self) -> dict[str, Any]:
        d = {"id": self.id, "score": self.score, "modality": self.modality, "key": self.key,
             "path": self.path, "text": self.text, "labels": list(self.labels), "pair_id": self.pair_id}
        if self.shard is not None:
            d["shard"] = self.shard
        return d


@dataclass
class AddReport:
    added: int = 0
    replaced: int = 0
    unchanged: int = 0
    moved: int = 0  # unchanged images found at another path (a moved folder): path updated
    relabelled: int = 0  # unchanged items sent with other labels: labels updated in place
    ids: list[int] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # files the encoder could not read
    removed: int = 0  # items the indexer's --prune removed after the add

    def counts(self) -> dict[str, int]:
        """What the add did, as numbers (``xmodal index --json``'s ``run``)."""
        return {"added": self.added, "replaced": self.replaced, "moved": self.moved,
                "relabelled": self.relabelled, "unchanged": self.unchanged, "skipped": len(self.skipped), "removed": self.removed}

    def merge(self, other: "AddReport") -> None:
        """Count ``other``'s stored items in (a batch of a longer add)."""
        self.added += other.added
        self.replaced += other.replaced
        self.ids += other.ids


def _decodes(path: str) -> bool:
    """Whether the image encoders can read ``path`` (decoded at reduced size: a cheap check)."""
    from ..encoders.images import ImageReadError, open_image

    try:
        open_image(path, draft_size=32)
    except ImageReadError:
        return False
    return True


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def check_key(key: str) -> str:
    if not isinstance(key, str) or not key or len(key) > MAX_KEY_LEN:
        raise DataError(f"item key {key!r}: must be a non-empty string of at most {MAX_KEY_LEN} chars")
    if any(ord(c) < 32 for c in key):
        raise DataError(f"item key {key!r}: control characters are not allowed")
    return key


def _storable(text: str) -> bool:
    """Whether SQLite can store ``text``: a file name in another encoding than UTF-8 comes
    from the OS with lone surrogates (PEP 383), which no UTF-8 column can hold."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _checked_labels(what: str, labels: Any) -> list[str]:
    """An item's labels as a list of strings (whole numbers are taken as their digits). A
    single string is refused: taken as a sequence it would be split into one label a letter."""
    if labels is None:
        return []
    if isinstance(labels, (str, bytes)):
        raise DataError(f"{what}: labels must be a list of strings, not the single string {labels!r} "
                        f"(write [{labels!r}])")
    try:
        labels = list(labels)
    except TypeError:
        raise DataError(f"{what}: labels must be a list of strings, got {type(labels).__name__}") from None
    out = []
    for j, lab in enumerate(labels):
        if isinstance(lab, (int, np.integer)) and not isinstance(lab, (bool, np.bool_)):
            lab = str(lab)
        if not isinstance(lab, str) or not _storable(lab):
            raise DataError(f"{what}: labels[{j}] must be a string of valid Unicode text, got {lab!r}")
        out.append(lab)
    return out


# ---------------------------------------------------------------- encoders
def get_encoder(spec: Any, modality: str | None = None) -> Any:
    """An encoder object from a spec string (``xmodal.encoders.get_encoder``) or as given;
    with ``modality``, one of the other modality is refused (:class:`EncoderError`): image
    paths encoded as text, or captions as image files, make no common space."""
    from ..encoders import EncoderError, get_encoder as _get

    if not isinstance(spec, str):
        mod = getattr(spec, "modality", None)
        if modality is not None and mod in ("image", "text") and mod != modality:
            a = "an" if modality == "image" else "a"
            raise EncoderError(f"{getattr(spec, 'spec', spec)!r} is {'an' if mod == 'image' else 'a'} "
                               f"{mod} encoder, but {a} {modality} encoder is needed here")
        return spec
    return _get(spec, modality)


def encode_items(enc: Any, inputs: Sequence[str], progress: bool | None = False,
                 batch_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(features, ok mask): rows the encoder could not read come back with ok False."""
    try:
        F, ok = enc.encode(list(inputs), batch_size=batch_size, progress=progress, return_mask=True)
    except TypeError:  # an encoder without return_mask
        F = enc.encode(list(inputs), batch_size=batch_size, progress=progress)
        ok = np.ones(len(F), dtype=bool)
    return np.asarray(F, dtype=np.float32), np.asarray(ok, dtype=bool)


def _encode_query(enc: Any, items: str | Sequence[str]) -> np.ndarray:
    """Queries through an encoder in one batch, bypassing its feature cache: queries (uploads
    on a server especially) would otherwise grow the cache without bound."""
    items = [items] if isinstance(items, str) else list(items)
    try:
        out = enc.encode(items, progress=False, cache_dir=False, return_mask=True)
    except TypeError:
        return np.asarray(enc.encode(items), dtype=np.float32)
    F, ok = out
    if not np.asarray(ok).all():
        bad = items[int(np.flatnonzero(~np.asarray(ok))[0])]
        raise DataError(f"query {bad}: the {enc.spec} encoder could not read it")
    return np.asarray(F, dtype=np.float32)


def _digest_file(h: Any, path: Path) -> None:
    """Feed a saved model file into hash ``h`` by content: a zip's members (names and bytes,
    not the write times in its headers), so two saves of one model hash alike."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            for name in sorted(zf.namelist()):
                h.update(name.encode() + b"\0" + zf.read(name))
    else:
        h.update(path.read_bytes())


def _class_path(obj: Any) -> str:
    return f"{type(obj).__module__}:{type(obj).__qualname__}"


def _load_class(path: str) -> Any:
    mod, _, qual = path.partition(":")
    obj: Any = importlib.import_module(mod)
    for part in qual.split("."):
        obj = getattr(obj, part)
    return obj


def _float_projection(method: Any, modality: str, feats: np.ndarray) -> np.ndarray:
    """A hashing method's real-valued projection before the sign (for re-ranking)."""
    from ..methods.base import CrossModalMethod

    fn = CrossModalMethod.encode_images if modality == "image" else CrossModalMethod.encode_texts
    return np.asarray(fn(method, feats), dtype=np.float32)


class Collection:
    """Open with :meth:`open`, make with :meth:`create` (or :func:`xmodal.index.build_collection`)."""

    def __init__(self, path: Path, store: Store) -> None:
        self.path = path
        self._uploads_dir = str((path / "files").resolve())  # images uploaded over HTTP
        self._lock = threading.RLock()  # in-memory indexes: held briefly (search, mutation)
        self._wlock = threading.RLock()  # one writing thread; slow work (encoding) under it only
        self._writer: int | None = None  # the thread inside _writing (it holds the flock)
        self.last_add: AddReport | None = None  # what this handle's last add_items did
        self._use(store)

    def _use(self, store: Store) -> None:
        """Take ``store`` as this collection's database: its settings, model and indexes."""
        with self._lock:
            self.store = store
            self.read_only = store.read_only
            st = os.stat(self.path / DB_NAME)
            self._db_file = (st.st_dev, st.st_ino)
            self._db_stamp = self._file_stamp()
            if not store.read_only and store.get_meta("db_id") is None:
                _give_db_id(store)  # an older collection: its index files get named by it
            self.meta = store.all_meta()
            # None (an older collection open read-only): no index file is known to be its own
            self._db_id: str | None = self.meta.get("db_id")
            self.kind: str = self.meta.get("output")
            dim = self.meta.get("dim")
            # int(...) as before: a stored "64" still reads; a bool or damaged value does not
            self.dim: int = int(dim) if isinstance(dim, int) and not isinstance(dim, bool) or (
                isinstance(dim, str) and dim.isascii() and dim.isdigit()) else dim  # "²".isdigit()
            self.fdim: int | None = self.meta.get("fdim")
            self.index_spec: str = self.meta.get("index", "Flat")
            for key, good in (("output", self.kind in ("real", "binary")),
                              ("dim", type(self.dim) is int and self.dim > 0),
                              ("fdim", self.fdim is None or (type(self.fdim) is int and self.fdim > 0)),
                              ("index", isinstance(self.index_spec, str))):
                if not good:
                    # a hand-edited or damaged meta table: named, not a KeyError or TypeError later
                    raise CollectionError(f"{self.path / DB_NAME}: meta {key!r} is missing or damaged "
                                          f"({self.meta.get(key)!r}); restore the collection from a copy "
                                          "or rebuild it (--rebuild)")
            self._method: Any = None
            self._encoders: dict[str, Any] = {}
            self._space: str | None = None  # a rebuilt collection may be another space
            self.indexes: dict[tuple[str, str], VectorIndex] = {}
            self._refused_specs: set[str] = set()  # approximate specs warned about (_build_index)
            self._gen = -1
            # (largest item id, last deleted-log row) the in-memory indexes reflect; None: unknown
            self._marks: tuple[int, int] | None = None
            self._file_gen: dict[tuple[str, str], int] = {}  # generation of the file each index came from
            self._file_n: dict[str, int] = {}  # items in a modality's files when written
            self._pending: dict[str, int] = {}  # items added or deleted since (the catch-up they need)
            self._force: set[str] = set()  # modalities whose indexes were rebuilt: files to write
            self._load_indexes()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """A store transaction of this process's own write. The write sets ``_gen`` inside it
        (before COMMIT, under the store's lock, so a concurrent refresh() never takes it for
        another process's write); a body or COMMIT that fails puts it back, else this process
        would stand one generation ahead of the store and never see the next writer's commit."""
        gen = self._gen
        try:
            with self.store.transaction() as c:
                yield c
        except sqlite3.OperationalError as exc:
            # a full disk, a database that became read-only, a lock held past the timeout:
            # SQLite's message names no file, and nothing of this write was stored
            self._gen = gen
            raise CollectionError(f"{self.path / DB_NAME}: the write failed and was rolled back, "
                                  f"nothing of it is stored ({exc})") from exc
        except BaseException:
            self._gen = gen
            raise

    def _reopen_if_replaced(self) -> bool:
        """Follow a rebuild (``xmodal index --rebuild``) by another process: it deletes the
        database this object has open and makes a new one. Without this a running server
        would serve, and write into, the deleted file until restarted."""
        db = self.path / DB_NAME
        try:
            st = os.stat(db)
        except FileNotFoundError:
            return False  # mid-rebuild: keep serving the last state
        if (st.st_dev, st.st_ino) == self._db_file:
            return False
        try:
            if self.read_only and not self.store.immutable:
                # a follower (serve --read-only beside a writer): the new database has a live
                # writer too, whose WAL an immutable connection would refuse or misread
                store = Store(db, read_only=True, follow=True)
            else:
                store = _open_store(db, self.read_only)
        except (CollectionError, sqlite3.Error):
            return False
        if store.get_meta("format") != SCHEMA_VERSION:  # not complete yet
            store.close()
            return False
        with self._lock:
            # another thread of this process may have followed the rebuild since the check
            # above (and written into the new database): taking it again would reload its
            # indexes under that thread's feet and add its new rows twice
            if (st.st_dev, st.st_ino) == self._db_file:
                store.close()
                return False
            # the old connection is not closed here: a search in flight may still read it; it
            # closes when the last reference goes
            self._use(store)
        log.info("%s: the collection was rebuilt; reopened it", self.path)
        return True

    # ------------------------------------------------------------ create / open
    @classmethod
    def create(cls, path: str | Path, *, output: str = "real", dim: int | None = None,
               method: Any = None, image_encoder: Any = None, text_encoder: Any = None,
               index: str = "Flat", rerank: bool = False, public_read: bool = True,
               overwrite: bool = False, info: dict | None = None) -> "Collection":
        """A new, empty collection. ``method`` (fitted) fixes ``output`` and ``dim``; without it
        vectors are added and searched as they are (``dim`` required)."""
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise CollectionError(f"{path}: exists and is not a folder; a collection is a folder")
        path.mkdir(parents=True, exist_ok=True)
        # Under the write lock: two processes creating the same collection at once must not
        # delete each other's database (the loser is told it exists and can add to it).
        with _write_lock(path):
            cls._create(path, output=output, dim=dim, method=method, image_encoder=image_encoder,
                        text_encoder=text_encoder, index=index, rerank=rerank,
                        public_read=public_read, overwrite=overwrite, info=info)
        return cls.open(path)

    @classmethod
    def _create(cls, path: Path, *, output: str, dim: int | None, method: Any, image_encoder: Any,
                text_encoder: Any, index: str, rerank: bool, public_read: bool, overwrite: bool,
                info: dict | None) -> None:
        db = path / DB_NAME
        old = False
        if db.exists():
            try:
                store = _open_store(db)
            except UnreadableDatabaseError:
                # a damaged database (truncated, overwritten): what a rebuild is for; without
                # overwrite it stays, for the user to restore or recover
                if not overwrite:
                    raise
            else:
                complete = store.get_meta("format") is not None
                store.close()
                if complete and not overwrite:
                    raise CollectionExistsError(f"{path}: a collection already exists (pass overwrite=True)")
            old = True
        # Every argument is checked before the old collection goes: a rebuild refused for a
        # typo (an index spec, an encoder name) must leave the collection it would replace.
        fdim = None
        if method is not None:
            method._check_fitted()
            output = method.output
            probe = method.encode_images(np.zeros((1, method.image_dim_), dtype=np.float32))
            dim = probe.shape[1] * 8 if output == "binary" else probe.shape[1]
            if output == "binary" and rerank:
                fdim = _float_projection(method, "image",
                                         np.zeros((1, method.image_dim_), np.float32)).shape[1]
        elif dim is None:
            raise CollectionError("Collection.create: pass a fitted method or the vector dim")
        if output not in ("real", "binary"):
            raise CollectionError(f"output must be 'real' or 'binary', got {output!r}")
        index = normalize_spec(output, index)
        VectorIndex(output, dim, index)  # fail now on a bad factory string
        encoders = {modality: get_encoder(enc, modality)
                    for modality, enc in (("image", image_encoder), ("text", text_encoder)) if enc is not None}
        if old:
            for p in [db, Path(str(db) + "-wal"), Path(str(db) + "-shm")]:
                p.unlink(missing_ok=True)
            for d in ("indexes", "encoders"):
                for f in (path / d).glob("*") if (path / d).is_dir() else []:
                    f.unlink()
        if method is not None:
            method.save(path / METHOD_FILE)
        encoders_meta = {}
        for modality, enc in encoders.items():
            rec: dict[str, Any] = {"spec": getattr(enc, "spec", None), "class": _class_path(enc),
                                   "dim": int(enc.dim), "file": None}
            if getattr(enc, "needs_fit", False):
                f = path / "encoders" / f"{modality}.enc"
                f.parent.mkdir(exist_ok=True)
                enc.save(f)
                rec["file"] = f.name
            encoders_meta[modality] = rec
        store = Store(db)
        with store.transaction() as c:
            for k, v in {"output": output, "dim": int(dim), "fdim": fdim, "index": index,
                         "method": None if method is None else
                         {"name": method.name, "file": METHOD_FILE, "params": method.get_params()},
                         "encoders": encoders_meta, "public_read": bool(public_read),
                         "created": time.time(), "generation": 0, "info": info or {},
                         "db_id": _new_db_id()}.items():
                Store.set_meta(c, k, v)
            Store.set_meta(c, "format", SCHEMA_VERSION)  # last: marks the collection complete
        store.close()

    @classmethod
    def open(cls, path: str | Path, read_only: bool | None = None, follow: bool = False) -> "Collection":
        """The collection at ``path``. ``read_only``: search only, every write refused with
        :class:`ReadOnlyError` (default: where this process cannot write the folder, such as
        a read-only mount or a shipped snapshot). ``follow`` (with ``read_only``, in a folder
        others write): see their commits as they come, even those a live writer has not yet
        merged into the database file."""
        path = Path(path)
        db = path / DB_NAME
        if not db.exists():
            raise CollectionError(f"{path}: no collection here (missing {DB_NAME}); "
                                  "make one with `xmodal index`")
        if follow and read_only and writable(path):
            store = Store(db, read_only=True, follow=True)
        else:
            store = _open_store(db, read_only)
        fmt = store.get_meta("format")
        if fmt is None:
            store.close()
            raise CollectionError(f"{path}: collection was never completed (creation interrupted); "
                                  "run `xmodal index` again")
        if fmt != SCHEMA_VERSION:
            store.close()
            raise CollectionError(f"{path}: collection format {fmt}, this xmodal reads {SCHEMA_VERSION}")
        return cls(path, store)

    @staticmethod
    def exists(path: str | Path) -> bool:
        db = Path(path) / DB_NAME
        if not db.exists():
            return False
        s = _open_store(db)
        try:
            return s.get_meta("format") is not None
        finally:
            s.close()

    @staticmethod
    def stored_counts(path: str | Path) -> dict[str, int] | None:
        """Items per modality the collection at ``path`` holds, read from its database alone
        (no index loaded: what `xmodal index` says when it is interrupted); None when there is
        no complete collection there or its database cannot be read."""
        db = Path(path) / DB_NAME
        if not db.exists():
            return None
        try:
            s = _open_store(db)  # as exists(): read-only only where it must (a WAL to merge)
        except CollectionError:  # damaged: --rebuild's business, not this count's
            return None
        try:
            if s.get_meta("format") is None:
                return None
            counts = dict.fromkeys(MODALITIES, 0)
            for modality, n in s.query("SELECT modality, COUNT(*) FROM items GROUP BY modality"):
                counts[modality] = int(n)
            return counts
        except sqlite3.DatabaseError:
            return None
        finally:
            s.close()

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> "Collection":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------ model parts
    def _damaged(self, f: Path, what: str, exc: BaseException) -> CollectionError:
        """A fitted model file of the collection that is missing or does not load: named, with
        what still works and how to mend it (the vectors are in the database, the fit is not)."""
        why = "missing" if isinstance(exc, FileNotFoundError) else f"unreadable ({exc})"
        return CollectionError(f"{f}: the collection's {what} is {why}; its items and vectors are "
                               f"intact (vector search, export and snapshot work), but queries cannot "
                               f"be encoded until it is refitted: `xmodal index SOURCE -c {self.path} --rebuild`")

    @property
    def method(self) -> Any:
        if self._method is None and self.meta.get("method"):
            from ..methods import UnknownMethodError, load

            f = self.path / self.meta["method"]["file"]
            try:
                self._method = load(str(f))
            except UnknownMethodError as exc:  # a method this process does not have: a plugin, not damage
                raise CollectionError(f"{f}: unknown method {exc.name!r} (not one of xmodal's); "
                                      "load the method's plugin (--plugin FILE or $XMODAL_PLUGINS; in "
                                      "Python xmodal.methods.load_plugin)") from None
            except (OSError, ValueError, RuntimeError, EOFError, zipfile.BadZipFile) as exc:
                raise self._damaged(f, "fitted method", exc) from exc
        return self._method

    def encoder(self, modality: str) -> Any:
        if modality not in self._encoders:
            rec = self.meta.get("encoders", {}).get(modality)
            if rec is None:
                raise CollectionError(f"{self.path}: collection has no {modality} encoder; "
                                      f"search it with a vector instead")
            if rec.get("file"):
                klass = _load_class(rec["class"])
                f = self.path / "encoders" / rec["file"]
                try:
                    self._encoders[modality] = klass.load(f)
                except (OSError, ValueError, KeyError, RuntimeError, EOFError, zipfile.BadZipFile) as exc:
                    raise self._damaged(f, f"fitted {modality} encoder", exc) from exc
            else:
                self._encoders[modality] = get_encoder(rec["spec"], modality)
        return self._encoders[modality]

    @property
    def public_read(self) -> bool:
        return bool(self.store.get_meta("public_read", True))

    def set_setting(self, key: str, value: Any, actor: str = "local", remote: str | None = None) -> None:
        if key not in ("public_read",):
            raise CollectionError(f"unknown setting {key!r}; settable: public_read")
        with self.store.transaction() as c:
            Store.set_meta(c, key, value)
            Store.audit(c, actor, "set_setting", {key: value}, remote)
        self.meta[key] = value

    def features_to_space(self, modality: str, feats: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Encoder features -> (common-space codes, float projections for re-ranking or None)."""
        m = self.method
        if m is None:
            return np.asarray(feats), None
        if "torch" in sys.modules:  # a PyTorch method: one thread for a query (see torch_threads)
            from ..encoders.cnn import torch_threads

            ctx = torch_threads(None, len(feats))
        else:
            ctx = nullcontext()
        with ctx:
            codes = m.encode_images(feats) if modality == "image" else m.encode_texts(feats)
            fvec = _float_projection(m, modality, feats) if self.fdim else None
        return (np.asarray(codes, dtype=np.float32) if self.kind == "real" else codes), fvec

    # ------------------------------------------------------------ index files
    def _index_file(self, modality: str, variant: str, gen: int) -> Path:
        assert self._db_id is not None  # only writers write files, and they have an id
        return self.path / "indexes" / _index_name(modality, variant, self._db_id, gen)

    def _variants(self) -> list[tuple[str, str, int, str]]:
        """(variant, kind, dim, spec) for each index a modality has."""
        out = [("flat", self.kind, self.dim, normalize_spec(self.kind, "Flat"))]
        if split_spec(self.index_spec)[0] not in ("Flat", "BFlat"):
            out.append(("approx", self.kind, self.dim, self.index_spec))
        if self.fdim:
            out.append(("rerank", "real", int(self.fdim), "Flat"))
        return out

    def _build_index(self, modality: str, variant: str, kind: str, dim: int, spec: str,
                     data: Callable[[], tuple[np.ndarray, list[bytes], list[bytes | None]]] | None = None
                     ) -> VectorIndex | None:
        """``modality``'s index ``variant`` built from the store's vectors (``data``: a cached
        reader of them, shared by the variants of one snapshot); None for an approximate index
        with too few vectors to train yet, or whose spec this version refuses."""
        try:
            idx = VectorIndex(kind, dim, spec)
        except IndexSpecError as exc:
            if variant != "approx":
                raise
            # a spec an older xmodal accepted and this one refuses (it scored by L2, say):
            # the collection stays usable, answered exactly by its flat index
            if spec not in self._refused_specs:
                self._refused_specs.add(spec)
                log.warning("%s: its index spec %r is refused (%s); searches use the exact flat "
                            "index. Rebuild with another --index to have an approximate one.",
                            self.path, spec, exc)
            return None
        if variant == "approx" and idx.min_train_size > self.count(modality):
            return None  # too few vectors to train yet (the flat index answers): none read
        ids, codes, fvecs = data() if data is not None else self.store.vectors(modality)
        if variant == "rerank":
            mat = self._matrix(variant, dim, ids, codes, fvecs)
        else:
            mat = self._decode(codes, ids)
        if len(ids):
            try:
                idx.add(ids, mat)
            except IndexSpecError:
                if variant == "approx":
                    return None  # too few vectors to train yet: searches use the flat index
                raise
        elif not idx.is_trained:
            return None
        return idx

    def _decode(self, codes: list[bytes], ids: Sequence[int] | None = None) -> np.ndarray:
        """The stored codes of items ``ids`` as a matrix (packed bits, or float32 rows)."""
        if self.kind == "binary":
            return _blob_rows(codes, np.uint8, self.dim // 8, ids, "vector", self.path / DB_NAME)
        return _blob_rows(codes, np.float32, self.dim, ids, "vector", self.path / DB_NAME)

    def _index_files(self, modality: str, variant: str) -> list[tuple[int, Path]]:
        """(generation, path) of this index's files of this database, oldest first."""
        if self._db_id is None:
            return []
        head = f"{modality}.{variant}.{self._db_id}.g"
        out = []
        for f in (self.path / "indexes").glob(f"{head}*.faiss"):
            g = f.name[len(head):-len(".faiss")]
            if g.isdigit():
                out.append((int(g), f))
        return sorted(out)

    def _matrix(self, variant: str, dim: int, ids: np.ndarray, codes: list[bytes],
                fvecs: list[bytes | None]) -> np.ndarray:
        """The rows an index variant takes: codes, or the float projections (re-ranking)."""
        if variant == "rerank":
            return _blob_rows(fvecs, np.float32, dim, ids, "float projection", self.path / DB_NAME)
        return self._decode(codes, ids)

    def _load_indexes(self) -> None:
        """Load the newest index file of each index (of a generation the store has reached) and
        catch it up from the store; build from the vectors table those with no usable file."""
        with self._lock:
            top = self.store.generation()
            loaded: dict[tuple[str, str], tuple[int, VectorIndex]] = {}
            for modality in MODALITIES:
                for variant, kind, dim, spec in self._variants():
                    for g, f in reversed(self._index_files(modality, variant)):
                        if g > top:
                            continue  # a state this store has not reached (or another store's)
                        try:
                            idx = VectorIndex.from_bytes(kind, dim, spec, f.read_bytes())
                        except IndexFileError as exc:
                            # it loads but is not this index (another variant's or width's
                            # file): an 'exact' search would be answered by a graph, or fail
                            log.warning("%s: index file %s is not a %s index of dim %d (%s); not used",
                                        self.path, f.name, spec, dim, exc)
                            continue
                        except Exception:  # noqa: BLE001 (a cache: whatever fails, it is rebuilt)
                            continue  # replaced meanwhile, or unreadable: an older one, else a build
                        loaded[(modality, variant)] = (g, idx)
                        break
            self.indexes, self._file_gen, self._file_n, self._pending = {}, {}, {}, {}
            self._force = set()
            with self.store.reading() as c:  # one snapshot: the marks match the indexes exactly
                gen = self.store.generation()
                marks = Store.marks(c)
                for modality in MODALITIES:
                    live = np.sort(self.store.item_ids(modality))
                    # read once, only if some variant is built (not for an index still waiting
                    # for its training minimum)
                    data = functools.cache(functools.partial(self.store.vectors, modality))
                    if self._foreign_files(modality, loaded, live):
                        for variant, *_ in self._variants():
                            loaded.pop((modality, variant), None)
                    for variant, kind, dim, spec in self._variants():
                        idx = None
                        if (modality, variant) in loaded:
                            g, idx = loaded[(modality, variant)]
                            have = idx.stored_ids()
                            if len(have) and int(have.max()) > marks[0]:
                                # ids this store never gave: a file of another database (one
                                # replaced by a rebuild), whose ids mean other items
                                idx, have = None, None
                        if idx is not None:
                            gone = have[~np.isin(have, live)]
                            missing = live[~np.isin(live, have)]
                            idx.remove(gone)
                            if len(missing):
                                ids, codes, fvecs = self.store.vectors_of(missing)
                                idx.add(ids, self._matrix(variant, dim, ids, codes, fvecs))
                            self._file_gen[(modality, variant)] = g
                            self._file_n[modality] = max(self._file_n.get(modality, 0), len(have))
                            self._pending[modality] = max(self._pending.get(modality, 0),
                                                          len(gone) + len(missing))
                            if idx.needs_compaction():
                                idx = None
                        if idx is None:
                            self._file_gen.pop((modality, variant), None)
                            idx = self._build_index(modality, variant, kind, dim, spec, data)
                            if idx is not None:
                                self._force.add(modality)
                        if idx is not None:
                            self.indexes[(modality, variant)] = idx
            self._gen = gen
            self._marks = None if marks[1] is None else (marks[0], marks[1])
            if not self.read_only and any(self._needs_rewrite(m) for m in MODALITIES):
                self._save_indexes(locked=False)

    def _foreign_files(self, modality: str, loaded: dict, live: np.ndarray) -> bool:
        """Whether a loaded exact index file of ``modality`` holds, for the largest id it shares
        with the store, another vector than the store's: a file of another history of this
        database (a backup restored over a folder that went on being written, whose leftover
        newer files carry the same database id), whose ids mean other items. One row read."""
        for variant, kind, dim, _ in self._variants():
            got = loaded.get((modality, variant))
            if got is None or not got[1].is_flat:
                continue  # lossy or unreconstructable storage: the exact variant decides
            idx = got[1]
            shared = np.intersect1d(idx.stored_ids(), live)
            if not len(shared):
                continue
            last = shared[-1:]
            ids, codes, fvecs = self.store.vectors_of(last)
            if not len(ids):
                continue
            want = prepare(kind, self._matrix(variant, dim, ids, codes, fvecs), dim)
            try:
                have = idx.reconstruct(last)
            except RuntimeError:
                continue
            same = (np.array_equal(have, want) if kind == "binary"
                    else np.allclose(have, want, rtol=1e-5, atol=1e-6))
            if not same:
                return True
        return False

    def _catch_up(self) -> bool:
        """Bring the in-memory indexes to the store's state from the rows changed since they
        were (adds: ids above the largest seen; deletes: the deleted log), without reading
        index files. False where it cannot (no marks, no log): reload instead."""
        with self._lock:
            if self._marks is None:
                return False
            with self.store.reading() as c:
                marks = Store.marks(c)
                if marks[1] is None or marks[0] < self._marks[0] or marks[1] < self._marks[1]:
                    return False  # no log, or another history (a rebuilt store)
                gen = self.store.generation()
                changes = self.store.changes_since(*self._marks)
                if changes is None:
                    return False  # the log was pruned past this state: reload
                added, gone = changes
                for modality in MODALITIES:
                    dead = np.asarray([i for i, m in gone if m == modality], dtype=np.int64)
                    rows = [r for r in added if r[1] == modality]
                    if not len(dead) and not rows:
                        continue
                    ids = np.asarray([r[0] for r in rows], dtype=np.int64)
                    data = functools.cache(functools.partial(self.store.vectors, modality))
                    for variant, kind, dim, spec in self._variants():
                        idx = self.indexes.get((modality, variant))
                        if idx is not None:
                            idx.remove(dead)
                            if len(ids):
                                idx.add(ids, self._matrix(variant, dim, ids, [r[2] for r in rows],
                                                          [r[3] for r in rows]))
                        if idx is None or idx.needs_compaction():
                            # too many tombstones, or an approximate index that could not
                            # train before: built from this same snapshot
                            new = self._build_index(modality, variant, kind, dim, spec, data)
                            if new is not None:
                                self.indexes[(modality, variant)] = new
                                self._force.add(modality)
                            elif idx is not None:
                                self.indexes.pop((modality, variant))
                    self._pending[modality] = self._pending.get(modality, 0) + len(dead) + len(ids)
            self._gen = gen
            self._marks = (marks[0], marks[1])
            return True

    def _row_bytes(self) -> int:
        return (self.dim // 8 if self.kind == "binary" else 4 * self.dim) + 4 * int(self.fdim or 0)

    def _needs_rewrite(self, modality: str) -> bool:
        """Whether the modality's index files are to be rewritten now (see REWRITE_*)."""
        mine = [v for (m, v) in self.indexes if m == modality]
        if not mine:
            return False
        if modality in self._force or any((modality, v) not in self._file_gen for v in mine):
            return True
        pending = self._pending.get(modality, 0)
        if not pending:
            return False
        if self.always_rewrite:
            return True
        if self.indexes[(modality, "flat")].ntotal * self._row_bytes() < REWRITE_BELOW_BYTES:
            return True
        return pending > max(REWRITE_MIN_CHANGES, REWRITE_FRACTION * self._file_n.get(modality, 0))

    #: Rewrite a changed modality's index files on every write (the behaviour before catch-up
    #: from older files; benchmarks/upload_speed.py compares the two).
    always_rewrite: bool = False

    def _save_indexes(self, locked: bool = True) -> None:
        """Write the index files of the modalities :meth:`_needs_rewrite` names, for the
        current generation (temp file + rename), and drop their older files. Other files stay:
        an older file plus the catch-up from the store is the current state. Not ``locked``
        (an open, outside a write): only where no writer is at work, else it is left to it."""
        if not locked:
            with _write_lock(self.path, wait=False) as got:
                if got:
                    self._save_indexes()
            return
        try:
            st = os.stat(self.path / DB_NAME)
        except FileNotFoundError:
            return
        if (st.st_dev, st.st_ino) != self._db_file:
            return  # the database was replaced (a rebuild): these indexes are not its cache
        with self._lock:
            gen = self._gen
            todo = [m for m in MODALITIES if self._needs_rewrite(m)]
            indexes = {key: idx for key, idx in self.indexes.items() if key[0] in todo}
            sizes = {m: self.indexes[(m, "flat")].ntotal for m in todo}
        failed: set[str] = set()
        for (modality, variant), idx in indexes.items():
            if modality in failed:
                continue
            # outside the index lock: searches go on; only this writer changes the indexes
            f = self._index_file(modality, variant, gen)
            try:
                atomic_write_bytes(f, idx.to_bytes())
            except OSError as exc:
                # A full disk, a folder this user cannot write: the files are caches of the
                # store, which has committed. The open or the write goes on (in memory the
                # indexes are current) and the next write tries again; the older files stay.
                log.warning("%s: could not write the index file %s (%s); the collection is "
                            "intact, the next write tries again", self.path, f.name, exc.strerror or exc)
                failed.add(modality)
        indexes = {key: idx for key, idx in indexes.items() if key[0] not in failed}
        with self._lock:
            for modality in todo:
                if modality in failed:
                    continue
                self._pending[modality] = 0
                self._file_n[modality] = sizes[modality]
                self._force.discard(modality)
            for key in indexes:
                self._file_gen[key] = gen
        try:
            self._drop_old_index_files(indexes, gen)
        except OSError as exc:
            log.warning("%s: could not remove an older index file (%s)", self.path, exc)

    def _drop_old_index_files(self, indexes: dict, gen: int) -> None:
        """After ``indexes`` were written for ``gen``: their older files, other databases'
        files and stray temporary files."""
        for modality, variant in indexes:
            for g, f in self._index_files(modality, variant):
                if g < gen:
                    f.unlink(missing_ok=True)
            # files of another database (a previous build, a copy of another collection) or
            # of none (before database ids): never loaded, so never kept. Safe here: this is
            # the database in the folder and a rebuild waits for the writer lock held now.
            mine = f"{modality}.{variant}.{self._db_id}.g"
            for f in (self.path / "indexes").glob(f"{modality}.{variant}.*.faiss"):
                if not f.name.startswith(mine):
                    f.unlink(missing_ok=True)
        for f in (self.path / "indexes").glob("*.tmp"):
            f.unlink(missing_ok=True)

    def export(self, dest: str | Path, modality: str | None = None) -> dict[str, int]:
        """Write the stored vectors and what each item is to one NumPy ``.npz`` file (read it
        with ``np.load(dest)``, no pickle), for use outside xmodal: ``ids``, ``modality``,
        ``keys``, ``paths`` (images; "" for texts), ``texts`` ("" for images), ``pair_ids`` (a
        caption's image, -1 otherwise), ``labels`` (a JSON list per item), ``vectors``
        (float32 common-space rows, or packed uint8 codes for hashing methods), ``fvecs``
        (float projections, when stored for re-ranking) and ``info`` (JSON: method, encoders,
        space, output, dim). One consistent read; written atomically. Returns counts per modality."""
        if modality not in (None, *MODALITIES):
            raise ValueError(f"modality must be 'image' or 'text', got {modality!r}")
        dest = Path(dest)
        if dest.suffix != ".npz":
            raise ValueError(f"{dest}: the export file must end in .npz")
        self.refresh()
        where, params = ("WHERE i.modality = ?", [modality]) if modality else ("", [])
        with self.store.reading() as c:  # one snapshot of items, labels and vectors
            rows = c.execute(f"SELECT i.id, i.modality, i.key, i.path, i.text, i.pair_id, v.code, v.fvec "
                             f"FROM items i JOIN vectors v ON v.item_id = i.id {where} ORDER BY i.id",
                             params).fetchall()
            labels: dict[int, list[str]] = {}
            for item_id, label in c.execute("SELECT item_id, label FROM item_labels ORDER BY label"):
                labels.setdefault(item_id, []).append(label)
        stats = self.stats()
        info = {k: stats[k] for k in ("method", "encoders", "space", "output", "dim")}
        width = self.dim // 8 if self.kind == "binary" else self.dim
        arrays = {
            "ids": np.asarray([r[0] for r in rows], dtype=np.int64),
            "modality": np.asarray([r[1] for r in rows], dtype="<U5"),
            "keys": np.asarray([r[2] for r in rows], dtype=str),
            "paths": np.asarray([r[3] or "" for r in rows], dtype=str),
            "texts": np.asarray([r[4] or "" for r in rows], dtype=str),
            "pair_ids": np.asarray([-1 if r[5] is None else r[5] for r in rows], dtype=np.int64),
            "labels": np.asarray([json.dumps(labels.get(r[0], [])) for r in rows], dtype=str),
            "vectors": (self._decode([r[6] for r in rows], [r[0] for r in rows]) if rows else
                        np.zeros((0, width), np.uint8 if self.kind == "binary" else np.float32)),
            "info": np.asarray(json.dumps(info)),
        }
        if self.fdim:
            arrays["fvecs"] = _blob_rows([r[7] for r in rows], np.float32, self.fdim, [r[0] for r in rows],
                                         "float projection", self.path / DB_NAME)
        atomic_write(dest, lambda fh: np.savez(fh, **arrays))
        return {m: int((arrays["modality"] == m).sum()) for m in MODALITIES}

    def snapshot(self, dest: str | Path, keys: bool = False) -> Path:
        """A consistent copy of the collection at ``dest`` (a new folder), to ship or to open
        read-only elsewhere: the database through SQLite's backup API (one self-contained file,
        no journal to merge), the method, the encoders and the current indexes. Writers wait
        meanwhile. API keys and the audit log stay behind unless ``keys``."""
        import shutil

        dest = Path(dest)
        if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
            raise CollectionError(f"{dest}: exists and is not an empty folder")
        made = not dest.exists()
        try:
            self._snapshot(dest, keys)
        except BaseException:
            # a full disk, Ctrl-C: no half copy that looks like a collection, nor one that
            # the rerun would refuse as a folder that is not empty
            if made:
                shutil.rmtree(dest, ignore_errors=True)
            elif dest.is_dir():
                for f in dest.iterdir():
                    if f.is_dir() and not f.is_symlink():
                        shutil.rmtree(f, ignore_errors=True)
                    else:
                        f.unlink(missing_ok=True)
            raise
        return dest

    def _snapshot(self, dest: Path, keys: bool) -> None:
        import shutil

        # no writer between the copies (a read-only collection has none)
        with nullcontext() if self.read_only else _write_lock(self.path):
            self.refresh(force=True)
            (dest / "indexes").mkdir(parents=True)
            tmp = dest / (DB_NAME + ".tmp")
            out = sqlite3.connect(str(tmp))
            try:
                with self.store._lock:
                    self.store.conn.backup(out)
                out.execute("PRAGMA journal_mode=DELETE")  # self-contained: nothing beside it
                db_id = self._db_id
                if db_id is None:  # an older collection open read-only: the copy gets its id
                    db_id = _new_db_id()
                    out.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('db_id', ?)",
                                (json.dumps(db_id),))
                    out.commit()
                self._snapshot_uploads(out, dest)
                if not keys:
                    out.execute("DELETE FROM api_keys")
                    out.execute("DELETE FROM audit")
                    out.commit()
                    out.execute("VACUUM")
            finally:
                out.close()
            tmp.rename(dest / DB_NAME)
            for name in (METHOD_FILE, "encoders"):
                src = self.path / name
                if src.is_dir():
                    shutil.copytree(src, dest / name)
                elif src.exists():
                    shutil.copy2(src, dest / name)
            with self._lock:  # the in-memory indexes match the database just copied
                for (modality, variant), idx in self.indexes.items():
                    f = dest / "indexes" / _index_name(modality, variant, db_id, self._gen)
                    f.write_bytes(idx.to_bytes())

    def _snapshot_uploads(self, out: sqlite3.Connection, dest: Path) -> None:
        """Images uploaded over HTTP live in the collection (``files/``): copied along, and
        the copy's items pointed at its own files. Indexed folders stay where they are."""
        import shutil

        uploads = Path(self._uploads_dir)
        # through the relocation helper: a moved collection's items still name the old place
        mine = [(i, name) for i, p in out.execute("SELECT id, path FROM items WHERE modality = 'image' "
                                                  "AND path IS NOT NULL")
                if _sep_files in p and (name := self._upload_name(p))]
        if not mine:
            return
        (dest / "files").mkdir(exist_ok=True)
        target = (dest / "files").resolve()
        for _, name in mine:
            if (uploads / name).exists() and not (target / name).exists():
                shutil.copy2(uploads / name, target / name)
        moved = [(str(target / name), i) for i, name in mine]
        out.executemany("UPDATE items SET path = ? WHERE id = ?", moved)
        out.executemany("UPDATE file_stats SET path = ? WHERE item_id = ?", moved)
        out.commit()

    def _file_stamp(self) -> tuple:
        """Size and time of the database and its journal: how an immutable reader, which
        cannot see other connections' commits, notices a writer."""
        out = []
        for name in (DB_NAME, DB_NAME + "-wal"):
            try:
                st = os.stat(self.path / name)
                out.append((st.st_size, st.st_mtime_ns))
            except FileNotFoundError:
                out.append(None)
        return tuple(out)

    def _follow_writer(self) -> bool:
        """A collection opened read-only (immutable) in a folder someone now writes: reopened
        with a connection that sees their commits (an immutable one would misread the file)."""
        if not getattr(self.store, "immutable", False) or not writable(self.path):
            return False
        if self._file_stamp() == self._db_stamp:
            return False
        try:
            store = Store(self.path / DB_NAME, read_only=True, follow=True)
        except sqlite3.Error:
            return False
        self._use(store)
        log.info("%s: another process writes to this collection; following its writes", self.path)
        return True

    def refresh(self, force: bool = False) -> bool:
        """Follow another process's writes (or its rebuild of the collection); True when there
        were any. The in-memory indexes catch up with the rows changed since they were (cost:
        the changes, however large the collection); index files are read only where that
        cannot be done. ``force`` is kept for callers; catching up is always cheap now."""
        if self._reopen_if_replaced() or self._follow_writer():
            return True
        if self.store.generation() == self._gen:
            return False
        with self._lock:
            if self.store.generation() == self._gen:
                return False
            self.meta = self.store.all_meta()
            if not self._catch_up():
                self._load_indexes()
            return True

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """One writer at a time across processes (flock) and threads; indexes saved at the end.
        A write inside another of the same thread (:meth:`writing`) joins it: the flock is
        held once (a second ``flock`` of the file from this process would wait for itself)."""
        if self.read_only:
            raise read_only_error(self.path, self.path / DB_NAME)
        if self._writer == threading.get_ident():
            yield
            return
        with self._wlock, _write_lock(self.path):
            self._writer = threading.get_ident()
            try:
                self.refresh(force=True)
                start = self._gen
                yield
                # A write that changed nothing (an unchanged re-add, an unknown id) leaves the
                # files be; one that did writes those past the rewrite threshold (_needs_rewrite).
                if self._gen != start or any(self._needs_rewrite(m) for m in MODALITIES):
                    self._finish_write()
            finally:
                self._writer = None

    def writing(self) -> Any:
        """Hold the collection's writer lock (across processes and this process's threads) for
        a group of steps: :meth:`add_items`, :meth:`delete` and the like called inside join
        it. For file work that must not interleave with another writer's, such as putting an
        upload into ``files/`` where a delete elsewhere removes the uploads no item uses.
        Keep slow work (encoding) outside: every other writer waits meanwhile."""
        return self._writing()

    def _finish_write(self) -> None:
        """Compact and complete the indexes (under the index lock), then write the files
        that are due. The files are written outside that lock, so searches go on meanwhile:
        only writers change an index, and this one holds the writer locks."""
        with self._lock:
            self._complete_indexes()
        self._save_indexes()

    def _complete_indexes(self) -> None:
        for (modality, variant), idx in list(self.indexes.items()):
            if idx.needs_compaction():
                self._force.add(modality)
                kind, dim, spec = idx.kind, idx.dim, idx.spec
                new = self._build_index(modality, variant, kind, dim, spec)
                if new is None:
                    self.indexes.pop((modality, variant))
                else:
                    self.indexes[(modality, variant)] = new
        for modality in MODALITIES:  # an approximate index that could not train earlier
            for variant, kind, dim, spec in self._variants():
                if (modality, variant) not in self.indexes:
                    idx = self._build_index(modality, variant, kind, dim, spec)
                    if idx is not None:
                        self.indexes[(modality, variant)] = idx
                        self._force.add(modality)

    # ------------------------------------------------------------ reading
    def count(self, modality: str | None = None) -> int:
        if modality is None:
            return int(self.store.query("SELECT COUNT(*) FROM items")[0][0])
        return int(self.store.query("SELECT COUNT(*) FROM items WHERE modality = ?", (modality,))[0][0])

    @property
    def space(self) -> str:
        """Fingerprint of the common space: the fitted method's file, the encoders (spec, class
        and fitted state) and the vector shape. Collections with the same fingerprint score
        queries alike, so their results can be merged (:mod:`xmodal.index.shards`)."""
        if self._space is None:
            h = hashlib.sha256(f"{self.kind}|{self.dim}|".encode())
            method = self.meta.get("method")
            files = [self.path / method["file"]] if method else []
            for modality, rec in sorted(self.meta.get("encoders", {}).items()):
                files.append(f"|{modality}|{rec.get('spec')}|{rec.get('class')}|")
                if rec.get("file"):
                    files.append(self.path / "encoders" / rec["file"])
            for f in files:
                if isinstance(f, str):
                    h.update(f.encode())
                    continue
                try:
                    _digest_file(h, f)
                except (OSError, zipfile.BadZipFile):
                    # a missing or damaged model file: stats and export still answer (the
                    # encoding itself names the file); a space no intact collection shares
                    h.update(b"\0damaged\0" + f.name.encode())
            self._space = h.hexdigest()[:32]
        return self._space

    def stats(self) -> dict[str, Any]:
        self.refresh()  # another process's writes or rebuild: counts and space as they are now
        by_target: dict[str, list[str]] = {m: [] for m in MODALITIES}
        for modality, label in self.store.query("SELECT DISTINCT i.modality, l.label FROM item_labels l "
                                                "JOIN items i ON i.id = l.item_id ORDER BY l.label"):
            by_target[modality].append(label)
        labels = sorted(set().union(*by_target.values()))
        return {"path": str(self.path), "images": self.count("image"), "texts": self.count("text"),
                "output": self.kind, "dim": self.dim, "index": self.index_spec, "space": self.space,
                "rerank": bool(self.fdim), "method": (self.meta.get("method") or {}).get("name"),
                "encoders": {m: r.get("spec") for m, r in self.meta.get("encoders", {}).items()},
                "generation": self._gen, "public_read": self.public_read, "read_only": self.read_only,
                # a copy keeps it: with generation and counts it tells a shard given twice
                "db_id": self.meta.get("db_id"), "labels": labels,
                # what a search's label filter can find per target (a router's check of a shard)
                "labels_by_target": by_target}

    def get_items(self, ids: Iterable[int]) -> dict[int, Hit]:
        ids = _ids(ids)
        if not ids:
            return {}
        out: dict[int, Hit] = {}
        for chunk, marks in in_chunks(ids):
            for r in self.store.query(f"SELECT id, modality, key, path, text, pair_id FROM items "
                                      f"WHERE id IN ({marks})", chunk):
                out[r[0]] = Hit(id=r[0], score=float("nan"), modality=r[1], key=r[2],
                                path=self._upload_here(r[3]) if r[1] == "image" else r[3],
                                text=r[4], pair_id=r[5])
            for item_id, label in self.store.query(f"SELECT item_id, label FROM item_labels "
                                                   f"WHERE item_id IN ({marks}) ORDER BY label", chunk):
                out[item_id].labels.append(label)
        return out

    def _upload_here(self, path: str | None) -> str | None:
        """An image uploaded over HTTP lives in the collection (``files/<sha256>.<ext>``); a
        collection copied or moved elsewhere still names the old place: its own copy instead."""
        if not path or _sep_files not in path or path.startswith(self._uploads_dir + os.sep):
            return path
        mine = os.path.join(self._uploads_dir, os.path.basename(path))
        return mine if os.path.exists(mine) else path

    def get_item(self, item_id: int) -> Hit | None:
        return self.get_items([item_id]).get(int(item_id))

    def id_of(self, key: str) -> int | None:
        if not isinstance(key, str) or not _storable(key):
            return None  # no item can have it (a name in another encoding than UTF-8)
        rows = self.store.query("SELECT id FROM items WHERE key = ?", (key,))
        return rows[0][0] if rows else None

    def list_items(self, modality: str | None = None, offset: int = 0, limit: int = 100) -> list[Hit]:
        sql, params = "SELECT id FROM items", []
        if modality:
            sql, params = sql + " WHERE modality = ?", [modality]
        rows = self.store.query(sql + " ORDER BY id LIMIT ? OFFSET ?",
                                params + [min(int(limit), MAX_ID), min(int(offset), MAX_ID)])
        got = self.get_items(r[0] for r in rows)
        return [got[r[0]] for r in rows]

    def item_vectors(self, ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray | None]:
        """Stored common-space codes (and float projections) of existing items, in order."""
        ids = [int(i) for i in ids]
        rows = {}
        valid = _ids(ids)
        for chunk, marks in in_chunks(valid):
            for r in self.store.query(f"SELECT item_id, code, fvec FROM vectors WHERE item_id IN ({marks})",
                                      chunk):
                rows[r[0]] = r
        missing = [i for i in ids if i not in rows]
        if missing:
            raise KeyError(f"no item with id {missing[0]}")
        codes = self._decode([rows[i][1] for i in ids], ids)
        fv = None
        if self.fdim:
            fv = _blob_rows([rows[i][2] for i in ids], np.float32, self.fdim, ids, "float projection",
                            self.path / DB_NAME)
        return codes, fv

    # ------------------------------------------------------------ query vectors
    def encode_query_text(self, text: str) -> tuple[np.ndarray, np.ndarray | None]:
        if not isinstance(text, str) or not text.strip():
            raise DataError("text query is empty")
        self._reopen_if_replaced()  # a rebuilt collection may have another model
        return self.features_to_space("text", _encode_query(self.encoder("text"), text))

    def encode_query_image(self, path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
        self._reopen_if_replaced()
        return self.features_to_space("image", _encode_query(self.encoder("image"), str(path)))

    def rocchio(self, q: np.ndarray, relevant: Sequence[int] = (), nonrelevant: Sequence[int] = (),
                a: float = 1.0, b: float = 0.75, c: float = 0.25,
                fq: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """Rocchio query update in the common space: q' = a q + b mean(rel) - c mean(nonrel).
        Binary codes are updated as +-1 vectors and re-binarised by sign."""
        # lists: a NumPy array of ids has no truth value
        relevant = [] if relevant is None else list(relevant)
        nonrelevant = [] if nonrelevant is None else list(nonrelevant)
        if not relevant and not nonrelevant:
            return q, fq

        def unit(v: np.ndarray) -> np.ndarray:
            v = np.asarray(v, dtype=np.float32).reshape(-1, v.shape[-1])
            return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)

        def as_float(codes: np.ndarray) -> np.ndarray:
            if self.kind == "binary":
                return np.unpackbits(np.asarray(codes, np.uint8).reshape(-1, self.dim // 8), axis=1).astype(np.float32) * 2 - 1
            return unit(codes)

        def update(qv: np.ndarray, R: np.ndarray | None, N: np.ndarray | None) -> np.ndarray:
            out = a * qv
            if R is not None and len(R):
                out = out + b * R.mean(axis=0, keepdims=True)
            if N is not None and len(N):
                out = out - c * N.mean(axis=0, keepdims=True)
            return out

        Rc, Rf = self.item_vectors(relevant) if relevant else (None, None)
        Nc, Nf = self.item_vectors(nonrelevant) if nonrelevant else (None, None)
        qf = as_float(q)
        new = update(qf, None if Rc is None else as_float(Rc), None if Nc is None else as_float(Nc))
        if self.kind == "binary":
            new_q = np.packbits((new > 0).astype(np.uint8), axis=1)
        else:
            new_q = unit(new)
        new_fq = None
        if fq is not None and self.fdim:
            new_fq = update(unit(fq), None if Rf is None else unit(Rf), None if Nf is None else unit(Nf))
        return new_q, new_fq

    # ------------------------------------------------------------ searching
    def _allowed(self, target: str, labels: Sequence[str] | None) -> np.ndarray | None:
        if not labels:
            return None
        marks = ",".join("?" * len(labels))
        rows = self.store.query(f"SELECT DISTINCT l.item_id FROM item_labels l JOIN items i ON i.id = l.item_id "
                                f"WHERE i.modality = ? AND l.label IN ({marks})", [target, *labels])
        return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))

    def check_labels(self, labels: Sequence[str] | None, target: str | None = None) -> None:
        """Raise :class:`xmodal.index.shards.UnknownLabelError` (naming this collection and the
        labels it has) if any of ``labels`` is on no item, or with a search's ``target``, on no
        item of that modality: a typo in a filter (or a label only the other modality carries)
        would otherwise answer nothing, silently. One indexed lookup of the labels asked for."""
        if labels:
            from .shards import check_labels

            check_labels(self, labels, str(self.path), target=target)

    def search_vectors(self, Q: np.ndarray, target: str = "image", k: int = 10, *,
                       labels: Sequence[str] | None = None, exact: bool = False,
                       fq: np.ndarray | None = None, rerank: int = 0,
                       exclude: Sequence[int] = (), check_labels: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Batch search of common-space query rows against ``target`` items: (scores, ids).

        The approximate index answers unless ``exact`` or a label filter is given (the flat
        index does: it filters exactly). Binary collections with stored float projections
        re-rank a Hamming shortlist of ``rerank * k`` by cosine when ``fq`` is given.
        A label in ``labels`` that no ``target`` item has is refused (:meth:`check_labels`)
        unless ``check_labels`` is False (the caller checked, or the label is on another shard).
        """
        if target not in MODALITIES:
            raise ValueError(f"target must be 'image' or 'text', got {target!r}")
        k = int(k)
        if not 1 <= k <= 10000:
            raise ValueError(f"k must be in 1..10000, got {k}")
        if check_labels:
            self.check_labels(labels, target)
        allowed = self._allowed(target, labels)
        extra = len(exclude)
        kk = k + extra
        with self._lock:
            approx = self.indexes.get((target, "approx"))
            idx = self.indexes[(target, "flat")] if (exact or allowed is not None or approx is None) else approx
            use_rerank = bool(rerank) and fq is not None and (target, "rerank") in self.indexes
            fetch = kk * max(1, int(rerank)) if use_rerank else kk
            S, I = idx.search(Q, fetch, allowed=allowed)
            if idx is approx:
                # A multi-hash index only finds codes sharing a whole sub-code with the query
                # (and an IVF index only its probed lists): a query answered short while the
                # collection holds more is answered by the exact index instead.
                flat = self.indexes[(target, "flat")]
                short = (I >= 0).sum(axis=1) < min(fetch, flat.ntotal)
                if short.any():
                    Qs = np.asarray(Q)
                    Qs = Qs[None, :] if Qs.ndim == 1 else Qs
                    S, I = S.copy(), I.copy()
                    S[short], I[short] = flat.search(Qs[short], fetch)
            if use_rerank:
                S, I = self._rerank(target, fq, I)
        if extra:
            drop = np.isin(I, np.asarray(list(exclude), dtype=np.int64))
            order = np.argsort(drop, axis=1, kind="stable")
            S, I = np.take_along_axis(S, order, 1), np.take_along_axis(I, order, 1)
        return S[:, :k], I[:, :k]

    def _rerank(self, target: str, fq: np.ndarray, I: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ridx = self.indexes[(target, "rerank")]
        fq = prepare("real", fq, ridx.dim)
        S = np.full(I.shape, -np.inf, dtype=np.float32)
        for r in range(len(I)):
            ok = I[r] >= 0
            if ok.any():
                V = ridx.reconstruct(I[r][ok])
                S[r, ok] = V @ fq[r]
        order = np.argsort(-S, axis=1, kind="stable")
        return np.take_along_axis(S, order, 1), np.take_along_axis(I, order, 1)

    def _hit_rows(self, S: np.ndarray, I: np.ndarray) -> list[list[Hit]]:
        """One hit list per row of a search's scores ``S`` and ids ``I``: FAISS's -1 (a short
        answer) and items deleted since the index was loaded are left out. The items of every
        row are read at once (``get_items``: one statement per 900 distinct ids), not row by row."""
        return self._read_hit_rows(S, I)[0]

    def _searched_rows(self, search: Callable[[], tuple[np.ndarray, np.ndarray]]) -> list[list[Hit]]:
        """The hit rows of ``search()`` (an index search). An item another process deleted
        between the index search and the item read would leave its row short of k hits while
        the collection holds more: the indexes then catch up (:meth:`refresh`) and the search
        runs again (at most three times; a writer deleting faster than that leaves it short)."""
        for attempt in range(3):
            S, I = search()
            rows, gone = self._read_hit_rows(S, I)
            if not gone or attempt == 2 or not self.refresh():
                return rows
        raise AssertionError("unreachable")

    def _read_hit_rows(self, S: np.ndarray, I: np.ndarray) -> tuple[list[list[Hit]], bool]:
        """:meth:`_hit_rows`, and whether an item was left out as deleted since the index answered."""
        ok = I >= 0
        ids = np.unique(I[ok]).tolist()
        items = self.get_items(ids)
        gone = len(items) < len(ids)
        handed: set[int] = set()  # items already in an earlier row's hits
        out = []
        for s_row, i_row, ok_row in zip(S, I, ok):
            mine: dict[int, Hit] = {}  # an item twice in a row is one Hit, as one read gave it
            hits = []
            for s, i in zip(s_row[ok_row].tolist(), i_row[ok_row].tolist()):
                h = mine.get(i)
                if h is None:
                    h = items.get(i)
                    if h is None:  # deleted by another process since the index was loaded
                        continue
                    if i in handed:  # another query's hit too, with its own score: a copy
                        h = copy.copy(h)
                        h.labels = list(h.labels)
                    mine[i] = h
                    handed.add(i)
                h.score = s
                hits.append(h)
            out.append(hits)
        return out, gone

    def search_vector(self, vector: np.ndarray, target: str = "image", k: int = 10, *,
                      labels: Sequence[str] | None = None, exact: bool = False,
                      relevant: Sequence[int] = (), nonrelevant: Sequence[int] = (),
                      fq: np.ndarray | None = None, rerank: int = 0,
                      exclude: Sequence[int] = (), feedback: tuple[float, float, float] = (1.0, 0.75, 0.25),
                      distinct: bool = False, check_labels: bool = True) -> list[Hit]:
        """Search with one common-space vector (a float vector, or packed uint8 code).
        ``distinct`` collapses texts that are word for word the same (datasets repeat
        captions) into their best-scoring one. A label no ``target`` item has is refused
        (:meth:`check_labels`; ``check_labels=False``: not checked)."""
        self.refresh()
        if check_labels:
            self.check_labels(labels, target)
        q = np.asarray(vector)
        q = q.reshape(1, -1) if q.ndim == 1 else q
        q, fq = self.rocchio(q, relevant, nonrelevant, *feedback, fq=fq)
        fetch = k
        while True:
            def search(fetch: int = fetch) -> tuple[np.ndarray, np.ndarray]:
                S, I = self.search_vectors(q, target, fetch, labels=labels, exact=exact, fq=fq,
                                           rerank=rerank, exclude=exclude, check_labels=False)
                return S[:1], I[:1]

            hits = self._searched_rows(search)[0]
            if not distinct or target != "text":
                return hits
            seen: set[str] = set()
            unique = [h for h in hits if not (h.text in seen or seen.add(h.text or ""))]
            # Enough distinct texts, or the whole collection seen: done; else fetch deeper.
            if len(unique) >= k or len(hits) < fetch or fetch >= 10000:
                return unique[:k]
            fetch = min(10000, fetch * 4)

    def _labels_checked(self, kw: dict[str, Any], target: str) -> dict[str, Any]:
        """``kw`` of a search of ``target`` items, its labels checked (:meth:`check_labels`)
        before any query is encoded, unless ``check_labels=False``; the search itself then
        checks no more."""
        if kw.pop("check_labels", True):
            self.check_labels(kw.get("labels"), target)
        return {**kw, "check_labels": False}

    def search_text(self, text: str, k: int = 10, target: str = "image", **kw: Any) -> list[Hit]:
        """Text query; by default against images (text -> image)."""
        kw = self._labels_checked(kw, target)
        q, fq = self.encode_query_text(text)
        return self.search_vector(q, target, k, fq=fq, rerank=kw.pop("rerank", 4 if fq is not None else 0), **kw)

    def search_image(self, path: str | Path, k: int = 10, target: str = "text", **kw: Any) -> list[Hit]:
        """Image query (a file); by default against texts (image -> text)."""
        kw = self._labels_checked(kw, target)
        q, fq = self.encode_query_image(path)
        return self.search_vector(q, target, k, fq=fq, rerank=kw.pop("rerank", 4 if fq is not None else 0), **kw)

    def search_texts(self, texts: Sequence[str], k: int = 10, target: str = "image",
                     **kw: Any) -> list[list[Hit]]:
        """Many text queries, encoded in one batch: one hit list per query, in order."""
        kw = self._labels_checked(kw, target)
        return self._search_rows(self.encode_query_texts(texts), k, target, kw)

    def encode_query_texts(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray | None]:
        """Text queries -> (common-space rows, float projections or None), in one batch."""
        for r, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise DataError(f"text query {r}: empty")
        self._reopen_if_replaced()
        return self.features_to_space("text", _encode_query(self.encoder("text"), texts))

    def search_images(self, paths: Sequence[str | Path], k: int = 10, target: str = "text",
                      **kw: Any) -> list[list[Hit]]:
        """Many image queries (files), decoded and encoded in batches: one hit list per query."""
        kw = self._labels_checked(kw, target)
        self._reopen_if_replaced()
        F = _encode_query(self.encoder("image"), [str(p) for p in paths])
        return self._search_rows(self.features_to_space("image", F), k, target, kw)

    def _search_rows(self, space: tuple[np.ndarray, np.ndarray | None], k: int, target: str,
                     kw: dict[str, Any]) -> list[list[Hit]]:
        Q, FQ = space
        rerank = kw.pop("rerank", 4 if FQ is not None else 0)
        per_query = ("relevant", "nonrelevant", "exclude", "distinct")  # options that change a query
        # id sequences by their length: a NumPy array of ids has no truth value
        unused = all(not kw[o] if o == "distinct" else kw[o] is None or len(kw[o]) == 0
                     for o in per_query if o in kw)
        if len(Q) > 1 and set(kw) <= {"labels", "exact", "check_labels", "feedback", *per_query} and unused:
            # one FAISS search for the batch (BLAS over all queries), as search_vector would answer each
            self.refresh()
            if kw.get("check_labels", True):
                self.check_labels(kw.get("labels"), target)
            # the items of every row in one read
            return self._searched_rows(lambda: self.search_vectors(
                Q, target, k, labels=kw.get("labels"), exact=kw.get("exact", False), fq=FQ,
                rerank=rerank, check_labels=False))
        return [self.search_vector(Q[r], target, k, fq=None if FQ is None else FQ[r:r + 1],
                                   rerank=rerank, **kw) for r in range(len(Q))]

    def search_item(self, item_id: int, k: int = 10, target: str | None = None, **kw: Any) -> list[Hit]:
        """More like this: an existing item's stored vector as the query (itself excluded)."""
        item = self.get_item(item_id)
        if item is None:
            raise KeyError(f"no item with id {item_id}")
        q, fq = self.item_vectors([item.id])
        target = target or item.modality
        exclude = list(kw.pop("exclude", ())) + [item.id]
        return self.search_vector(q, target, k, fq=fq, rerank=kw.pop("rerank", 4 if fq is not None else 0),
                                  exclude=exclude, **kw)

    # ------------------------------------------------------------ writing
    def add_vectors(self, modality: str, keys: Sequence[str], codes: np.ndarray, *,
                    paths: Sequence[str | None] | None = None, texts: Sequence[str | None] | None = None,
                    labels: Sequence[Sequence[str]] | None = None,
                    pair_keys: Sequence[str | None] | None = None,
                    hashes: Sequence[str | None] | None = None, fvecs: np.ndarray | None = None,
                    actor: str = "local", remote: str | None = None) -> AddReport:
        """Add (or replace, by key) items whose common-space vectors are already known."""
        with self._writing():
            return self._add_vectors(modality, keys, codes, paths=paths, texts=texts, labels=labels,
                                     pair_keys=pair_keys, hashes=hashes, fvecs=fvecs, actor=actor,
                                     remote=remote)

    def _add_vectors(self, modality, keys, codes, *, paths=None, texts=None, labels=None,
                     pair_keys=None, hashes=None, fvecs=None, stats=None, actor="local",
                     remote=None, c=None) -> Any:
        """Store vectors and their items in one transaction and mirror them into the in-memory
        indexes; returns an :class:`AddReport`. With ``c`` (an open transaction) only the rows
        are written, and the staged add is returned for :meth:`_mirror_add` after COMMIT."""
        if modality not in MODALITIES:
            raise ValueError(f"modality must be 'image' or 'text', got {modality!r}")
        n = len(keys)
        X = prepare(self.kind, codes, self.dim)
        if len(X) != n:
            raise DataError(f"{n} keys but {len(X)} vectors")
        F = None
        if self.fdim:
            if fvecs is None:
                raise DataError("this collection re-ranks with float projections: pass fvecs")
            F = prepare("real", fvecs, self.fdim)
        for k in keys:
            check_key(k)
        for name, col in (("paths", paths), ("texts", texts), ("labels", labels),
                          ("pair_keys", pair_keys), ("hashes", hashes)):
            if col is not None and len(col) != n:
                raise DataError(f"{n} keys but {len(col)} {name}")
        if labels is not None:  # a string given as one item's labels is not split into letters
            labels = [_checked_labels(f"{modality} {keys[r]!r}", labels[r]) for r in range(n)]
        if paths is not None:
            paths = [os.fspath(p) if isinstance(p, os.PathLike) else p for p in paths]
        if len(set(keys)) != n:
            seen: set[str] = set()
            dup = next(k for k in keys if k in seen or seen.add(k))
            raise DataError(f"item key {dup!r} appears twice in one add")
        args = (modality, keys, X, F, paths, texts, labels, pair_keys, hashes, stats, actor, remote)
        if c is not None:  # the caller's transaction: rows only, _mirror_add after its COMMIT
            return self._stage_add(c, *args)
        with self._transaction() as c:
            staged = self._stage_add(c, *args)
        return self._mirror_add(staged)

    def _stage_add(self, c: Any, modality: str, keys: Sequence[str], X: np.ndarray, F: np.ndarray | None,
                   paths, texts, labels, pair_keys, hashes, stats, actor: str, remote: str | None) -> tuple:
        """The rows of an add, written inside transaction ``c``; the in-memory indexes are
        left to :meth:`_mirror_add` once it commits."""
        n = len(keys)
        replaced: list[int] = []
        now = time.time()
        old = self._lookup(c, "SELECT key, id, modality FROM items WHERE key IN ({})", list(keys))
        for key, (old_id, old_mod) in old.items():
            if old_mod != modality:
                raise DataError(f"item key {key!r} is already an {old_mod} item" if old_mod == "image"
                                else f"item key {key!r} is already a {old_mod} item")
            replaced.append(old_id)
        # the replaced images' files and thumbnails, dropped after COMMIT if nothing uses them
        files = [tuple(r) for i in (replaced if modality == "image" else ())
                 for r in c.execute("SELECT path, content_hash, id FROM items WHERE id = ?", (i,))]
        pid: list[int | None] = [None] * n
        if pair_keys is not None:
            wanted = sorted({pk for pk in pair_keys if pk})
            found = self._lookup(c, "SELECT key, id FROM items WHERE modality = 'image' AND key IN ({})", wanted)
            for r, pk in enumerate(pair_keys):
                if pk:
                    if pk not in found:
                        raise DataError(f"text {keys[r]!r}: paired image {pk!r} is not in the collection")
                    pid[r] = found[pk][0]
        if replaced:
            c.executemany("DELETE FROM items WHERE id = ?", [(i,) for i in replaced])
            Store.trim_deleted(c, DELETED_LOG_KEEP)
        # BEGIN IMMEDIATE holds the write lock, so the next AUTOINCREMENT ids are ours to use.
        row = c.execute("SELECT seq FROM sqlite_sequence WHERE name = 'items'").fetchone()
        base = int(row[0]) if row else 0
        new_ids = list(range(base + 1, base + n + 1))
        c.executemany("INSERT INTO items (id, key, modality, path, text, content_hash, pair_id, added_at) "
                      "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                      [(new_ids[r], keys[r], modality, None if paths is None else paths[r],
                        None if texts is None else texts[r], None if hashes is None else hashes[r],
                        pid[r], now) for r in range(n)])
        c.executemany("INSERT INTO vectors (item_id, code, fvec) VALUES (?, ?, ?)",
                      [(new_ids[r], X[r].tobytes(), None if F is None else F[r].tobytes())
                       for r in range(n)])
        if modality == "image" and old:
            # A replaced image's captions (unchanged, so not re-added) follow it to its
            # new id; left on the old one they would belong to no image at all.
            c.executemany("UPDATE items SET pair_id = ? WHERE pair_id = ?",
                          [(new_ids[r], old[keys[r]][0]) for r in range(n) if keys[r] in old])
        if stats is not None:  # (size, mtime_ns) of each image file when it was hashed
            c.executemany("INSERT INTO file_stats (item_id, path, size, mtime_ns) VALUES (?, ?, ?, ?)",
                          [(new_ids[r], paths[r], *stats[r]) for r in range(n) if stats[r] is not None])
        if labels is not None:
            c.executemany("INSERT INTO item_labels (item_id, label) VALUES (?, ?)",
                          [(new_ids[r], str(lab)) for r in range(n) for lab in sorted(set(labels[r]))])
        Store.audit(c, actor, "add", {"modality": modality, "count": n, "replaced": len(replaced),
                                      "first_key": keys[0] if n else None}, remote)
        # Set before COMMIT: the store's lock keeps other threads from reading in between,
        # so a concurrent refresh() never mistakes this write for another process's.
        self._gen = Store.bump_generation(c)
        return modality, new_ids, replaced, X, F, files, Store.marks(c)

    def _mirror_add(self, staged: tuple, drop: bool = True) -> AddReport:
        """A committed add mirrored into the in-memory indexes (files are written when the
        write ends, if due); the files of images it replaced removed when no item uses them."""
        modality, new_ids, replaced, X, F, files, marks = staged
        n = len(new_ids)
        report = AddReport()
        ids = np.asarray(new_ids, dtype=np.int64)
        with self._lock, self._mirroring():
            self._pending[modality] = self._pending.get(modality, 0) + n + len(replaced)
            for (mod, variant), idx in self.indexes.items():
                if mod != modality:
                    continue
                if replaced:
                    idx.remove(replaced)
                idx.add(ids, F if variant == "rerank" else X, prepared=True)
            self._set_marks(marks)
        report.added = n - len(replaced)
        report.replaced = len(replaced)
        report.ids = new_ids
        if files and drop:
            self._drop_unused_files(files)
        return report

    @contextmanager
    def _mirroring(self) -> Iterator[None]:
        """A committed write being mirrored into the in-memory indexes. Cut short (Ctrl-C in a
        notebook while an HNSW graph takes a large batch, a FAISS error), the indexes reflect
        no known state, some variants holding the new rows and some not: marked unknown, so
        the next refresh (every search and write makes one) reloads them from the files and
        the store, instead of this handle never showing the committed rows."""
        try:
            yield
        except BaseException:
            self._marks = None
            self._gen = -1
            raise

    def _set_marks(self, marks: tuple[int, int | None]) -> None:
        """After this process's own commit: the in-memory indexes now reflect ``marks``."""
        self._marks = None if marks[1] is None else (marks[0], marks[1])

    @staticmethod
    def _lookup(c: Any, sql: str, keys: list[str]) -> dict[str, tuple]:
        """``key -> rest of row`` for a ``... IN ({})`` query, in chunks under SQLite's limit."""
        out: dict[str, tuple] = {}
        for chunk, marks in in_chunks(keys):
            for row in c.execute(sql.format(marks), chunk):
                out[row[0]] = tuple(row[1:])
        return out

    def delete(self, ids: Sequence[int] = (), keys: Sequence[str] = (), actor: str = "local",
               remote: str | None = None) -> list[int]:
        """Delete items by id or key; an image takes its captions with it. Returns deleted ids."""
        with self._writing():
            want = _ids(ids) + [i for i in (self.id_of(k) for k in keys) if i is not None]
            if not want:
                return []
            with self._transaction() as c:
                rows = []
                for i in want:
                    r = c.execute("SELECT id, modality FROM items WHERE id = ?", (i,)).fetchone()
                    if r:
                        rows.append(r)
                        rows += c.execute("SELECT id, modality FROM items WHERE pair_id = ?", (i,)).fetchall()
                gone = sorted({r[0]: r[1] for r in rows}.items())
                if not gone:  # nothing to delete: no audit entry, no new generation
                    return []
                files = [tuple(r) for i, m in gone if m == "image"
                         for r in c.execute("SELECT path, content_hash, id FROM items WHERE id = ?", (i,))]
                for i, _ in gone:
                    c.execute("DELETE FROM items WHERE id = ?", (i,))
                Store.trim_deleted(c, DELETED_LOG_KEEP)
                Store.audit(c, actor, "delete", {"ids": [i for i, _ in gone]}, remote)
                self._gen = Store.bump_generation(c)
                marks = Store.marks(c)
            with self._lock, self._mirroring():
                for _, m in gone:
                    self._pending[m] = self._pending.get(m, 0) + 1
                self._set_marks(marks)
                for modality in MODALITIES:
                    dead = [i for i, m in gone if m == modality]
                    for (mod, _), idx in self.indexes.items():
                        if mod == modality and dead:
                            idx.remove(dead)
            self._drop_unused_files(files)
            return [i for i, _ in gone]

    def _drop_unused_files(self, files: Sequence[tuple[str | None, str | None, int]]) -> None:
        """After a delete or replacement (under the write lock): uploaded copies (``files/``)
        and cached thumbnails (``thumbs/``) of the gone images that no remaining item uses. A
        deleted photo should not stay on the server's disk; an indexed folder's files are the
        user's and are never touched. Batched: no per-item scan of a large store. The write
        has committed: a file that cannot be removed is logged, not raised."""
        try:
            self._drop_files(files)
        except OSError as exc:
            log.warning("%s: could not remove an unused upload or thumbnail (%s)", self.path, exc)

    def _drop_files(self, files: Sequence[tuple[str | None, str | None, int]]) -> None:
        uploads = Path(self._uploads_dir)
        thumbs = self.path / "thumbs"
        own = {name for name in (self._upload_name(p) for p, _, _ in files) if name}
        for name in sorted(own - self.uploads_in_use(own)):
            (uploads / name).unlink(missing_ok=True)
        def names(tag: str) -> list[Path]:  # current and older names
            return [thumb_file(thumbs, tag, size, suffix) for size in THUMB_SIZES for suffix in THUMB_SUFFIXES]

        for _, digest, item_id in files:
            for f in names(f"id{item_id}"):  # ids are never reused: a thumbnail made without a hash goes
                f.unlink(missing_ok=True)
        cached = [d for _, d, _ in files if d and any(f.exists() for f in names(d))]
        for digest in set(cached) - self._in_use("content_hash", cached):
            for f in names(digest):
                f.unlink(missing_ok=True)

    def _upload_name(self, path: str | None) -> str | None:
        """The name in this collection's ``files/`` that an item's ``path`` stands for (through
        :meth:`_upload_here`: a moved or copied collection's items still name the old place),
        or None for an image that is not an upload here (an indexed folder's file)."""
        here = self._upload_here(path)
        if not here or Path(here).resolve().parent != Path(self._uploads_dir):
            return None
        return os.path.basename(here)

    def uploads_in_use(self, names: Iterable[str]) -> set[str]:
        """Those of ``names`` (files in this collection's ``files/``, named by content hash)
        that some item still uses, whichever place its path names for it: one upload is one
        file for every item with those bytes, whether stored before or after a move. The one
        test of "in use" for deleting an upload (here and in the HTTP service)."""
        names = set(names)
        by_len: dict[int, list[str]] = {}
        for name in names:
            suffix = _sep_files + name
            by_len.setdefault(len(suffix), []).append(suffix)
        found: set[str] = set()
        for n, suffixes in by_len.items():
            for chunk, marks in in_chunks(suffixes):
                for (p,) in self.store.query(
                        f"SELECT DISTINCT path FROM items WHERE modality = 'image' AND "
                        f"substr(path, -{n}) IN ({marks})", chunk):
                    name = self._upload_name(p)
                    if name is not None:
                        found.add(name)
        return found & names

    def _in_use(self, column: str, values: Sequence[str]) -> set[str]:
        """Those of ``values`` that some item still has in ``column`` (path or content_hash)."""
        values = sorted(set(values))
        found: set[str] = set()
        for chunk, marks in in_chunks(values):
            found |= {r[0] for r in self.store.query(
                f"SELECT DISTINCT {column} FROM items WHERE {column} IN ({marks})", chunk)}
        return found

    def prune(self, keep: Iterable[str], actor: str = "local", remote: str | None = None) -> list[int]:
        """Delete every item whose key is not in ``keep`` (an image takes its captions with
        it), so that the collection mirrors a source that lost files or caption lines.
        Returns the deleted ids. An empty ``keep`` is refused: that is a source gone missing
        (an unmounted disk), not one emptied on purpose."""
        stale = self._stale(keep)
        return self.delete(ids=stale, actor=actor, remote=remote) if stale else []

    def _stale(self, keep: Iterable[str]) -> list[int]:
        """Ids of the stored items whose key is not in ``keep`` (an empty ``keep`` refused)."""
        keep = set(keep)
        if not keep:
            raise CollectionError(f"{self.path}: refusing to prune against an empty source")
        return [i for i, key in self.store.query("SELECT id, key FROM items") if key not in keep]

    def _file_stats(self, keys: Sequence[str]) -> dict[str, tuple]:
        """key -> (content hash, path, size, mtime_ns) of stored image files."""
        out: dict[str, tuple] = {}
        for chunk, marks in in_chunks(keys):
            for k, *rest in self.store.query(
                    "SELECT i.key, i.content_hash, f.path, f.size, f.mtime_ns FROM items i "
                    f"JOIN file_stats f ON f.item_id = i.id WHERE i.key IN ({marks})", chunk):
                out[k] = tuple(rest)
        return out

    @staticmethod
    def _file_hash(item: ImageItem, known: tuple | None) -> tuple[str, tuple[int, int] | None]:
        """(content hash, (size, mtime_ns) to record or None). The file is read again only
        when its path, size or modification time differ from when it was last hashed (what
        git and rclip trust too)."""
        st = os.stat(item.path)
        sig = (int(st.st_size), int(st.st_mtime_ns))
        if known is not None and known[0] and (known[1], known[2], known[3]) == (item.path, *sig):
            return known[0], None
        # the stat is taken before reading: a write during the read changes it again
        return sha256_file(item.path), sig

    def _content_hashes(self, modality: str, items: Sequence[ImageItem] | Sequence[TextItem]
                        ) -> tuple[list[str | None], list[tuple[int, int] | None]]:
        """Content hash of every item (None: an image file that cannot be read, logged) and,
        for images, the (size, mtime_ns) to record (None: the stored one still holds)."""
        if modality == "text":
            return [sha256_text(it.text) for it in items], []
        hashes: list[str | None] = []
        stats: list[tuple[int, int] | None] = []
        known = self._file_stats([it.key for it in items])
        for it in items:
            try:
                h, sig = self._file_hash(it, known.get(it.key))
            except OSError as exc:  # a dangling link, no permission: skipped, reported
                log.warning("skipping %s: cannot read file (%s)", it.path, exc.strerror or exc)
                h = sig = None
            hashes.append(h)
            stats.append(sig)
        return hashes, stats

    def plan(self, images: Sequence[ImageItem] = (), texts: Sequence[TextItem] = (),
             prune: bool = False) -> dict[str, Any]:
        """What :meth:`add_items` (and :meth:`prune` with ``prune``) would do with these
        items, without encoding or writing anything: per modality the keys that are new,
        changed (re-encoded in place) and unreadable, the number unchanged, and with
        ``prune`` the stored items the source no longer has (``removed``: id, modality, key).
        Changed files are found as a rerun finds them (size and mtime first, then content)."""
        out: dict[str, Any] = {}
        lost: set[str] = set()  # unreadable images not stored: their captions are skipped too
        given_images, given_texts = list(images), list(texts)
        # the refusals add_items would make; images it cannot store (names not UTF-8) and
        # their captions are unreadable to it
        images, texts, _, _, _ = self._checked_items(given_images, given_texts)
        kept_i = {it.key for it in images}
        kept_t = {it.key for it in texts}
        for modality, items in (("image", list(images)), ("text", list(texts))):
            hashes, _ = self._content_hashes(modality, items) if items else ([], [])
            stored = self._stored([it.key for it in items])
            have = {k: h for k, (h, _) in stored.items()}
            row = {"new": [], "changed": [], "moved": [], "relabelled": [], "unchanged": 0, "unreadable": []}
            relabel = {items[r].key for r in self._relabelled(items, range(len(items)))}
            for it, h in zip(items, hashes):
                if modality == "image" and h is not None and have.get(it.key) != h and not _decodes(it.path):
                    h = None  # the encoder would skip it too
                if modality == "image" and h is None and it.key not in have:
                    lost.add(it.key)
                if h is None or (modality == "text" and it.pair_key in lost):
                    row["unreadable"].append(it.key)
                elif it.key not in have:
                    row["new"].append(it.key)
                elif have[it.key] != h:
                    row["changed"].append(it.key)
                else:  # same content: its path, its labels or nothing to update
                    moved = modality == "image" and stored[it.key][1] != it.path
                    if moved:
                        row["moved"].append(it.key)
                    if it.key in relabel:
                        row["relabelled"].append(it.key)
                    row["unchanged"] += not moved and it.key not in relabel
            kept = kept_i if modality == "image" else kept_t
            row["unreadable"] += [it.key for it in (given_images if modality == "image" else given_texts)
                                  if it.key not in kept]
            out[modality] = row
        if prune:
            gone = set(self._stale([it.key for it in given_images] + [t.key for t in given_texts]))
            # an image that goes takes its captions with it, as delete() does
            out["removed"] = [{"id": i, "modality": m, "key": key} for i, m, key, pair in
                              self.store.query("SELECT id, modality, key, pair_id FROM items")
                              if i in gone or pair in gone]
        return out

    def _stored(self, keys: Sequence[str]) -> dict[str, tuple[str | None, str | None]]:
        """key -> (content hash, stored path) of the stored items of ``keys``."""
        out: dict[str, tuple[str | None, str | None]] = {}
        for chunk, marks in in_chunks(keys):
            for k, h, path in self.store.query(f"SELECT key, content_hash, path FROM items WHERE key IN "
                                               f"({marks})", chunk):
                out[k] = (h, path)
        return out

    def _existing(self, keys: Sequence[str]) -> dict[str, str | None]:
        out: dict[str, str | None] = {}
        for chunk, marks in in_chunks(keys):
            for k, h in self.store.query(f"SELECT key, content_hash FROM items WHERE key IN ({marks})", chunk):
                out[k] = h
        return out

    def _checked_items(self, images: Sequence[ImageItem], texts: Sequence[TextItem],
                       image_features: Any = None, text_features: Any = None
                       ) -> tuple[list[ImageItem], list[TextItem], Any, Any, list[str]]:
        """Every item checked before anything is encoded or written, so that a bad one in a
        long add is refused naming it, not after the batches before it were committed: keys
        (valid, none twice in one add, image and text keys included), image paths (a
        ``PathLike`` is taken as its string), texts (strings), labels (lists of strings)
        and the features' row counts. An image whose key or path is not valid UTF-8 (a file
        name in another encoding) cannot be stored: it is skipped with its captions, logged
        and returned in the last list, like an unreadable file, and the add goes on.
        Returns (images, texts, image_features, text_features, skipped paths)."""
        images, texts = list(images), list(texts)
        for name, feats, items in (("image_features", image_features, images),
                                   ("text_features", text_features, texts)):
            if feats is not None and len(feats) != len(items):
                raise DataError(f"{name} has {len(feats)} rows for {len(items)} "
                                f"{name.split('_')[0]}s")
        good_i: list[ImageItem] = []
        keep_i: list[int] = []
        skipped: list[str] = []
        lost: set[str] = set()
        for r, it in enumerate(images):
            check_key(it.key)
            path = os.fspath(it.path) if isinstance(it.path, os.PathLike) else it.path
            if not isinstance(path, str) or not path:
                raise DataError(f"image {it.key!r}: path must be a file name, got {it.path!r}")
            if not (_storable(it.key) and _storable(path)):
                log.warning("skipping %r: its name is not valid UTF-8, which the collection "
                            "cannot store; rename the file", path)
                skipped.append(path)
                lost.add(it.key)
                continue
            good_i.append(ImageItem(it.key, path, _checked_labels(f"image {it.key!r}", it.labels)))
            keep_i.append(r)
        good_t: list[TextItem] = []
        keep_t: list[int] = []
        for r, it in enumerate(texts):
            if it.pair_key is not None and it.pair_key in lost:
                continue  # the caption of an image that cannot be stored goes with it
            check_key(it.key)
            what = f"text {it.key!r}"
            if not isinstance(it.text, str):
                raise DataError(f"{what}: text must be a string, got {type(it.text).__name__}")
            if it.pair_key is not None and not isinstance(it.pair_key, str):
                raise DataError(f"{what}: pair_key must be an image key (a string), got {it.pair_key!r}")
            for field_name, value in (("key", it.key), ("text", it.text), ("pair_key", it.pair_key or "")):
                if not _storable(value):
                    raise DataError(f"{what}: {field_name} is not valid Unicode text (a lone surrogate)")
            good_t.append(TextItem(it.key, it.text, it.pair_key, _checked_labels(what, it.labels)))
            keep_t.append(r)
        seen: set[str] = set()
        for it in [*good_i, *good_t]:
            if it.key in seen:
                raise DataError(f"item key {it.key!r} appears twice in one add")
            seen.add(it.key)
        if image_features is not None and len(keep_i) != len(images):
            image_features = np.asarray(image_features)[keep_i]
        if text_features is not None and len(keep_t) != len(texts):
            text_features = np.asarray(text_features)[keep_t]
        return good_i, good_t, image_features, text_features, skipped

    def add_items(self, images: Sequence[ImageItem] = (), texts: Sequence[TextItem] = (), *,
                  image_features: np.ndarray | None = None, text_features: np.ndarray | None = None,
                  batch_size: int = 256, progress: bool | None = False, actor: str = "local",
                  remote: str | None = None) -> AddReport:
        """Encode and add images (files) and texts. Items whose key and content hash are
        already stored are skipped without encoding. An add of at most ``batch_size`` items
        (an upload and its captions) commits as one transaction: all of it or none. A larger
        one commits batch by batch, so an interrupted run keeps the batches done and a rerun
        continues where it stopped."""
        total = AddReport()
        images, texts, image_features, text_features, total.skipped = self._checked_items(
            images, texts, image_features, text_features)
        unread: set[str] = set()  # keys of images skipped as unreadable
        # Small adds are encoded first and committed together: an image never stored
        # without the captions sent with it because the process died in between.
        staged: list[dict[str, Any]] | None = [] if len(images) + len(texts) <= batch_size else None
        with self._writing():
            for modality, items, feats in (("image", list(images), image_features),
                                           ("text", list(texts), text_features)):
                if modality == "text" and unread:
                    # Captions of an image that could not be read (and is not stored from an
                    # earlier run) have nothing to pair with: skipped with it, as on a first run.
                    gone = {k for k in unread if self.id_of(k) is None}
                    keep = [r for r, it in enumerate(items) if it.pair_key not in gone]
                    items = [items[r] for r in keep]
                    feats = None if feats is None else np.asarray(feats)[keep]
                if not items:
                    continue
                hashes, stats = self._content_hashes(modality, items)
                for it, h in zip(items, hashes):
                    if h is None:
                        total.skipped.append(it.path)
                        unread.add(it.key)
                stored = self._stored([it.key for it in items])
                have = {k: h for k, (h, _) in stored.items()}
                todo = [r for r, it in enumerate(items)
                        if hashes[r] is not None and have.get(it.key, "\0") != hashes[r]]
                same = [r for r, it in enumerate(items) if hashes[r] is not None and have.get(it.key) == hashes[r]]
                moved = [r for r in same if modality == "image" and stored[items[r].key][1] != items[r].path]
                relabel = self._relabelled(items, same)
                total.unchanged += len(set(same) - set(moved) - set(relabel))
                if relabel:
                    self._relabel(modality, items, relabel, actor, remote)
                    total.relabelled += len(relabel)
                if moved:
                    self._move(items, moved, stats, actor, remote)
                    total.moved += len(moved)
                    same = [r for r in same if r not in set(moved)]
                if stats and any(stats[r] for r in same):
                    # unchanged content, new or missing file stats (a touched file, an older
                    # collection): recorded, so the next run need not read the file again
                    with self._transaction() as c:
                        c.executemany(
                            "INSERT OR REPLACE INTO file_stats (item_id, path, size, mtime_ns) "
                            "SELECT id, ?, ?, ? FROM items WHERE key = ?",
                            [(items[r].path, *stats[r], items[r].key) for r in same if stats[r]])
                bar = None
                if todo:
                    from tqdm import tqdm

                    from ..encoders.base import show_progress
                    # None: a bar only on a terminal (never tqdm's lines in a log file)
                    bar = tqdm(total=len(todo), desc=f"adding {modality}s", unit=modality,
                               disable=not show_progress(progress))
                try:
                    for start in range(0, len(todo), batch_size):
                        rows = todo[start:start + batch_size]
                        if feats is not None:
                            F = np.asarray(feats)[rows]
                        else:
                            inputs = [items[r].path if modality == "image" else items[r].text for r in rows]
                            F, ok = encode_items(self.encoder(modality), inputs)
                            if not ok.all():  # unreadable images: reported, never indexed as zeros
                                total.skipped += [items[r].path for r, good in zip(rows, ok) if not good]
                                unread.update(items[r].key for r, good in zip(rows, ok) if not good)
                                rows = [r for r, good in zip(rows, ok) if good]
                                F = F[ok]
                                if not rows:
                                    continue
                        codes, fv = self.features_to_space(modality, F)
                        add = dict(
                            modality=modality, keys=[items[r].key for r in rows], codes=codes, fvecs=fv,
                            paths=[items[r].path for r in rows] if modality == "image" else None,
                            texts=[items[r].text for r in rows] if modality == "text" else None,
                            labels=[list(items[r].labels) for r in rows],
                            pair_keys=[items[r].pair_key for r in rows] if modality == "text" else None,
                            hashes=[hashes[r] for r in rows],
                            stats=[stats[r] for r in rows] if modality == "image" else None,
                            actor=actor, remote=remote)
                        if staged is not None:
                            staged.append(add)
                        else:
                            total.merge(self._add_vectors(**add))
                        if bar is not None:
                            bar.update(len(rows))
                finally:  # an interruption too: else its last line comes after the caller's message
                    if bar is not None:
                        bar.close()
            if staged:
                with self._transaction() as c:
                    done = [self._add_vectors(**add, c=c) for add in staged]
                # every staged add into memory first: the committed state must be searchable
                # whatever happens to the file clean-up after it
                for d in done:
                    total.merge(self._mirror_add(d, drop=False))
                self._drop_unused_files([f for d in done for f in d[5]])
        self.last_add = total
        return total

    def _relabelled(self, items: Sequence[ImageItem] | Sequence[TextItem], rows: Iterable[int]) -> list[int]:
        """The rows of ``rows`` whose item is stored with other labels than it has now: a label
        corrected in the source (a pairs file's label column, a dataset's classes). Their
        content is unchanged, so only the labels need writing. An item given no labels keeps
        the stored ones: a re-upload or an unlabelled copy of a source never clears them."""
        rows = [r for r in rows if items[r].labels]
        stored: dict[str, list[str]] = {}
        keys = [items[r].key for r in rows]
        for chunk, marks in in_chunks(keys):
            # one query: a stored item without labels comes back once, its label NULL
            for key, label in self.store.query(
                    f"SELECT i.key, l.label FROM items i LEFT JOIN item_labels l ON l.item_id = i.id "
                    f"WHERE i.key IN ({marks}) ORDER BY l.label", chunk):
                stored.setdefault(key, [])
                if label is not None:
                    stored[key].append(label)
        return [r for r in rows if items[r].key in stored
                and stored[items[r].key] != sorted({str(lab) for lab in items[r].labels})]

    def _relabel(self, modality: str, items: Sequence[ImageItem] | Sequence[TextItem], rows: Sequence[int],
                 actor: str, remote: str | None) -> None:
        """Stored items (same key, same content) whose labels changed in the source: their
        labels replaced in one transaction, ids kept and nothing encoded (labels live in the
        store only, so every process's label filters see them at once)."""
        with self._transaction() as c:
            ids = self._lookup(c, "SELECT key, id FROM items WHERE key IN ({})", [items[r].key for r in rows])
            c.executemany("DELETE FROM item_labels WHERE item_id = ?", [(ids[items[r].key][0],) for r in rows])
            c.executemany("INSERT INTO item_labels (item_id, label) VALUES (?, ?)",
                          [(ids[items[r].key][0], str(lab)) for r in rows
                           for lab in sorted({str(lab) for lab in items[r].labels})])
            Store.audit(c, actor, "relabel", {"modality": modality, "count": len(rows),
                                              "first_key": items[rows[0]].key}, remote)
            self._gen = Store.bump_generation(c)

    def _move(self, items: Sequence[ImageItem], rows: Sequence[int], stats: Sequence[tuple[int, int] | None],
              actor: str, remote: str | None) -> None:
        """Stored images whose file (same key, same content) is now at another path -- a moved
        or renamed photo folder: their path (and file stats) updated in one transaction,
        nothing encoded; left alone, search would name and serve the old, gone files."""
        with self._transaction() as c:
            # an item that was an upload (files/) and is now found in a folder leaves that
            # copy unused: dropped below, as a delete would
            old = [tuple(row) for r in rows for row in c.execute(
                "SELECT path, content_hash, id FROM items WHERE key = ? AND modality = 'image'",
                (items[r].key,))]
            c.executemany("UPDATE items SET path = ? WHERE key = ? AND modality = 'image'",
                          [(items[r].path, items[r].key) for r in rows])
            c.executemany("INSERT OR REPLACE INTO file_stats (item_id, path, size, mtime_ns) "
                          "SELECT id, ?, ?, ? FROM items WHERE key = ?",
                          [(items[r].path, *stats[r], items[r].key) for r in rows if stats[r]])
            Store.audit(c, actor, "move", {"modality": "image", "count": len(rows),
                                           "first_key": items[rows[0]].key}, remote)
            self._gen = Store.bump_generation(c)
            marks = Store.marks(c)
        with self._lock:
            self._set_marks(marks)
        uploads = [f for f in old if self._upload_name(f[0])]
        if uploads:
            self._drop_unused_files(uploads)

    # ------------------------------------------------------------ audit
    def audit_log(self, limit: int = 100) -> list[dict[str, Any]]:
        rows = self.store.query("SELECT id, ts, actor, action, detail, remote FROM audit "
                                "ORDER BY id DESC LIMIT ?", (int(limit),))
        return [{"id": r[0], "ts": r[1], "actor": r[2], "action": r[3],
                 "detail": json.loads(r[4]) if r[4].startswith("{") else r[4], "remote": r[5]} for r in rows]
