"""Wikipedia cross-modal dataset (Rasiwasia et al., "A New Approach to Cross-Modal Multimedia
Retrieval", ACM MM 2010), in its original release layout: ``wikipedia_dataset/`` (also found
as ``wikipedia/`` or ``wikipedia_info/``, or named by --data-dir) holding ``categories.list``,
``trainset_txt_img_cat.list``, ``testset_txt_img_cat.list``, ``texts/<text_id>.xml``,
``images/<category>/<image_id>.jpg`` and ``raw_features.mat`` (MATLAB v5 as released, or
re-saved as v7.3)."""

from __future__ import annotations

import html
import re
from pathlib import Path

import numpy as np

from ._matio import MatFile
from ._root import resolve_dataset_dir
from .dataset import DataError, PairedDataset, one_hot, read_text

_TEXT_RE = re.compile(r"<text>(.*?)</text>", re.S)


def _read_list(path: Path, n_categories: int) -> list[tuple[str, str, int]]:
    rows = []
    for lineno, line in enumerate(read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 3:
            raise DataError(f"{path}:{lineno}: expected 'text_id image_id category', got {line!r}")
        try:
            cat = int(parts[2])
        except ValueError:
            raise DataError(f"{path}:{lineno}: category {parts[2]!r} is not an integer") from None
        if not 1 <= cat <= n_categories:
            raise DataError(f"{path}:{lineno}: unknown category {cat} (expected 1..{n_categories})")
        rows.append((parts[0], parts[1], cat - 1))
    return rows


def _read_text(path: Path) -> str:
    raw = path.read_text(encoding="utf-8", errors="replace")
    m = _TEXT_RE.search(raw)
    # The release's texts keep HTML entities (&ndash;, &mdash;, &#91;...): decode them.
    return html.unescape(m.group(1) if m else raw).strip()


def load_wikipedia(data_dir: str | None = None, with_texts: bool = True) -> PairedDataset:
    """2866 image/text pairs in 10 categories; splits train (2173) / test (693).

    Features are the release's 128-d SIFT bag of visual words (images) and 10-d LDA topic
    proportions (texts). Hashing protocols use ``query`` = test and ``database`` = train.
    """
    root = resolve_dataset_dir("wikipedia", data_dir, marker="trainset_txt_img_cat.list")
    cat_file = root / "categories.list"
    categories = [c.strip() for c in read_text(cat_file).splitlines() if c.strip()]
    if not categories:
        raise DataError(f"{cat_file}: no category names")
    train_list, test_list = root / "trainset_txt_img_cat.list", root / "testset_txt_img_cat.list"
    train = _read_list(train_list, len(categories))
    test = _read_list(test_list, len(categories))

    feats_path = root / "raw_features.mat"
    features = None
    if feats_path.exists():
        # MatFile: the release's v5 file or a copy re-saved as v7.3 (HDF5), which scipy cannot read
        mat_file = MatFile(feats_path)
        for key in ("I_tr", "T_tr", "I_te", "T_te"):
            if key not in mat_file:
                raise DataError(f"{feats_path}: variable {key} missing")
        mat = {key: np.asarray(mat_file.read(key)) for key in ("I_tr", "T_tr", "I_te", "T_te")}
        for key, rows, lst in (("I_tr", train, train_list), ("T_tr", train, train_list),
                               ("I_te", test, test_list), ("T_te", test, test_list)):
            if mat[key].ndim != 2 or mat[key].shape[0] != len(rows):
                raise DataError(f"{feats_path}: {key} has shape {mat[key].shape}, but {lst.name} "
                                f"has {len(rows)} rows")
        for tr, te in (("I_tr", "I_te"), ("T_tr", "T_te")):
            if mat[tr].shape[1] != mat[te].shape[1]:  # vstack would fail deep inside numpy
                raise DataError(f"{feats_path}: {tr} has {mat[tr].shape[1]} columns but {te} has "
                                f"{mat[te].shape[1]}")
        features = (np.vstack([mat["I_tr"], mat["I_te"]]).astype(np.float32),
                    np.vstack([mat["T_tr"], mat["T_te"]]).astype(np.float32))

    rows = train + test
    texts = None
    text_dir = root / "texts"
    if with_texts and text_dir.is_dir():
        texts = []
        for lineno, (tid, _, _) in enumerate(rows, 1):
            p = text_dir / f"{tid}.xml"
            if not p.exists():
                raise DataError(f"{p}: text file for list row {lineno} ({tid}) not found")
            texts.append(_read_text(p))
    image_paths = [str(root / "images" / categories[c] / f"{iid}.jpg") for _, iid, c in rows]
    n = len(rows)
    return PairedDataset(
        name="wikipedia",
        text_to_image=np.arange(n),
        n_images=n,
        image_features=None if features is None else features[0],
        text_features=None if features is None else features[1],
        image_paths=image_paths,
        texts=texts,
        labels=one_hot([c for _, _, c in rows], len(categories)),
        label_names=categories,
        splits={"train": np.arange(len(train)), "test": np.arange(len(train), n),
                "query": np.arange(len(train), n), "database": np.arange(len(train))},
        image_ids=[iid for _, iid, _ in rows],
        text_ids=[tid for tid, _, _ in rows],
        root=str(root),
        meta={"protocol": "wikipedia", "image_feature": "sift-bovw-128", "text_feature": "lda-10"},
    )
