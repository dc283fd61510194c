"""Encode a whole :class:`PairedDataset`: fit on one split, encode everything, drop images that
could not be decoded (with their texts) so the features stay NaN-free."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from ..data.dataset import DataError, PairedDataset
from .base import Encoder, EncoderError, checked_cache_dir
from .cache import safe_name
from .registry import get_encoder

log = logging.getLogger("xmodal.encoders")


def fit_cached(enc: Encoder, items: list[str], cache_dir: str | os.PathLike | bool | None = None,
               progress: bool | None = None) -> Encoder:
    """``enc.fit(items)``, reusing a previous fit on the same content from the cache folder."""
    if not enc.needs_fit:
        return enc
    root = checked_cache_dir(cache_dir)
    path = None
    if root is not None:
        h = hashlib.sha256(f"{enc.spec}\0{enc.version}".encode())
        for item in items:
            try:
                h.update(enc._item_key(item).encode())
            except OSError:
                h.update(f"unreadable:{item}".encode())
        path = root / "fitted" / f"{safe_name(enc.spec)}-{h.hexdigest()[:24]}.zip"
        if path.exists():
            try:
                loaded = Encoder.load(path)
                log.info("%s: reusing fitted state %s", enc.spec, path)
                return loaded
            except EncoderError as exc:
                log.warning("%s: ignoring unreadable fitted state (%s); refitting", enc.spec, exc)
    enc.fit(items, progress=progress)
    if path is not None:
        enc.save(path)
    return enc


def encoder_state(enc: Encoder) -> bytes:
    """A fitted encoder's state as the bytes of its saved file (:meth:`Encoder.save`: JSON and
    ``.npy`` members, no pickle). The zip's member times are fixed, so one state always gives
    the same bytes: they end up in method files, whose content collections fingerprint."""
    with tempfile.TemporaryDirectory() as tmp:
        raw = enc.save(Path(tmp) / "encoder.zip").read_bytes()
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(raw)) as zin, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zout:
        for name in sorted(zin.namelist()):
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zout.writestr(info, zin.read(name))
    return out.getvalue()


def encoder_from_state(state: bytes, where: str) -> Encoder:
    """The fitted encoder whose :func:`encoder_state` is ``state``; ``where`` names the file
    (and field) the bytes came from, for the error when they are not one."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "encoder.zip"
        path.write_bytes(bytes(state))
        try:
            return Encoder.load(path)
        except (EncoderError, OSError, ValueError) as exc:
            raise EncoderError(f"{where}: unusable fitted encoder state "
                               f"({str(exc).replace(str(path) + ': ', '')})") from None


def _record(enc: Encoder, t0: float) -> dict[str, Any]:
    """``meta["encoding"]``'s record of one side: the spec, and for a fitted encoder its state
    (bytes; ``state_hash`` says which), so whatever is fitted on these features can encode
    new items with this very encoder instead of one refitted on other items."""
    r = enc.report_
    rec: dict[str, Any] = {"spec": enc.spec, "dim": enc.dim, "n_cached": r.n_cached,
                           "n_computed": r.n_computed, "seconds": time.perf_counter() - t0}
    if enc.needs_fit:
        rec["state_hash"] = enc.state_hash()
        rec["state"] = encoder_state(enc)
    return rec


def _fit_rows(ds: PairedDataset, fit_split: str | None) -> np.ndarray:
    if fit_split is None:
        return np.arange(ds.n_images)
    if fit_split not in ds.splits:
        raise DataError(f"dataset {ds.name!r} has no split {fit_split!r} to fit encoders on; "
                        f"it has {sorted(ds.splits)}")
    return ds.splits[fit_split]


