"""Flickr8k (Hodosh et al., "Framing Image Description as a Ranking Task", JAIR 2013) and
Flickr30k (Young et al., "From image descriptions to visual denotations", TACL 2014) as their
own downloads unpack, five captions per image::

    Flickr8k.token.txt          1000268201_693b08cb0e.jpg#0<TAB>A child in a pink dress ...
    Flickr_8k.trainImages.txt   one image file name a line (6000); devImages (1000) is "val",
    Flickr_8k.devImages.txt     testImages (1000) "test" (also read from Flickr8k_text/)
    Flickr_8k.testImages.txt
    Flicker8k_Dataset/*.jpg     (sic; or Flickr8k_Dataset/, or any sub-folder, or beside)

    results_20130124.token      Flickr30k's captions, the same format (also in flickr30k/)
    results.csv                 or Kaggle's copy: a header ``image_name| comment_number| comment``,
                                then ``1000092795.jpg| 0| Two young guys ...`` (also in
                                flickr30k_images/, its images in flickr30k_images/flickr30k_images/)
    flickr30k-images/*.jpg

    captions.txt                Kaggle's Flickr8k ("adityajn105/flickr8k"): CSV, the header
                                ``image,caption``, then ``1000268201_693b08cb0e.jpg,A child ...``
                                (a caption with a comma or quote quoted as the csv module
                                writes it), five rows per image; no split lists (Flickr8k's own
    Images/*.jpg                are read when beside it). Only with that header and an
                                ``Images/`` (or ``images/``) folder beside it: a ``captions.txt``
                                among photos is no dataset.

A Karpathy file (``dataset_flickr8k.json``, ``dataset_flickr30k.json``) in the same folder is
read instead (:func:`~xmodal.data.dataset_layout`): it carries the papers' splits."""

from __future__ import annotations

import csv
import itertools
import logging
import os
from pathlib import Path
from typing import Callable

import numpy as np

from ._probe import first_rule
from .dataset import DataError, PairedDataset, random_splits, read_text
from .karpathy import IMAGE_EXTENSIONS, image_bases, nested_image_bases

log = logging.getLogger("xmodal.data")

# (file, dataset, format): the caption files of the releases, where they unpack.
FLICKR_CAPTION_FILES: tuple[tuple[str, str, str], ...] = (
    ("Flickr8k.token.txt", "flickr8k", "token"),
    ("Flickr8k_text/Flickr8k.token.txt", "flickr8k", "token"),
    ("results_20130124.token", "flickr30k", "token"),
    ("flickr30k/results_20130124.token", "flickr30k", "token"),
    ("results.csv", "flickr30k", "csv"),
    ("flickr30k_images/results.csv", "flickr30k", "csv"),
    # after Flickr8k's token file: both in one folder, the token file is read
    ("captions.txt", "flickr8k", "kaggle_csv"),
)
# Flickr8k's own split lists, beside its token file; "dev" is the validation split.
FLICKR8K_SPLITS = (("train", "Flickr_8k.trainImages.txt"), ("val", "Flickr_8k.devImages.txt"),
                   ("test", "Flickr_8k.testImages.txt"))
_CSV_HEADER = ["image_name", "comment_number", "comment"]
_KAGGLE8K_HEADER = ["image", "caption"]
# Kaggle's Flickr8k images: Images/ beside captions.txt (images/ on a copy that lower-cased it)
_KAGGLE8K_IMAGES = ("Images", "images")


def _first_line(path: Path) -> str | None:
    try:
        with open(path, "rb") as fh:
            head = fh.readline(4096)
    except OSError:
        return None
    return head.decode("utf-8", errors="replace").lstrip("\ufeff").rstrip("\r\n")


def is_results_csv(path: Path) -> bool:
    """Whether ``path`` opens with the header of Kaggle's Flickr30k ``results.csv`` (a
    ``results.csv`` of anything else leaves its folder alone)."""
    head = _first_line(path)
    return head is not None and [f.strip() for f in head.split("|")] == _CSV_HEADER


