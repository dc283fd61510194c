"""Writing vectors into a :class:`~xmodal.index.collection.Collection`, and deleting.

:class:`WritesMixin` stores items with known common-space vectors (:meth:`~WritesMixin.add_vectors`):
their rows written in one transaction that bumps the generation, then mirrored into the
in-memory indexes after COMMIT (marked unknown if that is cut short). It deletes items (an image
with its captions) and prunes those a source no longer has, removes the uploaded files and cached
thumbnails no remaining item uses, and reads the audit log. ``DELETED_LOG_KEEP`` is read from
:mod:`xmodal.index.collection` when used, so setting it there still takes effect.
"""

from __future__ import annotations

import json
import logging
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from ..data.dataset import DataError
from . import collection  # DELETED_LOG_KEEP: read from there when used (set there)
from ._layout import MODALITIES
from .items import THUMB_SIZES, THUMB_SUFFIXES, AddReport, _checked_labels, _ids, _sep_files, check_key, thumb_file
from .store import CollectionError, Store, in_chunks
from .vector import prepare

log = logging.getLogger("xmodal.index")


class WritesMixin:
    """The vector writing and deleting part of :class:`~xmodal.index.collection.Collection`."""

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
            Store.trim_deleted(c, collection.DELETED_LOG_KEEP)
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
                Store.trim_deleted(c, collection.DELETED_LOG_KEEP)
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

    # ------------------------------------------------------------ files no item uses
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

    # ------------------------------------------------------------ audit
    def audit_log(self, limit: int = 100) -> list[dict[str, Any]]:
        rows = self.store.query("SELECT id, ts, actor, action, detail, remote FROM audit "
                                "ORDER BY id DESC LIMIT ?", (int(limit),))
        return [{"id": r[0], "ts": r[1], "actor": r[2], "action": r[3],
                 "detail": json.loads(r[4]) if r[4].startswith("{") else r[4], "remote": r[5]} for r in rows]
