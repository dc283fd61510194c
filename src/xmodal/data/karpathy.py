"""Karpathy-format caption datasets (a ``dataset.json`` + an image folder): Flickr8k, Flickr30k,
MSCOCO and UCM-Captions (Qu et al., "Deep Semantic Understanding of High Resolution Remote
Sensing Image", CITS 2016) all ship in this layout. Karpathy's ``caption_datasets.zip`` names
the files ``dataset_coco.json``, ``dataset_flickr30k.json`` and ``dataset_flickr8k.json``; the
images sit wherever their own download unpacked them (``train2014/`` + ``val2014/`` for COCO,
named by each record's ``filepath``, or COCO 2017's ``train2017/`` + ``val2017/``;
``flickr30k-images/``; ``Flicker8k_Dataset/``)."""

from __future__ import annotations

import itertools
import json
import os
import re
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from ._probe import PROBE_SAMPLE, first_rule
from ._root import resolve_dataset_dir
from .dataset import DataError, PairedDataset, one_hot, read_text

# Karpathy's split names ("restval" counts as train); the evaluation reads these.
KNOWN_SPLITS = ("train", "val", "test")
# HEIC/HEIF are listed so that a folder's phone photos reach the encoder, which skips them by
# name with the reason where Pillow has no decoder for them (rather than leaving them out unsaid).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp", ".gif", ".avif", ".heic", ".heif")
# Image-text matching papers (VSE++, SCAN, ...) keep the first five captions of each COCO image
# (25,000 for the 5K test); Karpathy's file gives some images six or seven.
COCO_CAPTIONS = 5

UCM_CLASSES = [
    "agricultural", "airplane", "baseballdiamond", "beach", "buildings", "chaparral",
    "denseresidential", "forest", "freeway", "golfcourse", "harbor", "intersection",
    "mediumresidential", "mobilehomepark", "overpass", "parkinglot", "river", "runway",
    "sparseresidential", "storagetanks", "tenniscourt",
]


def resolve_image(folder: Path, filename: str) -> Path:
    """The file for ``filename`` in ``folder``, whatever its extension (``1.tif`` -> ``1.jpg``)."""
    direct = folder / filename
    if direct.exists():
        return direct
    stem = Path(filename).stem
    parent = direct.parent
    for ext in IMAGE_EXTENSIONS:
        for cand in (parent / (stem + ext), parent / (stem + ext.upper())):
            if cand.exists():
                return cand
    return direct  # missing files are reported by the encoder that reads them


# The "images" key, not a value "images" (its closing quote is followed by ',' or '}').
_IMAGES_KEY = re.compile(rb'(?<!\\)"images"\s*:')


def is_karpathy_head(path: Path) -> bool:
    """Whether ``path`` reads as a Karpathy file: its first 64 KB name the ``"images"`` key
    (Karpathy's files open with that list). An export or a tool's settings saved as
    ``dataset_*.json`` among photos, or JSON-lines pairs, are not one. 64 KB, not a 100 MB parse."""
    try:
        with open(path, "rb") as fh:
            return _IMAGES_KEY.search(fh.read(1 << 16)) is not None
    except OSError:
        return False


def find_karpathy_file(folder: Path) -> Path | None:
    """``folder``'s Karpathy file: ``dataset.json``, else its one ``dataset_*.json`` that is a
    Karpathy file (:func:`is_karpathy_head`; several, as ``caption_datasets.zip`` unpacks, is
    an error naming them); ``None`` when there is none."""
    if (folder / "dataset.json").is_file():
        return folder / "dataset.json"
    found = sorted(p for p in folder.glob("dataset_*.json") if p.is_file() and is_karpathy_head(p))
    if len(found) > 1:
        raise DataError(f"{folder}: several Karpathy files ({', '.join(p.name for p in found)}); "
                        "pass the one to load")
    return found[0] if found else None


