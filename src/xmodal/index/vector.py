"""One FAISS index with stable ids: float vectors by inner product on normalised rows (cosine),
or packed binary codes by Hamming distance.

Every index is wrapped in ``IndexIDMap2``/``IndexBinaryIDMap2`` so the ids FAISS returns are
the collection's item ids. Indexes that cannot remove rows (HNSW, multi-hash) keep a tombstone
set: deleted ids are dropped from results (searching ``k + len(tombstones)`` keeps the answer
exact with respect to the underlying index) and the index is rebuilt once tombstones pile up.
Scores are always "higher is better": cosine for float, ``1 - 2 * hamming / bits`` for binary,
which is the cosine of the +-1 codes.

A spec is checked when its index is built: it must search by inner product (FAISS builds HNSW
over PQ codes for L2 whatever it is asked), keep vector lengths or end its transforms with
L2norm (so approximate scores are cosines, comparable with the flat index's), take vectors
after its first add (not NSG) and carry no IDMap of its own. An index that trains (IVF, PQ,
OPQ, PCA) is not trained on fewer than :func:`min_train_size` vectors (FAISS's 39 per k-means
centroid): it raises :class:`IndexSpecError` and the collection answers from the flat index
until it has enough; once trained it keeps its centroids as it grows (rebuilt from the store,
it is trained again on everything).
"""

from __future__ import annotations

import re
from typing import Iterable

import faiss

import numpy as np

_NOT_FOUND = -1


class IndexSpecError(ValueError):
    """A FAISS factory string that cannot build an index of this kind."""


class IndexFileError(RuntimeError):
    """Index bytes (a file) that do not load as the index the spec names: unreadable, of
    another kind, width or index type, or without the id map. A RuntimeError, like FAISS's
    own read errors, so a collection rebuilds such an index from its store."""


#: FAISS's k-means wants this many training vectors per centroid
#: (``ClusteringParameters.min_points_per_centroid``); with fewer it only prints "WARNING
#: clustering N points to K centroids: please provide at least ..." and trains anyway.
MIN_POINTS_PER_CENTROID = 39

#: Search parameters that FAISS reads as counts: a positive whole number each.
_COUNT_PARAMS = ("nprobe", "efSearch")


#: Search-time parameters applied unless the spec names them (FAISS's own defaults,
#: efSearch=16 and nprobe=1, trade away too much recall for k around 10).
DEFAULT_SEARCH_PARAMS = {"HNSW": "efSearch=64", "IVF": "nprobe=16"}


def split_spec(spec: str) -> tuple[str, str]:
    """``"HNSW32|efSearch=128"`` -> (``"HNSW32"``, ``"efSearch=128"``)."""
    base, _, params = spec.partition("|")
    return base.strip(), params.strip()


def _is_number(v: str) -> bool:
    try:
        float(v)
    except ValueError:
        return False
    return True


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
        k, v = k.strip(), v.strip()
        # nprobe=0 failed inside FAISS on every search, efSearch=0 answered one hit of k,
        # and 2.5 was cut to 2 without a word
        if k in _COUNT_PARAMS and _is_number(v) and not (v.isdigit() and int(v) >= 1):
            raise IndexSpecError(f"index {base!r}: search parameter {k}={v!r}: expected a positive whole number")
        wanted[k] = v
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
        quantizer = (faiss.downcast_IndexBinary(inner.quantizer)
                     if isinstance(inner, faiss.IndexBinaryIVF) else None)
        if k == "efSearch" and hasattr(inner, "hnsw"):
            inner.hnsw.efSearch = int(v)
        elif k == "efSearch" and hasattr(quantizer, "hnsw"):  # BIVF1024_HNSW32: its coarse search
            quantizer.hnsw.efSearch = int(v)
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
        raise IndexSpecError(f"index {spec!r} is binary but this collection's space is real-valued: "
                             f"give a real-valued spec ({', '.join(dict.fromkeys([spec[1:] or 'Flat', 'Flat', 'HNSW32']))}, "
                             f"IVF256,Flat, ...), "
                             f"or a hashing (binary) method for B- specs")
    return spec  # any other bad spec: FAISS's own parse error when the index is built


