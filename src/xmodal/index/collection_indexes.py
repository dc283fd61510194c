"""The in-memory FAISS indexes of a :class:`~xmodal.index.collection.Collection` and their files.

:class:`IndexesMixin` keeps one FAISS index per modality and variant (the exact ``flat`` one,
an ``approx`` factory index, the float ``rerank`` projections): it builds them from the store's
vectors, loads the newest index file of each and catches it up from the store (files of another
database or history refused), follows another process's writes from the rows added and the
``deleted`` log, and rewrites a modality's files once the catch-up they need passes the
``REWRITE_*`` thresholds, then removes the older ones. Those thresholds and
``atomic_write_bytes`` are read from :mod:`xmodal.index.collection` when used, so setting them
there (a benchmark, a test) still takes effect.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from . import collection  # REWRITE_*, atomic_write_bytes: read from there when used (set there)
from ._layout import DB_NAME, MODALITIES, _blob_rows, _index_name, _write_lock
from .store import Store
from .vector import IndexFileError, IndexSpecError, VectorIndex, normalize_spec, prepare, split_spec

log = logging.getLogger("xmodal.index")


class IndexesMixin:
    """The FAISS indexes part of :class:`~xmodal.index.collection.Collection` (its state is set
    in ``Collection._use``)."""

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
                            log.warning("%s: index file %s is not used, not being a sound %s index of "
                                        "dim %d (%s)", self.path, f.name, spec, dim, exc)
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
        if self.indexes[(modality, "flat")].ntotal * self._row_bytes() < collection.REWRITE_BELOW_BYTES:
            return True
        return pending > max(collection.REWRITE_MIN_CHANGES, collection.REWRITE_FRACTION * self._file_n.get(modality, 0))

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
                collection.atomic_write_bytes(f, idx.to_bytes())
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
