"""Pascal Sentences (Rashtchian et al., "Collecting Image Annotations Using Amazon's Mechanical
Turk", NAACL-HLT 2010 workshop): 1000 PASCAL VOC 2008 images, 50 in each of 20 categories,
5 sentences each, in the usual download layout (that of the page's scrapers)::

    dataset/<category>/<image>.jpg
    sentence/<category>/<image>.txt     5 sentences, one per line (``<image>txt`` also accepted:
                                        a common download script drops the dot)

or the dataset's page itself saved with its images (``wget -r`` of
vision.cs.uiuc.edu/pascal-sentences/)::

    index.html                          one table row per image: <img src="<category>/<image>.jpg">
                                        and a nested table of its sentences
    <category>/<image>.jpg
"""

from __future__ import annotations

import html.parser
from pathlib import Path

import numpy as np

from ._root import resolve_dataset_dir
from .dataset import DataError, PairedDataset, one_hot, read_text
from .karpathy import IMAGE_EXTENSIONS

def _subdirs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _sentence_file(folder: Path, stem: str) -> Path | None:
    for cand in (folder / f"{stem}.txt", folder / f"{stem}txt"):
        if cand.is_file():
            return cand
    return None


def read_sentences(path: Path, expected: int | None) -> list[str]:
    """Non-empty lines of a sentence file; a blank line may only close the file."""
    lines = read_text(path, strict=False).splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    out = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            raise DataError(f"{path}:{i}: empty sentence")
        if expected is not None and len(out) == expected:
            raise DataError(f"{path}:{i}: sentence {len(out) + 1}, but an image has {expected}")
        out.append(line.strip())
    if not out or (expected is not None and len(out) != expected):
        raise DataError(f"{path}: {len(out)} sentences, expected {expected or 'at least 1'} (one per line)")
    return out