def is_kaggle_captions(path: Path) -> bool:
    """Whether ``path`` is Kaggle's Flickr8k ``captions.txt``: it opens with the header
    ``image,caption`` (any case; a byte-order mark allowed) and an ``Images/`` (or
    ``images/``) folder is beside it. A ``captions.txt`` of anything else (a tool's export
    among photos captioned by sidecar files) leaves its folder alone."""
    head = _first_line(path)
    if head is None:
        return False
    try:
        fields = next(csv.reader([head], strict=True), [])
    except csv.Error:
        return False
    return ([f.lower() for f in fields] == _KAGGLE8K_HEADER
            and any((path.parent / d).is_dir() for d in _KAGGLE8K_IMAGES))


def _is_caption_file(path: Path, fmt: str) -> bool:
    if not path.is_file():
        return False
    return is_results_csv(path) if fmt == "csv" else is_kaggle_captions(path) if fmt == "kaggle_csv" else True


def find_flickr_captions(folder: str | os.PathLike) -> tuple[Path, str, str] | None:
    """``folder``'s Flickr caption file, its dataset and format (:data:`FLICKR_CAPTION_FILES`),
    or None; two datasets' files in one folder is an error naming them."""
    folder = Path(folder)
    found = []
    for rel, name, fmt in FLICKR_CAPTION_FILES:
        p = folder / rel
        if name not in [f[1] for f in found] and _is_caption_file(p, fmt):
            found.append((p, name, fmt))
    if len(found) > 1:
        raise DataError(f"{folder}: caption files of two datasets ({', '.join(str(f[0]) for f in found)}); "
                        "pass the folder of one")
    return found[0] if found else None


def flickr_split_files(caption_file: Path, dataset: str) -> dict[str, Path]:
    """Flickr8k's split lists beside its token file or Kaggle's ``captions.txt`` (those
    there); none for Flickr30k."""
    if dataset != "flickr8k":
        return {}
    return {split: caption_file.parent / f for split, f in FLICKR8K_SPLITS if (caption_file.parent / f).is_file()}


def flickr_files(folder: str | os.PathLike) -> list[Path]:
    """The files :func:`load_flickr` reads in ``folder``: the caption file and split lists."""
    found = find_flickr_captions(folder)
    if found is None:
        return []
    return [found[0], *flickr_split_files(found[0], found[1]).values()]


def read_flickr_captions(path: Path, fmt: str) -> tuple[dict[str, list[tuple[int, str]]], list[str]]:
    """Each image's ``(caption number, caption)`` pairs in file order, and the rows skipped.

    ``token`` lines are ``<image>#<n><TAB><caption>``: a malformed one is a :class:`DataError`
    naming the file and line. ``csv`` (Kaggle's ``results.csv``) rows are
    ``<image>| <n>| <caption>`` after the header; that copy has malformed rows (one lacks the
    ``|`` before its caption), so a malformed row is skipped and listed (``file:line: why``)
    rather than refused. ``kaggle_csv`` (Kaggle's Flickr8k ``captions.txt``) rows are
    ``<image>,<caption>`` after the header, numbered in file order; the caption is the rest of
    the line (commas and all), unquoted when the csv module quoted it; a row whose first field
    is no image file name, whose caption is empty or whose quoting is broken is skipped and
    listed, as for ``results.csv``."""
    captions: dict[str, list[tuple[int, str]]] = {}
    skipped: list[str] = []
    lines = read_text(path).splitlines()
    for lineno, line in enumerate(lines, 1):
        if not line.strip() or (fmt in ("csv", "kaggle_csv") and lineno == 1):
            continue
        if fmt == "kaggle_csv":
            name, sep, rest = line.partition(",")
            name = name.strip()
            text, why = _kaggle_caption(rest)
            if not sep or not name or Path(name).suffix.lower() not in IMAGE_EXTENSIONS:
                why = "expected '<image>,<caption>' (an image file name first)"
            num = str(len(captions.get(name, ())))  # file order
        elif fmt == "token":
            key, sep, text = line.partition("\t")
            name, hash_, num = key.strip().rpartition("#")
            why = ("expected '<image>#<n><TAB><caption>'" if not sep or not hash_ or not name
                   else f"caption number {num!r} is not a number" if not num.isdigit()
                   else "empty caption" if not text.strip() else None)
        else:
            parts = line.split("|", 2)
            name, num, text = (p.strip() for p in parts) if len(parts) == 3 else (parts[0].strip(), "", "")
            why = ("expected '<image>| <n>| <caption>'" if len(parts) != 3 or not name
                   else f"comment number {num!r} is not a number" if not num.isdigit()
                   else "empty comment" if not text else None)
        if why is not None:
            if fmt == "token":
                raise DataError(f"{path}:{lineno}: {why}, got {line[:80]!r}")
            skipped.append(f"{path}:{lineno}: {why}, got {line[:80]!r}")
            continue
        captions.setdefault(name, []).append((int(num), " ".join(text.split())))
    if skipped:
        log.warning("%s: skipped %d malformed row(s), e.g. %s", path, len(skipped), skipped[0])
    if not captions:
        raise DataError(f"{path}: no captions")
    return captions, skipped


