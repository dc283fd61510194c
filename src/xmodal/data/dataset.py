"""The one in-memory shape for paired image/text data used everywhere in xmodal.

Images and texts are stored separately because one image may carry several texts
(Karpathy-format captions); ``text_to_image[j]`` names the image of text ``j``.
Labels belong to images (a text inherits its image's labels) and are always a 0/1
matrix, so single-label and multi-label datasets share every code path.
Splits name image indices; a text is in a split when its image is.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np


class DataError(ValueError):
    """Malformed input data; the message names the file, row or field."""


def read_text(path: Path, strict: bool = True) -> str:
    """The UTF-8 text of ``path`` without a leading byte-order mark (Excel and Windows editors
    write one). Line endings are left as they are. Bytes that are not UTF-8 are a
    :class:`DataError` naming the file and line, or U+FFFD when ``strict`` is false."""
    if not path.exists():
        raise DataError(f"{path}: file not found")
    data = path.read_bytes()
    start = 3 if data.startswith(b"\xef\xbb\xbf") else 0
    try:
        return data[start:].decode("utf-8", errors="strict" if strict else "replace")
    except UnicodeDecodeError as exc:
        at = start + exc.start
        line = data[:at].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not UTF-8 (byte {data[at]:#04x} at offset {at}); "
                        "save the file as UTF-8") from None


@dataclass
class PairedDataset:
    name: str
    text_to_image: np.ndarray
    n_images: int
    image_features: np.ndarray | None = None
    image_paths: list[str] | None = None
    text_features: np.ndarray | None = None
    texts: list[str] | None = None
    labels: np.ndarray | None = None
    label_names: list[str] | None = None
    splits: dict[str, np.ndarray] = field(default_factory=dict)
    image_ids: list[str] | None = None
    text_ids: list[str] | None = None
    root: str | None = None
    meta: dict = field(default_factory=dict)
    # set by subset(): the dataset the images were taken from and their positions there, so
    # that two subsets can be compared item by item (the learned-codes hashing protocol)
    subset_of: str | None = None
    subset_images: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.text_to_image = np.asarray(self.text_to_image, dtype=np.int64)
        if self.labels is not None:
            self.labels = np.asarray(self.labels)
            if self.labels.ndim == 1:
                self.labels = one_hot(self.labels, where=f"dataset {self.name!r}: field labels")
            # before the cast: -1 would become 255 and 0.5 would become 0
            _check_label_matrix(self.labels, f"dataset {self.name!r}")
            self.labels = self.labels.astype(np.uint8)
        self.splits = {k: np.asarray(v, dtype=np.int64) for k, v in self.splits.items()}
        if self.subset_images is not None:
            self.subset_images = np.asarray(self.subset_images, dtype=np.int64)
        self.validate()

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        """Raise :class:`DataError` naming the field when shapes disagree."""
        n_img, n_txt = self.n_images, len(self.text_to_image)
        src = f"dataset {self.name!r}"
        if n_txt and (self.text_to_image.min() < 0 or self.text_to_image.max() >= n_img):
            bad = int(np.flatnonzero((self.text_to_image < 0) | (self.text_to_image >= n_img))[0])
            raise DataError(f"{src}: text row {bad} points to image {self.text_to_image[bad]}, "
                            f"outside 0..{n_img - 1} (field text_to_image)")
        checks = [
            ("image_features", self.image_features, n_img),
            ("image_paths", self.image_paths, n_img),
            ("image_ids", self.image_ids, n_img),
            ("labels", self.labels, n_img),
            ("subset_images", self.subset_images, n_img),
            ("text_features", self.text_features, n_txt),
            ("texts", self.texts, n_txt),
            ("text_ids", self.text_ids, n_txt),
        ]
        for fname, value, expected in checks:
            if value is not None and len(value) != expected:
                raise DataError(f"{src}: field {fname} has {len(value)} rows, expected {expected}")
        for fname in ("image_features", "text_features"):
            value = getattr(self, fname)
            if value is not None:
                if value.ndim != 2:
                    raise DataError(f"{src}: field {fname} must be 2-D, got shape {value.shape}")
                if not np.isfinite(value).all():
                    row = int(np.flatnonzero(~np.isfinite(value).all(axis=1))[0])
                    raise DataError(f"{src}: field {fname} row {row} holds NaN or inf")
        if self.labels is not None:
            _check_label_matrix(self.labels, src)
        if self.labels is not None and self.label_names is not None:
            if self.labels.shape[1] != len(self.label_names):
                raise DataError(f"{src}: labels have {self.labels.shape[1]} columns but "
                                f"{len(self.label_names)} label_names")
        for split, idx in self.splits.items():
            if len(idx) and (idx.min() < 0 or idx.max() >= n_img):
                raise DataError(f"{src}: split {split!r} names an image index outside 0..{n_img - 1}")

    # ------------------------------------------------------------- properties
    @property
    def n_texts(self) -> int:
        return len(self.text_to_image)

    @property
    def is_single_label(self) -> bool:
        return self.labels is not None and bool((self.labels.sum(axis=1) == 1).all())

    @property
    def class_ids(self) -> np.ndarray:
        """Integer class per image (single-label datasets only)."""
        if not self.is_single_label:
            raise DataError(f"dataset {self.name!r} is not single-label; use .labels")
        return self.labels.argmax(axis=1)

    @property
    def text_labels(self) -> np.ndarray | None:
        return None if self.labels is None else self.labels[self.text_to_image]

    @property
    def texts_per_image(self) -> np.ndarray:
        return np.bincount(self.text_to_image, minlength=self.n_images)

    # ------------------------------------------------------------- selection
    def subset(self, images: str | Sequence[int] | np.ndarray, name: str | None = None) -> "PairedDataset":
        """Images of a split (by name) or an index array, with all their texts."""
        if isinstance(images, str):
            if images not in self.splits:
                raise DataError(f"dataset {self.name!r} has no split {images!r}; "
                                f"it has {sorted(self.splits)}")
            split_name, idx = images, self.splits[images]
        else:
            split_name, idx = None, np.asarray(images, dtype=np.int64)
        new_index = np.full(self.n_images, -1, dtype=np.int64)
        new_index[idx] = np.arange(len(idx))
        text_rows = np.flatnonzero(new_index[self.text_to_image] >= 0)
        # Keep texts grouped in the order of the selected images.
        text_rows = text_rows[np.argsort(new_index[self.text_to_image[text_rows]], kind="stable")]

        def take(seq, rows):
            if seq is None:
                return None
            if isinstance(seq, np.ndarray):
                return seq[rows]
            return [seq[i] for i in rows]

        return PairedDataset(
            name=name or (f"{self.name}/{split_name}" if split_name else f"{self.name}/subset"),
            text_to_image=new_index[self.text_to_image[text_rows]],
            n_images=len(idx),
            image_features=take(self.image_features, idx),
            image_paths=take(self.image_paths, idx),
            text_features=take(self.text_features, text_rows),
            texts=take(self.texts, text_rows),
            labels=take(self.labels, idx),
            label_names=self.label_names,
            splits={},
            image_ids=take(self.image_ids, idx),
            text_ids=take(self.text_ids, text_rows),
            root=self.root,
            meta=dict(self.meta),
            # positions in the outermost dataset: a subset of a subset names the original images
            subset_of=self.name if self.subset_images is None else self.subset_of,
            subset_images=idx.copy() if self.subset_images is None else self.subset_images[idx],
        )

    def pairs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Aligned training rows: (image features, text features, labels), one row per text."""
        if self.image_features is None or self.text_features is None:
            missing = "image_features" if self.image_features is None else "text_features"
            raise DataError(f"dataset {self.name!r} has no {missing}; encode it first "
                            "(xmodal encode, or bench --image-encoder/--text-encoder)")
        X = self.image_features[self.text_to_image]
        L = None if self.labels is None else self.labels[self.text_to_image]
        return X, self.text_features, L

    def with_features(self, image_features: np.ndarray | None = None,
                      text_features: np.ndarray | None = None) -> "PairedDataset":
        out = replace(self,
                      image_features=self.image_features if image_features is None else image_features,
                      text_features=self.text_features if text_features is None else text_features)
        out.validate()
        return out

    def __repr__(self) -> str:
        feats = []
        if self.image_features is not None:
            feats.append(f"image_features={self.image_features.shape}")
        if self.text_features is not None:
            feats.append(f"text_features={self.text_features.shape}")
        splits = {k: len(v) for k, v in self.splits.items()}
        return (f"PairedDataset({self.name!r}, images={self.n_images}, texts={self.n_texts}, "
                f"labels={None if self.labels is None else self.labels.shape}, {', '.join(feats)}, "
                f"splits={splits})")


