"""The user's own pairs: JSONL or CSV rows ``{image, text, label | labels, split}``, or one JSON
array of such objects (``.json``).

Image paths are relative to the file (Windows backslashes between folders are accepted; ``~/``
is the home folder when no ``~`` folder sits beside the file). Rows
sharing an image path share one image (so one image may have several texts, and has the union
of their labels). ``labels`` may be a list (JSONL) or
``;``-separated (CSV; a list written as JSON or as pandas writes one, ``['a', 'b']``, is read too); a row may give both ``label`` and ``labels`` only when the label is one
of the labels. A label is a name: JSON numbers are names too, an integral one written
without its fraction (``1.0`` is class ``1``); booleans are refused. Without a ``split`` column,
images are split 80/10/10 into train/val/test with a fixed seed; with one, a row whose split is
blank goes to ``train``. A CSV's fields may be separated by ``,``, ``;`` (spreadsheets in
decimal-comma locales) or tabs: the one that makes the header name an ``image`` column is used.
A CSV's column names and split names match in any case (``Image``, ``Train``); its empty rows
(``;;;``) and empty unnamed columns (trailing delimiters) are passed over. An image path that
is not found is looked up ignoring case, for a file written on a macOS or Windows disk.
When only some images have labels, the others get an all-zero label row (unlabelled, to
semi-supervised methods; relevant to no query in class-based MAP): a warning names the first
such row and ``meta["unlabelled"]`` counts them.
"""

from __future__ import annotations

import ast
import csv
import io
import json
import logging
import os
from pathlib import Path

import numpy as np

from .dataset import DataError, PairedDataset, random_splits, read_text

log = logging.getLogger("xmodal.data")

KNOWN_FIELDS = {"image", "text", "label", "labels", "split", "id"}
# The splits the evaluation reads; any other name would be silently ignored there.
KNOWN_SPLITS = ("train", "val", "test", "query", "database")


def is_json_array(path: Path) -> bool:
    """Whether a ``.json`` file holds one JSON array (a pairs file) rather than an object."""
    with open(path, "rb") as fh:
        head = fh.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    return head.startswith(b"[")


def is_pairs_json(path: Path) -> bool:
    """Whether a ``.json`` file is a pairs file rather than a Karpathy file: one JSON array, or
    JSON lines (a first line that is a whole object with an ``image`` field, or followed by
    more lines) without Karpathy's ``"images"`` key. A file that is neither (COCO's annotation
    file) is left to the Karpathy loader, whose error names what it lacks."""
    from .karpathy import is_karpathy_head

    if is_json_array(path):
        return True
    if is_karpathy_head(path):
        return False
    with open(path, "rb") as fh:
        head = fh.read(1 << 16)
    first, _, rest = head.lstrip(b"\xef\xbb\xbf \t\r\n").partition(b"\n")
    try:
        obj = json.loads(first)
    except ValueError:  # not one object on the first line (or not UTF-8)
        return False
    return isinstance(obj, dict) and ("image" in obj or bool(rest.strip()))


def _json_array(text: str, path: Path) -> list[tuple[str, dict]]:
    """The objects of one JSON array, each with where it is: ``[k] (line L)``."""
    dec = json.JSONDecoder()
    n = len(text)

    def skip(i: int) -> int:
        while i < n and text[i] in " \t\r\n":
            i += 1
        return i

    # Line numbers counted on from the last one asked for (positions only grow): counting
    # from the file's start for every row was quadratic (45 s for 40,000 rows).
    last = [0, 1]  # position, its line

    def line_of(i: int) -> int:
        pos, line = last
        if i < pos:
            pos, line = 0, 1
        line += text.count("\n", pos, i)
        last[:] = [i, line]
        return line

    rows: list[tuple[str, dict]] = []
    i = skip(skip(0) + 1)  # past the opening bracket
    while i < n and text[i] != "]":
        try:
            obj, end = dec.raw_decode(text, i)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from exc
        loc = f" [{len(rows)}] (line {line_of(i)})"
        if not isinstance(obj, dict):
            raise DataError(f"{path}:{loc}: expected a JSON object")
        rows.append((loc, obj))
        i = skip(end)
        if i < n and text[i] == ",":
            i = skip(i + 1)
        elif i >= n or text[i] != "]":
            raise DataError(f"{path}:{line_of(i)}: invalid JSON (expected ',' or ']')")
    if i >= n or skip(i + 1) != n:
        raise DataError(f"{path}:{line_of(min(i, n))}: invalid JSON (the array must end the file)")
    return rows