def _is_binary_spec(spec: str) -> bool:
    """Whether FAISS's binary index factory parses ``spec`` (probed at 256 bits): a name that
    merely starts with "B" (a typo) is no binary index, and gets FAISS's own error instead."""
    try:
        faiss.index_binary_factory(256, spec)
    except RuntimeError:
        return False
    return True


def _faiss_message(exc: BaseException) -> str:
    """FAISS's message without its C++ location ("Error in <signature> at <file>:<line>: ")."""
    first = str(exc).strip().splitlines()[-1] if str(exc).strip() else str(exc)
    return re.sub(r"^Error in .* at \S+:\d+: (Error: )?", "", first)


_METRICS = {faiss.METRIC_INNER_PRODUCT: "inner product", faiss.METRIC_L2: "L2 distance"}


def _make(kind: str, dim: int, spec: str):
    try:
        if kind == "binary":
            if dim % 8:
                raise IndexSpecError(f"binary codes need a multiple of 8 bits, got {dim}")
            return faiss.IndexBinaryIDMap2(faiss.index_binary_factory(dim, spec))
        inner = faiss.index_factory(dim, spec, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        why = _faiss_message(exc)
        if "could not parse" in why and spec != spec.upper() and any(c.islower() for c in spec):
            why += " (FAISS factory strings are case-sensitive: Flat, HNSW32, IVF256,Flat, PCA64,L2norm,HNSW32)"
        raise IndexSpecError(f"cannot build FAISS index {spec!r} for {kind} vectors of dim {dim}: {why}") from None
    if isinstance(inner, faiss.IndexIDMap):  # IndexIDMap2 derives from it
        # the first add failed inside FAISS ("add does not work with IndexIDMap")
        raise IndexSpecError(f"index {spec!r}: leave IDMap out; xmodal keeps every index in its "
                             f"own IDMap2 (the item ids)")
    if isinstance(faiss.downcast_index(inner), faiss.IndexNSG):
        # its graph is built once, on the first add: the second failed inside FAISS
        raise IndexSpecError(f"index {spec!r}: FAISS's NSG graph takes no vectors after it is built, "
                             f"and a collection adds items as they come; use HNSW (e.g. HNSW32)")
    wide = _widening_pca(inner)
    if wide is not None:
        # FAISS builds it and then fails every training: the approximate index never exists
        raise IndexSpecError(f"cannot build FAISS index {spec!r} for {kind} vectors of dim {dim}: its "
                             f"PCA cannot output {wide[0]} dimensions from {wide[1]}; give PCA{wide[1]} or fewer "
                             f"(or leave the PCA out)")
    if inner.metric_type != faiss.METRIC_INNER_PRODUCT:
        # FAISS builds some indexes (HNSW over PQ codes) for L2 whatever metric is asked for:
        # their distances (lower is better) would be sorted and merged as cosines
        metric = _METRICS.get(inner.metric_type, f"metric {inner.metric_type}")
        raise IndexSpecError(f"index {spec!r}: FAISS builds it to search by {metric}, not by the "
                             f"inner product of unit vectors (cosine) that xmodal's scores are; "
                             f"choose another spec (HNSW32, IVF1024,Flat, IVF1024,PQ16, HNSW32,SQ8, ...)")
    shortening = _unnormalised_transform(inner)
    if shortening:
        raise IndexSpecError(f"index {spec!r}: its {shortening} changes the vectors' lengths, so its "
                             f"inner products are no cosines on the flat index's scale (which the exact "
                             f"fallback, re-ranking and shard merges compare them with); add L2norm "
                             f"after it (e.g. 'PCA64,L2norm,HNSW32')")
    return faiss.IndexIDMap2(inner)


def _widening_pca(index) -> tuple[int, int] | None:
    """(output, input) widths of a PCA in ``index``'s chain that asks for more dimensions than it
    is given (it can never be trained); None where there is none."""
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexPreTransform):
        for j in range(index.chain.size()):
            t = faiss.downcast_VectorTransform(index.chain.at(j))
            if isinstance(t, faiss.PCAMatrix) and int(t.d_out) > int(t.d_in):
                return int(t.d_out), int(t.d_in)
    return None


