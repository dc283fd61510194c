"""Copies of a :class:`~xmodal.index.collection.Collection` for use elsewhere.

:class:`ExportMixin` writes the stored vectors and what each item is to one ``.npz`` file
(:meth:`~ExportMixin.export`, for use outside xmodal), and makes a consistent, self-contained
copy of the whole collection folder (:meth:`~ExportMixin.snapshot`: the database through
SQLite's backup API, the model files, the current indexes and the uploaded images, the copy's
items pointed at its own files), with writers held off meanwhile.
"""

from __future__ import annotations

import json
import sqlite3
from contextlib import nullcontext
from pathlib import Path

import numpy as np

from .._fs import atomic_write
from ._layout import DB_NAME, METHOD_FILE, MODALITIES, _blob_rows, _index_name, _new_db_id, _write_lock
from .items import _sep_files
from .store import CollectionError


class ExportMixin:
    """The export and snapshot part of :class:`~xmodal.index.collection.Collection`."""

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
