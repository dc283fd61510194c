"""MIRFlickr-25K (Huiskes & Lew, "The MIR Flickr Retrieval Evaluation", MIR 2008) in the
layouts hashing papers use: the cleaned 20,015-item release (tags + 24 labels), the
``*_cnn.mat`` feature files (``I_tr``/``T_tr``/``L_tr``, ``_te``, ``_db``) and the DCMH ``.mat``
layout (``IAll``/``YAll``/``LAll``, :mod:`xmodal.data.dcmh_mat`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ._matio import loadmat_any
from ._root import resolve_dataset_dir
from .dataset import DataError, PairedDataset, random_splits, read_text

MIRFLICKR_LABELS = [
    "animals", "baby", "bird", "car", "clouds", "dog", "female", "flower", "food", "indoor",
    "lake", "male", "night", "people", "plant_life", "portrait", "river", "sea", "sky",
    "structures", "sunset", "transport", "tree", "water",
]


def _lines(path: Path) -> list[str]:
    return read_text(path, strict=False).splitlines()


def tag_matrix(tag_lists: list[list[str]], vocabulary: list[str] | None = None) -> tuple[np.ndarray, list[str]]:
    """Multi-hot tag vectors; the vocabulary defaults to every tag seen, sorted."""
    vocab = vocabulary or sorted({t for tags in tag_lists for t in tags})
    index = {t: i for i, t in enumerate(vocab)}
    M = np.zeros((len(tag_lists), len(vocab)), dtype=np.float32)
    for r, tags in enumerate(tag_lists):
        cols = [index[t] for t in tags if t in index]
        M[r, cols] = 1.0
    return M, vocab


def hashing_splits(n: int, n_query: int, n_train: int, seed: int = 0, name: str = "dataset",
                   what: str | None = None) -> dict[str, np.ndarray]:
    """The cross-modal hashing protocol of DCMH (Jiang & Li, CVPR 2017): ``n_query`` random
    queries (also ``test``), the rest is the retrieval ``database``, ``n_train`` training items
    drawn from the database; all seeded by ``seed``. ``what`` describes the ``n`` items in the
    error raised when they are too few."""
    for key, value in (("n_query", n_query), ("n_train", n_train)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise DataError(f"{name}: {key} must be a positive integer, got {value!r}")
    if n_query + n_train > n:
        raise DataError(f"{name}: n_query + n_train = {n_query + n_train} exceeds {what or f'{n} items'}")
    parts = random_splits(n, {"query": n_query, "database": -1}, seed=seed)
    rng = np.random.default_rng(seed + 1)
    train = np.sort(rng.choice(parts["database"], n_train, replace=False))
    return {"train": train, "query": parts["query"], "test": parts["query"], "database": parts["database"]}


def load_mirflickr25k(data_dir: str | None = None, n_query: int = 2000, n_train: int = 10000,
                      seed: int = 0) -> PairedDataset:
    """Cleaned MIRFlickr-25K; when the folder lacks ``all_tags.txt``, the ``*_cnn.mat`` layout
    or the DCMH ``.mat`` layout (``FLICKR-25K.mat``, or ``mirflickr25k-iall.mat``,
    ``-yall.mat``, ``-lall.mat``; :func:`~xmodal.data.dcmh_mat.load_dcmh_mat`) found there.

    Protocol (DCMH, Jiang & Li 2017; :func:`hashing_splits`): ``n_query`` random queries, the
    rest is the retrieval database, ``n_train`` training items drawn from the database. The
    DCMH ``.mat`` layout gets the same splits for the same ``seed``.
    """
    try:  # the marker lets --data-dir name the dataset folder itself, as for the other datasets
        root = resolve_dataset_dir("mirflickr25k", data_dir, marker="all_imgs.txt")
    except DataError:  # ROOT/mirflickr25k holding only .mat files
        from .dcmh_mat import dcmh_folder

        root = dcmh_folder("mirflickr25k", data_dir)
    if not (root / "all_tags.txt").exists():
        mats = sorted(root.glob("*_cnn.mat"))
        if mats:
            return load_cnn_mat(mats[0], name="mirflickr25k")
        from .dcmh_mat import find_dcmh_files, load_dcmh_mat

        if find_dcmh_files(root):
            return load_dcmh_mat(root, name="mirflickr25k", n_query=n_query, n_train=n_train, seed=seed)
    imgs_path = root / "all_imgs.txt"
    imgs = _lines(imgs_path)
    while imgs and not imgs[-1].strip():  # a trailing blank line is not an image
        imgs.pop()
    for i, line in enumerate(imgs, 1):
        if not line.strip():
            raise DataError(f"{imgs_path}:{i}: empty line")
    tags_path, labels_path = root / "all_tags.txt", root / "all_labels.txt"
    tag_rows = _lines(tags_path)
    label_rows = _lines(labels_path)
    n = len(imgs)
    for path, rows in ((tags_path, tag_rows), (labels_path, label_rows)):
        if len(rows) < n or any(r.strip() for r in rows[n:]):
            raise DataError(f"{path}: {len(rows)} rows, but all_imgs.txt lists {n} images")
    tag_lists = [[t.strip() for t in row.split(",") if t.strip()] for row in tag_rows[:n]]
    labels = np.zeros((n, len(MIRFLICKR_LABELS)), dtype=np.uint8)
    for r, row in enumerate(label_rows[:n]):
        vals = row.split()
        if len(vals) != len(MIRFLICKR_LABELS) or any(v not in ("0", "1") for v in vals):
            raise DataError(f"{labels_path}:{r + 1}: expected {len(MIRFLICKR_LABELS)} 0/1 values")
        labels[r] = np.array(vals, dtype=np.uint8)
    T, vocab = tag_matrix(tag_lists)
    splits = hashing_splits(n, n_query, n_train, seed, name="mirflickr25k")
    return PairedDataset(
        name="mirflickr25k", text_to_image=np.arange(n), n_images=n,
        image_paths=[str(root / p) for p in imgs], texts=[" ".join(t) for t in tag_lists],
        text_features=T, labels=labels, label_names=MIRFLICKR_LABELS,
        splits=splits,
        root=str(root), meta={"protocol": "hashing", "tag_vocabulary": vocab, "seed": seed},
    )


def load_cnn_mat(path: str | Path, name: str | None = None) -> PairedDataset:
    """The ``*_cnn.mat`` layout: ``I_*`` image features, ``T_*`` text features, ``L_*`` labels for
    ``tr`` (train), ``te`` (query) and ``db`` (database). Rows are kept as separate items."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    mat = loadmat_any(path)
    blocks, splits, start = [], {}, 0
    for part, split in (("tr", "train"), ("te", "query"), ("db", "database")):
        keys = [f"I_{part}", f"T_{part}", f"L_{part}"]
        if not all(k in mat for k in keys):
            if part == "db":
                continue
            raise DataError(f"{path}: variables {keys} required, found {sorted(mat)}")
        I, T, L = (np.asarray(mat[k]) for k in keys)
        for k, v in zip(keys, (I, T, L)):
            if v.ndim != 2:
                raise DataError(f"{path}: {k} must be a 2-D matrix, got shape {v.shape}")
        if not (len(I) == len(T) == len(L)):
            raise DataError(f"{path}: {keys} have {len(I)}, {len(T)}, {len(L)} rows")
        for k, v, first in zip(keys, (I, T, L), blocks[0] if blocks else (I, T, L)):
            if v.shape[1] != first.shape[1]:  # vstack would fail deep inside numpy
                raise DataError(f"{path}: {k} has {v.shape[1]} columns but {k[:2]}tr has {first.shape[1]}")
        blocks.append((I, T, L))
        splits[split] = np.arange(start, start + len(I))
        start += len(I)
    splits["test"] = splits["query"]
    if "database" not in splits:
        splits["database"] = splits["train"]
    I, T, L = (np.vstack([b[i] for b in blocks]) for i in range(3))
    return PairedDataset(name=name or path.stem, text_to_image=np.arange(len(I)), n_images=len(I),
                         image_features=I.astype(np.float32), text_features=T.astype(np.float32),
                         labels=(L > 0).astype(np.uint8), splits=splits, root=str(path.parent),
                         meta={"protocol": "hashing"})
