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

The code: this module holds the :class:`Collection` class with its opening, creating and
reopening, model parts, following of other processes and write context, the tunables named
above, and the database helpers tests set (``writable``, ``_open_store``). The class's other parts
are mixins, one module each: the FAISS indexes and their files (:mod:`.collection_indexes`),
export and snapshot (:mod:`.collection_export`), reading items and searching
(:mod:`.collection_search`), writing vectors, deleting and the audit log
(:mod:`.collection_writes`), adding items from files and texts (:mod:`.collection_add`); they
share :mod:`._layout` (file names, the writer lock). Item types and checks are in
:mod:`.items`, encoder helpers in :mod:`.encoding`; every name stays importable from here.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import sys
import threading
import time
import zipfile
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ._layout import DB_NAME, METHOD_FILE, MODALITIES, _drop_lock_file, _give_db_id, _new_db_id, _write_lock
from .collection_add import AddItemsMixin
from .collection_export import ExportMixin
from .collection_indexes import IndexesMixin
from .collection_search import SearchMixin
from .collection_writes import WritesMixin
from .encoding import _class_path, _digest_file, _float_projection, _load_class, get_encoder
from .items import AddReport
from .store import SCHEMA_VERSION, CollectionError, Store, UnreadableDatabaseError, read_only_error
from .store import writable as store_writable
from .vector import VectorIndex, normalize_spec

# Re-exported: this module stays the one to import the collection's names from (and the one to
# set them in: the parts read atomic_write_bytes, encode_items and sha256_file from here).
from .._fs import atomic_write_bytes  # noqa: F401
from ..data.dataset import DataError  # noqa: F401
from ._layout import _blob_rows, _index_name  # noqa: F401
from .encoding import _encode_query, encode_items  # noqa: F401
from .items import (MAX_ID, MAX_KEY_LEN, THUMB_SIZES, THUMB_SUFFIXES, Hit, ImageItem, TextItem,  # noqa: F401
                    _checked_labels, _decodes, _ids, _sep_files, _storable, check_key, sha256_file, sha256_text,
                    thumb_file)
from .store import ReadOnlyError  # noqa: F401

log = logging.getLogger("xmodal.index")

# Tunables, read by the parts from here when used (a benchmark or test may set them here).
# A modality's index files are rewritten once the catch-up from them (items added or deleted
# since they were written) exceeds max(REWRITE_MIN_CHANGES, REWRITE_FRACTION * their items),
# or always when they are under REWRITE_BELOW_BYTES (as cheap to write as to catch up).
REWRITE_MIN_CHANGES = 1024
REWRITE_FRACTION = 0.05
REWRITE_BELOW_BYTES = 1 << 20
# The deleted log keeps the last DELETED_LOG_KEEP rows (pruned once it holds twice that, in a
# deleting transaction): a process further behind than that reloads its indexes from the store.
DELETED_LOG_KEEP = 4096


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


class Collection(IndexesMixin, ExportMixin, SearchMixin, WritesMixin, AddItemsMixin):
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
        for attempt in range(100):
            # the folders this call makes (the collection's and missing parents), deepest first
            made = [p for p in (path, *path.parents) if not p.exists()]
            had_lock = (path / "write.lock").exists()
            path.mkdir(parents=True, exist_ok=True)
            try:
                # Under the write lock: two processes creating the same collection at once must
                # not delete each other's database (the loser is told it exists and can add to it).
                with _write_lock(path):
                    try:
                        cls._create(path, output=output, dim=dim, method=method, image_encoder=image_encoder,
                                    text_encoder=text_encoder, index=index, rerank=rerank,
                                    public_read=public_read, overwrite=overwrite, info=info)
                    except BaseException:
                        # refused (its arguments are checked before anything is written): no
                        # lone write.lock left behind, which made the folder look like a
                        # collection's; another creator waiting on it locks anew
                        _drop_lock_file(path, made=not had_lock)
                        raise
            except FileNotFoundError:
                # another create, refused, removed the folder it had made while this one
                # waited for its lock: make it again (a FileNotFoundError of _create itself,
                # a model file gone, is its own and said)
                if path.is_dir() or attempt == 99:
                    raise
                continue
            except BaseException:
                for p in made:  # only empty ones: never what another process put there since
                    try:
                        p.rmdir()
                    except OSError:
                        break
                raise
            return cls.open(path)
        raise AssertionError("unreachable")

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

    # ------------------------------------------------------------ following other processes
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

    # ------------------------------------------------------------ the write context
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

    # ------------------------------------------------------------ what it holds
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
