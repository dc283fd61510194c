"""The collection's encoders and fitted method, as the rest of :mod:`xmodal.index` uses them.

An encoder from its spec (refusing one of the other modality), items encoded in batches with a
mask of the unreadable ones, queries encoded past the feature cache, a hashing method's float
projection (for re-ranking), and how a fitted model is saved and found again: the class path
recorded for a fitted encoder, and a content digest of a model file (a collection's ``space``
fingerprint, a build's cache key). Re-exported by :mod:`xmodal.index.collection`.
"""

from __future__ import annotations

import importlib
import zipfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..data.dataset import DataError


def get_encoder(spec: Any, modality: str | None = None) -> Any:
    """An encoder object from a spec string (``xmodal.encoders.get_encoder``) or as given;
    with ``modality``, one of the other modality is refused (:class:`EncoderError`): image
    paths encoded as text, or captions as image files, make no common space."""
    from ..encoders import EncoderError, get_encoder as _get

    if not isinstance(spec, str):
        mod = getattr(spec, "modality", None)
        if modality is not None and mod in ("image", "text") and mod != modality:
            a = "an" if modality == "image" else "a"
            raise EncoderError(f"{getattr(spec, 'spec', spec)!r} is {'an' if mod == 'image' else 'a'} "
                               f"{mod} encoder, but {a} {modality} encoder is needed here")
        return spec
    return _get(spec, modality)


def encode_items(enc: Any, inputs: Sequence[str], progress: bool | None = False,
                 batch_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(features, ok mask): rows the encoder could not read come back with ok False."""
    try:
        F, ok = enc.encode(list(inputs), batch_size=batch_size, progress=progress, return_mask=True)
    except TypeError:  # an encoder without return_mask
        F = enc.encode(list(inputs), batch_size=batch_size, progress=progress)
        ok = np.ones(len(F), dtype=bool)
    return np.asarray(F, dtype=np.float32), np.asarray(ok, dtype=bool)


def _encode_query(enc: Any, items: str | Sequence[str]) -> np.ndarray:
    """Queries through an encoder in one batch, bypassing its feature cache: queries (uploads
    on a server especially) would otherwise grow the cache without bound."""
    items = [items] if isinstance(items, str) else list(items)
    try:
        out = enc.encode(items, progress=False, cache_dir=False, return_mask=True)
    except TypeError:
        return np.asarray(enc.encode(items), dtype=np.float32)
    F, ok = out
    if not np.asarray(ok).all():
        bad = items[int(np.flatnonzero(~np.asarray(ok))[0])]
        raise DataError(f"query {bad}: the {enc.spec} encoder could not read it")
    return np.asarray(F, dtype=np.float32)


def _float_projection(method: Any, modality: str, feats: np.ndarray) -> np.ndarray:
    """A hashing method's real-valued projection before the sign (for re-ranking)."""
    from ..methods.base import CrossModalMethod

    fn = CrossModalMethod.encode_images if modality == "image" else CrossModalMethod.encode_texts
    return np.asarray(fn(method, feats), dtype=np.float32)


def _digest_file(h: Any, path: Path) -> None:
    """Feed a saved model file into hash ``h`` by content: a zip's members (names and bytes,
    not the write times in its headers), so two saves of one model hash alike."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            for name in sorted(zf.namelist()):
                h.update(name.encode() + b"\0" + zf.read(name))
    else:
        h.update(path.read_bytes())


def _class_path(obj: Any) -> str:
    return f"{type(obj).__module__}:{type(obj).__qualname__}"


def _load_class(path: str) -> Any:
    mod, _, qual = path.partition(":")
    obj: Any = importlib.import_module(mod)
    for part in qual.split("."):
        obj = getattr(obj, part)
    return obj