def _kaggle_caption(rest: str) -> tuple[str, str | None]:
    """The caption of a ``captions.txt`` row after its image name, and why it is malformed
    (None when it is not). Not a csv parse of the whole row: a caption written with its
    commas unquoted keeps them, and a broken quote spoils its own row, not the rows after it."""
    text = rest.strip()
    if text.startswith('"'):
        try:
            fields = next(csv.reader([text], strict=True))
        except csv.Error as exc:
            return "", f"caption quoted as CSV but malformed ({exc})"
        if len(fields) != 1:
            return "", "text after the quoted caption"
        text = fields[0]
    return text, None if text.strip() else "empty caption"


def _read_split_list(path: Path, captions: dict, caption_file: Path) -> list[str]:
    names, first_line = [], {}
    for lineno, line in enumerate(read_text(path).splitlines(), 1):
        name = line.strip()
        if not name:
            continue
        if name not in captions:
            raise DataError(f"{path}:{lineno}: image {name} has no caption in {caption_file.name}")
        if name in first_line:  # kept, it would count twice in its split
            raise DataError(f"{path}:{lineno}: image {name} listed twice (first at line {first_line[name]})")
        first_line[name] = lineno
        names.append(name)
    return names


def _same(name: str) -> str:
    return name


def _other_case(name: str) -> str:
    """``name`` with its extension in the other case (``a.jpg`` <-> ``a.JPG``): a copy that went
    through a camera's or Windows' tools."""
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem or ext.upper() == ext.lower():
        return name
    return f"{stem}.{ext.upper() if ext.islower() else ext.lower()}"


ImageRule = tuple[Path, Callable[[str], str]]


def _image_rule(root: Path, caption_file: Path, names: list[str], image_dir: Path | None) -> ImageRule:
    # Decided once from a sample (_probe): the first folder near the caption file (or the
    # given folder) that holds a sampled image, under its name or with its extension in the
    # other case; else the usual image folder names.
    def rules(bases):
        for base in bases:
            yield base, _same
            yield base, _other_case

    def path_of(rule: ImageRule, name: str) -> Path:
        return rule[0] / rule[1](name)

    if image_dir is not None:
        return first_rule(rules([image_dir]), names, path_of) or (image_dir, _same)
    bases = list(dict.fromkeys(image_bases(caption_file.parent) + image_bases(root)))
    found = first_rule(rules(bases), names, path_of)
    if found is None:  # an image zip unpacked into a folder of its name: one level further down
        found = first_rule(rules(itertools.chain(nested_image_bases(caption_file.parent),
                                                 nested_image_bases(root))), names, path_of)
    if found is not None:
        return found
    usual = ("Flicker8k_Dataset", "Flickr8k_Dataset", "flickr30k-images", "flickr30k_images") + _KAGGLE8K_IMAGES
    return next((b for b in bases if b.name in usual), root), _same


def _check_size(value: object, name: str, where: Path) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise DataError(f"{where}: {name} must be a non-negative integer, got {value!r}")