def _unnormalised_transform(index) -> str | None:
    """The name of a transform in ``index``'s chain that centres (PCA) or drops dimensions
    (PCA, OPQ, RR to fewer dims) with no L2norm after it: None where there is none."""
    index = faiss.downcast_index(index)
    if not isinstance(index, faiss.IndexPreTransform):
        return None
    last = None
    for j in range(index.chain.size()):
        t = faiss.downcast_VectorTransform(index.chain.at(j))
        if isinstance(t, faiss.NormalizationTransform):
            last = None
        elif isinstance(t, faiss.PCAMatrix) or int(t.d_out) < int(t.d_in):
            last = f"{type(t).__name__} ({t.d_in} -> {t.d_out})"
    return last


def min_train_size(index: faiss.Index | faiss.IndexBinary) -> int:
    """The fewest vectors ``index`` (a FAISS index, float or binary, id map or not) is to be
    trained on: ``MIN_POINTS_PER_CENTROID`` per centroid of each k-means FAISS runs in its
    training (IVF lists, PQ codebooks, OPQ's PQ), the input width for a PCA; 0 where it
    needs no training."""
    if isinstance(index, faiss.IndexBinary):
        index = faiss.downcast_IndexBinary(index)
        if isinstance(index, faiss.IndexBinaryIDMap):
            return min_train_size(index.index)
        if isinstance(index, faiss.IndexBinaryIVF):
            return MIN_POINTS_PER_CENTROID * int(index.nlist)
        return 0
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexIDMap):
        return min_train_size(index.index)
    if isinstance(index, faiss.IndexPreTransform):
        need = min_train_size(index.index)
        for j in range(index.chain.size()):
            t = faiss.downcast_VectorTransform(index.chain.at(j))
            if isinstance(t, faiss.OPQMatrix):
                need = max(need, MIN_POINTS_PER_CENTROID * 2 ** int(getattr(t, "nbits", 8)))
            elif isinstance(t, faiss.PCAMatrix):  # fewer rows than columns: a rank-deficient PCA
                need = max(need, int(t.d_in))
        return need
    if isinstance(index, faiss.IndexRefine):
        return min_train_size(index.base_index)
    if isinstance(index, faiss.IndexHNSW):
        return min_train_size(index.storage)
    need = 0
    if isinstance(index, faiss.IndexIVF):
        need = MIN_POINTS_PER_CENTROID * int(index.nlist)
    pq = getattr(index, "pq", None)
    if isinstance(pq, faiss.ProductQuantizer):
        need = max(need, MIN_POINTS_PER_CENTROID * int(pq.ksub))
    return need


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
        if v.dtype != np.uint8:
            _check_bytes(v)
        return np.ascontiguousarray(v, dtype=np.uint8)
    with np.errstate(over="ignore"):  # an overflow is refused just below, naming its row
        v = np.array(v, dtype=np.float32, copy=True, order="C")
    finite = np.isfinite(v)
    if not finite.all():  # also a float64 beyond float32's range, inf once cast
        r = int(np.flatnonzero(~finite.all(axis=1))[0])
        raise ValueError(f"vectors hold NaN or inf: row {r} (0-based) of {len(v)}")
    faiss.normalize_L2(v)
    return v


