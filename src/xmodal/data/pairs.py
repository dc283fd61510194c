"""The user's own pairs: JSONL or CSV rows ``{image, text, label | labels, split}``.

Image paths are relative to the file. Rows sharing an image path share one image (so one image
may have several texts). ``labels`` may be a list (JSONL) or ``;``-separated (CSV). Without a
``split`` column, images are split 80/10/10 into train/val/test with a fixed seed.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from .dataset import DataError, PairedDataset, random_splits

KNOWN_FIELDS = {"image", "text", "label", "labels", "split", "id"}


def _rows(path: Path) -> list[dict]:
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if path.suffix.lower() in (".jsonl", ".ndjson", ".json"):
        rows = []
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{lineno}: invalid JSON ({exc.msg})") from exc
            if not isinstance(obj, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object")
            rows.append((lineno, obj))
        return rows
    if path.suffix.lower() in (".csv", ".tsv"):
        delim = "\t" if path.suffix.lower() == ".tsv" else ","
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh, delimiter=delim)
            if reader.fieldnames is None or "image" not in reader.fieldnames:
                raise DataError(f"{path}:1: header must name an 'image' column, got {reader.fieldnames}")
            return [(i + 2, row) for i, row in enumerate(reader)]
    raise DataError(f"{path}: unknown pairs format {path.suffix!r} (use .jsonl or .csv)")


def _labels_of(row: dict) -> list[str]:
    if row.get("labels") not in (None, ""):
        val = row["labels"]
        return [str(v) for v in val] if isinstance(val, list) else [v.strip() for v in str(val).split(";") if v.strip()]
    if row.get("label") not in (None, ""):
        return [str(row["label"]).strip()]
    return []


def load_pairs(path: str | Path, label_names: list[str] | None = None, seed: int = 0,
               require_images_exist: bool = False) -> PairedDataset:
    """Load a pairs file. With ``label_names``, any other label is an error naming the row."""
    path = Path(path)
    rows = _rows(path)
    if not rows:
        raise DataError(f"{path}: no rows")
    image_index: dict[str, int] = {}
    image_paths, texts, t2i, img_labels, img_split = [], [], [], [], []
    for lineno, row in rows:
        where = f"{path}:{lineno}"
        unknown = set(row) - KNOWN_FIELDS
        if unknown:
            raise DataError(f"{where}: unknown field(s) {sorted(unknown)}; expected {sorted(KNOWN_FIELDS)}")
        img, text = row.get("image"), row.get("text")
        if not img:
            raise DataError(f"{where}: field 'image' missing or empty")
        if text is None or str(text).strip() == "":
            raise DataError(f"{where}: field 'text' missing or empty")
        full = (path.parent / str(img)).resolve()
        if require_images_exist and not full.exists():
            raise DataError(f"{where}: image {full} not found")
        labels = _labels_of(row)
        if label_names is not None:
            bad = [l for l in labels if l not in label_names]
            if bad:
                raise DataError(f"{where}: unknown label(s) {bad}; known labels: {label_names}")
        split = str(row.get("split") or "").strip() or None
        key = str(full)
        if key not in image_index:
            image_index[key] = len(image_paths)
            image_paths.append(key)
            img_labels.append(set(labels))
            img_split.append(split)
        else:
            i = image_index[key]
            img_labels[i].update(labels)
            if split and img_split[i] and split != img_split[i]:
                raise DataError(f"{where}: image {img} is in split {img_split[i]!r} on an earlier row, "
                                f"{split!r} here")
            img_split[i] = img_split[i] or split
        texts.append(str(text).strip())
        t2i.append(image_index[key])
    names = label_names or sorted({l for s in img_labels for l in s})
    labels = None
    if names and any(img_labels):
        col = {n: i for i, n in enumerate(names)}
        labels = np.zeros((len(image_paths), len(names)), dtype=np.uint8)
        for i, s in enumerate(img_labels):
            labels[i, [col[l] for l in s]] = 1
    n = len(image_paths)
    if any(img_split):
        splits: dict[str, list[int]] = {}
        for i, s in enumerate(img_split):
            splits.setdefault(s or "train", []).append(i)
        splits_arr = {k: np.asarray(v) for k, v in splits.items()}
    else:
        n_test = max(1, n // 10) if n >= 3 else 0
        splits_arr = random_splits(n, {"test": n_test, "val": n_test, "train": -1}, seed=seed)
    if "test" in splits_arr:
        splits_arr.setdefault("query", splits_arr["test"])
    if "train" in splits_arr:
        splits_arr.setdefault("database", splits_arr["train"])
    return PairedDataset(name=path.stem, text_to_image=np.asarray(t2i), n_images=n,
                         image_paths=image_paths, texts=texts, labels=labels,
                         label_names=names if labels is not None else None, splits=splits_arr,
                         root=str(path.parent), meta={"protocol": "karpathy"})
