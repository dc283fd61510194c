"""Reading items and searching a :class:`~xmodal.index.collection.Collection`.

:class:`SearchMixin` reads stored items (by id, key or page, their vectors), encodes text and
image queries into the common space, applies Rocchio relevance feedback, and searches the FAISS
indexes: batches of query vectors (exact or approximate, label filters, exclusions, a Hamming
shortlist re-ranked by float projections), then the hits read from the store, leaving out items
another process deleted meanwhile (the indexes then catch up and the search runs again).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from ..data.dataset import DataError
from ._layout import DB_NAME, MODALITIES, _blob_rows
from .encoding import _encode_query
from .items import MAX_ID, Hit, _ids, _sep_files, _storable
from .store import in_chunks
from .vector import prepare

#: A binary query given with its float projection is answered by re-scoring a Hamming
#: shortlist of this many times k by the float cosine (collections indexed with --rerank).
RERANK_FACTOR = 4


class SearchMixin:
    """The reading and searching part of :class:`~xmodal.index.collection.Collection`."""

    # ------------------------------------------------------------ reading
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
        Binary codes are updated as +-1 vectors and re-binarised by sign (a tie keeps the query's bit)."""
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
            # a bit the feedback exactly cancels keeps the query's: reading sign(0) as 0 would
            # turn such 1s into 0s but keep such 0s, an answer that depends on the codes' polarity
            bits = np.where(new == 0, qf > 0, new > 0)
            new_q = np.packbits(bits.astype(np.uint8), axis=1)
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
                       fq: np.ndarray | None = None, rerank: int | None = None,
                       exclude: Sequence[int] = (), check_labels: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Batch search of common-space query rows against ``target`` items: (scores, ids).

        The approximate index answers unless ``exact`` or a label filter is given (the flat
        index does: it filters exactly). Binary collections with stored float projections
        re-rank a Hamming shortlist of ``rerank * k`` by cosine when ``fq`` is given (``rerank``
        None: :data:`RERANK_FACTOR`, as every search path; 0: Hamming order, ``fq`` unused).
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
        if rerank is None:  # an fq given without rerank re-ranks, as text and HTTP queries do
            rerank = RERANK_FACTOR
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
                      fq: np.ndarray | None = None, rerank: int | None = None,
                      exclude: Sequence[int] = (), feedback: tuple[float, float, float] = (1.0, 0.75, 0.25),
                      distinct: bool = False, check_labels: bool = True) -> list[Hit]:
        """Search with one common-space vector (a float vector, or packed uint8 code).
        ``distinct`` collapses texts that are word for word the same (datasets repeat
        captions) into their best-scoring one. A label no ``target`` item has is refused
        (:meth:`check_labels`; ``check_labels=False``: not checked). ``fq``: a binary query's
        float projection, to re-rank a shortlist of ``rerank * k`` by (:meth:`search_vectors`)."""
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
        return self.search_vector(q, target, k, fq=fq, rerank=kw.pop("rerank", None), **kw)

    def search_image(self, path: str | Path, k: int = 10, target: str = "text", **kw: Any) -> list[Hit]:
        """Image query (a file); by default against texts (image -> text)."""
        kw = self._labels_checked(kw, target)
        q, fq = self.encode_query_image(path)
        return self.search_vector(q, target, k, fq=fq, rerank=kw.pop("rerank", None), **kw)

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
        rerank = kw.pop("rerank", None)
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
        return self.search_vector(q, target, k, fq=fq, rerank=kw.pop("rerank", None),
                                  exclude=exclude, **kw)