def read_json(path: Path) -> object:
    """The JSON document in ``path``; a file that is not JSON is a :class:`DataError` naming
    the file and line."""
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: invalid JSON at line {exc.lineno}: {exc.msg}") from exc


def load_karpathy(path: str | Path, image_dir: str | Path | None = None, name: str | None = None,
                  class_of: Callable[[dict], int] | None = None,
                  label_names: list[str] | None = None, max_captions: int | str | None = "auto",
                  instances: str | Sequence[str | os.PathLike] | None = "auto",
                  drop_unlabelled: bool = False) -> PairedDataset:
    """Load a Karpathy file (``dataset.json``, ``dataset_coco.json``, ... or a folder holding one).
    ``restval`` counts as train, as in the usual protocol; split names match in any case.

    Images are looked up under ``image_dir``, else the first of the file's folder and its
    sub-folders that holds one of the first 200 records' images
    (``record["filepath"]/record["filename"]``, any extension, or COCO 2017's names); the
    layout found for them is applied to every record.
    ``max_captions`` keeps the first that many captions of each image; ``"auto"`` keeps five
    for MSCOCO (the image-text matching protocol: 5,000 test images, 25,000 captions) and all
    of them otherwise; ``None`` keeps all. ``class_of(image_record) -> int`` gives single-label
    classes when the dataset has them.

    COCO's 80 categories as multi-hot labels, joined by each record's ``cocoid`` (what the
    cross-modal hashing papers label MS-COCO with, here on Karpathy's split): ``instances``
    names COCO's ``instances_*.json`` files; ``"auto"`` (default) takes
    ``instances_train2014.json`` + ``instances_val2014.json`` (else 2017's) when they sit
    beside the file or in ``annotations/`` beside it and the records carry ``cocoid``
    (:func:`~xmodal.data.coco.karpathy_label_files`); ``None`` attaches none. With labels,
    images with no category (about 1% of COCO) keep an all-zero label row by default, so
    Karpathy's splits stay whole (the 5K test of the matching papers); ``drop_unlabelled=True``
    drops them from every split, as the hashing papers do (``meta["unlabelled_dropped"]``
    counts them).
    """
    path = Path(path)
    if path.is_dir():
        found = find_karpathy_file(path)
        path = found if found is not None else path / "dataset.json"
    doc = read_json(path)
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list):
        raise DataError(f"{path}: no 'images' list (not a Karpathy-format file)")
    if not doc["images"]:
        raise DataError(f"{path}: the 'images' list is empty")
    if isinstance(doc.get("annotations"), list) and not any(
            isinstance(r, dict) and "sentences" in r for r in doc["images"][:PROBE_SAMPLE]):
        raise DataError(f"{path}: a COCO annotation file, not a Karpathy file; load the folder that "
                        "holds annotations/ (xmodal.data.coco.load_coco)")
    if not isinstance(drop_unlabelled, bool):
        raise DataError(f"{path}: drop_unlabelled must be True or False, got {drop_unlabelled!r}")
    if image_dir is not None and not Path(image_dir).is_dir():
        raise DataError(f"{image_dir}: image folder not found (images of {path})")
    if class_of is None and label_names is None and _is_ucm_release(doc):
        # the UCM-Captions release given by path: its classes, as under its name (the
        # Karpathy file carries none, and label filters on its collection found nothing)
        class_of, label_names = _ucm_class, UCM_CLASSES
    if max_captions == "auto":
        max_captions = COCO_CAPTIONS if str(doc.get("dataset", "")).lower() in ("coco", "mscoco") else None
    if max_captions is not None and (isinstance(max_captions, bool) or not isinstance(max_captions, int)
                                     or max_captions < 1):
        raise DataError(f"{path}: max_captions must be a positive integer, None or 'auto', got {max_captions!r}")
    image_path = _image_rule(path.parent, doc["images"], None if image_dir is None else Path(image_dir))
    image_paths, texts, t2i, splits, classes, image_ids = [], [], [], {}, [], []
    dropped = 0
    seen: dict[tuple[str, str], int] = {}
    for i, rec in enumerate(doc["images"]):
        where = f"{path}: images[{i}]"
        if not isinstance(rec, dict):
            raise DataError(f"{where}: expected an object with 'filename' and 'sentences'")
        if not isinstance(rec.get("filename"), str) or not rec["filename"].strip():
            raise DataError(f"{where}: field 'filename' missing or not a string")
        sents = rec.get("sentences")
        if not sents:
            raise DataError(f"{where} ({rec['filename']}): field 'sentences' missing or empty")
        if not isinstance(sents, list):  # a string would give one "sentence" per character
            raise DataError(f"{where} ({rec['filename']}): field 'sentences' must be a list")
        key = (str(rec.get("filepath") or ""), rec["filename"])
        if key in seen:  # two "different" images that are one file would split its ground truth
            raise DataError(f"{where} ({rec['filename']}): same image as images[{seen[key]}]")
        seen[key] = i
        image_paths.append(str(image_path(rec)))
        image_ids.append(Path(rec["filename"]).stem)
        split = rec.get("split", "train")
        if isinstance(split, str) and split.strip().lower() in (*KNOWN_SPLITS, "restval"):
            split = split.strip().lower()  # "Test" from a hand-made file is test, as in pairs files
        split = "train" if split == "restval" else split
        if split not in KNOWN_SPLITS:  # any other name would be silently left out of evaluation
            raise DataError(f"{where} ({rec['filename']}): unknown split {split!r}; "
                            f"expected one of {[*KNOWN_SPLITS, 'restval']}")
        splits.setdefault(split, []).append(i)
        if max_captions is not None and len(sents) > max_captions:
            dropped += len(sents) - max_captions
            sents = sents[:max_captions]
        for j, s in enumerate(sents):
            raw = s.get("raw") if isinstance(s, dict) else s
            if (raw is None or not str(raw).strip()) and isinstance(s, dict):
                tokens = s.get("tokens")
                raw = " ".join(map(str, tokens)) if isinstance(tokens, list) else None
            if raw is None or isinstance(raw, (dict, list)) or not str(raw).strip():
                raise DataError(f"{where}: sentences[{j}] has no 'raw' text or 'tokens' list")
            texts.append(str(raw).strip())
            t2i.append(i)
        if class_of is not None:
            try:
                c = int(class_of(rec))
            except (ValueError, KeyError, TypeError, IndexError) as exc:  # int(None), a short list
                raise DataError(f"{where}: cannot derive class ({exc})") from exc
            # one_hot() would put -1 in the last column and fail deep in numpy past the end.
            if c < 0 or (label_names is not None and c >= len(label_names)):
                known = f"0..{len(label_names) - 1}" if label_names is not None else "0 or more"
                raise DataError(f"{where} ({rec['filename']}): class {c} outside {known}")
            classes.append(c)
    labels = None
    if class_of is not None:
        labels = one_hot(classes, len(label_names) if label_names else None)
    label_files = _instances_files(path, instances, class_of is not None)
    if label_files:
        labels, label_names = _coco_labels(path, doc["images"], label_files)
    ds = PairedDataset(
        name=name or doc.get("dataset", path.parent.name),
        text_to_image=np.asarray(t2i),
        n_images=len(image_paths),
        image_paths=image_paths,
        texts=texts,
        labels=labels,
        label_names=label_names,
        splits={k: np.asarray(v) for k, v in splits.items()},
        image_ids=image_ids,
        root=str(path.parent),
        meta={"protocol": "karpathy", "max_captions": max_captions, "captions_dropped": dropped},
    )
    if label_files:
        from .coco import drop_unlabelled_images

        ds.meta["label_files"] = [str(p) for p in label_files]
        ds = drop_unlabelled_images(ds, drop_unlabelled)
    return ds


