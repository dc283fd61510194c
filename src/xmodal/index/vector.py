"""One FAISS index with stable ids: float vectors by inner product on normalised rows (cosine),
or packed binary codes by Hamming distance.

Every index is wrapped in ``IndexIDMap2``/``IndexBinaryIDMap2`` so the ids FAISS returns are
the collection's item ids. Indexes that cannot remove rows (HNSW, multi-hash) keep a tombstone
set: deleted ids are dropped from results (searching ``k + len(tombstones)`` keeps the answer
exact with respect to the underlying index) and the index is rebuilt once tombstones pile up.
Scores are always "higher is better": cosine for float, ``1 - 2 * hamming / bits`` for binary,
which is the cosine of the +-1 codes.
"""

from __future__ import annotations

import re
from typing import Iterable

import faiss

import numpy as np

_NOT_FOUND = -1


class IndexSpecError(ValueError):
    """A FAISS factory string that cannot build an index of this kind."""


#: Search-time parameters applied unless the spec names them (FAISS's own defaults,
#: efSearch=16 and nprobe=1, trade away too much recall for k around 10).
DEFAULT_SEARCH_PARAMS = {"HNSW": "efSearch=64", "IVF": "nprobe=16"}


def split_spec(spec: str) -> tuple[str, str]:
    """``"HNSW32|efSearch=128"`` -> (``"HNSW32"``, ``"efSearch=128"``)."""
    base, _, params = spec.partition("|")
    return base.strip(), params.strip()


def _apply_params(kind: str, index, base: str, params: str) -> None:
    """Set search parameters (``name=value,...``) on the index inside the id map."""
    wanted: dict[str, str] = {}
    for family, default in DEFAULT_SEARCH_PARAMS.items():
        if family in base:
            k, v = default.split("=")
            wanted[k] = v
    for part in filter(None, (p.strip() for p in params.split(","))):
        k, sep, v = part.partition("=")
        if not sep:
            raise IndexSpecError(f"search parameter {part!r} must look like name=value")
        wanted[k.strip()] = v.strip()
    if not wanted:
        return
    if kind == "real":
        ps = faiss.ParameterSpace()
        for k, v in wanted.items():
            try:
                value = float(v)
            except ValueError:
                raise IndexSpecError(f"search parameter {k}={v!r}: expected a number") from None
            try:
                ps.set_index_parameter(index, k, value)
            except RuntimeError:
                raise IndexSpecError(f"index {base!r} has no search parameter {k!r}") from None
        return
    inner = faiss.downcast_IndexBinary(index.index)
    for k, v in wanted.items():
        if not v.isdigit():
            raise IndexSpecError(f"search parameter {k}={v!r}: expected a whole number")
        if k == "efSearch" and hasattr(inner, "hnsw"):
            inner.hnsw.efSearch = int(v)
        elif k == "nprobe" and hasattr(inner, "nprobe"):
            inner.nprobe = int(v)
        else:
            raise IndexSpecError(f"binary index {base!r} has no search parameter {k!r}")


def normalize_spec(kind: str, spec: str) -> str:
    spec, params = split_spec(spec)
    if params:
        return normalize_spec(kind, spec) + "|" + params
    if kind == "binary" and not spec.startswith("B"):
        spec = "B" + spec  # "Flat" -> "BFlat", "HNSW32" -> "BHNSW32"
    if kind == "real" and spec.startswith("B") and _is_binary_spec(spec):
        raise IndexSpecError(f"index {spec!r} is binary but this collection's space is real-valued")
    return spec  # any other bad spec: FAISS's own parse error when the index is built


def _is_binary_spec(spec: str) -> bool:
    """Whether FAISS's binary index factory parses ``spec`` (probed at 256 bits): a name that
    merely starts with "B" (a typo) is no binary index, and gets FAISS's own error instead."""
    try:
        faiss.index_binary_factory(256, spec)
    except RuntimeError:
        return False
    return True


