"""Data: one paired-data shape (:class:`PairedDataset`) and loaders for the standard datasets."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable

from ._files import RELEASE_MARKERS, SourceFiles, dataset_files, dataset_layout, release_of
from .coco import load_coco
from .dataset import DataError, PairedDataset, one_hot, random_splits
from .dcmh_mat import find_dcmh_files, load_dcmh_mat, load_index_caption_mat, load_mat
from .flickr import load_flickr
from .karpathy import load_karpathy, load_ucm_captions
from .mirflickr import load_cleaned_folder, load_cnn_mat, load_mirflickr25k, load_mirflickr25k_release
from .npz import load_npz, save_npz
from .nuswide import load_nus_wide
from .pairs import is_pairs_json, load_pairs
from .pascal import is_pascal_page, load_pascal_sentences
from .wikipedia import load_wikipedia

LOADERS: dict[str, Callable[..., PairedDataset]] = {
    "wikipedia": load_wikipedia,
    "ucm_captions": load_ucm_captions,
    "mirflickr25k": load_mirflickr25k,
    "nus_wide": load_nus_wide,
    "pascal_sentences": load_pascal_sentences,
}


def _release_loader(name: str) -> Callable[..., PairedDataset]:
    return lambda path, **kwargs: LOADERS[name](data_dir=str(path), **kwargs)


# The loader of each layout of :func:`dataset_layout`.
_FOLDER_LOADERS: dict[str, Callable[..., PairedDataset]] = {
    "karpathy": load_karpathy,
    "cleaned_lists": load_cleaned_folder,
    "index_caption_mat": load_index_caption_mat,
    "dcmh_mat": load_dcmh_mat,
    "coco_official": load_coco,
    "flickr_tokens": load_flickr,
    **{name: _release_loader(name) for name in ("wikipedia", "nus_wide", "mirflickr25k", "pascal_sentences")},
}


def load_dataset(name: str, data_dir: str | None = None, **kwargs: Any) -> PairedDataset:
    """Load a dataset by name, or a path: a pairs file (.jsonl/.csv, or a .json array), a Karpathy ``.json`` file
    (``dataset.json``, ``dataset_coco.json``, ``dataset_flickr30k.json``, ...; or a folder holding
    one), a ``.mat`` file in the ``*_cnn.mat`` layout (``I_tr``/``T_tr``/``L_tr``) or the DCMH
    layout (``IAll``/``YAll``/``LAll``), the folder of a release that a named loader reads
    (Wikipedia, NUS-WIDE, MIRFlickr-25K, Pascal Sentences: :func:`dataset_layout`), the folder
    of a caption dataset's own download (MS-COCO's ``annotations/captions_<split><year>.json``,
    with its 80 categories as labels from ``instances_<split><year>.json``:
    :func:`~xmodal.data.coco.load_coco`; Flickr8k's ``Flickr8k.token.txt`` with its split
    lists, Flickr30k's ``results_20130124.token`` or Kaggle's ``results.csv``, Kaggle's Flickr8k
    ``captions.txt`` beside ``Images/``:
    :func:`~xmodal.data.flickr.load_flickr`; a Karpathy file beside them is read instead), a folder
    of DCMH per-variable ``.mat`` files, a folder
    of ``index.mat`` / ``caption.mat`` / ``label.mat``
    (:func:`~xmodal.data.dcmh_mat.load_index_caption_mat`), a folder of the cleaned lists of
    deep hashing code (``all_imgs.txt``, ``all_tags.txt`` or MS-COCO's ``all_txts.txt``, ``all_labels.txt``;
    :func:`~xmodal.data.mirflickr.load_cleaned_folder`), or a ``.npz`` of features written by
    ``xmodal encode`` (:func:`~xmodal.data.npz.load_npz`: encode once, bench many times);
    ``kwargs`` go to the loader (e.g. ``n_query``, ``n_train``, ``seed`` for
    :func:`~xmodal.data.dcmh_mat.load_dcmh_mat`); one the loader does not take is a
    :class:`DataError` naming it."""
    try:
        return _dispatch(name, data_dir, **kwargs)
    except TypeError as exc:
        bad = re.search(r"unexpected keyword argument '([^']+)'", str(exc))
        if bad is None or bad.group(1) not in kwargs:
            raise
        raise DataError(f"{name}: its loader takes no option {bad.group(1)!r} "
                        f"(options given: {', '.join(sorted(kwargs))})") from None


def _dispatch(name: str, data_dir: str | None = None, **kwargs) -> PairedDataset:
    if name in LOADERS:
        return LOADERS[name](data_dir=data_dir, **kwargs)
    path = Path(name)
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".csv", ".tsv") or (
            suffix == ".json" and path.is_file() and is_pairs_json(path)):
        return load_pairs(path, **kwargs)
    if suffix == ".mat":
        return load_mat(path, **kwargs)
    if suffix == ".npz":
        return load_npz(path, **kwargs)
    if suffix == ".json":
        return load_karpathy(path, **kwargs)
    # A folder: one answer to which layout it is, shared with fingerprints and `xmodal index`.
    layout = dataset_layout(path) if name else None
    if layout is not None:
        return _FOLDER_LOADERS[layout](path, **kwargs)
    # Say what is wrong with a path rather than calling it an unknown dataset name.
    if name and path.is_dir():
        raise DataError(f"{path / 'dataset.json'}: file not found (a dataset folder must hold a "
                        "Karpathy dataset.json / dataset_*.json, a release layout of "
                        f"{[n for n, _ in RELEASE_MARKERS] + ['pascal_sentences']}, COCO's "
                        "annotations/captions_*.json, Flickr8k.token.txt / results_20130124.token / "
                        "Kaggle's captions.txt (header image,caption) beside Images/, "
                        "cleaned lists (all_imgs.txt, ...), "
                        "index.mat/caption.mat/label.mat or DCMH-layout .mat files)")
    if not path.exists() and (path.suffix or len(path.parts) > 1):
        raise DataError(f"{path}: no such file or folder")
    raise DataError(f"unknown dataset {name!r}: use one of {sorted(LOADERS)}, a pairs file "
                    "(.jsonl/.csv), a Karpathy .json (dataset.json, dataset_coco.json, ...), a .mat "
                    "file (*_cnn.mat or DCMH layout), a dataset folder or a .npz written by xmodal encode")


__all__ = ["DataError", "PairedDataset", "LOADERS", "load_dataset", "load_wikipedia",
           "load_karpathy", "load_ucm_captions", "load_coco", "load_flickr", "load_mirflickr25k",
           "load_mirflickr25k_release",
           "load_cleaned_folder", "load_cnn_mat", "load_nus_wide", "load_dcmh_mat",
           "load_index_caption_mat", "load_mat", "find_dcmh_files", "load_pascal_sentences",
           "load_pairs", "load_npz", "save_npz", "one_hot", "random_splits", "dataset_files",
           "dataset_layout", "is_pascal_page", "release_of", "RELEASE_MARKERS", "SourceFiles"]
