"""Which layout :func:`~xmodal.data.load_dataset` reads a folder as, and which files it reads
for it: what a dataset fingerprint hashes (:func:`xmodal.evaluation.fingerprint.dataset_fingerprint`)
and what tells a dataset folder from a folder of images (``xmodal index``)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .dataset import DataError


@dataclass(frozen=True)
class SourceFiles:
    """The files a dataset given by path is read from, images left out (their list is in these).

    ``root``: the folder the digest names the files relative to (a file moved between category
    folders is another dataset); ``None`` for the layouts fingerprinted before the release
    loaders existed, whose digests name each file by its file name only (records made then
    keep resuming)."""

    layout: str
    files: list[Path] = field(default_factory=list)
    root: Path | None = None

    def names(self) -> list[str] | None:
        """The names the digest gives the files (see ``root``)."""
        if self.root is None:
            return None
        prefix = os.path.join(str(self.root), "")
        # String slicing: os.path.relpath costs ~0.1 s on Wikipedia's 2,866 texts, every run.
        return [str(f)[len(prefix):].replace(os.sep, "/") if str(f).startswith(prefix)
                else Path(os.path.relpath(f, self.root)).as_posix() for f in self.files]


# Files or folders that tell the release folders of the named loaders; Pascal Sentences is
# told by :func:`~xmodal.data.pascal.is_pascal_folder` (a page must hold its table).
RELEASE_MARKERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("wikipedia", ("trainset_txt_img_cat.list",)),
    ("nus_wide", ("ImageList/Imagelist.txt", "Imagelist.txt")),
    ("mirflickr25k", ("mirflickr/meta/tags", "meta/tags")),
)


def release_of(path: str | os.PathLike) -> str | None:
    """The named dataset whose release layout the folder ``path`` holds, or None."""
    from .pascal import is_pascal_folder

    folder = Path(path)
    if not folder.is_dir():
        return None
    for name, markers in RELEASE_MARKERS:
        if any((folder / m).exists() for m in markers):
            return name
    return "pascal_sentences" if is_pascal_folder(folder) else None


def dataset_layout(path: str | os.PathLike) -> str | None:
    """The layout :func:`~xmodal.data.load_dataset` reads the folder ``path`` as (it dispatches
    on this, so loading, fingerprints and ``xmodal index`` agree), tested in this order: the
    explicit file sets first, ``"karpathy"`` (``dataset.json`` / a ``dataset_*.json`` that is
    a Karpathy file), ``"cleaned_lists"`` (``all_imgs.txt``, ...), ``"index_caption_mat"``
    (``index.mat`` + ``caption.mat`` + ``label.mat``), ``"dcmh_mat"`` (``.mat`` files holding
    the DCMH variables); then a release by its markers (``"wikipedia"``, ``"nus_wide"``,
    ``"mirflickr25k"``: :data:`RELEASE_MARKERS`; ``"pascal_sentences"``: ``sentence/``
    beside ``dataset/``, or the dataset's page); last the caption files of a dataset's own
    download, so that no folder read before as another layout changes its answer:
    ``"coco_official"`` (``annotations/captions_<split><year>.json``,
    :func:`~xmodal.data.coco.load_coco`) and ``"flickr_tokens"`` (``Flickr8k.token.txt``,
    ``results_20130124.token``, Kaggle's Flickr30k ``results.csv`` or Kaggle's Flickr8k
    ``captions.txt``: header ``image,caption``, an ``Images/`` folder beside it;
    :func:`~xmodal.data.flickr.load_flickr`). A Karpathy file beside those wins: it carries
    the papers' splits. None for a folder that is none of these (a web page or a tool's
    ``dataset_*.json`` among photos) or not a folder."""
    from .dcmh_mat import has_dcmh_files, is_index_caption_folder
    from .karpathy import find_karpathy_file

    folder = Path(path)
    if not folder.is_dir():
        return None
    try:
        if find_karpathy_file(folder) is not None:
            return "karpathy"
    except DataError:  # several Karpathy files: still a Karpathy folder, the loader names them
        return "karpathy"
    if (folder / "all_imgs.txt").is_file():
        return "cleaned_lists"
    if is_index_caption_folder(folder):
        return "index_caption_mat"
    if has_dcmh_files(folder):
        return "dcmh_mat"
    release = release_of(folder)
    if release is not None:
        return release
    return official_layout(folder)


def official_layout(folder: Path) -> str | None:
    """``"coco_official"`` or ``"flickr_tokens"`` when ``folder`` holds the caption files of
    that download (see :func:`dataset_layout`), else None."""
    from .coco import is_coco_folder
    from .flickr import find_flickr_captions

    if is_coco_folder(folder):
        return "coco_official"
    try:
        if find_flickr_captions(folder) is not None:
            return "flickr_tokens"
    except DataError:  # two datasets' caption files: still Flickr's, the loader names them
        return "flickr_tokens"
    return None


def _existing(*paths: Path) -> list[Path]:
    return [p for p in paths if p.is_file()]


def _legacy(folder: Path, layout: str) -> SourceFiles:
    # What fingerprints hashed before the release loaders: the folder's .json files and .mat
    # files (also one level down). That covers Karpathy files, DCMH and index/caption/label .mat.
    from .dcmh_mat import _candidate_files

    return SourceFiles(layout, sorted(folder.glob("*.json")) + _candidate_files(folder), None)


def _cleaned(folder: Path) -> list[Path]:
    return _existing(*(folder / n for n in ("all_imgs.txt", "all_tags.txt", "all_txts.txt", "all_labels.txt")))


def _wikipedia(path: Path) -> list[Path]:
    from ._root import resolve_dataset_dir

    root = resolve_dataset_dir("wikipedia", str(path), marker="trainset_txt_img_cat.list")
    texts = sorted(p for p in (root / "texts").glob("*.xml") if p.is_file())
    return _existing(root / "categories.list", root / "trainset_txt_img_cat.list",
                     root / "testset_txt_img_cat.list", root / "raw_features.mat") + texts


def _nus_wide(path: Path) -> list[Path] | None:
    from .nuswide import CONCEPT_FILES, _find_root, release_files

    root = _find_root(str(path))
    files = release_files(root)  # the loader's own choice of label folder and tag files
    if not files.image_list.exists():
        return None
    d = files.label_dir
    labels = sorted(p for p in d.glob("Labels_*.txt") if p.is_file()) if d.is_dir() else []
    # the split lists too when present: split="official" reads them whatever labels it has
    return _existing(*files.lists_read(official=True), *files.tag_files, files.tag_list,
                     *(root / c for c in CONCEPT_FILES)) + labels


def _mirflickr(path: Path) -> list[Path] | None:
    from .mirflickr import MIRFLICKR_LABELS, _TAGS_RE, _annotation_dir, _find_root, _release_dir

    root = _find_root(str(path))
    if (root / "all_tags.txt").exists():
        return _cleaned(root)
    release = _release_dir(root)
    if release is None:
        return None
    tag_dir = release / "meta" / "tags"
    numbered = [(int(m.group(1)), p) for p in tag_dir.iterdir() if (m := _TAGS_RE.fullmatch(p.name))]
    files = [p for _, p in sorted(numbered)] + _existing(release / "doc" / "common_tags.txt")
    try:
        ann = _annotation_dir(root, release)
    except DataError:  # the loader names what is missing
        return files
    return files + _existing(*(ann / f"{name}.txt" for name in MIRFLICKR_LABELS))


def _pascal(path: Path) -> list[Path]:
    from .pascal import find_pascal_root

    root, page = find_pascal_root(str(path))  # the loader's own choice of folder and page
    if page is not None:
        return [page]
    # One sentence file per image, in its category's folder: their paths list the images.
    return sorted(p for p in (root / "sentence").rglob("*") if p.is_file() and not p.name.startswith("."))


def _label_files(karpathy_file: Path) -> list[Path]:
    from .coco import karpathy_label_files

    try:
        return karpathy_label_files(karpathy_file, warn=False)
    except (DataError, OSError):
        return []


def _karpathy(folder: Path) -> SourceFiles:
    # As before the labels, plus the COCO instances files a Karpathy COCO file is joined with
    # (in annotations/, which the legacy list of top-level .json files misses).
    from .karpathy import find_karpathy_file

    source = _legacy(folder, "karpathy")
    try:
        found = find_karpathy_file(folder)
    except DataError:  # several: the loader names them
        found = None
    extra = [f for f in _label_files(found) if f not in source.files] if found is not None else []
    return SourceFiles("karpathy", source.files + extra, None)


def _coco(path: Path) -> list[Path]:
    from .coco import coco_files

    return coco_files(path)


def _flickr(path: Path) -> list[Path]:
    from .flickr import flickr_files

    return flickr_files(path)


def dataset_files(path: str | os.PathLike) -> SourceFiles:
    """The files :func:`~xmodal.data.load_dataset` reads for the dataset given by ``path`` (a
    file, or a folder in one of the layouts of :func:`dataset_layout`): label, tag, list,
    caption and ``.mat`` files, never the images themselves (the lists name them). A file is
    itself (a Karpathy COCO file: with the COCO instances files it is joined with); a folder
    of a layout read before the release loaders (Karpathy file, DCMH or index/caption/label
    ``.mat``, or none) gives its ``.json`` and ``.mat`` files, as before (a Karpathy COCO
    file's instances files in ``annotations/`` added)."""
    p = Path(path)
    if p.is_file():
        # A Karpathy COCO file is read with the instances files beside it (its labels).
        return SourceFiles("file", [p] + _label_files(p) if p.suffix.lower() == ".json" else [p], None)
    if not p.is_dir():
        return SourceFiles("missing", [], None)
    layout = dataset_layout(p)
    if layout is None:
        return _legacy(p, "folder")
    readers = {"cleaned_lists": _cleaned, "wikipedia": _wikipedia, "nus_wide": _nus_wide,
               "mirflickr25k": _mirflickr, "pascal_sentences": _pascal, "coco_official": _coco,
               "flickr_tokens": _flickr}
    if layout == "karpathy":
        return _karpathy(p)
    if layout not in readers:
        return _legacy(p, layout)
    try:
        files = readers[layout](p)
    except (DataError, OSError):  # a broken folder: the loader's own error says what is wrong
        files = None
    if files is None:
        return _legacy(p, layout)
    return SourceFiles(layout, files, p)