def _check_label_matrix(labels: np.ndarray, src: str) -> None:
    """Labels are a 0/1 image x class matrix: any other value (a -1 of -1/1 labels, a count, a
    score) would make the relevance of every pair wrong."""
    if labels.ndim != 2:
        raise DataError(f"{src}: field labels must be a class vector or a 2-D 0/1 matrix, "
                        f"got shape {labels.shape}")
    if labels.size == 0 or (labels.dtype == bool or labels.dtype == np.uint8) and labels.max() <= 1:
        return  # the stored form: one cheap pass
    with np.errstate(invalid="ignore"):
        bad = (labels != 0) & (labels != 1)
    if bad.any():
        row, col = (int(i) for i in np.argwhere(bad)[0])
        raise DataError(f"{src}: field labels row {row} column {col} holds {labels[row, col].item()!r}; "
                        "labels must be 0/1 (for -1/1 labels map -1 to 0, e.g. labels > 0)")


def one_hot(classes: Sequence[int] | np.ndarray, n_classes: int | None = None,
            where: str = "one_hot") -> np.ndarray:
    classes = np.asarray(classes)
    if classes.size and np.issubdtype(classes.dtype, np.number) and (classes < 0).any():
        row = int(np.flatnonzero(classes < 0)[0])  # a negative index would set the last class
        raise DataError(f"{where}: row {row} holds class {classes[row].item()!r}; class ids must be >= 0")
    classes = classes.astype(np.int64)
    n = int(classes.max()) + 1 if n_classes is None else n_classes
    out = np.zeros((len(classes), n), dtype=np.uint8)
    out[np.arange(len(classes)), classes] = 1
    return out


def random_splits(n: int, sizes: Mapping[str, int], seed: int = 0) -> dict[str, np.ndarray]:
    """Disjoint random splits of ``range(n)``; a size of -1 takes the rest."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    out, start = {}, 0
    for name, size in sizes.items():
        stop = n if size == -1 else start + size
        if stop > n:
            raise DataError(f"splits {dict(sizes)} need {stop} items but only {n} exist")
        out[name] = np.sort(perm[start:stop])
        start = stop
    return out