def _check_bytes(v: np.ndarray) -> None:
    """Binary codes given in another dtype than uint8 must be packed bytes (whole numbers
    0..255): a cast would wrap 300 to 44 and cut 0.5 to 0, another code without a word."""
    if v.dtype == bool:
        raise ValueError("binary codes are packed bytes (uint8, 8 bits each), got booleans: "
                         "pack the bits first (np.packbits(bits, axis=1))")
    if v.dtype.kind not in "iuf":
        raise ValueError(f"binary codes are packed bytes (uint8), got dtype {v.dtype}")
    bad = ~((v >= 0) & (v <= 255) & (v == np.floor(v))) if v.dtype.kind == "f" else (v < 0) | (v > 255)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise ValueError(f"binary codes are packed bytes, whole numbers 0..255; row {r} has "
                         f"{v[r, c]!r} in byte {c}")


def _check_ids(ids) -> np.ndarray:
    """Item ids as int64: whole, not negative (-1 is FAISS's "no hit": such an item could
    never be found) and each once (twice: the same item twice in every answer)."""
    raw = np.asarray(ids)
    if raw.ndim != 1:
        raw = raw.reshape(-1)
    if raw.dtype.kind == "f" and not np.array_equal(raw, np.floor(raw)):
        bad = raw[raw != np.floor(raw)][0]
        raise ValueError(f"item ids must be whole numbers, got {bad!r}")
    if raw.dtype.kind not in "iuf" and len(raw):
        raise ValueError(f"item ids must be whole numbers, got dtype {raw.dtype}")
    out = raw.astype(np.int64)
    if len(out) and out.min() < 0:
        raise ValueError(f"item ids must be >= 0 (FAISS answers -1 for 'no hit'), got {int(out.min())}")
    if len(out) > 1:
        srt = np.sort(out)
        dup = srt[1:][srt[1:] == srt[:-1]]
        if len(dup):
            raise ValueError(f"item id {int(dup[0])} given twice in one add")
    return out


def _check_loaded(index, kind: str, dim: int, base: str) -> None:
    """Loaded bytes hold what the spec makes: the id map, the width and the index type (a
    file of another width asserted on the first search, of another type broke opening)."""
    idmap = faiss.IndexBinaryIDMap2 if kind == "binary" else faiss.IndexIDMap2
    if not isinstance(index, idmap):
        raise IndexFileError(f"index bytes hold a {type(index).__name__}, not the {idmap.__name__} "
                             f"of item ids xmodal writes")
    if int(index.d) != dim:
        raise IndexFileError(f"index bytes of {kind} vectors of dim {index.d}, expected {dim}")
    down = faiss.downcast_IndexBinary if kind == "binary" else faiss.downcast_index
    # the spec's empty index through the same write and read: FAISS reads a "Flat" back as
    # an IndexFlatIP, so types compare as files hold them
    want = _make(kind, dim, base)
    want = (faiss.deserialize_index_binary(faiss.serialize_index_binary(want)) if kind == "binary"
            else faiss.deserialize_index(faiss.serialize_index(want)))
    have_type, want_type = type(down(index.index)).__name__, type(down(want.index)).__name__
    if have_type != want_type or (kind == "real" and index.metric_type != want.metric_type):
        raise IndexFileError(f"index bytes hold a {have_type}, but index {base!r} is a {want_type}")
    ivf = _inner_ivf(kind, index)
    if ivf is not None and ivf.ntotal:
        lists = ivf.invlists
        numbers = np.concatenate([faiss.rev_swig_ptr(lists.get_ids(i), lists.list_size(i)).copy()
                                  for i in range(ivf.nlist) if lists.list_size(i)])
        if len(numbers) != index.ntotal or not np.array_equal(np.sort(numbers), np.arange(index.ntotal)):
            # written after a removal by an xmodal that removed from IVFs: hits would carry
            # other items' ids (the collection rebuilds it from its stored vectors)
            raise IndexFileError(f"index bytes hold an IVF whose lists are out of step with its id "
                                 f"map ({len(numbers)} entries numbered up to {int(numbers.max())}, "
                                 f"{index.ntotal} ids)")


