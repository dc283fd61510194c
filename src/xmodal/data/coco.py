"""MS-COCO (Lin et al., "Microsoft COCO: Common Objects in Context", ECCV 2014) as its own
download unpacks, and its 80 object categories as image labels::

    annotations/captions_train2014.json     {"images": [{"id", "file_name", ...}],
    annotations/captions_val2014.json        "annotations": [{"id", "image_id", "caption"}]}
    annotations/instances_train2014.json    optional: + "categories": [{"id", "name"}], and
    annotations/instances_val2014.json       "annotations": [{"image_id", "category_id", ...}]
    train2014/COCO_train2014_000000000009.jpg ...
    val2014/COCO_val2014_000000000042.jpg ...

or the 2017 release's names (``captions_train2017.json``, ``train2017/000000000009.jpg``). The
category labels are what cross-modal hashing papers use for MS-COCO (DCMH, SSAH and their
followers): one multi-hot vector over the 80 categories per image, images with none dropped.
The same labels join Karpathy's ``dataset_coco.json`` by ``cocoid``
(:func:`~xmodal.data.karpathy.load_karpathy`)."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from ._probe import first_rule
from .dataset import DataError, PairedDataset
from .karpathy import COCO_CAPTIONS, image_bases, is_karpathy_head, read_json

COCO_YEARS = (2014, 2017)
# The official splits with captions (test2014/test2017 have none); 2014's val is the one
# image-text papers draw their test sets from, kept under its own name here.
COCO_SPLITS = ("train", "val")
ANNOTATION_DIR = "annotations"
log = logging.getLogger("xmodal.data")


def _annotation_folders(folder: Path) -> list[Path]:
    # The unpacked annotations zip (annotations/), or its files loose in the folder.
    return [folder / ANNOTATION_DIR, folder]


def coco_caption_files(folder: str | os.PathLike, year: int | None = None) -> tuple[int, dict[str, Path]]:
    """The year and the caption file of each split (``{"train": ..., "val": ...}``, the
    splits present) of the COCO download in ``folder`` (``annotations/captions_<split><year>.json``,
    or the files loose in ``folder``): ``year`` when given, else 2014 when its files are there,
    else 2017. No caption file: ``(year or 2014, {})``."""
    folder = Path(folder)
    if year is not None and year not in COCO_YEARS:
        raise DataError(f"{folder}: COCO year must be one of {list(COCO_YEARS)}, got {year!r}")
    for y in (year,) if year is not None else COCO_YEARS:
        for ann in _annotation_folders(folder):
            found = {s: ann / f"captions_{s}{y}.json" for s in COCO_SPLITS}
            found = {s: p for s, p in found.items() if p.is_file()}
            if found:
                return y, found
    return year or COCO_YEARS[0], {}


def is_coco_folder(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` holds the caption files of a COCO download (:func:`coco_caption_files`)."""
    return Path(folder).is_dir() and bool(coco_caption_files(folder)[1])


def coco_instances_files(folder: str | os.PathLike, year: int, splits: Sequence[str]) -> dict[str, Path]:
    """``instances_<split><year>.json`` of each of ``splits`` found beside the caption files
    (in ``folder/annotations`` or ``folder``)."""
    out = {}
    for s in splits:
        cands = [ann / f"instances_{s}{year}.json" for ann in _annotation_folders(Path(folder))]
        hit = next((p for p in cands if p.is_file()), None)
        if hit is not None:
            out[s] = hit
    return out


def coco_files(folder: str | os.PathLike, labels: bool | str = "auto", year: int | None = None) -> list[Path]:
    """The files :func:`load_coco` reads in ``folder``: the caption files of the year it
    loads, and (``labels`` not False) the instances files of those splits that are there."""
    y, caps = coco_caption_files(folder, year)
    files = list(caps.values())
    if labels is not False:
        files += list(coco_instances_files(folder, y, list(caps)).values())
    return files


# "cocoid" as a key: Karpathy's COCO records carry it, the Flickr files do not.
_COCOID_KEY = re.compile(rb'(?<!\\)"cocoid"\s*:')


