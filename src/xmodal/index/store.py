"""The collection's source of truth: one SQLite database in WAL mode.

Everything a collection knows (items, their common-space vectors, labels, settings, API keys,
the audit log, the write generation) lives here and changes only inside transactions, so a
crash at any moment leaves the previous or the new state. Index files on disk are caches of
the ``vectors`` table stamped with the generation they reflect.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY AUTOINCREMENT,     -- never reused: FAISS ids stay stable
    key TEXT NOT NULL UNIQUE,                 -- the caller's id (relative path, caption key)
    modality TEXT NOT NULL CHECK (modality IN ('image', 'text')),
    path TEXT,
    text TEXT,
    content_hash TEXT,
    pair_id INTEGER,                          -- a caption's image item
    added_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS items_modality ON items (modality);
CREATE INDEX IF NOT EXISTS items_pair ON items (pair_id);
CREATE TABLE IF NOT EXISTS item_labels (
    item_id INTEGER NOT NULL REFERENCES items (id) ON DELETE CASCADE,
    label TEXT NOT NULL,
    PRIMARY KEY (item_id, label)
);
CREATE INDEX IF NOT EXISTS item_labels_label ON item_labels (label);
CREATE TABLE IF NOT EXISTS vectors (
    item_id INTEGER PRIMARY KEY REFERENCES items (id) ON DELETE CASCADE,
    code BLOB NOT NULL,                       -- common-space vector: float32 or packed bits
    fvec BLOB                                 -- float projection of a binary code (re-ranking)
);
CREATE TABLE IF NOT EXISTS file_stats (     -- an image file as it was when hashed
    item_id INTEGER PRIMARY KEY REFERENCES items (id) ON DELETE CASCADE,
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS api_keys (
    key_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('read', 'write', 'admin')),
    salt BLOB NOT NULL,
    hash BLOB NOT NULL,
    created REAL NOT NULL,
    revoked REAL
);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    detail TEXT NOT NULL,
    remote TEXT
);
CREATE TABLE IF NOT EXISTS deleted (          -- every deleted item in order, written by the trigger
    seq INTEGER PRIMARY KEY AUTOINCREMENT,    -- below in the deleting transaction: how a process
    item_id INTEGER NOT NULL,                 -- holding indexes catches up with another's deletes
    modality TEXT NOT NULL                    -- without reloading them (adds: ids above its last)
);
CREATE TRIGGER IF NOT EXISTS items_deleted AFTER DELETE ON items BEGIN
    INSERT INTO deleted (item_id, modality) VALUES (old.id, old.modality);
END;
"""


class CollectionError(RuntimeError):
    """A collection that is missing, incomplete or used in a way it does not support."""


class ReadOnlyError(CollectionError):
    """A write to a collection opened read-only."""


class UnreadableDatabaseError(CollectionError):
    """A damaged ``collection.db``: one SQLite cannot read (truncated, overwritten, not a
    database), or whose meta values are not JSON. A rebuild (overwrite) replaces it."""


SQL_VARS = 900  # ids bound per statement: under SQLite's limit on bound parameters (999 in older builds)


def in_chunks(values: Sequence[Any]) -> Iterator[tuple[list[Any], str]]:
    """``values`` in pieces one statement can bind, each with its ``?,?,...`` for ``IN (...)``."""
    values = list(values)
    for start in range(0, len(values), SQL_VARS):
        chunk = values[start:start + SQL_VARS]
        yield chunk, ",".join("?" * len(chunk))


def writable(folder: Path, db: Path) -> bool:
    """Whether this process may write the collection folder and its database file."""
    return os.access(folder, os.W_OK) and (not db.exists() or os.access(db, os.W_OK))


def read_only_error(folder: Path, db: Path) -> "ReadOnlyError":
    """The refusal of a write to a collection open read-only, saying why it is."""
    why = ("opened read-only (--read-only)" if writable(folder, db)
           else "this process cannot write the folder or its collection.db")
    return ReadOnlyError(f"{folder}: the collection is open read-only: {why}")


