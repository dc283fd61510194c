"""MIRFlickr-25K (Huiskes & Lew, "The MIR Flickr Retrieval Evaluation", MIR 2008) in the
layouts hashing papers use: the full release as it unpacks, the cleaned 20,015-item release
(tags + 24 labels), the ``*_cnn.mat`` feature files (``I_tr``/``T_tr``/``L_tr``, ``_te``,
``_db``) and the DCMH ``.mat`` layout (``IAll``/``YAll``/``LAll``, :mod:`xmodal.data.dcmh_mat`).

Full release (``mirflickr25k.zip`` + ``mirflickr25k_annotations_v080.zip``)::

    mirflickr/im<N>.jpg                    N = 1..25000
    mirflickr/meta/tags/tags<N>.txt        the image's (cleaned) Flickr tags, one per line
    mirflickr/doc/common_tags.txt          optional: ``tag count``, the tags on 20+ images (1386)
    mirflickr25k_annotations_v080/<label>.txt   1-based image numbers, one per line, for each of
                                           the 24 labels (``<label>_r1.txt`` and README.txt ignored;
                                           also found in annotations/ or unpacked beside mirflickr/)
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np

from ._matio import loadmat_any
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
        # Often the defaults (2000 + 10000, NUS-WIDE's 2100 + 10500) on part of a download,
        # which the user never typed: say which values fit, a sixth of the items as queries.
        fit = (f"; pass smaller n_query / n_train (from the command line --data-option "
               f"n_query={max(1, n // 6)} --data-option n_train={n - max(1, n // 6)})") if n >= 2 else ""
        raise DataError(f"{name}: n_query + n_train = {n_query + n_train} exceeds {what or f'{n} items'}{fit}")
    parts = random_splits(n, {"query": n_query, "database": -1}, seed=seed)
    rng = np.random.default_rng(seed + 1)
    train = np.sort(rng.choice(parts["database"], n_train, replace=False))
    return {"train": train, "query": parts["query"], "test": parts["query"], "database": parts["database"]}


def _release_dir(root: Path) -> Path | None:
    """The unpacked ``mirflickr/`` folder of the full release: ``root/mirflickr`` or ``root``."""
    for cand in (root / "mirflickr", root):
        if (cand / "meta" / "tags").is_dir():
            return cand
    return None


def _find_root(data_dir: str | None) -> Path:
    # The cleaned release, then the full release (its mirflickr/ folder, or that folder itself).
    from .dcmh_mat import find_root

    return find_root("mirflickr25k", data_dir, ("all_imgs.txt", "mirflickr", "meta", "index.mat"))


def load_mirflickr25k(data_dir: str | None = None, n_query: int | None = None, n_train: int | None = None,
                      seed: int | None = None, min_tag_count: int | None = None) -> PairedDataset:
    """MIRFlickr-25K from the cleaned release (``all_imgs.txt``, ``all_tags.txt``,
    ``all_labels.txt``), else the full release (:func:`load_mirflickr25k_release`, where
    ``min_tag_count`` applies), else the ``*_cnn.mat`` layout, ``index.mat`` / ``caption.mat``
    / ``label.mat`` (:func:`~xmodal.data.dcmh_mat.load_index_caption_mat`) or the DCMH ``.mat`` layout
    (``FLICKR-25K.mat``, or ``mirflickr25k-iall.mat``, ``-yall.mat``, ``-lall.mat``;
    :func:`~xmodal.data.dcmh_mat.load_dcmh_mat`) found in the folder.

    Protocol (DCMH, Jiang & Li 2017; :func:`hashing_splits`): ``n_query`` random queries
    (2000 by default), the rest is the retrieval database, ``n_train`` training items (10000;
    DJSRH and its followers use 5000) drawn from the database, seeded by ``seed`` (0). The
    DCMH ``.mat`` layout gets the same splits for the same ``seed``. An option a layout
    cannot honour is a :class:`DataError`, never dropped: ``min_tag_count`` outside the full
    release (the other layouts' tags are already cleaned), split options with ``*_cnn.mat``
    (its rows are its splits).
    """
    root = _find_root(data_dir)
    cleaned = (root / "all_tags.txt").exists()
    release = None if cleaned else _release_dir(root)
    # .mat files looked for only when the option is given: beside the cleaned lists, */*.mat
    # lists the 25,000 images of mirflickr/ on every load
    if min_tag_count is not None and release is None and (
            cleaned or any(root.glob("*.mat")) or any(root.glob("*/*.mat"))):
        # The cleaned tags are the 1386 on 20+ of all 25,000 images: re-counting them within
        # the 20,015 kept would drop 22 of them, ignoring the option would be silent.
        what = root / "all_tags.txt" if cleaned else f"the .mat files in {root}"
        raise DataError(f"mirflickr25k: min_tag_count applies to the full release (mirflickr/meta/tags/), "
                        f"not to {what}, whose tags are already cleaned (the 1386 on 20+ images)")
    split_options = {"n_query": n_query, "n_train": n_train, "seed": seed}
    n_query = 2000 if n_query is None else n_query
    n_train = 10000 if n_train is None else n_train
    seed = 0 if seed is None else seed
    if release is not None:
        return load_mirflickr25k_release(root, n_query=n_query, n_train=n_train, seed=seed,
                                         min_tag_count=20 if min_tag_count is None else min_tag_count)
    if not cleaned:
        from .dcmh_mat import mat_files

        mats = mat_files(root, "*_cnn.mat")  # not a macOS "._NAME" beside it
        if mats:
            return load_cnn_mat(mats[0], name="mirflickr25k", **split_options)
        from .dcmh_mat import find_dcmh_files, is_index_caption_folder, load_dcmh_mat, load_index_caption_mat

        if is_index_caption_folder(root):
            return load_index_caption_mat(root, name="mirflickr25k", n_query=n_query, n_train=n_train, seed=seed)
        if find_dcmh_files(root):
            # split options as given: none given, a split the file carries is followed
            return load_dcmh_mat(root, name="mirflickr25k", **split_options,
                               default_sizes=(2000, 10000))
    return load_cleaned_lists(root, "mirflickr25k", n_query=n_query, n_train=n_train, seed=seed,
                              label_names=MIRFLICKR_LABELS)


def load_cleaned_lists(root: str | Path, name: str, n_query: int, n_train: int, seed: int = 0,
                       label_names: list[str] | None = None, vocabulary: list[str] | None = None,
                       image_root: str | Path | None = None) -> PairedDataset:
    """The cleaned lists that deep hashing code ships for MIRFlickr-25K, NUS-WIDE and MS-COCO
    (DCHMT and its followers): ``all_imgs.txt`` (image paths relative to the folder, or to
    ``image_root``),
    ``all_tags.txt`` (comma-separated tags; MS-COCO's lists have ``all_txts.txt`` instead, an
    image's captions on one line with ``;`` between them, each a text of its image, no text
    features), ``all_labels.txt`` (one row of 0/1 values per
    image; ``len(label_names)`` columns, else as many as the first row has). Text features are
    tag vectors over ``vocabulary`` (default: every tag seen, sorted; other tags are dropped
    and counted in ``meta["tags_not_in_vocabulary"]``). Splits: :func:`hashing_splits`."""
    root = Path(root)
    base = root if image_root is None else Path(image_root)
    imgs_path = root / "all_imgs.txt"
    imgs = _lines(imgs_path)
    while imgs and not imgs[-1].strip():  # a trailing blank line is not an image
        imgs.pop()
    for i, line in enumerate(imgs, 1):
        if not line.strip():
            raise DataError(f"{imgs_path}:{i}: empty line")
    tags_path, labels_path = root / "all_tags.txt", root / "all_labels.txt"
    sentences = not tags_path.exists() and (root / SENTENCE_FILE).is_file()
    if sentences:  # MS-COCO's lists: an image's captions on one line, ";" between them
        tags_path = root / SENTENCE_FILE
    tag_rows = _lines(tags_path)
    label_rows = _lines(labels_path)
    n = len(imgs)
    for path, rows in ((tags_path, tag_rows), (labels_path, label_rows)):
        if len(rows) < n or any(r.strip() for r in rows[n:]):
            raise DataError(f"{path}: {len(rows)} rows, but all_imgs.txt lists {n} images")
    tag_lists = [[t.strip() for t in row.split(";" if sentences else ",") if t.strip()] for row in tag_rows[:n]]
    if sentences:
        empty = next((i for i, caps in enumerate(tag_lists) if not caps), None)
        if empty is not None:
            raise DataError(f"{tags_path}:{empty + 1}: no caption (an image's captions, ';' between them)")
    # The first non-blank row: a blank first row would make every labelled row "too long".
    first = next((r for r in label_rows[:n] if r.strip()), "")
    width = len(label_names) if label_names is not None else len(first.split())
    labels = np.zeros((n, width), dtype=np.uint8)
    for r, row in enumerate(label_rows[:n]):
        vals = row.split()
        if len(vals) != width or any(v not in ("0", "1") for v in vals):
            raise DataError(f"{labels_path}:{r + 1}: expected {width} 0/1 values, got {len(vals)} values"
                            + ("" if label_names is not None else " (the first non-blank row's count)"))
        labels[r] = np.array(vals, dtype=np.uint8)
    splits = hashing_splits(n, n_query, n_train, seed, name=name)
    meta = {"protocol": "hashing", "layout": "cleaned_lists", "seed": seed, "text_file": tags_path.name}
    if sentences:  # every caption a text of its image; a text encoder reads them
        t2i = np.repeat(np.arange(n), [len(caps) for caps in tag_lists])
        texts, T = [c for caps in tag_lists for c in caps], None
    else:
        T, vocab = tag_matrix(tag_lists, vocabulary)
        known = set(vocab)
        t2i, texts = np.arange(n), [" ".join(t) for t in tag_lists]
        meta |= {"tag_vocabulary": vocab,
                 "tags_not_in_vocabulary": sum(t not in known for ts in tag_lists for t in ts)}
    return PairedDataset(
        name=name, text_to_image=t2i, n_images=n,
        image_paths=_image_paths(base, [p.strip() for p in imgs]), texts=texts,
        text_features=T, labels=labels, label_names=label_names,
        splits=splits, root=str(root), meta=meta,
    )


def _image_paths(base: Path, stored: list[str]) -> list[str]:
    """The images of ``all_imgs.txt``: ``base/<line>``; lines written where the lists were made
    (absolute, a Windows path, another prefix) are found again under ``base`` or its image
    folder by their last two parts or their name, the rule that finds an image of a sample
    (:func:`~xmodal.data._probe.first_rule`) applied to all (a missing image is reported by the
    encoder that reads it)."""
    from ._probe import first_rule
    from .karpathy import image_bases

    parts = [s.replace("\\", "/").split("/") for s in stored]

    def path_of(rule: tuple[Path | None, int], k: int) -> str:
        folder, last = rule
        return str(base / stored[k]) if folder is None else str(folder.joinpath(*parts[k][-last:]))

    bases = image_bases(base) if base.is_dir() else []
    rules = [(None, 0)] + [(b, last) for last in (2, 1) for b in bases]
    rule = first_rule(rules, range(len(stored)), path_of) or (None, 0)
    return [path_of(rule, k) for k in range(len(stored))]


def load_cleaned_folder(path: str | Path, n_query: int | None = None, n_train: int | None = None,
                        seed: int = 0) -> PairedDataset:
    """A folder of cleaned lists (:func:`load_cleaned_lists`) given by path, named after the
    folder. Split sizes default to the papers' for the dataset its name or label count
    identifies (:func:`~xmodal.data.dcmh_mat.identify`: MIRFlickr-25K, NUS-WIDE, IAPR TC-12,
    MS-COCO), else :func:`~xmodal.data.dcmh_mat.default_split_sizes`."""
    from .dcmh_mat import default_split_sizes, identify, known_label_names

    root = Path(path)
    name = root.resolve().name  # "." has no name
    imgs = [line for line in _lines(root / "all_imgs.txt") if line.strip()]
    first = next((r for r in _lines(root / "all_labels.txt") if r.strip()), "")
    known = identify([name], len(first.split()), len(imgs))
    dq, dt = default_split_sizes(known, len(imgs))
    names = known_label_names(known, len(first.split()))
    ds = load_cleaned_lists(root, name, n_query=dq if n_query is None else n_query,
                            n_train=dt if n_train is None else n_train, seed=seed, label_names=names)
    ds.meta["dataset"] = known.name if known else None
    return ds


#: MS-COCO's cleaned lists: the captions file that stands in for all_tags.txt.
SENTENCE_FILE = "all_txts.txt"
_TAGS_RE = re.compile(r"tags(\d+)\.txt")
ANNOTATION_DIRS = ("mirflickr25k_annotations_v080", "annotations")


def _annotation_dir(root: Path, release: Path) -> Path:
    # Where the annotation zip may have been unpacked: beside mirflickr/, inside it, or loose.
    cands = [base / d for base in (root, release, release.parent) for d in ANNOTATION_DIRS] + [root, release]
    for cand in dict.fromkeys(cands):  # root may be the release folder itself
        if (cand / f"{MIRFLICKR_LABELS[0]}.txt").is_file():
            return cand
    raise DataError(f"{root / ANNOTATION_DIRS[0] / (MIRFLICKR_LABELS[0] + '.txt')}: file not found (the "
                    "label files of mirflickr25k_annotations_v080.zip; also looked in "
                    f"{', '.join(str(c) for c in dict.fromkeys(cands[1:]))})")


def _read_ids(path: Path, n: int) -> list[int]:
    """1-based image numbers, one per line (a label file of the annotation release)."""
    if not path.is_file():
        raise DataError(f"{path}: file not found (one of the 24 label files)")
    ids = []
    for lineno, line in enumerate(_lines(path), 1):
        v = line.strip()
        if not v:
            continue
        if not v.isdigit():
            raise DataError(f"{path}:{lineno}: expected an image number, got {v!r}")
        if not 1 <= int(v) <= n:
            raise DataError(f"{path}:{lineno}: image {int(v)} outside 1..{n} (meta/tags holds {n} images)")
        ids.append(int(v))
    return ids


def load_mirflickr25k_release(path: str | Path, n_query: int = 2000, n_train: int = 10000, seed: int = 0,
                              min_tag_count: int = 20) -> PairedDataset:
    """The full MIRFlickr-25K release as it unpacks (see the module docstring), cleaned as DCMH
    (Jiang & Li 2017) did: the tag vocabulary is ``doc/common_tags.txt`` (the tags on 20 or
    more images, 1386), or when it is missing every tag on ``min_tag_count`` images or more;
    an image is kept when it has one of the 24 labels and one vocabulary tag (DCMH reports
    20,015 of the 25,000 images and 1386-d tag vectors; not checked here against the release,
    which this machine lacks). Text features are the 0/1 tag vectors, ``texts`` the vocabulary tags;
    labels are the 24 non-``_r1`` concepts; splits as :func:`load_mirflickr25k`.
    """
    root = Path(path)
    release = _release_dir(root)
    if release is None:
        raise DataError(f"{root / 'mirflickr' / 'meta' / 'tags'}: folder not found (not an unpacked "
                        "mirflickr25k.zip)")
    tag_dir = release / "meta" / "tags"
    numbers = sorted(int(m.group(1)) for p in tag_dir.iterdir() if (m := _TAGS_RE.fullmatch(p.name)))
    n = numbers[-1] if numbers else 0
    if len(numbers) != n:  # tags1.txt .. tagsN.txt: name the first one missing
        gap = next(i for i, v in enumerate(numbers, 1) if v != i)
        raise DataError(f"{tag_dir / f'tags{gap}.txt'}: file not found (meta/tags holds {len(numbers)} files "
                        f"up to tags{n}.txt)")
    if not n:
        raise DataError(f"{tag_dir}: no tags<N>.txt files")
    tag_lists = [[t.strip().lower() for t in _lines(tag_dir / f"tags{i}.txt") if t.strip()]
                 for i in range(1, n + 1)]

    common = release / "doc" / "common_tags.txt"
    if common.is_file():
        vocab = [line.split()[0].lower() for line in _lines(common) if line.strip()]
        source = str(common)
    else:
        if isinstance(min_tag_count, bool) or not isinstance(min_tag_count, int) or min_tag_count < 1:
            raise DataError(f"mirflickr25k: min_tag_count must be a positive integer, got {min_tag_count!r}")
        counts = Counter(t for tags in tag_lists for t in set(tags))
        vocab = sorted((t for t, c in counts.items() if c >= min_tag_count), key=lambda t: (-counts[t], t))
        source = f"tags on {min_tag_count}+ images"
        if not vocab:
            raise DataError(f"{tag_dir}: no tag is on {min_tag_count} or more of the {n} images "
                            "(lower min_tag_count, or add doc/common_tags.txt)")
    vocab = list(dict.fromkeys(vocab))
    in_vocab = set(vocab)
    tag_lists = [list(dict.fromkeys(t for t in tags if t in in_vocab)) for tags in tag_lists]

    ann = _annotation_dir(root, release)
    labels = np.zeros((n, len(MIRFLICKR_LABELS)), dtype=np.uint8)
    for c, name in enumerate(MIRFLICKR_LABELS):
        labels[np.asarray(_read_ids(ann / f"{name}.txt", n), dtype=np.int64) - 1, c] = 1
    keep = np.flatnonzero(labels.any(axis=1) & np.array([bool(t) for t in tag_lists]))
    m = len(keep)
    T, _ = tag_matrix([tag_lists[i] for i in keep], vocab)
    splits = hashing_splits(m, n_query, n_train, seed, name="mirflickr25k",
                            what=f"the {m} images with one of the 24 labels and a vocabulary tag")
    return PairedDataset(
        name="mirflickr25k", text_to_image=np.arange(m), n_images=m,
        image_paths=[str(release / f"im{i + 1}.jpg") for i in keep],
        texts=[" ".join(tag_lists[i]) for i in keep], text_features=T,
        labels=labels[keep], label_names=MIRFLICKR_LABELS, splits=splits,
        image_ids=[f"im{i + 1}" for i in keep], root=str(root),
        meta={"protocol": "hashing", "layout": "release", "tag_vocabulary": vocab, "vocabulary_source": source,
              "release_ids": keep + 1, "seed": seed},
    )


def load_cnn_mat(path: str | Path, name: str | None = None, n_query: int | None = None,
                 n_train: int | None = None, seed: int | None = None) -> PairedDataset:
    """The ``*_cnn.mat`` layout: ``I_*`` image features, ``T_*`` text features, ``L_*`` labels for
    ``tr`` (train), ``te`` (query) and ``db`` (database; the train rows when absent). Rows are
    kept as separate items. The file's blocks are its splits: ``n_query``, ``n_train`` and
    ``seed`` are taken only to refuse them by name (a loader that forwards them would
    otherwise drop them silently)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    given = [k for k, v in (("n_query", n_query), ("n_train", n_train), ("seed", seed)) if v is not None]
    if given:
        raise DataError(f"{path}: the *_cnn.mat layout holds its own splits (I_tr / I_te / I_db rows); "
                        f"{', '.join(given)} do not apply")
    mat = loadmat_any(path)
    blocks, splits, start = [], {}, 0
    for part, split in (("tr", "train"), ("te", "query"), ("db", "database")):
        keys = [f"I_{part}", f"T_{part}", f"L_{part}"]
        if not all(k in mat for k in keys):
            there = [k for k in keys if k in mat]
            if part == "db" and there:  # half a database block: not the training rows instead
                raise DataError(f"{path}: the database block lacks "
                                f"{', '.join(k for k in keys if k not in mat)} (it holds {', '.join(there)})")
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
    labels, values = _cnn_labels(L, path, [(part, len(b[2])) for part, b in zip(("tr", "te", "db"), blocks)])
    return PairedDataset(name=name or path.stem, text_to_image=np.arange(len(I)), n_images=len(I),
                         image_features=I.astype(np.float32), text_features=T.astype(np.float32),
                         labels=labels, splits=splits, root=str(path.parent),
                         meta={"protocol": "hashing", "label_values": values})


def _cnn_labels(L: np.ndarray, path: Path, parts: list[tuple[str, int]]) -> tuple[np.ndarray, list | None]:
    """0/1 labels from the stacked ``L_*`` blocks (``parts``: their names and row counts), and
    the class numbers when ``L`` is one column of them (single-label files: one-hot, a column
    per distinct number, in order). Multi-hot rows may use 0/1 or the -1/+1 of hashing code;
    any other value is an error naming the block, row and column."""
    if L.dtype == bool:
        return L.astype(np.uint8), None
    if not np.issubdtype(L.dtype, np.number):
        raise DataError(f"{path}: L_{parts[0][0]} holds {L.dtype} values, not labels")
    whole = np.isfinite(L).all() and (L == np.round(L)).all()
    if L.shape[1] == 1 and whole and (L >= 0).all() and (L > 1).any():
        values, classes = np.unique(L[:, 0], return_inverse=True)
        onehot = np.zeros((len(L), len(values)), dtype=np.uint8)
        onehot[np.arange(len(L)), classes] = 1
        return onehot, [v.item() for v in values.astype(np.int64)]
    bad = ~np.isin(L, (-1, 0, 1))
    if bad.any():
        r, c = (int(v) for v in np.argwhere(bad)[0])
        value = L[r, c].item()
        for part, n in parts:  # name the block and its own row
            if r < n:
                break
            r -= n
        raise DataError(f"{path}: L_{part} item {r} (0-based), column {c} holds {value!r}; "
                        "labels must be 0/1 (or -1/+1), or one column of class numbers")
    return (L > 0).astype(np.uint8), None