def karpathy_label_files(path: str | os.PathLike, warn: bool = True) -> list[Path]:
    """The COCO instances files whose categories :func:`~xmodal.data.karpathy.load_karpathy`
    attaches to the Karpathy file ``path`` by default: its records carry ``cocoid`` (its first
    64 KB name the key) and ``instances_train<year>.json`` + ``instances_val<year>.json`` sit
    beside it (or in ``annotations/`` beside it), 2014's before 2017's (the same images under
    the same ids). Only one of a year's pair: none (``warn``: a warning names the other)."""
    path = Path(path)
    if not path.is_file() or not is_karpathy_head(path):
        return []
    try:
        with open(path, "rb") as fh:
            if _COCOID_KEY.search(fh.read(1 << 16)) is None:
                return []
    except OSError:
        return []
    pairs = {year: coco_instances_files(path.parent, year, COCO_SPLITS) for year in COCO_YEARS}
    for year, found in pairs.items():
        if len(found) == len(COCO_SPLITS):
            return [found[s] for s in COCO_SPLITS]
    for year, found in pairs.items():
        if found and warn:  # the records of the missing half would all count as unlabelled
            (have,), missing = found.values(), [s for s in COCO_SPLITS if s not in found]
            log.warning("%s: not found, so %s beside %s is not used (Karpathy's COCO split draws on "
                        "both): loading without category labels", have.parent / f"instances_{missing[0]}{year}.json",
                        have.name, path.name)
    return []


# ------------------------------------------------------------------------ reading the json
def _records(doc: object, key: str, path: Path) -> list:
    if not isinstance(doc, dict) or not isinstance(doc.get(key), list):
        raise DataError(f"{path}: no {key!r} list (not a COCO annotation file)")
    return doc[key]


def int_field(records: list, key: str, path: Path, where: str) -> np.ndarray:
    """``records[i][key]`` for every record, as int64; a record without an integer there is a
    :class:`DataError` naming it (``<path>: <where>[i]``). Linear: a comprehension and a set of
    the types (700,000 annotations in COCO's train instances)."""
    try:
        values = [r[key] for r in records]
    except (KeyError, TypeError, IndexError):
        values = None
    if values is not None and set(map(type, values)) <= {int}:  # not 3.5 or "12" turned into ints
        try:
            return np.array(values, dtype=np.int64).reshape(len(values))
        except OverflowError:
            pass
    for i, r in enumerate(records):
        v = r.get(key) if isinstance(r, dict) else None
        if type(v) is not int or not -2**63 <= v < 2**63:
            raise DataError(f"{path}: {where}[{i}]: field {key!r} missing or not an integer (got {v!r})")
    raise AssertionError("unreachable: every record checks clean")


def lookup(keys: np.ndarray, values: np.ndarray) -> np.ndarray:
    """The index in ``keys`` (unique) of each of ``values``; -1 where absent."""
    if not len(keys):
        return np.full(len(values), -1, dtype=np.int64)
    order = np.argsort(keys, kind="stable")
    pos = np.minimum(np.searchsorted(keys[order], values), len(keys) - 1)
    return np.where(keys[order][pos] == values, order[pos], -1)


