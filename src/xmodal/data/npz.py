"""The ``.npz`` feature file ``xmodal encode`` writes, and reading it back as a dataset.

Encoding is the slow step of a benchmark; its output is meant to be benched many times, or
on another machine (encode on a GPU, bench elsewhere): ``load_dataset("features.npz")``.

Arrays (plain NumPy, read with ``allow_pickle=False``): ``text_to_image``; optional
``image_features``, ``text_features``, ``labels``, ``image_ids``, ``image_paths``,
``text_ids``, ``split_<name>`` (image indices); ``xmodal_meta``, a 0-d string holding JSON
with ``format``, ``name``, ``n_images``, ``label_names``, ``root`` and the dataset's ``meta``
(protocol, ``encoding`` with the encoder specs); ``encoder_state_image`` /
``encoder_state_text``, uint8: a fitted encoder's saved state (tf-idf vocabulary, SIFT
words; ``encoding``'s record holds its ``state_hash``), so a method fitted on the file encodes
new items with that very encoder. Files from before ``xmodal_meta`` existed still load: the
name is then the file's stem and the meta is empty.
"""

from __future__ import annotations

import json
import logging
import os
import zipfile
from pathlib import Path

import numpy as np

from .._fs import atomic_write, json_default
from .dataset import DataError, PairedDataset

log = logging.getLogger("xmodal.data")

#: Version of the ``xmodal_meta`` record; a newer file is refused rather than misread.
NPZ_FORMAT = 1
META_KEY = "xmodal_meta"
SPLIT_PREFIX = "split_"
STATE_PREFIX = "encoder_state_"
_STRINGS = ("image_ids", "image_paths", "text_ids")
_KNOWN = {"text_to_image", "image_features", "text_features", "labels", META_KEY, *_STRINGS,
          *(STATE_PREFIX + side for side in ("image", "text"))}


def save_npz(ds: PairedDataset, path: str | os.PathLike) -> Path:
    """Write ``ds``'s features, ids, labels, splits and meta to ``path`` (no pickle).

    The file is written beside ``path`` and renamed into place, so an interrupted run leaves
    the previous file whole. ``meta["image_feature"]`` / ``["text_feature"]`` name the encoders
    of ``meta["encoding"]`` when the dataset was encoded (bench records report them)."""
    path = Path(path)
    arrays: dict[str, np.ndarray] = {"text_to_image": np.asarray(ds.text_to_image, dtype=np.int64)}
    for name in ("image_features", "text_features", "labels"):
        value = getattr(ds, name)
        if value is not None:
            arrays[name] = np.asarray(value)
    for name in _STRINGS:
        value = getattr(ds, name)
        if value is not None:
            if name == "image_paths":  # absolute: the file may be read from another folder
                value = [os.path.abspath(v) for v in value]
            arrays[name] = np.asarray([str(v) for v in value], dtype=str)
    for split, idx in ds.splits.items():
        arrays[f"{SPLIT_PREFIX}{split}"] = np.asarray(idx, dtype=np.int64)
    meta = dict(ds.meta)
    enc = dict(meta.get("encoding") or {})
    for side in ("image", "text"):
        rec = enc.get(f"{side}_encoder")
        if not isinstance(rec, dict):
            continue
        if rec.get("spec"):
            meta[f"{side}_feature"] = rec["spec"]
        if rec.get("state") is not None:  # bytes: an array of their own, not JSON
            arrays[STATE_PREFIX + side] = np.frombuffer(bytes(rec["state"]), dtype=np.uint8)
            enc[f"{side}_encoder"] = {k: v for k, v in rec.items() if k != "state"}
    if "encoding" in meta:
        meta["encoding"] = enc
    plain = {}
    for key, value in meta.items():
        try:
            plain[key] = json.loads(json.dumps(value, default=json_default))
        except (TypeError, ValueError):  # a loader's in-memory object: not part of the file
            log.debug("%s: meta %r not written (not JSON)", path, key)
    record = {"format": NPZ_FORMAT, "name": ds.name, "n_images": int(ds.n_images),
              "label_names": None if ds.label_names is None else [str(n) for n in ds.label_names],
              "root": None if ds.root is None else os.path.abspath(ds.root), "meta": plain}
    arrays[META_KEY] = np.asarray(json.dumps(record))
    atomic_write(path, lambda fh: np.savez(fh, **arrays))
    return path