def _instances_files(path: Path, instances: object, has_classes: bool) -> list[Path]:
    """The COCO instances files ``load_karpathy``'s ``instances`` names for the file ``path``."""
    from .coco import karpathy_label_files

    if instances is None:
        return []
    if isinstance(instances, str) and instances == "auto":
        return [] if has_classes else karpathy_label_files(path)
    given = [instances] if isinstance(instances, (str, os.PathLike)) else instances
    # True ("labels, please") or a number would be iterated as a list of files
    if not isinstance(given, Sequence) or not all(isinstance(p, (str, os.PathLike)) for p in given):
        raise DataError(f"{path}: instances must be 'auto', None, or a COCO instances file or list "
                        f"of them, got {instances!r}")
    files = [Path(p) for p in given]
    if has_classes:
        raise DataError(f"{path}: give class_of or instances, not both (each gives the labels)")
    for f in files:
        if not f.is_file():
            raise DataError(f"{f}: file not found (a COCO instances file for {path.name})")
    return files


def _coco_labels(path: Path, records: list, files: list[Path]) -> tuple[np.ndarray, list[str]]:
    """COCO's category labels of Karpathy's ``records``, by their ``cocoid``."""
    from .coco import category_labels

    ids = [_cocoid(r) for r in records]
    if None in ids:
        i = ids.index(None)
        raise DataError(f"{path}: images[{i}] ({records[i]['filename']}): field 'cocoid' missing or not "
                        f"an integer, needed to join the labels of {files[0].name}")
    labels, names, listed = category_labels(files, np.asarray(ids, dtype=np.int64))
    if not listed.all():
        i = int(np.flatnonzero(~listed)[0])
        raise DataError(f"{path}: images[{i}] ({records[i]['filename']}): cocoid {ids[i]} is in none of "
                        f"{', '.join(p.name for p in files)} (instances of another COCO release?)")
    return labels, names


