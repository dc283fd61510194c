"""The encoder interface: a spec string names an encoder; ``encode`` turns image paths or texts
into a float32 matrix, reusing an on-disk cache keyed by (spec, version, fitted state, content)."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from ..device import thread_budget
from .cache import FeatureCache, content_hash, resolve_cache_dir, safe_name

log = logging.getLogger("xmodal.encoders")

FORMAT = "xmodal-encoder/1"


class EncoderError(ValueError):
    """Bad encoder spec, unfitted encoder or unusable saved state."""


def checked_cache_dir(cache_dir: str | os.PathLike | bool | None) -> Path | None:
    """The feature cache folder ``cache_dir`` means (:func:`resolve_cache_dir`), refused with an
    :class:`EncoderError` naming it when it is a file or sits under one (it could never be
    made; ``mkdir`` would say only "Not a directory")."""
    from .._fs import blocking_file

    root = resolve_cache_dir(cache_dir)
    if root is None:
        return None
    if root.exists() and not root.is_dir():
        raise EncoderError(f"{root}: is a file, not a folder; it cannot be the feature cache "
                           "(give a folder: --cache-dir, $XMODAL_CACHE, or cache_dir=False)")
    above = blocking_file(root)
    if above is not None:
        raise EncoderError(f"{root}: cannot be the feature cache: {above} is a file, not a "
                           "folder (give a folder: --cache-dir, $XMODAL_CACHE, or cache_dir=False)")
    return root


@dataclass
class EncodeReport:
    """What one ``encode`` call did."""

    n_items: int = 0
    n_cached: int = 0     # rows served from the cache
    n_computed: int = 0   # distinct items run through the model
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (item, reason)

    @property
    def n_skipped(self) -> int:
        return len(self.skipped)


def show_progress(progress: bool | None) -> bool:
    """``None`` means: only when stderr is a terminal."""
    if progress is None:
        return bool(getattr(sys.stderr, "isatty", lambda: False)())
    return bool(progress)


def progress_bar(total: int, desc: str, progress: bool | None) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="item", disable=not show_progress(progress),
                dynamic_ncols=True, leave=False)


def cpu_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


@contextlib.contextmanager
def blas_limits() -> Iterator[None]:
    """BLAS threads capped at :func:`thread_budget` for a block (NumPy / scikit-learn work of
    the encoders: SIFT word assignment, LDA, k-means); no change when it is unset."""
    budget = thread_budget()
    if budget is None:
        yield
        return
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=budget, user_api="blas"):
        yield


class Encoder:
    """Base class. Subclasses set ``modality``, ``version``, ``needs_fit``, implement ``dim`` and
    ``_compute`` (and ``_fit``/``_get_state``/``_set_state`` when fitted)."""

    modality: str = ""
    version: str = "1"
    needs_fit: bool = False
    default_batch_size: int = 64

    def __init__(self, spec: str) -> None:
        self.spec = spec
        self.report_ = EncodeReport()
        self.n_computed_total_ = 0  # items run through the model over this object's life

    # ------------------------------------------------------------------ state
    @property
    def dim(self) -> int:
        raise NotImplementedError

    @property
    def is_fitted(self) -> bool:
        return True

    def fit(self, items: Sequence[str], progress: bool | None = None) -> "Encoder":
        """Learn the encoder's state from ``items`` (no-op for pretrained encoders)."""
        check_items(self.spec, items, "fit")
        if self.needs_fit:
            items = check_paths(self.spec, items, "fit") if self.modality == "image" else list(items)
            if not items:
                raise EncoderError(f"{self.spec}: fit needs at least one item")
            with blas_limits():
                self._fit(items, progress)
        return self

    def _fit(self, items: list[str], progress: bool | None) -> None:
        raise NotImplementedError

    def _get_state(self) -> tuple[dict, dict[str, np.ndarray]]:
        """(JSON-able metadata, named arrays) describing the fitted state."""
        return {}, {}

    def _set_state(self, meta: dict, arrays: dict[str, np.ndarray]) -> None:
        pass

    def state_hash(self) -> str:
        """Hash of the fitted state ('' for pretrained encoders)."""
        if not self.needs_fit:
            return ""
        self._check_fitted()
        meta, arrays = self._get_state()
        h = hashlib.sha256(json.dumps(meta, sort_keys=True).encode())
        for name in sorted(arrays):
            a = np.ascontiguousarray(arrays[name])
            h.update(f"{name}:{a.dtype.str}:{a.shape}".encode())
            h.update(a.tobytes())
        return h.hexdigest()

    def cache_key(self) -> str:
        return hashlib.sha256(f"{self.spec}\0{self.version}\0{self.state_hash()}".encode()).hexdigest()

    def _check_fitted(self) -> None:
        if not self.is_fitted:
            raise EncoderError(f"encoder {self.spec!r} is not fitted: call fit(items) or load a saved one")

    # ------------------------------------------------------------- save/load
    def save(self, path: str | os.PathLike) -> Path:
        """Write spec + fitted state to a zip (JSON + .npy members, no pickle)."""
        self._check_fitted()
        meta, arrays = self._get_state()
        doc = {"format": FORMAT, "spec": self.spec, "version": self.version,
               "modality": self.modality, "dim": self.dim, "state": meta,
               "arrays": sorted(arrays)}
        path = Path(path)
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("encoder.json", json.dumps(doc, indent=1))
            for name, arr in arrays.items():
                b = io.BytesIO()
                np.save(b, np.asarray(arr), allow_pickle=False)
                zf.writestr(f"{name}.npy", b.getvalue())
        from .._fs import atomic_write_bytes, blocking_file

        # said with the path given: the rename's own error named a temporary file
        if path.is_dir():
            raise EncoderError(f"{path}: is a folder; give the file to write (e.g. "
                               f"{path / (safe_name(self.spec) + '.zip')})")
        above = blocking_file(path)
        if above is not None:
            raise EncoderError(f"{path}: cannot be written: {above} is not a folder")
        try:
            atomic_write_bytes(path, buf.getvalue())
        except OSError as exc:  # a missing or read-only folder, a full disk
            raise EncoderError(f"{path}: cannot write it ({exc.strerror or exc})") from None
        return path

    @staticmethod
    def load(path: str | os.PathLike) -> "Encoder":
        """Read an encoder written by :meth:`save`."""
        from .registry import get_encoder

        path = Path(path)
        try:
            with zipfile.ZipFile(path) as zf:
                names = set(zf.namelist())
                if "encoder.json" not in names:  # another zip, maybe another xmodal file
                    raise EncoderError(f"{path}: not an encoder file (written by "
                                       f"Encoder.save); {_what_zip(names)}")
                doc = json.loads(zf.read("encoder.json"))
                if not isinstance(doc, dict) or doc.get("format") != FORMAT:
                    raise EncoderError(f"{path}: not an xmodal encoder file (format "
                                       f"{doc.get('format') if isinstance(doc, dict) else None!r})")
                arrays = {}
                for name in doc.get("arrays", []):
                    try:
                        arrays[name] = np.load(io.BytesIO(zf.read(f"{name}.npy")), allow_pickle=False)
                    except (ValueError, EOFError) as exc:  # a damaged .npy member
                        raise EncoderError(f"{path}: member {name}.npy is not a readable array "
                                           f"({exc})") from exc
        except (zipfile.BadZipFile, KeyError, json.JSONDecodeError, OSError, TypeError) as exc:
            raise EncoderError(f"{path}: cannot read encoder file ({exc})") from exc
        if not isinstance(doc.get("spec"), str):
            raise EncoderError(f"{path}: encoder.json has no field 'spec' (the encoder's name)")
        try:
            enc = get_encoder(doc["spec"])
            if doc.get("version") != enc.version:
                raise EncoderError(f"saved with {doc['spec']} version {doc.get('version')}, "
                                   f"this build has version {enc.version}")
            if enc.needs_fit:
                try:
                    enc._set_state(doc.get("state", {}), arrays)
                except KeyError as exc:  # a state written by hand or cut short
                    raise EncoderError(f"the fitted state of {doc['spec']} has no field {exc}") from None
                except (TypeError, ValueError, AttributeError) as exc:  # a field of the wrong kind
                    if isinstance(exc, EncoderError):
                        raise
                    raise EncoderError(f"the fitted state of {doc['spec']} is malformed "
                                       f"({type(exc).__name__}: {exc})") from None
            if enc.dim != doc.get("dim"):
                raise EncoderError(f"field dim is {doc.get('dim')}, loaded encoder has {enc.dim}")
        except EncoderError as exc:
            # the spec's and the parts' own errors say what is wrong; this says where
            msg = str(exc)
            raise EncoderError(msg if msg.startswith(f"{path}: ") else f"{path}: {msg}") from None
        return enc

    # ---------------------------------------------------------------- encode
    def _item_key(self, item: str) -> str:
        """Content hash of one input (text bytes; subclasses hash file contents)."""
        return content_hash(item.encode("utf-8"))

    def _compute(self, items: list[str], batch_size: int, progress) -> Iterator[
            tuple[list[int], np.ndarray, list[tuple[int, str]]]]:
        """Yield (positions into ``items``, features (len(positions), dim), [(position, reason)])
        batch by batch, so each batch can be cached as soon as it is done."""
        raise NotImplementedError

    def encode(self, items: Sequence[str], batch_size: int | None = None,
               progress: bool | None = None, cache_dir: str | os.PathLike | bool | None = None,
               return_mask: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Features for ``items`` (image paths or texts) as float32 (n, dim).

        ``cache_dir``: ``None`` -> ``$XMODAL_CACHE`` or ``~/.cache/xmodal``; ``False`` -> no cache.
        Items that cannot be read (images that fail to decode) get a zero row, a warning, and
        ``False`` in the mask returned with ``return_mask=True``. ``batch_size``: a positive
        integer, or None for the encoder's default.
        """
        # checked first: 0 read as "the default" and a negative size gave no batches at all
        batch_size = check_batch_size(self.spec, batch_size)
        check_items(self.spec, items)
        self._check_fitted()
        items = check_paths(self.spec, items) if self.modality == "image" else [str(x) for x in items]
        n, dim = len(items), self.dim
        out = np.zeros((n, dim), dtype=np.float32)
        ok = np.zeros(n, dtype=bool)
        report = EncodeReport(n_items=n)
        self.report_ = report
        # Content keys; an unreadable file fails here already.
        keys: list[str | None] = []
        for i, item in enumerate(items):
            try:
                keys.append(self._item_key(item))
            except OSError as exc:
                keys.append(None)
                self._skip(report, item, f"cannot read file ({exc.strerror or exc})")
        cache = self._open_cache(cache_dir)
        positions: dict[str, list[int]] = {}
        for i, k in enumerate(keys):
            if k is not None:
                positions.setdefault(k, []).append(i)
        hit = [k for k in positions if cache is not None and k in cache]
        todo_keys = [k for k in positions if cache is None or k not in cache]
        if hit:
            feats, found = cache.lookup(hit)
            for k, f, got in zip(hit, feats, found):
                if not got:  # its shard has gone or broken since it was indexed
                    todo_keys.append(k)
                    continue
                idx = positions[k]
                out[idx] = f
                ok[idx] = True
                report.n_cached += len(idx)
        if todo_keys:
            todo_items = [items[positions[k][0]] for k in todo_keys]
            bs = batch_size or self.default_batch_size  # None: the default
            bar = progress_bar(len(todo_items), f"encode {self.spec}", progress)
            batches = self._compute(todo_items, bs, bar)
            with blas_limits():  # $XMODAL_THREADS, for NumPy / scikit-learn work
                try:
                    for pos, feats, failures in batches:
                        feats = np.asarray(feats, dtype=np.float32).reshape(len(pos), dim)
                        if not np.isfinite(feats).all():
                            bad = [p for p, r in zip(pos, np.isfinite(feats).all(axis=1)) if not r]
                            raise EncoderError(f"{self.spec}: non-finite features for {todo_items[bad[0]]}")
                        done_keys = [todo_keys[p] for p in pos]
                        if cache is not None:
                            cache.put_many(done_keys, feats)
                        for k, f in zip(done_keys, feats):
                            idx = positions[k]
                            out[idx] = f
                            ok[idx] = True
                        report.n_computed += len(pos)
                        self.n_computed_total_ += len(pos)
                        for p, reason in failures:
                            for i in positions[todo_keys[p]]:
                                self._skip(report, items[i], reason)
                        bar.update(len(pos) + len(failures))
                finally:
                    batches.close()  # shuts decode workers down at once on an interruption
                    bar.close()
        if report.skipped:
            log.warning("%s: skipped %d of %d items that could not be read", self.spec,
                        report.n_skipped, n)
        return (out, ok) if return_mask else out

    def _open_cache(self, cache_dir) -> FeatureCache | None:
        """The cache for this encoder state; kept between calls, so repeated small encodes
        (search queries) only index shards that are new since the last call."""
        root = resolve_cache_dir(cache_dir)
        if root is None:
            return None
        key = self.cache_key()
        held = getattr(self, "_cache", None)
        if held is not None and held[0] == (str(root), key):
            held[1].refresh()
            return held[1]
        root = checked_cache_dir(root)
        try:
            cache = FeatureCache.for_encoder(root, self.spec, key, self.dim,
                                             {"spec": self.spec, "version": self.version,
                                              "dim": self.dim, "state_hash": self.state_hash()})
        except OSError as exc:  # read-only, disk full: said once, naming the folder
            raise EncoderError(f"{root}: cannot use it as the feature cache "
                               f"({exc.strerror or exc}); give another cache folder "
                               "(--cache-dir, $XMODAL_CACHE) or cache_dir=False") from exc
        self._cache = ((str(root), key), cache)
        return cache

    @staticmethod
    def _skip(report: EncodeReport, item: str, reason: str) -> None:
        report.skipped.append((item, reason))
        log.warning("skipping %s: %s", item, reason)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec!r}, dim={self.dim if self.is_fitted else '?'})"


def chunks(seq: Sequence, size: int) -> Iterator[list[int]]:
    for start in range(0, len(seq), size):
        yield list(range(start, min(start + size, len(seq))))


def _what_zip(names: set[str]) -> str:
    """What a zip that is not an encoder file is, said for :meth:`Encoder.load`."""
    if "xmodal_meta.npy" in names:
        return ("it is a feature file of xmodal encode: read it with xmodal.data.load_dataset; "
                "its encoders are recorded in ds.meta['encoding']")
    if "meta.json" in names:
        return "it looks like a method file: read it with xmodal.methods.load"
    return "there is no encoder.json in it"


def check_items(spec: str, items: object, call: str = "encode") -> None:
    """Refuse one item given where a list of them is wanted: a ``str`` (or a path, bytes) is
    itself iterable, and was read character by character (``encode("a.jpg")``: five files
    named ``a``, ``.``, ``j``, ... all skipped; ``minilm.encode("a sentence")``: one row per
    character)."""
    if isinstance(items, (str, bytes, os.PathLike)):
        raise EncoderError(f"{spec}: {call} takes a list of items, got a single "
                           f"{type(items).__name__} {str(items)[:60]!r}; write "
                           f"{call}([{str(items)[:60]!r}])")


def check_paths(spec: str, items: Sequence, call: str = "encode") -> list[str]:
    """``items`` (image files) as a list of ``str``; an item that is no path (``None`` or NaN
    from a pandas column with gaps, a number) is an :class:`EncoderError` naming its position.
    ``str()`` made it a file named "None" or "nan", skipped as missing with a zero row."""
    check_items(spec, items, call)
    items = list(items)
    for i, x in enumerate(items):
        if not isinstance(x, (str, os.PathLike)):
            raise EncoderError(f"{spec}: image {i} is {str(x)[:40]} ({type(x).__name__}), not a file "
                               "path; a missing value? drop or fill such rows first")
    return [os.fspath(x) if isinstance(x, os.PathLike) else x for x in items]


def check_texts(spec: str, items: Sequence, what: str = "text") -> list[str]:
    """``items`` as a list of ``str``; anything else (``None`` or NaN from a pandas column with
    gaps, bytes, numbers) is an :class:`EncoderError` naming its position. ``str()`` would turn
    a missing caption into the words "None" or "nan" and encode them as if they were text."""
    check_items(spec, items, "fit" if what.startswith("fit") else "encode")
    items = list(items)
    for i, x in enumerate(items):
        if not isinstance(x, str):
            raise _not_text(spec, f"{what} {i}", x)
        if not x.isascii():
            try:
                x.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise _not_utf8(spec, f"{what} {i}", exc) from None
    return items


def _not_utf8(spec: str, what: str, exc: UnicodeEncodeError) -> EncoderError:
    """A str holding lone surrogates: bytes that were not UTF-8, kept by
    ``errors="surrogateescape"`` (Python's stdin, argv and file names under a C locale); they
    went into a fitted vocabulary as they were, and encoding failed on a bare
    UnicodeEncodeError."""
    byte = ord(exc.object[exc.start]) - 0xDC00
    shown = f" (byte 0x{byte:02x})" if 0x80 <= byte <= 0xFF else ""
    return EncoderError(f"{spec}: {what} is not UTF-8: {exc.object[:60]!r} has an undecodable "
                        f"character at position {exc.start}{shown}; read the file with its real "
                        "encoding (e.g. open(path, encoding='latin-1')) or convert it to UTF-8")


def check_batch_size(spec: str, batch_size: object) -> int | None:
    """``batch_size`` if None or a positive integer, else an :class:`EncoderError` (a negative
    one gave no batches at all: zero rows marked unreadable, without a word)."""
    if batch_size is None:
        return None
    if isinstance(batch_size, (bool, np.bool_)) or not isinstance(batch_size, (int, np.integer)) \
            or batch_size < 1:
        raise EncoderError(f"{spec}: batch_size must be a positive integer, got {batch_size!r}")
    return int(batch_size)


def _not_text(spec: str, what: str, x: object) -> EncoderError:
    if isinstance(x, (bytes, bytearray, np.bytes_)):  # not a gap to fill: text still to decode
        advice = "decode such texts first (x.decode('utf-8'), or the file's real encoding)"
    else:
        advice = "a missing value? drop or fill such rows first (pandas: df[column].fillna(''))"
    return EncoderError(f"{spec}: {what} is {str(x)[:40]} ({type(x).__name__}), not a string; {advice}")