def _inner_ivf(kind: str, index):
    """The IVF inside an id-mapped index (float, also behind a transform, or binary), else None."""
    if kind == "binary":
        inner = faiss.downcast_IndexBinary(index.index)
        return inner if isinstance(inner, faiss.IndexBinaryIVF) else None
    return faiss.try_extract_index_ivf(index.index)


#: Widths :func:`check_spec` tries for a space whose width is not known yet (a method still
#: to be fitted, its n_components chosen by cross-validation): 64 first, then others.
_PROBE_DIMS = (64, 128, 256, 512, 1024, 32, 16, 8, 96, 192, 384, 768)


def check_spec(kind: str, spec: str, dim: int | None = None) -> str:
    """Refuse (:class:`IndexSpecError`) an index spec that cannot make a ``kind`` index of
    ``dim``; its normalised form otherwise. ``dim`` None (the width is not known yet): a
    spec that builds at one of a few usual widths passes (``PQ48`` needs a multiple of 48,
    ``PCA128`` at least 128), the width itself is checked once known; anything else
    (a parse error, the metric, a search parameter) is refused as at 64."""
    if dim is not None:
        return VectorIndex(kind, dim, spec).spec
    first: IndexSpecError | None = None
    for d in _PROBE_DIMS:
        try:
            return VectorIndex(kind, d, spec).spec
        except IndexSpecError as exc:
            first = first or exc
    assert first is not None
    # the message is the one at the first probe width, which is no width of the user's
    # vectors (they are not fitted yet): said without it
    d = _PROBE_DIMS[0]
    raise IndexSpecError(str(first).replace(f" vectors of dim {d}:", " vectors:")
                         .replace(f" ({d} -> ", " (to ")) from None


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
    def min_train_size(self) -> int:
        """The fewest vectors this index trains on (:func:`min_train_size`; 0: no training)."""
        return min_train_size(self.index)

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
        need = self.min_train_size
        if len(x) < need:
            # FAISS trains IVF/PQ on fewer with a printed warning, and the index keeps those
            # centroids for good; the exact flat index answers meanwhile (Collection)
            raise IndexSpecError(f"cannot train FAISS index {self.spec!r} on {len(x)} vectors: it needs "
                                 f"at least {need} ({MIN_POINTS_PER_CENTROID} per k-means centroid, "
                                 f"FAISS's minimum)")
        try:
            self.index.train(x)
        except RuntimeError as exc:
            raise IndexSpecError(f"cannot train FAISS index {self.spec!r} on {len(x)} vectors: "
                                 f"{_faiss_message(exc)}") from None

    def add(self, ids: Iterable[int] | np.ndarray, vectors: np.ndarray, prepared: bool = False) -> None:
        ids = _check_ids(ids)
        x = vectors if prepared else prepare(self.kind, vectors, self.dim)
        if len(ids) != len(x):
            raise ValueError(f"{len(ids)} ids for {len(x)} vectors")
        if not len(ids):
            return
        if not self.is_trained:
            self.train(x)
        self.index.add_with_ids(x, ids)

    def remove(self, ids: Iterable[int] | np.ndarray) -> None:
        raw = np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids).reshape(-1)
        if raw.dtype.kind == "f" and not np.array_equal(raw, np.floor(raw)):
            # a cast to int64 cut 1.5 to 1 and removed another item
            raise ValueError(f"item ids must be whole numbers, got {raw[raw != np.floor(raw)][0]!r}")
        ids = raw.astype(np.int64)
        if not len(ids):
            return
        if _inner_ivf(self.kind, self.index) is None:
            try:
                self.index.remove_ids(ids)
                return
            except RuntimeError:  # HNSW, multi-hash: no removal, keep tombstones
                pass
        # An IVF is kept whole too: the id map renumbers its entries on removal, the IVF's
        # lists keep their numbers, and every later hit would carry another item's id.
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
        the answer to those ids (flat indexes only: they take a FAISS id selector).

        Equal float scores (a duplicated image or caption) come in id order, and which of a tie
        make the top ``k`` does not depend on ``k``: the answer for ``k`` is the first ``k`` of
        the answer for any larger ``k`` (FAISS's heap orders such ties by ``k``). Binary
        indexes already answer ties in stored order whatever ``k``."""
        q = queries if prepared else prepare(self.kind, queries, self.dim)
        k = int(k)
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        n = int(self.index.ntotal)
        sel = None
        if allowed is not None:
            if not self.is_flat:
                raise ValueError("filtered search needs the flat index")
            allowed = np.asarray(allowed, dtype=np.int64)
            if self.tombstones:
                allowed = allowed[~np.isin(allowed, np.fromiter(self.tombstones, dtype=np.int64))]
            if not len(allowed):
                n = 0
            sel = faiss.IDSelectorBatch(allowed)
        if n == 0:
            return (np.full((len(q), k), -np.inf, np.float32), np.full((len(q), k), -1, np.int64))
        if self.kind == "real":
            S, I = self._ordered_ties(q, k, sel, n)
        else:
            S, I = self._fetch(q, k, sel, n)
        if S.shape[1] < k:  # pad to k columns so callers see a fixed shape
            pad = k - S.shape[1]
            S = np.hstack([S, np.full((len(S), pad), -np.inf, np.float32)])
            I = np.hstack([I, np.full((len(I), pad), -1, np.int64)])
        S = np.where(I < 0, -np.inf, S).astype(np.float32)
        return S, I

    def _fetch(self, q: np.ndarray, k: int, sel, n: int) -> tuple[np.ndarray, np.ndarray]:
        """FAISS's top ``k`` (at most ``n`` columns) as scores and ids, deleted items left out."""
        if sel is not None:
            D, I = self.index.search(q, min(k, n), params=faiss.SearchParameters(sel=sel))
        elif self.tombstones:
            D, I = self.index.search(q, min(k + len(self.tombstones), n))
            D, I = self._drop_tombstones(D, I, k)
        else:
            D, I = self.index.search(q, min(k, n))
        return self._scores(D), I

    def _ordered_ties(self, q: np.ndarray, k: int, sel, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The top ``k`` with equal scores in id order, the whole tie at the k-th place looked at."""
        S, I = self._fetch(q, k + 1, sel, n)
        if S.shape[1] > k:
            # a row whose (k+1)-th hit ties its k-th: the tie may run deeper than fetched
            for r in np.flatnonzero((I[:, k] >= 0) & (S[:, k] == S[:, k - 1])):
                width = k + 1
                while True:
                    width = min(2 * width, n)
                    Sr, Ir = self._fetch(q[r:r + 1], width, sel, n)
                    last = Sr.shape[1] - 1
                    if width >= n or Ir[0, last] < 0 or Sr[0, last] != S[r, k - 1]:
                        break
                order = np.lexsort((np.where(Ir[0] < 0, np.iinfo(np.int64).max, Ir[0]), -Sr[0]))[:k + 1]
                S[r], I[r] = Sr[0, order], Ir[0, order]
        valid = I >= 0
        order = np.lexsort((np.where(valid, I, np.iinfo(np.int64).max), np.where(valid, -S, np.inf)), axis=1)
        return np.take_along_axis(S, order, 1)[:, :k], np.take_along_axis(I, order, 1)[:, :k]

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
        base, params = split_spec(obj.spec)
        buf = np.frombuffer(data, dtype=np.uint8)
        try:
            obj.index = faiss.deserialize_index_binary(buf) if kind == "binary" else faiss.deserialize_index(buf)
        except RuntimeError as exc:
            raise IndexFileError(f"index bytes do not load as a {kind} FAISS index: {_faiss_message(exc)}") from None
        _check_loaded(obj.index, kind, obj.dim, base)
        _apply_params(kind, obj.index, base, params)
        obj.tombstones = set()
        if live_ids is not None:
            have = faiss.vector_to_array(obj.index.id_map).astype(np.int64)
            obj.tombstones = set(have[~np.isin(have, live_ids)].tolist())
        return obj