def _first(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def category_labels(files: Sequence[Path], image_ids: np.ndarray) -> tuple[np.ndarray, list[str], np.ndarray]:
    """COCO's category labels of the images ``image_ids``, from the instances files ``files``
    (one ``json.load`` each): a multi-hot ``(len(image_ids), 80)`` uint8 matrix whose columns
    are the ``categories`` in id order (all files must list the same), their names, and
    whether each image is listed in one of the files' ``images`` (an image none lists has
    no labels because it is not in these files, not because it shows nothing)."""
    labels, names, cat_ids, listed = None, None, None, np.zeros(len(image_ids), dtype=bool)
    for path in files:
        doc = read_json(path)
        cats = _records(doc, "categories", path)
        ids = int_field(cats, "id", path, "categories")
        these = [c.get("name") for c in cats]
        if any(not isinstance(n, str) for n in these):
            i = next(i for i, n in enumerate(these) if not isinstance(n, str))
            raise DataError(f"{path}: categories[{i}]: field 'name' missing or not a string")
        order = np.argsort(ids, kind="stable")
        if len(np.unique(ids)) != len(ids):
            raise DataError(f"{path}: categories list id {int(ids[order][_first(np.diff(ids[order]) == 0)])} twice")
        if labels is None:
            cat_ids, names = ids[order], [these[i] for i in order]
            labels = np.zeros((len(image_ids), len(names)), dtype=np.uint8)
        elif not np.array_equal(ids[order], cat_ids) or [these[i] for i in order] != names:
            raise DataError(f"{path}: its categories differ from those of {files[0]}")
        listed |= lookup(int_field(_records(doc, "images", path), "id", path, "images"), image_ids) >= 0
        anns = _records(doc, "annotations", path)
        img = int_field(anns, "image_id", path, "annotations")
        col = lookup(cat_ids, int_field(anns, "category_id", path, "annotations"))
        if (col < 0).any():
            i = _first(col < 0)
            raise DataError(f"{path}: annotations[{i}]: category_id {anns[i]['category_id']} is not in "
                            "its categories list")
        row = lookup(image_ids, img)
        hit = row >= 0  # annotations of images the dataset leaves out do not matter
        labels[row[hit], col[hit]] = 1
        del doc, anns  # hundreds of MB of polygons: gone before the next file is read
    if labels is None:
        raise DataError("no COCO instances file given")
    return labels, names, listed


def keep_images(ds: PairedDataset, keep: np.ndarray) -> PairedDataset:
    """``ds`` with only the images where ``keep`` (a boolean mask) is true, their texts, and
    its splits renumbered (:meth:`PairedDataset.subset` alone drops the splits)."""
    idx = np.flatnonzero(keep)
    if len(idx) == ds.n_images:
        return ds
    out = ds.subset(idx, name=ds.name)
    new_index = np.cumsum(keep) - 1
    out.splits = {k: new_index[v[keep[v]]] for k, v in ds.splits.items()}
    return out


def _read_captions(path: Path, max_captions: int | None) -> tuple[np.ndarray, list[str], list[str], np.ndarray, int, int]:
    """One caption file: the ids and file names of its images that have a caption, the kept
    captions (the first ``max_captions`` of each image by annotation id), the image row of
    each, how many captions were left out, and how many images were left out for having no
    caption (logged; none of them: a :class:`DataError`)."""
    doc = read_json(path)
    images = _records(doc, "images", path)
    anns = _records(doc, "annotations", path)
    if not images:
        raise DataError(f"{path}: the 'images' list is empty")
    ids = int_field(images, "id", path, "images")
    names = [im.get("file_name") if isinstance(im, dict) else None for im in images]
    for i, n in enumerate(names):
        if not isinstance(n, str) or not n.strip():
            raise DataError(f"{path}: images[{i}]: field 'file_name' missing or not a string")
    uniq, first, counts = np.unique(ids, return_index=True, return_counts=True)
    if (counts > 1).any():
        dup = int(uniq[_first(counts > 1)])
        raise DataError(f"{path}: images[{int(first[_first(counts > 1)])}] and another share the id {dup}")
    img = int_field(anns, "image_id", path, "annotations")
    ann_id = int_field(anns, "id", path, "annotations")
    caps = [a.get("caption") for a in anns]
    bad = next((i for i, c in enumerate(caps) if not isinstance(c, str) or not c.strip()), None)
    if bad is not None:
        raise DataError(f"{path}: annotations[{bad}]: field 'caption' missing or empty")
    rows = lookup(ids, img)
    if (rows < 0).any():
        i = _first(rows < 0)
        raise DataError(f"{path}: annotations[{i}]: image_id {int(img[i])} is not in its 'images' list")
    # COCO's own files give every image five or more captions; an image with none (an edited
    # file) is no image-text pair: Karpathy's splits never hold one and the hashing protocol
    # drops items without text, so it is left out here, before labels are joined.
    captioned = np.bincount(rows, minlength=len(ids)) > 0
    n_uncaptioned = int((~captioned).sum())
    if n_uncaptioned:
        if n_uncaptioned == len(ids):
            raise DataError(f"{path}: none of its {len(ids)} images has a caption")
        i = _first(~captioned)
        log.warning("%s: %d image(s) with no caption left out (first: images[%d], id %d); "
                    "meta['uncaptioned_dropped'] counts them", path, n_uncaptioned, i, int(ids[i]))
        rows = (np.cumsum(captioned) - 1)[rows]
        ids, names = ids[captioned], [n for n, c in zip(names, captioned) if c]
    order = np.lexsort((ann_id, rows))  # by image, then by annotation id: a deterministic choice
    rows = rows[order]
    kept = order
    if max_captions is not None and len(rows):
        starts = np.r_[0, np.flatnonzero(np.diff(rows)) + 1]
        rank = np.arange(len(rows)) - np.repeat(starts, np.diff(np.r_[starts, len(rows)]))
        kept, rows = order[rank < max_captions], rows[rank < max_captions]
    # Some captions end in a newline or hold two spaces: one line of single spaces.
    texts = [" ".join(caps[i].split()) for i in kept]
    return ids, names, texts, rows, len(anns) - len(kept), n_uncaptioned


def _image_folder(root: Path, split: str, year: int, names: list[str], image_dir: Path | None) -> Path:
    # Decided once from a sample (_probe): <base>/<split><year>/ beside annotations/, in
    # images/, or any sub-folder; else all images in one folder. Given the annotations/
    # folder itself, its parent's folders too.
    bases = [image_dir] if image_dir is not None else image_bases(root)
    if image_dir is None and root.name == ANNOTATION_DIR:
        bases += image_bases(root.parent)
    folders = [b / f"{split}{year}" for b in bases] + bases
    folders = [f for f in dict.fromkeys(folders) if f.is_dir()]
    found = first_rule(folders, names, lambda folder, name: folder / name)
    return found if found is not None else (image_dir or root) / f"{split}{year}"


def _check_bool(value: object, name: str, where: Path) -> None:
    if not isinstance(value, bool):
        raise DataError(f"{where}: {name} must be True or False, got {value!r}")


def load_coco(path: str | os.PathLike, year: int | None = None, labels: bool | str = "auto",
              drop_unlabelled: bool = True, max_captions: int | None = COCO_CAPTIONS,
              image_dir: str | os.PathLike | None = None, split: str = "official",
              n_query: int = 2000, n_train: int = 10000, seed: int = 0) -> PairedDataset:
    """MS-COCO from its official files (see the module docstring) in the folder ``path``.

    Splits are the official ones, named as the files name them: ``"train"`` and ``"val"``
    (the splits whose caption file is there). Image-text papers test on images of 2014's
    val (Karpathy's 5K test split is drawn from it); for their exact split put Karpathy's
    ``dataset_coco.json`` in the folder, which is then read instead
    (:func:`~xmodal.data.dataset_layout`) with these labels joined by ``cocoid``.
    ``split="hashing"`` pools the loaded images instead and draws the cross-modal hashing
    protocol the deep hashing papers use on MS-COCO (as DCMH on MIRFlickr): ``n_query``
    random queries (2000; also ``test``), the rest the retrieval ``database``, ``n_train``
    (10000) training images drawn from it, seeded by ``seed``; it needs the category labels.
    ``year``: 2014 or 2017 (default 2014 when its caption files are there, else 2017).
    ``max_captions``: the first that many captions of each image by annotation id (default
    five, the papers' protocol; some images have six or seven), ``None`` keeps all. An image
    with no caption (COCO's own files have none; an edited file may) is left out with a
    warning, counted in ``meta["uncaptioned_dropped"]``.

    ``labels``: ``"auto"`` reads the 80 categories from ``instances_<split><year>.json``
    when every loaded split has one (one of several missing: a :class:`DataError` naming
    it); ``True`` requires them; ``False`` loads captions only. ``drop_unlabelled``
    (default True, as DCMH/SSAH-style MS-COCO): images with no category are dropped (about
    1% of COCO; ``meta["unlabelled_dropped"]`` counts them); False keeps them with an
    all-zero label row. Images are looked up under ``image_dir``, else in
    ``<split><year>/`` beside ``annotations/`` (or in a sub-folder), decided from a sample.
    """
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"{root}: no such folder (a COCO download holding annotations/)")
    if labels not in (True, False, "auto"):
        raise DataError(f"{root}: labels must be True, False or 'auto', got {labels!r}")
    _check_bool(drop_unlabelled, "drop_unlabelled", root)
    if max_captions is not None and (isinstance(max_captions, bool) or not isinstance(max_captions, int)
                                     or max_captions < 1):
        raise DataError(f"{root}: max_captions must be a positive integer or None, got {max_captions!r}")
    if image_dir is not None and not Path(image_dir).is_dir():
        raise DataError(f"{image_dir}: image folder not found (images of {root})")
    if split not in ("official", "hashing"):
        raise DataError(f"{root}: split must be 'official' or 'hashing', got {split!r}")
    if split == "hashing" and labels is False:
        raise DataError(f"{root}: split='hashing' ranks by shared categories; it needs the labels "
                        "(instances_*.json), so labels=False does not go with it")
    year, caption_files = coco_caption_files(root, year)
    if not caption_files:
        raise DataError(f"{root / ANNOTATION_DIR / f'captions_train{year}.json'}: file not found, nor "
                        f"captions_val{year}.json (not a COCO download)")
    all_ids, paths, image_ids, texts, t2i, splits, dropped, uncaptioned = [], [], [], [], [], {}, 0, 0
    for part, cap_path in caption_files.items():
        ids, names, caps, rows, n_dropped, n_uncaptioned = _read_captions(cap_path, max_captions)
        uncaptioned += n_uncaptioned
        folder = _image_folder(root, part, year, names, None if image_dir is None else Path(image_dir))
        start = len(paths)
        splits[part] = np.arange(start, start + len(ids))
        all_ids.append(ids)
        prefix = os.path.join(str(folder), "")  # a join per image, not a Path (123,287 of them)
        paths += [prefix + n for n in names]
        image_ids += [os.path.splitext(os.path.basename(n))[0] for n in names]
        texts += caps
        t2i.append(rows + start)
        dropped += n_dropped
    ids = np.concatenate(all_ids)
    if len(np.unique(ids)) != len(ids):  # the same image in both splits: not one release
        raise DataError(f"{', '.join(str(p) for p in caption_files.values())}: an image id is in both files")
    label_matrix, names, label_files = None, None, []
    if labels is not False:
        inst = coco_instances_files(root, year, list(caption_files))
        missing = [s for s in caption_files if s not in inst]
        if missing and (inst or labels is True):
            raise DataError(f"{caption_files[missing[0]].parent / f'instances_{missing[0]}{year}.json'}: file "
                            "not found (the category labels of that split; pass labels=False to load "
                            "the captions only)")
        label_files = [inst[s] for s in caption_files if s in inst]
        if label_files:
            label_matrix, names, listed = category_labels(label_files, ids)
            if not listed.all():
                i = _first(~listed)
                raise DataError(f"{paths[i]}: image id {int(ids[i])} is in the caption files but in none "
                                f"of {', '.join(p.name for p in label_files)}")
    ds = PairedDataset(
        name="coco", text_to_image=np.concatenate(t2i), n_images=len(paths), image_paths=paths,
        texts=texts, labels=label_matrix, label_names=names, splits=splits, image_ids=image_ids,
        root=str(root),
        meta={"protocol": "coco_official", "layout": "coco_official", "year": year,
              "max_captions": max_captions, "captions_dropped": dropped, "uncaptioned_dropped": uncaptioned,
              "label_files": [str(p) for p in label_files]})
    if label_matrix is not None:
        ds = drop_unlabelled_images(ds, drop_unlabelled)
    if split == "hashing":
        from .mirflickr import hashing_splits

        if label_matrix is None:
            raise DataError(f"{root / ANNOTATION_DIR}: split='hashing' needs COCO's category labels, "
                            f"and no instances_<split>{year}.json is there")
        ds.splits = hashing_splits(ds.n_images, n_query, n_train, seed, name="coco",
                                   what=f"the {ds.n_images} images of {root}")
    ds.meta["split"] = split
    if split == "official":  # what a bench that finds no test split tells the user
        ds.meta["split_hint"] = ("COCO's own files have train and val only: --data-option split=hashing "
                                 "draws the hashing papers' query/database/train split, Karpathy's "
                                 "dataset_coco.json in the folder gives the matching papers' test split")
    return ds


def drop_unlabelled_images(ds: PairedDataset, drop: bool) -> PairedDataset:
    """``ds`` without the images whose label row is all zero when ``drop`` (counted in
    ``meta["unlabelled_dropped"]``, 0 when kept)."""
    unlabelled = ~ds.labels.any(axis=1)
    out = keep_images(ds, ~unlabelled) if drop else ds
    out.meta["unlabelled_dropped"] = int(unlabelled.sum()) if drop else 0
    out.meta["unlabelled"] = int(unlabelled.sum())
    return out