def _make(kind: str, dim: int, spec: str):
    try:
        if kind == "binary":
            if dim % 8:
                raise IndexSpecError(f"binary codes need a multiple of 8 bits, got {dim}")
            return faiss.IndexBinaryIDMap2(faiss.index_binary_factory(dim, spec))
        return faiss.IndexIDMap2(faiss.index_factory(dim, spec, faiss.METRIC_INNER_PRODUCT))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else str(exc)
        # FAISS's message without its C++ location ("Error in <signature> at <file>:<line>: ")
        first = re.sub(r"^Error in .* at \S+:\d+: (Error: )?", "", first)
        raise IndexSpecError(f"cannot build FAISS index {spec!r} for {kind} vectors of dim {dim}: "
                             f"{first}") from None


def prepare(kind: str, vectors: np.ndarray, dim: int) -> np.ndarray:
    """Float rows: float32, L2-normalised (so inner product is cosine). Binary rows: uint8."""
    v = np.asarray(vectors)
    if v.ndim == 1:
        v = v[None, :]
    width = dim // 8 if kind == "binary" else dim
    if v.ndim != 2 or v.shape[1] != width:
        what = f"{width} bytes ({dim} bits)" if kind == "binary" else f"{dim} values"
        raise ValueError(f"expected {kind} vectors of {what} per row, got shape {v.shape}")
    if kind == "binary":
        return np.ascontiguousarray(v, dtype=np.uint8)
    v = np.array(v, dtype=np.float32, copy=True, order="C")
    if not np.isfinite(v).all():
        raise ValueError("vectors hold NaN or inf")
    faiss.normalize_L2(v)
    return v