def load_flickr(path: str | os.PathLike, n_val: int = 1000, n_test: int = 1000, seed: int = 0,
                image_dir: str | os.PathLike | None = None) -> PairedDataset:
    """Flickr8k or Flickr30k from its own caption file (see the module docstring) in the
    folder ``path``, named ``"flickr8k"`` / ``"flickr30k"``, every caption of each image
    (five), images in file-name order.

    Splits: Flickr8k's own lists, beside its token file or Kaggle's ``captions.txt`` (train 6000,
    ``devImages`` as ``"val"`` 1000, test 1000);
    the images of its token file that no list names (92 in the release, one of them
    ``2258277193_586949ec62.jpg.1``, no image) are left out, as Karpathy's split leaves them
    (``meta["images_without_split"]``). Flickr30k has no official split: the papers' sizes,
    ``n_val`` (1000) and ``n_test`` (1000) images drawn at random with ``seed`` (0), the rest
    ``"train"`` (Flickr8k without its lists too, as Kaggle's ``captions.txt`` comes); this is
    not Karpathy's split, which a ``dataset_flickr30k.json`` / ``dataset_flickr8k.json`` in
    the folder gives instead. Kaggle's ``results.csv`` and ``captions.txt``: a malformed row
    is skipped, listed in ``meta["malformed_rows"]`` (``file:line: why``) and
    logged; a malformed line of a ``.token`` file is a :class:`DataError` naming file and line.
    Images are looked up under ``image_dir``, else in the first folder near the caption file
    that holds one of a sample of them (also one level further down, ``Images/Images/``), under
    the name the caption file gives or with its extension in the other case (``.JPG``)."""
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"{root}: no such folder (a Flickr8k or Flickr30k download)")
    _check_size(n_val, "n_val", root)
    _check_size(n_test, "n_test", root)
    if image_dir is not None and not Path(image_dir).is_dir():
        raise DataError(f"{image_dir}: image folder not found (images of {root})")
    found = find_flickr_captions(root)
    if found is None:
        raise DataError(f"{root / 'Flickr8k.token.txt'}: file not found, nor results_20130124.token, "
                        "Flickr30k's results.csv or Kaggle's Flickr8k captions.txt (header image,caption, "
                        "beside Images/) (not a Flickr8k or Flickr30k download)")
    caption_file, name, fmt = found
    captions, skipped = read_flickr_captions(caption_file, fmt)
    split_files = flickr_split_files(caption_file, name)
    without_split = 0
    if split_files:
        missing = [f for _, f in FLICKR8K_SPLITS if caption_file.parent / f not in split_files.values()]
        if missing:
            raise DataError(f"{caption_file.parent / missing[0]}: file not found (one of Flickr8k's "
                            "three split lists, beside the others)")
        lists = {s: _read_split_list(p, captions, caption_file) for s, p in split_files.items()}
        where: dict[str, str] = {}
        for s, names in lists.items():
            for n in names:
                if where.setdefault(n, s) != s:
                    raise DataError(f"{split_files[s]}: image {n} is also in {split_files[where[n]].name}")
        images = sorted(where)
        without_split = len(captions) - len(images)
        row = {n: i for i, n in enumerate(images)}
        splits = {s: np.sort([row[n] for n in names]) for s, names in lists.items()}
        protocol = "official"
    else:
        images = sorted(captions)
        n = len(images)
        if n_val + n_test >= n:
            fit = max(1, n // 10) if n >= 3 else 0  # sizes that leave images to train on
            raise DataError(f"{caption_file}: read as {name}'s captions, whose seeded random split of {n_val} "
                            f"val + {n_test} test images leaves none of its {n} images to train on; pass "
                            f"smaller n_val / n_test (from the command line --data-option n_val={fit} "
                            f"--data-option n_test={fit}, or =0 to index without splits)")
        splits = random_splits(n, {"val": n_val, "test": n_test, "train": -1}, seed=seed)
        protocol = "random_split"
    folder, file_name = _image_rule(root, caption_file, images, None if image_dir is None else Path(image_dir))
    texts, t2i = [], []
    for i, img in enumerate(images):
        for _, text in sorted(captions[img], key=lambda c: c[0]):  # stable: file order on ties
            texts.append(text)
            t2i.append(i)
    return PairedDataset(
        name=name, text_to_image=np.asarray(t2i), n_images=len(images),
        image_paths=[str(folder / file_name(n)) for n in images], texts=texts,
        splits={s: splits[s] for s in ("train", "val", "test") if s in splits},
        image_ids=[Path(n).stem if n.lower().endswith((".jpg", ".jpeg")) else n for n in images],
        root=str(root),
        meta={"protocol": protocol, "layout": "flickr_tokens", "caption_file": caption_file.name,
              "seed": seed if protocol == "random_split" else None, "malformed_rows": skipped,
              "images_without_split": without_split})
