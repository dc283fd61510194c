"""Checks of what clients send, before anything is stored or searched.

Each function takes a value from a request (an uploaded image's bytes, labels, an item key, a
comma-separated filter) and returns it trimmed and validated, or raises an ``HTTPException``
whose message names the field, the label's place or the file (400, 413, 415 or 422), so a
client learns what to fix. ``_utf8`` and ``_no_blanks`` are the validators the request models
in :mod:`xmodal.service.schemas` use; :func:`search_target` is which modality a search answers.
The routes that call these are in :mod:`xmodal.service.app`.
"""

from __future__ import annotations

import io
import re
import warnings
from typing import Any, Sequence

from fastapi import HTTPException

from ..data.dataset import DataError
from ..index.collection import MAX_KEY_LEN, check_key

MAX_IMAGE_PIXELS = 40_000_000  # ~ a 6300x6300 image; larger is refused before decoding
_SAFE_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._#@+=-]*(/[A-Za-z0-9][A-Za-z0-9._#@+=-]*)*$")
# MPO: the multi-picture JPEG many phones write (its first picture is a plain JPEG)
_FORMAT_EXT = {"JPEG": ".jpg", "MPO": ".jpg", "PNG": ".png", "GIF": ".gif", "BMP": ".bmp", "TIFF": ".tif",
               "WEBP": ".webp", "AVIF": ".avif"}
# a JPEG is checked as decoded at up to 1/8 scale, as the encoders read it
_JPEG_SCALE = 8


def _utf8(s: str) -> str:
    # JSON's "\ud800" escape is valid JSON and pydantic lets it through inside lists and
    # optional fields; no encoder, hash or SQLite statement can take it (a 500 each time)
    try:
        s.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"not valid Unicode: a lone surrogate at character {exc.start}") from None
    return s


def _no_blanks(labels: list[str]) -> list[str]:
    return [lab for lab in labels if lab]


def search_target(req: Any, query_modality: str | None, same: bool = False) -> str | None:
    """The modality a search answers: the request's ``target``, else an item query's own
    (``same``: more like this, as in the CLI), else the other one than the query's (image for
    a vector). None only for an item query whose item is unknown."""
    if req.target:
        return req.target
    if same:
        return query_modality
    return {"text": "image", "image": "text"}.get(query_modality or "", "image")


def split_labels(labels: str) -> list[str]:
    """A comma-separated filter from a query string or form: trimmed, blanks dropped (as a
    JSON list of them, :data:`xmodal.service.schemas.LabelList`)."""
    return _no_blanks([x.strip() for x in labels.split(",")])


def check_image_bytes(data: bytes, name: str = "upload", max_pixels: int = MAX_IMAGE_PIXELS) -> str:
    """Validate an uploaded image without trusting it; returns its Pillow format name.
    Empty, non-image, truncated and oversized (decompression bomb) uploads are refused."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise HTTPException(400, f"{name}: empty upload (0 bytes)")
    try:
        with warnings.catch_warnings():  # the pixel limit below is the guard; no warning spam
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
        with im:
            w, h = im.size  # read from the header: nothing decoded yet
            fmt = im.format
            from ..encoders.images import jpeg_decodes_small

            if fmt in ("JPEG", "MPO") and w * h > max_pixels and jpeg_decodes_small(im.fp):
                # a large phone photo: decoded (and so checked) at reduced scale, as encoded;
                # a progressive one needs memory for its full size, so it is judged by that
                im.draft("RGB", (max(1, w // _JPEG_SCALE), max(1, h // _JPEG_SCALE)))
            if im.size[0] * im.size[1] > max_pixels:
                raise HTTPException(413, f"{name}: image is {w}x{h} = {w * h} pixels, over the "
                                         f"limit of {max_pixels} (decompression bomb guard)")
            if fmt not in _FORMAT_EXT:
                raise HTTPException(415, f"{name}: image format {fmt} is not accepted; "
                                         f"use one of {sorted(_FORMAT_EXT)}")
            im.load()
    except HTTPException:
        raise
    except Image.DecompressionBombError as exc:
        raise HTTPException(413, f"{name}: {exc}") from None
    except UnidentifiedImageError:
        raise HTTPException(415, f"{name}: not an image Pillow can read") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise HTTPException(400, f"{name}: broken image ({exc})") from None
    return fmt


MAX_LABEL = 200


def check_labels(labels: Sequence[str], field: str, skip_blank: bool = False) -> list[str]:
    """Labels from a client, trimmed: none blank (``skip_blank``: blanks dropped, as between
    two commas of a form field), none with a comma (search filters are comma-separated, so
    such a label could never be searched for), none over 200 characters. An error names the
    label by its place in the list as sent."""
    out = []
    for i, lab in enumerate(labels):
        lab = lab.strip()
        if not lab and skip_blank:
            continue
        if not lab:
            raise HTTPException(422, f"{field}[{i}]: blank label")
        if "," in lab:
            raise HTTPException(422, f"{field}[{i}]: {lab!r} holds a comma; search filters split on commas")
        if len(lab) > MAX_LABEL:
            raise HTTPException(422, f"{field}[{i}]: label over {MAX_LABEL} characters")
        out.append(lab)
    return out


def safe_key(key: str, field: str = "key") -> str:
    """Client-chosen item keys: relative, no '..', no odd characters. A bad one is a bad field
    (422 naming ``field``, as every other field's; it was a 400), repeated only when short."""
    shown = repr(key) if len(key) <= 200 else f"of {len(key)} characters"
    if len(key) > MAX_KEY_LEN:
        raise HTTPException(422, f"{field}: item key {shown}: over {MAX_KEY_LEN} characters")
    try:
        check_key(key)
    except DataError as exc:  # its reason (control characters, empty), without its unshortened repr
        raise HTTPException(422, f"{field}: item key {shown}: {str(exc).rpartition(': ')[2]}") from None
    if not _SAFE_KEY.match(key) or any(part in ("..", ".") for part in key.split("/")):
        raise HTTPException(422, f"{field}: item key {shown}: use letters, digits, '._#@+=-' and "
                                 "'/'-separated parts; no '..', no leading '/'")
    return key
