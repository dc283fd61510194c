"""Methods that read raw inputs (caption strings, image files) besides the pooled features.

A method declares what it reads in ``raw_inputs`` (a subset of ``("images", "texts")``) and
implements ``encode_raw_images(paths)`` / ``encode_raw_texts(texts)``. :func:`raw_view` wraps
such a method for one dataset so that the standard protocol (``evaluate(view, ds)``, which
calls ``encode_images(ds.image_features)`` and ``encode_texts(ds.text_features)``) feeds it the
dataset's image paths and texts instead; methods without raw inputs are returned unchanged.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any, Sequence

import numpy as np

from ...data.dataset import DataError, PairedDataset

_WORD = re.compile(r"[a-z0-9]+")
PAD, UNK = "<pad>", "<unk>"


def tokenize(text: str) -> list[str]:
    return _WORD.findall(str(text).lower())


def build_vocab(texts: Sequence[str], min_count: int = 1) -> list[str]:
    """Vocabulary of the training captions (index 0 = padding, 1 = unknown), sorted for
    determinism."""
    counts = Counter(w for t in texts for w in tokenize(t))
    return [PAD, UNK] + sorted(w for w, c in counts.items() if c >= min_count)


def to_ids(texts: Sequence[str], vocab: Sequence[str], max_len: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """(ids (n, L) int64 zero-padded, lengths (n,) >= 1) for a list of texts."""
    index = {w: i for i, w in enumerate(vocab)}
    rows = [[index.get(w, 1) for w in tokenize(t)][:max_len] or [1] for t in texts]
    L = max((len(r) for r in rows), default=1)
    ids = np.zeros((len(rows), L), np.int64)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = r
    return ids, np.array([len(r) for r in rows], np.int64)


def is_text_list(Y: Any) -> bool:
    if isinstance(Y, (list, tuple)):
        return all(isinstance(t, str) for t in Y)
    return isinstance(Y, np.ndarray) and Y.dtype.kind in ("U", "O") and Y.ndim == 1


class RawView:
    """A fitted method seen through one dataset: feature calls are answered from raw inputs."""

    def __init__(self, method: Any, ds: PairedDataset):
        self._method, self._ds = method, ds
        need = set(getattr(method, "raw_inputs", ()))
        if "texts" in need and ds.texts is None:
            raise DataError(f"{type(method).__name__} reads raw texts but dataset {ds.name!r} has "
                            "no field texts")
        if "images" in need and ds.image_paths is None:
            raise DataError(f"{type(method).__name__} reads image files but dataset {ds.name!r} "
                            "has no field image_paths")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._method, name)

    def encode_images(self, X: np.ndarray) -> np.ndarray:
        if "images" in getattr(self._method, "raw_inputs", ()):
            return self._method.encode_raw_images(self._ds.image_paths, features=X)
        return self._method.encode_images(X)

    def encode_texts(self, Y: np.ndarray) -> np.ndarray:
        if "texts" in getattr(self._method, "raw_inputs", ()):
            return self._method.encode_raw_texts(self._ds.texts, features=Y)
        return self._method.encode_texts(Y)


def raw_view(method: Any, ds: PairedDataset) -> Any:
    """``method`` ready for ``evaluate(view, ds)``: raw-input methods read ``ds``'s texts and
    image files; every other method is returned as is."""
    if not getattr(method, "raw_inputs", ()):
        return method
    return RawView(method, ds)
