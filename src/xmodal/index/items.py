"""What a collection stores and answers, and the checks an item passes before it is stored.

The item types a caller adds (:class:`ImageItem`, :class:`TextItem`), what a search or lookup
returns (:class:`Hit`) and what an add did (:class:`AddReport`); the checks of item ids, keys and
labels (each refusal a :class:`~xmodal.data.dataset.DataError` naming the item); the content
hashes that tell an unchanged file or text from a changed one; and where an item's files live
beside the database (cached thumbnails, ``files/`` uploads). Re-exported by
:mod:`xmodal.index.collection`, the place to import them from.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from ..data.dataset import DataError

MAX_KEY_LEN = 512
MAX_ID = 2**63 - 1  # SQLite INTEGER: larger ids cannot exist (and cannot even be bound)


@dataclass
class ImageItem:
    key: str
    path: str
    labels: Sequence[str] = ()


@dataclass
class TextItem:
    key: str
    text: str
    pair_key: str | None = None  # the key of the image this text describes
    labels: Sequence[str] = ()


@dataclass
class Hit:
    id: int
    score: float
    modality: str
    key: str
    path: str | None = None
    text: str | None = None
    labels: list[str] = field(default_factory=list)
    pair_id: int | None = None
    shard: str | None = None  # set by xmodal.index.shards: ids are unique within a shard only

    def to_dict(self) -> dict[str, Any]:
        d = {"id": self.id, "score": self.score, "modality": self.modality, "key": self.key,
             "path": self.path, "text": self.text, "labels": list(self.labels), "pair_id": self.pair_id}
        if self.shard is not None:
            d["shard"] = self.shard
        return d


@dataclass
class AddReport:
    added: int = 0
    replaced: int = 0
    unchanged: int = 0
    moved: int = 0  # unchanged images found at another path (a moved folder): path updated
    relabelled: int = 0  # unchanged items sent with other labels: labels updated in place
    ids: list[int] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # files the encoder could not read
    removed: int = 0  # items the indexer's --prune removed after the add

    def counts(self) -> dict[str, int]:
        """What the add did, as numbers (``xmodal index --json``'s ``run``)."""
        return {"added": self.added, "replaced": self.replaced, "moved": self.moved,
                "relabelled": self.relabelled, "unchanged": self.unchanged, "skipped": len(self.skipped), "removed": self.removed}

    def merge(self, other: "AddReport") -> None:
        """Count ``other``'s stored items in (a batch of a longer add)."""
        self.added += other.added
        self.replaced += other.replaced
        self.ids += other.ids


def _ids(ids: Iterable[int]) -> list[int]:
    """Item ids as ints, those SQLite cannot hold dropped: no item has them. One that is no
    whole number is a :class:`DataError` naming it."""
    out = []
    for x in ids:
        try:
            i = int(x)
            if isinstance(x, (float, np.floating)) and i != x:
                raise ValueError
        except (TypeError, ValueError):
            raise DataError(f"item id {x!r}: not an integer") from None
        if -MAX_ID - 1 <= i <= MAX_ID:
            out.append(i)
    return out


def check_key(key: str) -> str:
    if not isinstance(key, str) or not key or len(key) > MAX_KEY_LEN:
        raise DataError(f"item key {key!r}: must be a non-empty string of at most {MAX_KEY_LEN} chars")
    if any(ord(c) < 32 for c in key):
        raise DataError(f"item key {key!r}: control characters are not allowed")
    return key


def _storable(text: str) -> bool:
    """Whether SQLite can store ``text``: a file name in another encoding than UTF-8 comes
    from the OS with lone surrogates (PEP 383), which no UTF-8 column can hold."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _checked_labels(what: str, labels: Any) -> list[str]:
    """An item's labels as a list of strings (whole numbers are taken as their digits). A
    single string is refused: taken as a sequence it would be split into one label a letter."""
    if labels is None:
        return []
    if isinstance(labels, (str, bytes)):
        raise DataError(f"{what}: labels must be a list of strings, not the single string {labels!r} "
                        f"(write [{labels!r}])")
    try:
        labels = list(labels)
    except TypeError:
        raise DataError(f"{what}: labels must be a list of strings, got {type(labels).__name__}") from None
    out = []
    for j, lab in enumerate(labels):
        if isinstance(lab, (int, np.integer)) and not isinstance(lab, (bool, np.bool_)):
            lab = str(lab)
        if not isinstance(lab, str) or not _storable(lab):
            raise DataError(f"{what}: labels[{j}] must be a string of valid Unicode text, got {lab!r}")
        out.append(lab)
    return out


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _decodes(path: str) -> bool:
    """Whether the image encoders can read ``path`` (decoded at reduced size: a cheap check)."""
    from ..encoders.images import ImageReadError, open_image

    try:
        open_image(path, draft_size=32)
    except ImageReadError:
        return False
    return True


THUMB_SIZES = (128, 256, 512)  # thumbnail sizes the service makes (thumb_file)
# v2: decoded upright (EXIF orientation) with transparency on white; older names not reused
THUMB_SUFFIXES = ("_v2.jpg", ".jpg")  # the current name first, then the older ones


def thumb_file(thumbs: Path, tag: str, size: int, suffix: str = THUMB_SUFFIXES[0]) -> Path:
    """Where the service caches an item's thumbnail of ``size`` (``tag``: its content hash,
    or ``id<N>`` for an item stored without one); another of ``THUMB_SUFFIXES``: where an
    older xmodal cached it."""
    return thumbs / f"{tag}_{size}{suffix}"


_sep_files = os.sep + "files" + os.sep  # uploads are stored as <collection>/files/<sha256>.<ext>