class Store:
    """A thread-safe wrapper over one SQLite connection (WAL, foreign keys on).

    ``read_only`` opens the file as immutable (a read-only mount, a shipped snapshot): no
    journal, no schema set-up, and every transaction raises :class:`ReadOnlyError`. ``follow``
    opens it read-only but not immutable, following another process's writes."""

    def __init__(self, path: str | Path, read_only: bool = False, follow: bool = False) -> None:
        self.path = Path(path)
        self.read_only = read_only or follow
        self.immutable = False
        self._lock = threading.RLock()
        if follow:
            # read-only, beside a writer that has appeared: a plain read-only connection sees
            # its commits (WAL included); the immutable one would misread the changing file
            self.conn = sqlite3.connect(self.path.resolve().as_uri() + "?mode=ro", uri=True,
                                        check_same_thread=False, isolation_level=None, timeout=30.0)
            return
        if read_only:
            wal = Path(str(self.path) + "-wal")
            if wal.exists() and wal.stat().st_size > 0:
                # immutable mode would not see those writes
                raise CollectionError(f"{wal}: writes not yet merged into {self.path.name}; open the "
                                      "collection once with write access before using it read-only")
            self.conn = sqlite3.connect(self.path.resolve().as_uri() + "?mode=ro&immutable=1", uri=True,
                                        check_same_thread=False, isolation_level=None)
            self.immutable = True
            self._stored_format()
            return
        self.conn = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None,
                                    timeout=30.0)
        fmt = self._stored_format()
        self.conn.execute("PRAGMA foreign_keys=ON")
        if fmt not in (None, SCHEMA_VERSION):
            # another version's collection: left as it is (Collection.open refuses it by its
            # format); this version's tables and trigger laid over it would be written into it
            return
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=FULL")  # durable commits: crash safety over speed
        self.conn.executescript(SCHEMA)

    def _stored_format(self) -> Any:
        """The ``format`` the database records (None: a new or unfinished collection), read
        before anything is written to it; an SQLite file of another program (tables, none
        of them ``meta``) is refused untouched."""
        try:
            tables = [r[0] for r in self.conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]
            if not tables:
                return None
            if "meta" not in tables:
                raise CollectionError(f"{self.path}: an SQLite database, but not an xmodal collection's "
                                      f"(tables {', '.join(sorted(tables)[:5])}, no meta table)")
            row = self.conn.execute("SELECT value FROM meta WHERE key = 'format'").fetchone()
            return None if row is None else self._decoded("format", row[0])
        except BaseException:
            self.conn.close()
            raise

    def close(self) -> None:
        with self._lock:
            self.conn.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT; ROLLBACK on any exception."""
        if self.read_only:
            raise read_only_error(self.path.parent, self.path)
        with self._lock:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
                self.conn.execute("COMMIT")
            except BaseException:
                # a failed COMMIT (a deferred constraint, a full disk) leaves the transaction
                # open: rolled back too, or every later BEGIN on this connection would fail
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                raise

    @contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: every query inside sees one snapshot, whatever writers commit
        meanwhile (WAL), without blocking them; read-only stores too."""
        with self._lock:
            self.conn.execute("BEGIN")
            try:
                yield self.conn
            finally:
                self.conn.execute("COMMIT")

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        with self._lock:
            return self.conn.execute(sql, params).fetchall()

    # ------------------------------------------------------------------ meta
    def get_meta(self, key: str, default: Any = None) -> Any:
        rows = self.query("SELECT value FROM meta WHERE key = ?", (key,))
        return self._decoded(key, rows[0][0]) if rows else default

    def all_meta(self) -> dict[str, Any]:
        return {k: self._decoded(k, v) for k, v in self.query("SELECT key, value FROM meta")}

    def _decoded(self, key: str, value: Any) -> Any:
        """A meta value as stored (JSON); one that is not is named with the file it is in."""
        try:
            return json.loads(value)
        except (TypeError, ValueError) as exc:
            raise UnreadableDatabaseError(f"{self.path}: meta {key!r} is damaged, not a JSON value ({exc}); "
                                  "restore the collection from a copy or rebuild it (--rebuild)") from None

    @staticmethod
    def set_meta(conn: sqlite3.Connection, key: str, value: Any) -> None:
        conn.execute("INSERT INTO meta (key, value) VALUES (?, ?) "
                     "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (key, json.dumps(value)))

    @staticmethod
    def bump_generation(conn: sqlite3.Connection) -> int:
        row = conn.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
        gen = (json.loads(row[0]) if row else 0) + 1
        Store.set_meta(conn, "generation", gen)
        return gen

    def generation(self) -> int:
        return int(self.get_meta("generation", 0))

    # ------------------------------------------------------------------ items
    def vectors(self, modality: str) -> tuple[np.ndarray, list[bytes], list[bytes | None]]:
        rows = self.query("SELECT v.item_id, v.code, v.fvec FROM vectors v JOIN items i ON i.id = v.item_id "
                          "WHERE i.modality = ? ORDER BY v.item_id", (modality,))
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        return ids, [r[1] for r in rows], [r[2] for r in rows]

    def vectors_of(self, ids: np.ndarray) -> tuple[np.ndarray, list[bytes], list[bytes | None]]:
        """(ids, codes, fvecs) of those of ``ids`` that have vectors, in id order."""
        ids = sorted(int(i) for i in ids)
        rows: list[tuple] = []
        for chunk, marks in in_chunks(ids):
            rows += self.query(f"SELECT item_id, code, fvec FROM vectors WHERE item_id IN ({marks}) "
                               "ORDER BY item_id", chunk)
        out = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        return out, [r[1] for r in rows], [r[2] for r in rows]

    def changes_since(self, max_id: int, deleted_seq: int) -> tuple[list[tuple], list[tuple]] | None:
        """What happened after a state whose :meth:`marks` were (``max_id``, ``deleted_seq``):
        the (id, modality, code, fvec) of items added since (ids are never reused, so they are
        the ids above ``max_id``) and the (id, modality) of items deleted since. Cost: the
        changes, not the collection. None where the log no longer reaches back that far
        (:meth:`trim_deleted` pruned rows that state has not seen): reload from the store."""
        if int(deleted_seq) < self.deleted_floor():
            return None
        added = self.query("SELECT v.item_id, i.modality, v.code, v.fvec FROM vectors v "
                           "JOIN items i ON i.id = v.item_id WHERE v.item_id > ? ORDER BY v.item_id",
                           (int(max_id),))
        gone = self.query("SELECT item_id, modality FROM deleted WHERE seq > ? ORDER BY seq",
                          (int(deleted_seq),))
        return added, gone

    def deleted_floor(self) -> int:
        """The last ``deleted`` row pruned (0: none ever was): a state whose marks are below
        it cannot be caught up from the log."""
        return int(self.get_meta("deleted_floor", 0))

    @staticmethod
    def trim_deleted(conn: sqlite3.Connection, keep: int) -> int:
        """Inside a deleting transaction: once the ``deleted`` log holds over ``2 * keep`` rows
        past its floor, drop all but the last ``keep`` and raise the floor to the last row
        dropped, in the same transaction (a crash keeps both or neither). A reader further
        behind than that sees the floor and reloads from the store (:meth:`changes_since`).
        Amortised: one range delete on the primary key per ``keep`` deletions. Returns the
        floor."""
        row = conn.execute("SELECT value FROM meta WHERE key = 'deleted_floor'").fetchone()
        floor = json.loads(row[0]) if row else 0
        row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'deleted'").fetchone()
        last = int(row[0]) if row else 0
        if last - floor <= 2 * max(int(keep), 0) or last - int(keep) <= floor:
            return floor
        floor = last - int(keep)
        conn.execute("DELETE FROM deleted WHERE seq <= ?", (floor,))
        Store.set_meta(conn, "deleted_floor", floor)
        return floor

    @staticmethod
    def marks(conn: sqlite3.Connection) -> tuple[int, int | None]:
        """(largest item id ever given, last ``deleted`` row): where a state stands in the
        store's history. The second is None in a collection without the deletion log (made by
        an older xmodal and never opened for writing since)."""
        seq = dict(conn.execute("SELECT name, seq FROM sqlite_sequence "
                                "WHERE name IN ('items', 'deleted')").fetchall())
        has_log = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' "
                               "AND name = 'deleted'").fetchone()
        return int(seq.get("items", 0)), (int(seq.get("deleted", 0)) if has_log else None)

    def item_ids(self, modality: str) -> np.ndarray:
        rows = self.query("SELECT id FROM items WHERE modality = ?", (modality,))
        return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))

    @staticmethod
    def audit(conn: sqlite3.Connection, actor: str, action: str, detail: dict | str,
              remote: str | None = None) -> None:
        conn.execute("INSERT INTO audit (ts, actor, action, detail, remote) VALUES (?, ?, ?, ?, ?)",
                     (time.time(), actor, action,
                      detail if isinstance(detail, str) else json.dumps(detail, sort_keys=True), remote))