class _PageParser(html.parser.HTMLParser):
    """Rows of the outer table: (line, image src, sentences in the nested table's cells).
    Tolerates the old HTML of the page (cells and rows left unclosed)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.rows: list[tuple[int, str, list[str]]] = []
        self.depth = 0
        self.row: tuple[int, str | None, list[str]] | None = None
        self.cell: list[str] | None = None

    def _close_cell(self) -> None:
        if self.cell is not None and self.row is not None:
            text = " ".join(" ".join(self.cell).split())
            if text:
                self.row[2].append(text)
        self.cell = None

    def _close_row(self) -> None:
        self._close_cell()
        if self.row is not None and self.row[1] is not None:
            self.rows.append(self.row)  # type: ignore[arg-type]
        self.row = None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.depth += 1
        elif tag == "tr" and self.depth == 1:
            self._close_row()
            self.row = (self.getpos()[0], None, [])
        elif tag in ("tr", "td") and self.depth >= 2:
            self._close_cell()
            if tag == "td":
                self.cell = []
        elif tag == "img" and self.row is not None and self.row[1] is None:
            src = dict(attrs).get("src")
            if src:
                self.row = (self.row[0], src, self.row[2])

    def handle_endtag(self, tag):
        if tag == "table":
            self._close_cell() if self.depth >= 2 else self._close_row()
            self.depth = max(0, self.depth - 1)
        elif tag == "tr" and self.depth == 1:
            self._close_row()
        elif tag in ("td", "tr") and self.depth >= 2:
            self._close_cell()

    def handle_data(self, data):
        if self.cell is not None:
            self.cell.append(data)


def read_page(path: Path, expected: int | None) -> list[tuple[str, str, list[str]]]:
    """(category, image path relative to the page, sentences) for each image of the page."""
    parser = _PageParser()
    parser.feed(read_text(path, strict=False))
    parser.close()
    out, seen = [], set()
    for line, src, sents in parser.rows:
        rel = src.replace("\\", "/")
        if "://" in rel:  # an absolute link to the page's own folder
            rel = "/".join(rel.split("/")[-2:])
        while rel.startswith("./"):
            rel = rel[2:]
        parts = rel.split("/")
        if len(parts) < 2:
            raise DataError(f"{path}:{line}: image {src!r} is not in a category folder "
                            "(<category>/<image>.jpg), so its class is unknown")
        if rel in seen:
            raise DataError(f"{path}:{line}: image {src!r} listed twice")
        if not sents or (expected is not None and len(sents) != expected):
            raise DataError(f"{path}:{line}: {src} has {len(sents)} sentences, expected "
                            f"{expected or 'at least 1'}")
        seen.add(rel)
        out.append((parts[-2], rel, sents))
    if not out:
        raise DataError(f"{path}: no table row with an image (not the Pascal Sentences page)")
    return out


PAGE_NAMES = ("index.html", "pascal-sentences.html", "index.htm")


def is_pascal_page(page: str | Path) -> bool:
    """Whether an HTML page holds the Pascal Sentences table (a row with an image in a category
    folder and its sentences), not any web page saved beside photos."""
    parser = _PageParser()
    try:
        parser.feed(read_text(Path(page), strict=False))
        parser.close()
    except (OSError, DataError):
        return False
    return any(sents and "/" in src.replace("\\", "/").lstrip("./") for _, src, sents in parser.rows)


def is_pascal_folder(folder: str | Path) -> bool:
    """Whether ``folder`` itself holds Pascal Sentences: ``sentence/`` beside ``dataset/`` (the
    scrapers' layout), or the dataset's page saved with its images (:func:`is_pascal_page`).
    A ``sentence/`` folder or a web page alone among photos is not."""
    folder = Path(folder)
    if (folder / "sentence").is_dir() and (folder / "dataset").is_dir():
        return True
    return any(is_pascal_page(folder / n) for n in PAGE_NAMES if (folder / n).is_file())


def find_pascal_root(data_dir: str | None) -> tuple[Path, Path | None]:
    """(folder, page): the dataset's folder, and its saved page when that is the layout to read
    (no ``sentence/`` folder); ``--data-dir`` may name the dataset folder itself."""
    root = first_error = None
    for marker in ("sentence", *PAGE_NAMES):
        try:
            root = resolve_dataset_dir("pascal_sentences", data_dir, marker=marker)
            break
        except DataError as exc:
            first_error = first_error or exc
    if root is None:
        raise first_error  # the scrapers' layout is the one to name
    if (root / "sentence").is_dir():
        return root, None
    return root, next((root / n for n in PAGE_NAMES if (root / n).is_file()), None)


def stratified_splits(classes: np.ndarray, sizes: dict[str, int], seed: int = 0,
                      class_names: list[str] | None = None, source: str = "") -> dict[str, np.ndarray]:
    """Per class: ``sizes[name]`` random items for each named split, the rest in ``train``."""
    rng = np.random.default_rng(seed)
    out: dict[str, list[np.ndarray]] = {name: [] for name in ("train", *sizes)}
    need = sum(sizes.values())
    for c in np.unique(classes):
        idx = rng.permutation(np.flatnonzero(classes == c))
        if len(idx) <= need:
            name = class_names[c] if class_names else c
            raise DataError(f"{source}class {name} has {len(idx)} images; splits {sizes} need more than {need} "
                            "(smaller splits: n_val_per_class, n_test_per_class; from the command line "
                            "--data-option n_val_per_class=1, or =0 to index without splits)")
        start = 0
        for name, size in sizes.items():
            out[name].append(idx[start:start + size])
            start += size
        out["train"].append(idx[start:])
    return {name: np.sort(np.concatenate(parts)) for name, parts in out.items()}


def load_pascal_sentences(data_dir: str | None = None, n_val_per_class: int = 5, n_test_per_class: int = 5,
                          seed: int = 0, sentences_per_image: int | None = 5) -> PairedDataset:
    """Pascal Sentences: image paths and raw sentences, one-hot category labels, no features.

    Categories are the ``dataset/`` sub-folders in sorted order (the 20 PASCAL VOC classes).
    Splits follow the common cross-modal protocol: per category ``n_test_per_class`` test and
    ``n_val_per_class`` validation images, the rest train (800/100/100 on the full set),
    drawn with ``seed``; ``query`` = test and ``database`` = train for hashing.
    ``sentences_per_image=None`` accepts any positive count per file.
    """
    root, page = find_pascal_root(data_dir)
    if page is not None:
        entries = read_page(page, sentences_per_image)
        categories = sorted({cat for cat, _, _ in entries})
        image_paths, image_ids, classes, texts, t2i = [], [], [], [], []
        for cat, rel, sents in entries:
            t2i += [len(image_paths)] * len(sents)
            texts += sents
            image_paths.append(str(page.parent / rel))
            image_ids.append(Path(rel).stem)
            classes.append(categories.index(cat))
        return _pascal_dataset(root, image_paths, image_ids, classes, texts, t2i, categories,
                               n_val_per_class, n_test_per_class, seed, source=f"{page}: ")
    img_root, sent_root = root / "dataset", root / "sentence"
    for folder in (img_root, sent_root):
        if not folder.is_dir():
            raise DataError(f"{folder}: folder not found")
    categories = _subdirs(img_root)
    if not categories:
        raise DataError(f"{img_root}: no category folders")
    extra = sorted(set(_subdirs(sent_root)) - set(categories))
    if extra:
        raise DataError(f"{sent_root / extra[0]}: sentence category with no image folder {img_root / extra[0]}")
    image_paths, image_ids, classes, texts, t2i = [], [], [], [], []
    for c, cat in enumerate(categories):
        sdir = sent_root / cat
        if not sdir.is_dir():
            raise DataError(f"{sdir}: folder not found (images in {img_root / cat})")
        files = sorted(p for p in (img_root / cat).iterdir()
                       if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))
        if not files:
            raise DataError(f"{img_root / cat}: no images")
        stems = set()
        for p in files:
            if p.stem in stems:  # 1.jpg and 1.png would both take 1.txt's sentences
                raise DataError(f"{p}: another image in {p.parent} is also named {p.stem!r}; "
                                "one sentence file cannot describe both")
            spath = _sentence_file(sdir, p.stem)
            if spath is None:
                raise DataError(f"{sdir / (p.stem + '.txt')}: file not found (sentences of {p})")
            for s in read_sentences(spath, sentences_per_image):
                texts.append(s)
                t2i.append(len(image_paths))
            stems.add(p.stem)
            image_paths.append(str(p))
            image_ids.append(p.stem)
            classes.append(c)
        for s in sorted(sdir.iterdir()):
            stem = s.name[:-4] if s.name.endswith(".txt") else s.name[:-3] if s.name.endswith("txt") else None
            # "._NAME" files are macOS metadata (AppleDouble), written beside each file by
            # tar/zip on macOS or a copy to a FAT drive: no sentence file, as images skip them
            if stem is not None and s.is_file() and stem not in stems and not s.name.startswith("."):
                raise DataError(f"{s}: sentence file with no image in {img_root / cat}")
    return _pascal_dataset(root, image_paths, image_ids, classes, texts, t2i, categories,
                           n_val_per_class, n_test_per_class, seed, source=f"{img_root}: ")


def _pascal_dataset(root: Path, image_paths: list[str], image_ids: list[str], classes: list[int],
                    texts: list[str], t2i: list[int], categories: list[str], n_val_per_class: int,
                    n_test_per_class: int, seed: int, source: str) -> PairedDataset:
    classes_arr = np.asarray(classes)
    splits = stratified_splits(classes_arr, {"test": n_test_per_class, "val": n_val_per_class}, seed,
                               categories, source=source)
    splits["query"], splits["database"] = splits["test"], splits["train"]
    return PairedDataset(
        name="pascal_sentences", text_to_image=np.asarray(t2i), n_images=len(image_paths),
        image_paths=image_paths, texts=texts, labels=one_hot(classes_arr, len(categories)),
        label_names=categories, splits=splits, image_ids=image_ids, root=str(root),
        meta={"protocol": "pascal_sentences", "seed": seed},
    )