def load_npz(path: str | os.PathLike) -> PairedDataset:
    """The :class:`PairedDataset` in a ``.npz`` written by ``xmodal encode`` (:func:`save_npz`).

    A file that is not one (not a ``.npz``, no ``text_to_image``, arrays of the wrong shape or
    type, NaN features, pickled objects) is a :class:`DataError` naming the file and array."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    with open(path, "rb") as f:
        head = f.read(6)
    if head == b"\x93NUMPY":
        raise DataError(f"{path}: holds a single .npy array, not a .npz of named arrays")
    if not zipfile.is_zipfile(path):
        raise DataError(f"{path}: not a .npz file (not a zip archive of .npy arrays)")
    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{path}: not a .npz file ({exc})") from None
    with z:
        names = list(z.files)

        def get(name: str) -> np.ndarray | None:
            if name not in names:
                return None
            try:
                value = z[name]
            except ValueError as exc:  # object arrays need pickle, which is never used here
                if "pickle" not in str(exc):  # a truncated or garbled .npy: "EOF: reading array data"
                    raise DataError(f"{path}: array {name!r} is damaged ({exc})") from None
                raise DataError(f"{path}: array {name!r} cannot be read without pickle ({exc}); "
                                "xmodal feature files hold plain numeric and string arrays") from None
            except (OSError, zipfile.BadZipFile, EOFError) as exc:
                raise DataError(f"{path}: array {name!r} is damaged ({exc})") from None
            if not isinstance(value, np.ndarray):  # no .npy header: np.load hands back its raw bytes
                raise DataError(f"{path}: array {name!r} is damaged (not a .npy array)")
            return value

        if "text_to_image" not in names:
            raise DataError(f"{path}: array 'text_to_image' missing: not a feature file written by "
                            f"xmodal encode (it holds {sorted(names) or 'no arrays'})")
        record = _read_record(path, get(META_KEY))
        t2i = _integers(path, "text_to_image", get("text_to_image"))
        arrays = {n: get(n) for n in ("image_features", "text_features", "labels")}
        strings = {n: _strings(path, n, get(n)) for n in _STRINGS}
        splits = {n[len(SPLIT_PREFIX):]: _integers(path, n, get(n)) for n in names
                  if n.startswith(SPLIT_PREFIX)}
        states = {side: get(STATE_PREFIX + side) for side in ("image", "text")}
        unknown = sorted(set(names) - _KNOWN - {n for n in names if n.startswith(SPLIT_PREFIX)})
        if unknown:
            log.warning("%s: ignoring arrays xmodal does not know: %s", path, ", ".join(unknown))

    n_texts = len(t2i)
    for name in ("image_features", "text_features"):
        X = arrays[name]
        if X is None:
            continue
        if X.ndim != 2 or not np.issubdtype(X.dtype, np.number) or np.iscomplexobj(X):
            raise DataError(f"{path}: array {name!r} must be a 2-D real matrix, got "
                            f"{X.dtype} of shape {X.shape}")
        bad = ~np.isfinite(X).all(axis=1)
        if bad.any():
            raise DataError(f"{path}: array {name!r} row {int(np.flatnonzero(bad)[0])} holds NaN or inf "
                            f"({int(bad.sum())} rows in all)")
    L = arrays["labels"]
    if L is not None:
        if L.ndim not in (1, 2) or not (np.issubdtype(L.dtype, np.integer) or L.dtype == bool
                                         or np.issubdtype(L.dtype, np.floating)):
            raise DataError(f"{path}: array 'labels' must be a 0/1 matrix (or class ids), got "
                            f"{L.dtype} of shape {L.shape}")
        if L.ndim == 2 and not np.isin(L, (0, 1)).all():
            raise DataError(f"{path}: array 'labels' must hold only 0 and 1")
        if L.ndim == 1 and ((L < 0).any() or (L != np.round(L)).any()):
            raise DataError(f"{path}: array 'labels' (class ids) must hold integers >= 0")
    n_images = record.get("n_images")
    if n_images is None:  # an older file: the image-side arrays say it
        sizes = [len(v) for v in (arrays["image_features"], L, strings["image_ids"],
                                  strings["image_paths"]) if v is not None]
        n_images = sizes[0] if sizes else (int(t2i.max()) + 1 if n_texts else 0)
    for name, value, expected, what in (
            ("image_features", arrays["image_features"], n_images, "images"),
            ("labels", L, n_images, "images"),
            ("image_ids", strings["image_ids"], n_images, "images"),
            ("image_paths", strings["image_paths"], n_images, "images"),
            ("text_features", arrays["text_features"], n_texts, "texts (text_to_image)"),
            ("text_ids", strings["text_ids"], n_texts, "texts (text_to_image)")):
        if value is not None and len(value) != expected:
            raise DataError(f"{path}: array {name!r} has {len(value)} rows, but the file has "
                            f"{expected} {what}")
    if n_texts and (t2i.min() < 0 or t2i.max() >= n_images):
        row = int(np.flatnonzero((t2i < 0) | (t2i >= n_images))[0])
        raise DataError(f"{path}: array 'text_to_image' row {row} names image {int(t2i[row])}, "
                        f"outside 0..{n_images - 1}")
    for split, idx in splits.items():
        if len(idx) and (idx.min() < 0 or idx.max() >= n_images):
            raise DataError(f"{path}: array '{SPLIT_PREFIX}{split}' names an image index outside "
                            f"0..{n_images - 1}")
    meta = dict(record.get("meta", {}))
    for side, state in states.items():
        if state is None:
            continue
        name = STATE_PREFIX + side
        if state.ndim != 1 or state.dtype != np.uint8:
            raise DataError(f"{path}: array {name!r} must be a 1-D uint8 array (a saved encoder), "
                            f"got {state.dtype} of shape {state.shape}")
        enc = meta.get("encoding")
        rec = enc.get(f"{side}_encoder") if isinstance(enc, dict) else None
        if not isinstance(rec, dict) or not rec.get("spec"):  # a state of no known encoder
            log.warning("%s: ignoring array %r: %s records no %s encoder (meta.encoding.%s_encoder) "
                        "it would belong to", path, name, META_KEY, side, side)
            continue
        meta["encoding"] = {**enc, f"{side}_encoder": {**rec, "state": state.tobytes()}}
    label_names = record.get("label_names")
    if label_names is not None and L is not None and L.ndim == 2 and L.shape[1] != len(label_names):
        raise DataError(f"{path}: array 'labels' has {L.shape[1]} columns but {META_KEY} names "
                        f"{len(label_names)} labels")
    try:
        return PairedDataset(
            name=str(record.get("name") or path.stem), text_to_image=t2i, n_images=int(n_images),
            image_features=arrays["image_features"], text_features=arrays["text_features"],
            labels=L, label_names=label_names, splits=splits,
            image_ids=strings["image_ids"], image_paths=strings["image_paths"],
            text_ids=strings["text_ids"], root=record.get("root"), meta=meta)
    except DataError as exc:  # anything the checks above missed still names the file
        raise DataError(f"{path}: {exc}") from None


def _read_record(path: Path, value: np.ndarray | None) -> dict:
    if value is None:
        return {}
    try:
        record = json.loads(str(value.item() if value.ndim == 0 else value))
    except (ValueError, TypeError) as exc:
        raise DataError(f"{path}: array {META_KEY!r} is not JSON ({exc})") from None
    if not isinstance(record, dict):
        raise DataError(f"{path}: array {META_KEY!r} must hold a JSON object")
    fmt = record.get("format", 1)
    if isinstance(fmt, bool) or not isinstance(fmt, int) or fmt < 1:
        raise DataError(f"{path}: {META_KEY} format must be a whole number >= 1, got {fmt!r}")
    if fmt > NPZ_FORMAT:
        raise DataError(f"{path}: written by a newer xmodal (feature file format "
                        f"{record['format']}, this one reads {NPZ_FORMAT}); upgrade xmodal")
    names = record.get("label_names")
    if names is not None and (not isinstance(names, list) or not all(isinstance(n, str) for n in names)):
        raise DataError(f"{path}: {META_KEY} label_names must be a list of strings")
    if not isinstance(record.get("meta", {}), dict):
        raise DataError(f"{path}: {META_KEY} meta must be a JSON object")
    n = record.get("n_images")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
        raise DataError(f"{path}: {META_KEY} n_images must be a count, got {n!r}")
    return record


def _integers(path: Path, name: str, value: np.ndarray) -> np.ndarray:
    if value.ndim != 1 or not (np.issubdtype(value.dtype, np.integer) or value.size == 0):
        raise DataError(f"{path}: array {name!r} must be a 1-D array of integer indices, got "
                        f"{value.dtype} of shape {value.shape}")
    return value.astype(np.int64, copy=False)


def _strings(path: Path, name: str, value: np.ndarray | None) -> list[str] | None:
    if value is None:
        return None
    if value.ndim != 1 or value.dtype.kind not in "UiuS":
        raise DataError(f"{path}: array {name!r} must be a 1-D array of strings, got "
                        f"{value.dtype} of shape {value.shape}")
    return [v.decode() if isinstance(v, bytes) else str(v) for v in value.tolist()]