class VectorIndex:
    """A FAISS index over ``dim`` (bits for binary) with stable int64 ids."""

    def __init__(self, kind: str, dim: int, spec: str = "Flat") -> None:
        if kind not in ("real", "binary"):
            raise ValueError(f"kind must be 'real' or 'binary', got {kind!r}")
        self.kind, self.dim = kind, int(dim)
        self.spec = normalize_spec(kind, spec)
        base, params = split_spec(self.spec)
        self.index = _make(kind, self.dim, base)
        _apply_params(kind, self.index, base, params)
        self.tombstones: set[int] = set()

    # ------------------------------------------------------------------ properties
    @property
    def is_flat(self) -> bool:
        return split_spec(self.spec)[0] in ("Flat", "BFlat")

    @property
    def is_trained(self) -> bool:
        return bool(self.index.is_trained)

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal) - len(self.tombstones)

    def stored_ids(self) -> np.ndarray:
        """Every id the FAISS index holds, tombstoned ones included (what its file holds)."""
        return faiss.vector_to_array(self.index.id_map).astype(np.int64)

    def ids(self) -> np.ndarray:
        ids = faiss.vector_to_array(self.index.id_map).astype(np.int64)
        if self.tombstones:
            ids = ids[~np.isin(ids, np.fromiter(self.tombstones, dtype=np.int64))]
        return ids

    # ------------------------------------------------------------------ writes
    def train(self, vectors: np.ndarray) -> None:
        if self.is_trained:
            return
        x = prepare(self.kind, vectors, self.dim)
        try:
            self.index.train(x)
        except RuntimeError as exc:
            raise IndexSpecError(f"cannot train FAISS index {self.spec!r} on {len(x)} vectors "
                                 f"(too few for its clusters?): {str(exc).strip().splitlines()[-1]}") from None

    def add(self, ids: Iterable[int] | np.ndarray, vectors: np.ndarray, prepared: bool = False) -> None:
        ids = np.asarray(ids, dtype=np.int64)
        x = vectors if prepared else prepare(self.kind, vectors, self.dim)
        if len(ids) != len(x):
            raise ValueError(f"{len(ids)} ids for {len(x)} vectors")
        if not len(ids):
            return
        if not self.is_trained:
            self.train(x)
        self.index.add_with_ids(x, ids)

    def remove(self, ids: Iterable[int] | np.ndarray) -> None:
        ids = np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids, dtype=np.int64)
        if not len(ids):
            return
        try:
            self.index.remove_ids(ids)
        except RuntimeError:  # HNSW, multi-hash: no removal, keep tombstones
            have = self.stored_ids()
            # have against the few ids (not a set of every stored id): a delete or a catch-up
            # costs a scan of the id array, not a Python set of a million ids
            self.tombstones.update(have[np.isin(have, ids)].tolist())

    def needs_compaction(self) -> bool:
        return len(self.tombstones) > max(1024, self.index.ntotal // 10)

    # ------------------------------------------------------------------ search
    def _scores(self, D: np.ndarray) -> np.ndarray:
        if self.kind == "binary":
            return 1.0 - 2.0 * D.astype(np.float32) / self.dim
        return D

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None,
               prepared: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` per query: (scores, ids), -1 ids where fewer exist. ``allowed`` restricts
        the answer to those ids (flat indexes only: they take a FAISS id selector)."""
        q = queries if prepared else prepare(self.kind, queries, self.dim)
        k = int(k)
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        n = int(self.index.ntotal)
        if allowed is not None:
            if not self.is_flat:
                raise ValueError("filtered search needs the flat index")
            allowed = np.asarray(allowed, dtype=np.int64)
            if self.tombstones:
                allowed = allowed[~np.isin(allowed, np.fromiter(self.tombstones, dtype=np.int64))]
            if not len(allowed) or n == 0:
                return (np.full((len(q), k), -np.inf, np.float32), np.full((len(q), k), -1, np.int64))
            sel = faiss.IDSelectorBatch(allowed)
            D, I = self.index.search(q, min(k, n), params=faiss.SearchParameters(sel=sel))
        elif n == 0:
            return (np.full((len(q), k), -np.inf, np.float32), np.full((len(q), k), -1, np.int64))
        elif self.tombstones:
            D, I = self.index.search(q, min(k + len(self.tombstones), n))
            D, I = self._drop_tombstones(D, I, k)
        else:
            D, I = self.index.search(q, min(k, n))
        S = self._scores(D)
        if S.shape[1] < k:  # pad to k columns so callers see a fixed shape
            pad = k - S.shape[1]
            S = np.hstack([S, np.full((len(S), pad), -np.inf, np.float32)])
            I = np.hstack([I, np.full((len(I), pad), -1, np.int64)])
        S = np.where(I < 0, -np.inf, S).astype(np.float32)
        return S, I

    def _drop_tombstones(self, D: np.ndarray, I: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        dead = np.isin(I, np.fromiter(self.tombstones, dtype=np.int64)) | (I < 0)
        # Stable sort puts live hits first in their original order.
        order = np.argsort(dead, axis=1, kind="stable")[:, :k]
        D2, I2 = np.take_along_axis(D, order, 1), np.take_along_axis(I, order, 1)
        I2 = np.where(np.take_along_axis(dead, order, 1), -1, I2)
        return D2, I2

    def reconstruct(self, ids: np.ndarray) -> np.ndarray:
        """The stored rows of ``ids`` (RuntimeError where the index cannot give them back)."""
        ids = np.asarray(ids, dtype=np.int64)
        if self.kind == "binary":  # FAISS's binary id maps reconstruct one id at a time
            return np.stack([self.index.reconstruct(int(i)) for i in ids]) if len(ids) else \
                np.zeros((0, self.dim // 8), np.uint8)
        return self.index.reconstruct_batch(ids)

    # ------------------------------------------------------------------ persistence
    def to_bytes(self) -> bytes:
        if self.kind == "binary":
            return faiss.serialize_index_binary(self.index).tobytes()
        return faiss.serialize_index(self.index).tobytes()

    @classmethod
    def from_bytes(cls, kind: str, dim: int, spec: str, data: bytes,
                   live_ids: np.ndarray | None = None) -> "VectorIndex":
        """Load serialised bytes. ``live_ids`` (the ids the store holds) turns any extra ids
        in the file into tombstones."""
        obj = cls.__new__(cls)
        obj.kind, obj.dim, obj.spec = kind, int(dim), normalize_spec(kind, spec)
        buf = np.frombuffer(data, dtype=np.uint8)
        obj.index = faiss.deserialize_index_binary(buf) if kind == "binary" else faiss.deserialize_index(buf)
        _apply_params(kind, obj.index, *split_spec(obj.spec))
        obj.tombstones = set()
        if live_ids is not None:
            have = faiss.vector_to_array(obj.index.id_map).astype(np.int64)
            obj.tombstones = set(have[~np.isin(have, live_ids)].tolist())
        return obj