def image_bases(root: Path) -> list[Path]:
    """Where a dataset's images may be: ``root`` or one of its sub-folders (imgs/,
    flickr30k-images/, Flicker8k_Dataset/, images/ holding train2014/...), the usual names first."""
    named = ("imgs", "images", "Images", "img")
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    return list(dict.fromkeys([root / n for n in named if (root / n).is_dir()] + [root] + subdirs))


def nested_image_bases(root: Path) -> Iterator[Path]:
    """The sub-folders of ``root``'s sub-folders, looked in after :func:`image_bases` (lazily:
    listing an image folder of 80,000 files costs time): an image zip unpacked into a folder
    of its name (Flickr8k_Dataset.zip -> ``Flickr8k_Dataset/Flicker8k_Dataset/``, as Windows'
    "Extract All" does). Hidden folders and macOS's ``__MACOSX/`` are passed over."""
    def subdirs(folder: Path) -> list[Path]:
        try:  # scandir: the entry types come with the listing, no stat per image
            with os.scandir(folder) as it:
                return sorted(Path(e.path) for e in it if e.is_dir() and not e.name.startswith(".")
                              and e.name != "__MACOSX")
        except OSError:
            return []

    for sub in subdirs(root):
        yield from subdirs(sub)


def _named(base: Path, rec: dict, ext: str | None = None, doubled: bool = False) -> Path:
    """``base/filepath/filename``, with the extension ``ext`` when given (UCM-Captions' file
    names ``1.tif``; its images are ``1.jpg``); ``doubled``: ``base/filepath/filepath/filename``,
    as ``train2014.zip`` unpacked into a folder of its name holds it."""
    folder = base / str(rec["filepath"]) if rec.get("filepath") else base
    if doubled and rec.get("filepath"):
        folder = folder / str(rec["filepath"])
    name = rec["filename"] if ext is None else Path(rec["filename"]).stem + ext
    return folder / name


def _cocoid(rec: dict) -> int | None:
    c = rec.get("cocoid")
    return c if isinstance(c, int) and not isinstance(c, bool) else None