def _rows(path: Path) -> list[tuple[int | str, dict]]:
    text = read_text(path)
    if path.suffix.lower() == ".json" and text.lstrip().startswith("["):
        return _json_array(text, path)
    if path.suffix.lower() in (".jsonl", ".ndjson", ".json"):
        rows = []
        # Split on "\n" only: str.splitlines() also breaks at U+2028/U+0085, which JSON strings
        # may hold unescaped (json.dumps(..., ensure_ascii=False)).
        for lineno, line in enumerate(text.split("\n"), 1):
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
        header = next(iter(io.StringIO(text, newline="")), "")
        for alt in (delim, ";", "\t", ","):
            # Spreadsheets in decimal-comma locales write ';' between fields, some exports tabs:
            # the delimiter is the one that makes the header name an 'image' column.
            if "image" in [f.strip().lower() for f in next(csv.reader([header], delimiter=alt), [])]:
                delim = alt
                break
        # skipinitialspace: a file written by hand has "image, text" (and quotes after the space).
        reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delim, skipinitialspace=True)
        unnamed: dict[str, int] = {}  # placeholder key -> 1-based column of an unnamed column
        if reader.fieldnames is not None:
            # Spreadsheet users title their columns ("Image", "Text"): known names match in any case.
            reader.fieldnames = [f.strip().lower() if f.strip().lower() in KNOWN_FIELDS else f.strip()
                                 for f in reader.fieldnames]
            # A spreadsheet whose used range reaches past the data ends every line with a
            # delimiter: unnamed columns, kept apart (DictReader would merge them) and dropped
            # below when empty.
            for k, f in enumerate(reader.fieldnames):
                if not f:
                    unnamed[f"\0{k}"] = k + 1
                    reader.fieldnames[k] = f"\0{k}"
        if reader.fieldnames is None or "image" not in reader.fieldnames:
            shown = None if reader.fieldnames is None else ["" if f in unnamed else f for f in reader.fieldnames]
            raise DataError(f"{path}:1: header must name an 'image' column, got {shown}")
        dup = sorted({c for c in reader.fieldnames if reader.fieldnames.count(c) > 1})
        if dup:  # DictReader would keep only the last of them
            raise DataError(f"{path}:1: header names column(s) {dup} more than once")
        rows = []
        for row in reader:
            lineno = reader.line_num  # the row's last physical line (quoted fields may span lines)
            if None in row:  # DictReader files surplus values under the key None
                raise DataError(f"{path}:{lineno}: {len(reader.fieldnames) + len(row[None])} values, "
                                f"but the header has {len(reader.fieldnames)} columns")
            for key, col in unnamed.items():
                value = (row.pop(key) or "").strip()
                if value:
                    raise DataError(f"{path}:{lineno}: value {value!r} in column {col}, which the "
                                    "header leaves unnamed; name the column or remove the value"
                                    + (" (pandas writes its index there: to_csv(..., index=False) "
                                       "leaves it out)" if col == 1 else ""))
            if not any((v or "").strip() for v in row.values()):
                # Spreadsheets write a touched but empty row as ";;;": no pair, like a blank line
                continue
            rows.append((lineno, row))
        return rows
    raise DataError(f"{path}: unknown pairs format {path.suffix!r} (use .jsonl or .csv)")


def _list_text(text: str, where: str) -> list | str:
    """A list written as text in a CSV cell: JSON (``["cat", "dog"]``) or the Python repr that
    pandas' ``to_csv`` writes for a column of lists (``['cat', 'dog']``). A bracketed cell
    with no quotes that is no JSON (``[draft]``) is the label it always was."""
    try:
        val = json.loads(text)
    except ValueError:
        if "'" not in text and '"' not in text:
            return text
        try:
            val = ast.literal_eval(text)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            raise DataError(f"{where}: field 'labels' {text[:60]!r} looks like a list but is neither "
                            "JSON nor a Python list; write the labels separated by ';'") from None
    if not isinstance(val, list):
        raise DataError(f"{where}: field 'labels' {text[:60]!r} is not a list")
    return val


def _labels_of(row: dict, where: str) -> list[str]:
    def name(v) -> str:
        if isinstance(v, (dict, list, bool)):
            raise DataError(f"{where}: a label must be a string or a number, got {json.dumps(v)}")
        if isinstance(v, float) and v.is_integer():
            v = int(v)  # 1.0 (pandas writes integer columns holding NaN as floats) is class 1
        return "" if v is None else str(v).strip()

    labels: list[str] = []
    if row.get("labels") not in (None, ""):
        val = row["labels"]
        if isinstance(val, str) and val.strip().startswith("[") and val.strip().endswith("]"):
            val = _list_text(val.strip(), where)
        vals = val if isinstance(val, list) else str(val).split(";") if isinstance(val, str) else [val]
        labels = [n for n in map(name, vals) if n]
    if row.get("label") not in (None, ""):
        one = name(row["label"])
        if row.get("labels") not in (None, "") and one not in labels:
            # which one is meant? silently keeping either would change the relevance
            raise DataError(f"{where}: its 'label' {one} is not among its 'labels' {labels}; give one "
                            "field, or a 'label' that is one of the 'labels'")
        return labels or [one]
    return labels


