"""Pascal Sentences (Rashtchian et al., "Collecting Image Annotations Using Amazon's Mechanical
Turk", NAACL-HLT 2010 workshop): 1000 PASCAL VOC 2008 images, 50 in each of 20 categories,
5 sentences each, in the usual download layout (that of the page's scrapers)::

    dataset/<category>/<image>.jpg
    sentence/<category>/<image>.txt     5 sentences, one per line (``<image>txt`` also accepted:
                                        a common download script drops the dot)
"""

from __future__ import annotations

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
            raise DataError(f"{source}class {name} has {len(idx)} images; splits {sizes} need more than {need}")
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
    root = resolve_dataset_dir("pascal_sentences", data_dir, marker="sentence")
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
            if stem is not None and s.is_file() and stem not in stems:
                raise DataError(f"{s}: sentence file with no image in {img_root / cat}")
    classes_arr = np.asarray(classes)
    splits = stratified_splits(classes_arr, {"test": n_test_per_class, "val": n_val_per_class}, seed,
                               categories, source=f"{img_root}: ")
    splits["query"], splits["database"] = splits["test"], splits["train"]
    return PairedDataset(
        name="pascal_sentences", text_to_image=np.asarray(t2i), n_images=len(image_paths),
        image_paths=image_paths, texts=texts, labels=one_hot(classes_arr, len(categories)),
        label_names=categories, splits=splits, image_ids=image_ids, root=str(root),
        meta={"protocol": "pascal_sentences", "seed": seed},
    )
