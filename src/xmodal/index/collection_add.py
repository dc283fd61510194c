"""Adding images and texts to a :class:`~xmodal.index.collection.Collection`: :meth:`~AddItemsMixin.add_items` and :meth:`~AddItemsMixin.plan`.

:class:`AddItemsMixin` checks every item before anything is encoded, hashes contents (an image
file read again only when its path, size or mtime changed), skips the unchanged, updates in place
the items only relabelled or moved to another path, and encodes the rest in batches into
:meth:`_add_vectors` (a small add as one transaction); :meth:`~AddItemsMixin.plan` tells what an
add would do without doing it. ``encode_items`` and ``sha256_file`` are read from
:mod:`xmodal.index.collection` when used, so replacing them there still takes effect.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Iterable, Sequence

import numpy as np

from ..data.dataset import DataError
from . import collection  # encode_items, sha256_file: read from there when used (set there)
from .items import AddReport, ImageItem, TextItem, _checked_labels, _decodes, _storable, check_key, sha256_text
from .store import Store, in_chunks

log = logging.getLogger("xmodal.index")


class AddItemsMixin:
    """The add-items part of :class:`~xmodal.index.collection.Collection`."""

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
        # In a small add the relabels, moves and file stats of unchanged items are written in
        # that same transaction too: a caption refused there (paired with no image, keyed as
        # a stored image) must not leave the images sent with it relabelled or moved.
        later: list[Any] = []  # (transaction) -> files to drop once committed
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
                writes: list[Any] = []
                if relabel:
                    writes.append(lambda c, m=modality, i=items, r=relabel: self._relabel(m, i, r, actor, remote, c))
                    total.relabelled += len(relabel)
                if moved:
                    writes.append(lambda c, i=items, r=moved, st=stats: self._move(i, r, st, actor, remote, c))
                    total.moved += len(moved)
                    same = [r for r in same if r not in set(moved)]
                if stats and any(stats[r] for r in same):
                    writes.append(lambda c, i=items, r=same, st=stats: self._record_stats(i, r, st, c))
                if staged is not None:
                    later += writes
                elif writes:
                    self._commit_updates(writes)
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
                            F, ok = collection.encode_items(self.encoder(modality), inputs)
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
                    unused = [f for write in later for f in write(c)]
                    done = [self._add_vectors(**add, c=c) for add in staged]
                # every staged add into memory first: the committed state must be searchable
                # whatever happens to the file clean-up after it
                for d in done:
                    total.merge(self._mirror_add(d, drop=False))
                self._drop_unused_files(unused + [f for d in done for f in d[5]])
            elif later:
                self._commit_updates(later)
        self.last_add = total
        return total

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

    def _stored(self, keys: Sequence[str]) -> dict[str, tuple[str | None, str | None]]:
        """key -> (content hash, stored path) of the stored items of ``keys``."""
        out: dict[str, tuple[str | None, str | None]] = {}
        for chunk, marks in in_chunks(keys):
            for k, h, path in self.store.query(f"SELECT key, content_hash, path FROM items WHERE key IN "
                                               f"({marks})", chunk):
                out[k] = (h, path)
        return out

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
        return collection.sha256_file(item.path), sig

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

    def _commit_updates(self, writes: Sequence[Any]) -> None:
        """Relabels, moves and file stats (each ``(transaction) -> files to drop``) committed
        in one transaction; then the uploads a move left unused are dropped."""
        with self._transaction() as c:
            unused = [f for write in writes for f in write(c)]
            marks = Store.marks(c)
        with self._lock:
            self._set_marks(marks)
        if unused:
            self._drop_unused_files(unused)

    def _relabel(self, modality: str, items: Sequence[ImageItem] | Sequence[TextItem], rows: Sequence[int],
                 actor: str, remote: str | None, c: Any) -> list:
        """Stored items (same key, same content) whose labels changed in the source: their
        labels replaced inside transaction ``c``, ids kept and nothing encoded (labels live
        in the store only, so every process's label filters see them at once). No files to
        drop: returns []."""
        ids = self._lookup(c, "SELECT key, id FROM items WHERE key IN ({})", [items[r].key for r in rows])
        c.executemany("DELETE FROM item_labels WHERE item_id = ?", [(ids[items[r].key][0],) for r in rows])
        c.executemany("INSERT INTO item_labels (item_id, label) VALUES (?, ?)",
                      [(ids[items[r].key][0], str(lab)) for r in rows
                       for lab in sorted({str(lab) for lab in items[r].labels})])
        Store.audit(c, actor, "relabel", {"modality": modality, "count": len(rows),
                                          "first_key": items[rows[0]].key}, remote)
        self._gen = Store.bump_generation(c)
        return []

    def _move(self, items: Sequence[ImageItem], rows: Sequence[int], stats: Sequence[tuple[int, int] | None],
              actor: str, remote: str | None, c: Any) -> list:
        """Stored images whose file (same key, same content) is now at another path -- a moved
        or renamed photo folder: their path (and file stats) updated inside transaction ``c``,
        nothing encoded; left alone, search would name and serve the old, gone files. Returns
        the uploads (``files/``) they were: unused now, dropped after COMMIT as a delete would."""
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
        return [f for f in old if self._upload_name(f[0])]

    @staticmethod
    def _record_stats(items: Sequence[ImageItem], rows: Sequence[int],
                      stats: Sequence[tuple[int, int] | None], c: Any) -> list:
        """Unchanged content, new or missing file stats (a touched file, an older collection):
        recorded inside transaction ``c``, so the next run need not read the file again."""
        c.executemany("INSERT OR REPLACE INTO file_stats (item_id, path, size, mtime_ns) "
                      "SELECT id, ?, ?, ? FROM items WHERE key = ?",
                      [(items[r].path, *stats[r], items[r].key) for r in rows if stats[r]])
        return []