class _Coco2017:
    """COCO 2017's names for the 2014 images: ``train2017/`` or ``val2017/`` +
    ``<cocoid:012d>.jpg`` (re-split, so which folder is looked up in their listings, read once)."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.names = {sub: set(os.listdir(base / sub)) if (base / sub).is_dir() else set()
                      for sub in ("train2017", "val2017")}

    def __call__(self, rec: dict) -> Path | None:
        cid = _cocoid(rec)
        if cid is None:
            return None
        name = f"{cid:012d}.jpg"
        for sub, names in self.names.items():
            if name in names:
                return self.base / sub / name
        return None


def _image_rule(root: Path, records: list, image_dir: Path | None) -> Callable[[dict], Path]:
    """How each record's image path is built, decided once from a sample of the records
    (:func:`~xmodal.data._probe.first_rule`): under ``image_dir``, else the first of the file's
    folder and its sub-folders where a sampled image exists, as ``filepath/filename``, with
    another extension, or (COCO) by the 2017 release's name. No image found: paths as the first
    candidate folder would hold them."""
    bases = [image_dir] if image_dir is not None else image_bases(root)
    sample = [r for r in records[:PROBE_SAMPLE]
              if isinstance(r, dict) and isinstance(r.get("filename"), str) and r["filename"].strip()]
    exts = [e for ext in IMAGE_EXTENSIONS for e in (ext, ext.upper())]

    def rules():
        for base in itertools.chain(bases, () if image_dir is not None else nested_image_bases(root)):
            yield lambda rec, base=base: _named(base, rec)
            if any(r.get("filepath") for r in sample):
                # train2014/train2014/, val2014/val2014/: each zip unpacked into a folder of its
                # name; one rule for both (the base train2014/ would find no val2014 image)
                yield lambda rec, base=base: _named(base, rec, doubled=True)
            for ext in exts:
                yield lambda rec, base=base, ext=ext: _named(base, rec, ext)
            if any(_cocoid(r) is not None for r in sample) and \
                    any((base / sub).is_dir() for sub in ("train2017", "val2017")):
                coco = _Coco2017(base)
                # Not in the listings: as the 2014 release names it (reported as missing later).
                yield lambda rec, coco=coco, base=base: coco(rec) or _named(base, rec)

    folders: dict[Path, bool] = {}

    def probe(rule: Callable[[dict], Path], rec: dict) -> Path | None:
        # A folder that is not there holds none of the sample: one look, not one per extension.
        p = rule(rec)
        if p.parent not in folders:
            folders[p.parent] = p.parent.is_dir()
        return p if folders[p.parent] else None

    rule = first_rule(rules(), sample, probe)
    return rule if rule is not None else (lambda rec: _named(bases[0], rec))


def _is_ucm_release(doc: dict) -> bool:
    """UCM-Captions' own dataset.json: "dataset": "UCM" and images 1..2100 (class = (id-1)//100)."""
    if str(doc.get("dataset", "")).lower() != "ucm" or len(doc["images"]) != 2100:
        return False
    stems = [Path(str(r.get("filename", ""))).stem if isinstance(r, dict) else "" for r in doc["images"]]
    return sorted(int(t) for t in stems if t.isascii() and t.isdigit()) == list(range(1, 2101))


def _ucm_class(rec: dict) -> int:
    return (int(Path(rec["filename"]).stem) - 1) // 100


def load_ucm_captions(data_dir: str | None = None) -> PairedDataset:
    """UCM-Captions: 2100 aerial images, 21 classes (class = (id-1)//100), 5 captions each."""
    root = resolve_dataset_dir("ucm_captions", data_dir, marker="dataset.json")
    ds = load_karpathy(root / "dataset.json", name="ucm_captions", class_of=_ucm_class,
                       label_names=UCM_CLASSES)
    # Hashing protocol: test queries against the training database.
    ds.splits["query"] = ds.splits["test"]
    ds.splits["database"] = ds.splits["train"]
    return ds