def encode_dataset(ds: PairedDataset, image_encoder: str | Encoder | None, text_encoder: str | Encoder | None,
                   cache_dir: str | os.PathLike | bool | None = None, fit_split: str | None = "train",
                   quiet: bool = False, batch_size: int | None = None) -> PairedDataset:
    """``ds`` with ``image_features``/``text_features`` from the named encoders.

    Fitted encoders learn their state from the ``fit_split`` images (and those images' texts)
    only, then encode every item. Images that cannot be decoded are dropped with their texts;
    splits are re-indexed. ``meta["encoding"]`` records specs, timings, skipped files and
    the fitted encoders' state; a side not encoded here keeps the record it had (with its
    features), so re-encoding the texts leaves the image encoder's record in place.
    """
    from .base import check_batch_size

    # before anything is fitted or loaded
    check_batch_size("encode_dataset", batch_size)
    checked_cache_dir(cache_dir)
    if fit_split not in (None, "train"):
        # a split named on purpose (``--fit-split``) must exist even when no encoder is fitted:
        # a misspelt one was otherwise ignored without a word; the default may be absent
        _fit_rows(ds, fit_split)
    progress = False if quiet else None
    img_enc = txt_enc = None
    if image_encoder is not None:
        if ds.image_paths is None:
            raise DataError(f"dataset {ds.name!r} has no image files (field image_paths); "
                            "it cannot be encoded with an image encoder")
        if ds.n_images and not any(os.path.exists(p) for p in ds.image_paths):
            # a release without its images (Wikipedia's features, MIRFlickr's lists): said
            # once, before a model is loaded, not as one warning per missing file
            raise DataError(f"dataset {ds.name!r}: none of the {ds.n_images} image files exist "
                            f"(the first: {ds.image_paths[0]}); are the images there?")
        img_enc = get_encoder(image_encoder, "image") if isinstance(image_encoder, str) else image_encoder
    if text_encoder is not None:
        if ds.texts is None:
            raise DataError(f"dataset {ds.name!r} has no raw texts (field texts); "
                            "it cannot be encoded with a text encoder")
        txt_enc = get_encoder(text_encoder, "text") if isinstance(text_encoder, str) else text_encoder
    in_fit = np.zeros(ds.n_images, dtype=bool)
    # An Encoder object passed in already fitted is used as it is.
    if any(e is not None and e.needs_fit and not e.is_fitted for e in (img_enc, txt_enc)):
        in_fit[_fit_rows(ds, fit_split)] = True
    prev = ds.meta.get("encoding") or {}
    keep_image = img_enc is None and ds.image_features is not None
    keep_text = txt_enc is None and ds.text_features is not None
    info: dict = {"image_encoder": prev.get("image_encoder") if keep_image else None,
                  "text_encoder": prev.get("text_encoder") if keep_text else None,
                  "skipped": list(prev.get("skipped") or []) if keep_image else []}
    X = T = None
    n_fit_images = 0  # set when images are encoded, some of them maybe unreadable
    ok = np.ones(ds.n_images, dtype=bool)
    if img_enc is not None:
        t0 = time.perf_counter()
        enc = img_enc if img_enc.is_fitted else fit_cached(
            img_enc, [p for p, f in zip(ds.image_paths, in_fit) if f], cache_dir, progress)
        X, ok = enc.encode(ds.image_paths, batch_size=batch_size, progress=progress,
                           cache_dir=cache_dir, return_mask=True)
        info["image_encoder"] = _record(enc, t0)
        info["skipped"] = [{"file": f, "reason": why} for f, why in enc.report_.skipped]
        if ds.n_images and not ok.any():  # nothing to write but an empty dataset: say why
            f, why = enc.report_.skipped[0] if enc.report_.skipped else (ds.image_paths[0], "?")
            raise DataError(f"dataset {ds.name!r}: none of the {ds.n_images} images could be read "
                            f"by {enc.spec} (the first, {f}: {why}); are the image files there?")
        # the texts of images that are dropped below do not shape a fitted text encoder either
        n_fit_images = int(in_fit.sum())
        in_fit &= ok
    if txt_enc is not None:
        t0 = time.perf_counter()
        fit_texts = [t for t, i in zip(ds.texts, ds.text_to_image) if in_fit[i]]
        if not fit_texts and not txt_enc.is_fitted and n_fit_images:
            # every image of the split was dropped above: "fit needs at least one item" said
            # neither which split nor why
            raise DataError(f"dataset {ds.name!r}: no texts to fit {txt_enc.spec} on: none of the "
                            f"{n_fit_images} images of split {fit_split!r} could be read")
        enc = txt_enc if txt_enc.is_fitted else fit_cached(txt_enc, fit_texts, cache_dir, progress)
        T = enc.encode(ds.texts, batch_size=batch_size, progress=progress, cache_dir=cache_dir)
        info["text_encoder"] = _record(enc, t0)
    out = ds.with_features(X, T)
    if not ok.all():
        keep = np.flatnonzero(ok)
        n_texts_before = out.n_texts
        out = out.subset(keep, name=ds.name)
        new_index = np.full(ds.n_images, -1, dtype=np.int64)
        new_index[keep] = np.arange(len(keep))
        # subset() drops splits; carry them over in the new numbering.
        out.splits = {k: new_index[v][new_index[v] >= 0] for k, v in ds.splits.items()}
        out.validate()
        log.warning("%s: dropped %d of %d images that could not be decoded (and their %d texts); "
                    "see the warnings above for each file", ds.name, ds.n_images - len(keep),
                    ds.n_images, n_texts_before - out.n_texts)
    out.meta = {**out.meta, "encoding": info}
    return out