def _match_case(base: Path, rel: str, listings: dict[Path, dict[str, list[str]]]) -> Path | None:
    """``base / rel`` found with each name's case as on disk, when exactly one file matches
    each name but for case (a pairs file written on a case-insensitive macOS or Windows disk);
    else None. ``listings`` caches the folders listed."""
    rel_path = Path(rel)
    cur = Path(rel_path.anchor) if rel_path.is_absolute() else base
    for part in rel_path.parts[1 if rel_path.is_absolute() else 0:]:
        if part in (".", "..") or (cur / part).exists():
            cur = cur / part
            continue
        if cur not in listings:
            listings[cur] = {}
            try:
                for name in os.listdir(cur):
                    listings[cur].setdefault(name.lower(), []).append(name)
            except OSError:
                pass
        found = listings[cur].get(part.lower(), [])
        if len(found) != 1:
            return None
        cur = cur / found[0]
    return cur


def load_pairs(path: str | Path, label_names: list[str] | None = None, seed: int = 0,
               require_images_exist: bool = False) -> PairedDataset:
    """Load a pairs file. With ``label_names``, any other label is an error naming the row."""
    path = Path(path)
    rows = _rows(path)
    if not rows:
        raise DataError(f"{path}: no rows")
    image_index: dict[str, int] = {}
    listings: dict[Path, dict[str, list[str]]] = {}
    image_paths, texts, t2i, img_labels, img_split, img_where = [], [], [], [], [], []
    for lineno, row in rows:
        where = f"{path}:{lineno}"  # path:line, or path: [k] (line L) in a JSON array
        unknown = set(row) - KNOWN_FIELDS
        if unknown:
            raise DataError(f"{where}: unknown field(s) {sorted(unknown)}; expected {sorted(KNOWN_FIELDS)}")
        img, text = row.get("image"), row.get("text")
        for fname, value in (("image", img), ("text", text)):
            # A list here would become its Python repr; say so instead (one row per caption).
            if isinstance(value, (list, dict, bool)):
                raise DataError(f"{where}: field {fname!r} must be a string, got {json.dumps(value)}"
                                + (" (write one row per caption)" if fname == "text" else ""))
            if value is None or str(value).strip() == "":
                raise DataError(f"{where}: field {fname!r} missing or empty")
        full = (path.parent / str(img).strip()).resolve()
        if "\\" in str(img) and not full.exists():  # written on Windows: backslashes between folders
            full = (path.parent / str(img).strip().replace("\\", "/")).resolve()
        if not full.exists() and str(img).strip().startswith("~"):  # "~/photos/a.jpg": home, as in a shell
            try:
                home = Path(str(img).strip().replace("\\", "/")).expanduser()
            except RuntimeError:  # "~nosuchuser/...": no home to go to, the path stays relative
                home = full
            full = home.resolve() if home.is_absolute() else full
        if not full.exists():  # written on a disk that ignores case: "img_1.jpg" for IMG_1.JPG
            rel = str(img).strip()
            found = _match_case(path.parent, rel.replace("\\", "/") if "\\" in rel else rel, listings)
            full = found.resolve() if found is not None else full
        if require_images_exist and not full.exists():
            raise DataError(f"{where}: image {full} not found")
        labels = _labels_of(row, where)
        if label_names is not None:
            bad = [l for l in labels if l not in label_names]
            if bad:
                raise DataError(f"{where}: unknown label(s) {bad}; known labels: {label_names}")
        split = str(row.get("split") or "").strip() or None
        if split is not None and split.lower() in (*KNOWN_SPLITS, "restval"):
            split = split.lower()  # "Train" from a spreadsheet is train
        split = "train" if split == "restval" else split  # as in Karpathy files
        if split is not None and split not in KNOWN_SPLITS:
            raise DataError(f"{where}: unknown split {split!r}; expected one of {list(KNOWN_SPLITS)}")
        key = str(full)
        if key not in image_index:
            image_index[key] = len(image_paths)
            image_paths.append(key)
            img_labels.append(set(labels))
            img_split.append(split)
            img_where.append(where)
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
    meta: dict = {"protocol": "karpathy"}
    if names and any(img_labels):
        col = {n: i for i, n in enumerate(names)}
        labels = np.zeros((len(image_paths), len(names)), dtype=np.uint8)
        for i, s in enumerate(img_labels):
            labels[i, [col[l] for l in s]] = 1
        # Partly labelled pairs are legitimate (semi-supervised methods take the zero rows as
        # unlabelled), but in class-based MAP a zero row is relevant to no query and a query
        # with nothing relevant: said, with the first such row, and counted in meta.
        unlabelled = [i for i, s in enumerate(img_labels) if not s]
        meta["unlabelled"] = len(unlabelled)
        if unlabelled:
            i = unlabelled[0]
            log.warning("%s: %d of %d images have no label (first: %s, image %s); class-based "
                        "MAP counts them relevant to no query; meta['unlabelled'] counts them",
                        path, len(unlabelled), len(image_paths), img_where[i], Path(image_paths[i]).name)
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
                         root=str(path.parent), meta=meta)
