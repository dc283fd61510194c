"""The DCMH ``.mat`` layout of the deep cross-modal hashing literature.

DCMH (Jiang & Li, "Deep Cross-Modal Hashing", CVPR 2017) released MIRFlickr-25K and NUS-WIDE as
MATLAB files, and SSAH, DJSRH, JDSH, DGCPN and UCCH read the same files (and IAPR TC-12 and
MS-COCO prepared alike). Variables, one item per row or per column:

``IAll``    images: raw pixels, ``224 x 224 x 3 x N`` uint8 as MATLAB stores them (DCMH's
            one-file ``FLICKR-25K.mat`` calls it ``images``), or precomputed features ``N x d``
            (UCCH's ``*-iall-vgg.mat`` calls those ``XAll``)
``YAll``    text: bag-of-words / tag vectors ``N x d`` (1386-d MIRFlickr, 1000-d NUS-WIDE)
``LAll``    labels ``N x c``, 0/1 (24 MIRFlickr, 10 or 21 NUS-WIDE, 255 IAPR TC-12, 80 MS-COCO)
``FAll``    optional: image file names

either in one file or one file per variable (``mirflickr25k-iall.mat``, ``-yall.mat``,
``-lall.mat``, ``-fall.mat``; ``nus-wide-tc10-*.mat``, sometimes in subfolders such as
``IAll/``), MATLAB v5 or v7.3 (HDF5). Which axis holds the items is found from the lengths the
variables agree on.

Raw pixels are written once as PNG files (xmodal's image encoders read files) into a cache
folder keyed by the ``.mat`` file, resumably; precomputed image features become
``image_features``. Splits follow DCMH's protocol (:func:`~xmodal.data.mirflickr.hashing_splits`),
with the sizes the papers use for the known datasets.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._matio import MatFile
from ._probe import first_rule
from ._root import resolve_dataset_dir
from .dataset import DataError, PairedDataset
from .mirflickr import MIRFLICKR_LABELS, hashing_splits

IMAGE_VARS = ("IAll", "images", "XAll")
TEXT_VAR, LABEL_VAR, NAME_VAR = "YAll", "LAll", "FAll"
DCMH_VARS = (*IMAGE_VARS, TEXT_VAR, LABEL_VAR, NAME_VAR)


@dataclass(frozen=True)
class KnownDataset:
    name: str
    n_labels: tuple[int, ...]
    n_query: int
    n_train: int
    tokens: tuple[str, ...]  # lower-case pieces of file / folder names that identify it


# Split sizes of the papers: DCMH (Jiang & Li 2017) for MIRFlickr-25K, IAPR TC-12 (2000 queries,
# 10000 training items) and NUS-WIDE (2100 / 10500, also SSAH, DJSRH, UCCH); MS-COCO sizes vary
# between papers, 5000 queries as in UCCH (Hu et al. 2022) and 10000 training items.
KNOWN_DATASETS = (
    KnownDataset("mirflickr25k", (24,), 2000, 10000, ("flickr",)),
    KnownDataset("nus_wide", (10, 21), 2100, 10500, ("nus",)),
    KnownDataset("iapr_tc12", (255,), 2000, 10000, ("iapr",)),
    KnownDataset("mscoco", (80,), 5000, 10000, ("coco",)),
)


# ----------------------------------------------------------------------------- finding files
def is_os_metadata(path: Path, folder: Path) -> bool:
    """Whether ``path`` (under ``folder``) is an operating system's metadata rather than data:
    a hidden file or folder, or macOS's ``__MACOSX/`` and ``._NAME`` AppleDouble files, which a
    zip made on a Mac unpacks beside the real ones (``._FLICKR-25K.mat`` is no MATLAB file)."""
    return any(part.startswith(".") or part == "__MACOSX" for part in path.relative_to(folder).parts)


def mat_files(folder: Path, pattern: str = "*.mat") -> list[Path]:
    """``folder``'s files matching ``pattern``, sorted, without :func:`is_os_metadata` ones."""
    return sorted(p for p in folder.glob(pattern) if p.is_file() and not is_os_metadata(p, folder))


def _candidate_files(folder: Path) -> list[Path]:
    # The per-variable releases sometimes keep the big image file in a subfolder (IAll/).
    return sorted([*mat_files(folder), *mat_files(folder, "*/*.mat")])


def _sources(mats: list[MatFile]) -> dict[str, MatFile]:
    """Which file holds each DCMH variable; a variable in two files is an error."""
    out: dict[str, MatFile] = {}
    for m in mats:
        for var in DCMH_VARS:
            if var in m:
                if var in out:
                    raise DataError(f"{m.path}: variable {var} is also in {out[var].path}; "
                                    "keep one of the files, or pass the one file to load")
                out[var] = m
    return out


def find_dcmh_files(folder: str | Path) -> dict[str, Path]:
    """The DCMH-layout variables found in ``folder``'s ``.mat`` files (and its subfolders'),
    mapped to their files; empty when there are none."""
    folder = Path(folder)
    if not folder.is_dir():
        return {}
    mats = [MatFile(p) for p in _candidate_files(folder)]
    return {k: m.path for k, m in _sources(mats).items()}


def has_dcmh_files(folder: str | Path) -> bool:
    """Whether any of ``folder``'s ``.mat`` files (or its subfolders') holds a DCMH-layout
    variable: the folder is that layout even when its files clash (the loader names them).
    Files that cannot be read as ``.mat`` are passed over here."""
    folder = Path(folder)
    if not folder.is_dir():
        return False
    for p in _candidate_files(folder):
        try:
            if any(v in MatFile(p) for v in DCMH_VARS):
                return True
        except (DataError, OSError):
            continue
    return False


def find_root(name: str, data_dir: str | os.PathLike | None, markers: tuple[str, ...]) -> Path:
    """The folder of dataset ``name`` (MIRFlickr-25K, NUS-WIDE): the first of ``markers`` that
    :func:`~xmodal.data._root.resolve_dataset_dir` finds (they let ``--data-dir`` name the
    dataset folder itself), else a folder holding only ``.mat`` files (:func:`dcmh_folder`)."""
    for marker in markers:
        try:
            return resolve_dataset_dir(name, data_dir, marker=marker)
        except DataError:
            continue
    return dcmh_folder(name, data_dir)


def dcmh_folder(name: str, data_dir: str | os.PathLike | None) -> Path:
    """The folder of dataset ``name`` when it lacks its release layout: ``ROOT/name``, or
    ``data_dir`` itself when it holds DCMH-layout ``.mat`` files or a ``*_cnn.mat`` file
    (which the named loaders read from their folder too)."""
    try:
        return resolve_dataset_dir(name, data_dir)
    except DataError:
        if data_dir is not None and (find_dcmh_files(data_dir) or mat_files(Path(data_dir), "*_cnn.mat")):
            return Path(data_dir)
        raise


# ------------------------------------------------------------------------------ orientation
def _axis_lengths(shape: tuple[int, ...]) -> set[int]:
    if len(shape) == 4:  # pixels: items first (N x H x W x C) or last (MATLAB's H x W x C x N)
        return {shape[0], shape[3]}
    return set(shape)


def _item_count(src: dict[str, MatFile], image_var: str | None) -> int:
    """The number of items: the length the variables agree on."""
    def desc(var: str) -> str:
        return f"{src[var].path}: {var} has shape {src[var].shapes[var]}"

    for var in (TEXT_VAR, LABEL_VAR):
        if len(src[var].shapes[var]) != 2:
            raise DataError(f"{desc(var)}; it must be a 2-D matrix (items x dimensions)")
    cands = _axis_lengths(src[TEXT_VAR].shapes[TEXT_VAR]) & _axis_lengths(src[LABEL_VAR].shapes[LABEL_VAR])
    if not cands:
        raise DataError(f"{desc(TEXT_VAR)} but {desc(LABEL_VAR)}: they share no length, so "
                        "their items cannot be matched")
    for var in (image_var, NAME_VAR):
        if var is None or var not in src:
            continue
        both = cands & _axis_lengths(src[var].shapes[var])
        if not both:
            raise DataError(f"{desc(var)}, but {TEXT_VAR} and {LABEL_VAR} hold "
                            f"{' or '.join(map(str, sorted(cands)))} items")
        cands = both
    if len(cands) == 1:
        return cands.pop()
    return src[LABEL_VAR].shapes[LABEL_VAR][0]  # still ambiguous: items in rows, as DCMH keeps them


def _rows(a: np.ndarray, n: int) -> np.ndarray:
    """``a`` with one item per row."""
    a = np.asarray(a)
    return a if a.shape[0] == n else a.T


def _pixel_layout(shape: tuple[int, ...], n: int) -> tuple[int, bool] | None:
    """(item axis, channels before rows/columns) of a 4-D pixel array holding ``n`` items."""
    for axis in (3, 0):  # MATLAB's H x W x C x N first
        if shape[axis] != n:
            continue
        rest = shape[:3] if axis == 3 else shape[1:]
        if rest[2] in (1, 3):
            return axis, False
        if rest[0] in (1, 3):
            return axis, True
    return None


# ------------------------------------------------------------------------------ validation
def _check_labels(L: np.ndarray, path: Path, var: str = LABEL_VAR) -> np.ndarray:
    if L.dtype == bool:
        return L.astype(np.uint8)
    if not np.issubdtype(L.dtype, np.number):
        raise DataError(f"{path}: {var} holds {L.dtype} values, not 0/1 labels")
    bad = ~((L == 0) | (L == 1))
    if bad.any():
        r, c = (int(v) for v in np.argwhere(bad)[0])
        raise DataError(f"{path}: {var} item {r} (0-based), column {c} holds {L[r, c].item()!r}; "
                        "labels must be 0 or 1")
    return L.astype(np.uint8)


def _check_features(X: np.ndarray, path: Path, var: str) -> np.ndarray:
    if not (np.issubdtype(X.dtype, np.number) or X.dtype == bool):
        raise DataError(f"{path}: {var} holds {X.dtype} values, not numbers")
    X = X.astype(np.float32)
    finite = np.isfinite(X)
    if not finite.all():
        r = int(np.flatnonzero(~finite.all(axis=1))[0])
        raise DataError(f"{path}: {var} item {r} (0-based) holds NaN or inf")
    return X


# -------------------------------------------------------------------------------- images
def _file_key(path: Path, var: str, shape: tuple[int, ...]) -> str:
    """Identity of a variable in a file without reading it all: size, mtime, head and tail."""
    st = path.stat()
    h = hashlib.blake2b(digest_size=8)
    h.update(json.dumps([st.st_size, st.st_mtime_ns, var, list(shape)]).encode())
    with path.open("rb") as fh:
        h.update(fh.read(1 << 20))
        fh.seek(max(0, st.st_size - (1 << 20)))
        h.update(fh.read(1 << 20))
    return h.hexdigest()


def default_images_dir(path: Path, var: str, shape: tuple[int, ...]) -> Path:
    """``<feature cache>/dcmh-images/<file stem>-<var>-<key>``: the PNG folder of a pixel variable."""
    from ..encoders.cache import resolve_cache_dir, safe_name

    root = resolve_cache_dir(None)
    return root / "dcmh-images" / f"{safe_name(path.stem)}-{var}-{_file_key(path, var, shape)}"


def _workers() -> int:
    # $XMODAL_THREADS, else the CPU count capped at 8: PNG encoding and fsync release the GIL.
    from ..device import default_threads

    return default_threads()


def materialize_images(mat: MatFile, var: str, n: int, out_dir: str | Path, progress: bool = True,
                       chunk: int = 256) -> list[str]:
    """Write each image of the 4-D pixel variable ``var`` as ``out_dir/NNNNNN.png`` (item order)
    and return the paths. Files already there are kept, so an interrupted run resumes; each file
    is written under a temporary name, synced and renamed, so none is ever torn. v7.3 files are
    read ``chunk`` images at a time; images are encoded on ``$XMODAL_THREADS`` threads."""
    from concurrent.futures import ThreadPoolExecutor

    from PIL import Image
    from tqdm.auto import tqdm

    from .._fs import atomic_write_bytes

    shape = mat.shapes[var]
    layout = _pixel_layout(shape, n)
    if layout is None:
        raise DataError(f"{mat.path}: {var} has shape {shape}; pixel arrays must be H x W x C x N "
                        f"or N x H x W x C (or N x C x H x W) with C = 3 or 1 and N = {n} items")
    axis, channels_first = layout
    out_dir = Path(out_dir)
    paths = [out_dir / f"{i:06d}.png" for i in range(n)]
    missing = np.array([i for i, p in enumerate(paths) if not p.exists()], dtype=np.int64)
    if not len(missing):
        return [str(p) for p in paths]
    out_dir.mkdir(parents=True, exist_ok=True)
    info = out_dir / "source.json"
    if not info.exists():
        atomic_write_bytes(info, json.dumps({"file": str(mat.path), "variable": var,
                                             "shape": list(shape)}, indent=1).encode())

    def write(img: np.ndarray, dest: Path) -> None:
        pil = Image.fromarray(np.ascontiguousarray(img[..., 0] if img.shape[-1] == 1 else img))
        buf = io.BytesIO()
        pil.save(buf, format="PNG", compress_level=1)  # fast; the files are a cache
        atomic_write_bytes(dest, buf.getvalue())

    bar = tqdm(total=len(missing), desc=f"{mat.path.name}: {var} -> PNG", unit="img",
               disable=not progress)
    try:
        with ThreadPoolExecutor(_workers()) as pool:
            for start in range(int(missing[0]) // chunk * chunk, n, chunk):
                stop = min(n, start + chunk)
                todo = missing[(missing >= start) & (missing < stop)]
                if not len(todo):
                    continue
                block = np.moveaxis(mat.read_slice(var, axis, start, stop), axis, 0)
                if channels_first:
                    block = np.moveaxis(block, 1, -1)
                block = _as_uint8(block, mat.path, var)
                for _ in pool.map(write, (block[i - start] for i in todo), (paths[i] for i in todo)):
                    bar.update(1)
    finally:
        bar.close()
        mat.forget(var)
    return [str(p) for p in paths]


def _as_uint8(block: np.ndarray, path: Path, var: str) -> np.ndarray:
    if block.dtype == np.uint8:
        return block
    if np.issubdtype(block.dtype, np.integer) and (block.size == 0 or (block.min() >= 0 and block.max() <= 255)):
        return block.astype(np.uint8)
    raise DataError(f"{path}: {var} holds {block.dtype} pixel values; expected uint8 (0..255)")


# ---------------------------------------------------------------------------------- loader
def identify(names: list[str], n_labels: int, n_items: int) -> KnownDataset | None:
    """The known dataset a DCMH-layout release is, from its file / folder names, else from its
    label count when it is large enough for that dataset's split sizes."""
    low = [s.lower() for s in names]
    for k in KNOWN_DATASETS:
        if any(t in s for t in k.tokens for s in low):
            return k
    for k in KNOWN_DATASETS:
        if n_labels in k.n_labels and n_items >= k.n_query + k.n_train:
            return k
    return None


def known_label_names(known: KnownDataset | None, n_labels: int) -> list[str] | None:
    """The label names of a dataset :func:`identify` recognised, when its label count is the
    release's: MIRFlickr-25K's 24 (the other releases' names are not in their files)."""
    if known is not None and known.name == "mirflickr25k" and n_labels == len(MIRFLICKR_LABELS):
        return MIRFLICKR_LABELS
    return None


def unique_image_ids(paths: list[str], where: str) -> list[str]:
    """Image ids from image paths: the file stems, else (two folders holding ``1.jpg``) the
    shortest trailing part of the paths that tells them apart (``train/1``, ``val/1``). One
    path listed twice is refused, naming both items."""
    parts = [p.replace("\\", "/").split("/") for p in paths]
    first: dict[str, int] = {}
    for i, p in enumerate(paths):
        j = first.setdefault(p.replace("\\", "/"), i)
        if j != i:
            raise DataError(f"{where}: item {i} (0-based) is the image of item {j} ({p}); "
                            "list each image once")
    for k in range(1, max((len(p) for p in parts), default=1) + 1):
        ids = ["/".join([*q[-k:-1], Path(q[-1]).stem]) for q in parts]
        if len(set(ids)) == len(ids):
            return ids
    return ["/".join([*q[:-1], Path(q[-1]).stem]) for q in parts]  # unreachable: paths differ


def default_split_sizes(known: KnownDataset | None, n: int) -> tuple[int, int]:
    """(n_query, n_train): the papers' sizes for a known dataset; otherwise DCMH's MIRFlickr
    sizes (2000 / 10000) for 14000 items or more, else 10% queries and half the rest to train."""
    if known is not None:
        return known.n_query, known.n_train
    if n >= 14000:
        return 2000, 10000
    n_query = max(1, n // 10)
    return n_query, max(1, (n - n_query) // 2)


# The split a DCMH file may carry in its struct ``param`` (MATLAB indices, from 1): DCMH's own
# names, and those of nus-wide-tc10.mat as SSAH's code reads it.
PARAM_VAR = "param"
PARAM_FIELDS = (("query", ("indexQuery", "indexTest")), ("database", ("indexRetrieval", "indexDatabase")),
                ("train", ("indexTrain",)))


def file_split(mats: list[MatFile], n: int) -> tuple[dict[str, np.ndarray], Path] | None:
    """The split of the first of ``mats`` whose struct ``param`` holds index fields
    (:data:`PARAM_FIELDS`), as 0-based item rows, and that file; None when none does. Indices
    are MATLAB's (from 1) unless one of them is 0; each is checked against the ``n`` items."""
    for m in mats:
        fields = m.struct(PARAM_VAR)
        if not fields or not any(f in fields for _, names in PARAM_FIELDS for f in names):
            continue
        where = f"{m.path}: {PARAM_VAR}"
        found = {}
        for split, names in PARAM_FIELDS:
            field = next((f for f in names if f in fields), None)
            if field is None:
                raise DataError(f"{where} holds {', '.join(sorted(fields))} but no {' / '.join(names)} "
                                "(the split needs query, database and training indices)")
            found[split] = (field, fields[field])
        values = np.concatenate([v for _, v in found.values()])
        base = 0 if values.size and values.min() == 0 else 1
        out = {}
        for split, (field, v) in found.items():
            if not np.isfinite(v).all() or (v != np.round(v)).any():
                raise DataError(f"{where}.{field} holds a value that is not an item index")
            idx = v.astype(np.int64) - base
            bad = (idx < 0) | (idx >= n)
            if bad.any():
                raise DataError(f"{where}.{field} holds {int(v[bad][0])}, outside {base}..{n - 1 + base} "
                                f"(the file holds {n} items)")
            uniq, counts = np.unique(idx, return_counts=True)
            if (counts > 1).any():
                raise DataError(f"{where}.{field} lists item {int(uniq[counts > 1][0]) + base} twice")
            out[split] = uniq
        out["test"] = out["query"]
        return out, m.path
    return None


def load_dcmh_mat(path: str | Path, name: str | None = None, n_query: int | None = None,
                  n_train: int | None = None, seed: int | None = None, image_var: str | None = None,
                  images_dir: str | Path | None = None, progress: bool = True,
                  default_sizes: tuple[int, int] | None = None) -> PairedDataset:
    """A dataset in the DCMH ``.mat`` layout: one ``.mat`` file, or a folder of per-variable files.

    Text features come from ``YAll``, labels from ``LAll`` (0/1), image ids from ``FAll`` when
    present. The image variable is ``image_var`` or the first of ``IAll``, ``images``, ``XAll``
    that holds features (2-D: ``image_features``), else the first that holds pixels (4-D: written
    as PNG files under ``images_dir``, default a folder of the feature cache keyed by the file,
    then ``image_paths`` for an image encoder; ``progress`` shows a bar while writing).

    Splits: the file's own when it carries one (DCMH's struct ``param``: ``indexQuery`` or
    ``indexTest``, ``indexRetrieval`` or ``indexDatabase``, ``indexTrain``, MATLAB indices;
    :func:`file_split`) and none of ``n_query``, ``n_train``, ``seed`` is given
    (``meta["split"] == "param"``); else (``"random"``,
    :func:`~xmodal.data.mirflickr.hashing_splits`, DCMH's protocol) ``n_query`` random
    queries, the rest is the database, ``n_train`` training items drawn from it, seeded by
    ``seed`` (0). Defaults are
    the papers' sizes for MIRFlickr-25K (2000 / 10000), NUS-WIDE (2100 / 10500), IAPR TC-12
    (2000 / 10000) and MS-COCO (5000 / 10000), recognised by file names or label count
    (:func:`identify`); otherwise :func:`default_split_sizes`; ``default_sizes`` (n_query,
    n_train), given by a named loader, overrides those.
    """
    path = Path(path)
    if path.is_dir():
        src = _sources([MatFile(p) for p in _candidate_files(path)])
        if not src:
            raise DataError(f"{path}: no .mat file holds DCMH-layout variables ({', '.join(DCMH_VARS)})")
    else:
        src = _sources([MatFile(path)])
    for var in (TEXT_VAR, LABEL_VAR):
        if var not in src:
            if path.is_dir():
                found = ", ".join(f"{k} in {m.path.name}" for k, m in src.items())
                raise DataError(f"{path}: no .mat file in the folder holds variable {var} "
                                f"(the DCMH layout needs {TEXT_VAR} and {LABEL_VAR}); found {found}")
            raise DataError(f"{path}: variable {var} not found (the DCMH layout needs {TEXT_VAR} and "
                            f"{LABEL_VAR}; for one file per variable, pass their folder); "
                            f"the file holds {MatFile(path).names}")
    if image_var is not None and image_var not in src:
        raise DataError(f"{path}: image variable {image_var!r} not found; "
                        f"found {[v for v in IMAGE_VARS if v in src]}")
    present = [image_var] if image_var else [v for v in IMAGE_VARS if v in src]
    feats = [v for v in present if len(src[v].shapes[v]) == 2]
    img_var = (feats or present or [None])[0]

    n = _item_count(src, img_var)
    lab_src, txt_src = src[LABEL_VAR], src[TEXT_VAR]
    L = _check_labels(_rows(lab_src.read(LABEL_VAR), n), lab_src.path)
    lab_src.forget(LABEL_VAR)
    T = _check_features(_rows(txt_src.read(TEXT_VAR), n), txt_src.path, TEXT_VAR)
    txt_src.forget(TEXT_VAR)

    X = image_paths = out_dir = None
    if img_var is not None:
        m = src[img_var]
        shape = m.shapes[img_var]
        if len(shape) == 2:
            X = _check_features(_rows(m.read(img_var), n), m.path, img_var)
            m.forget(img_var)
        elif len(shape) == 4:
            out_dir = Path(images_dir) if images_dir is not None else default_images_dir(m.path, img_var, shape)
            image_paths = materialize_images(m, img_var, n, out_dir, progress=progress)
        else:
            raise DataError(f"{m.path}: {img_var} has shape {shape}; expected features (items x d) "
                            "or pixels (H x W x C x N)")

    file_names = image_ids = None
    if NAME_VAR in src:
        file_names = [s.replace("\\", "/") for s in src[NAME_VAR].read_strings(NAME_VAR)]
        src[NAME_VAR].forget(NAME_VAR)
        if len(file_names) != n:
            raise DataError(f"{src[NAME_VAR].path}: {NAME_VAR} lists {len(file_names)} names, "
                            f"but the other variables hold {n} items")
        image_ids = unique_image_ids(file_names, f"{src[NAME_VAR].path}: {NAME_VAR}")

    files = sorted({str(m.path) for m in src.values()})
    known = identify([name or "", path.resolve().name, *(Path(f).name for f in files)], L.shape[1], n)
    ds_name = name or (path.resolve().name if path.is_dir() else path.stem)  # "." has no name
    given = n_query is not None or n_train is not None or seed is not None
    own = None if given else file_split(list({id(m): m for m in src.values()}.values()), n)
    seed = 0 if seed is None else seed
    if own is not None:
        splits, split_file = own
        n_query, n_train = len(splits["query"]), len(splits["train"])
    else:
        dq, dt = default_sizes or default_split_sizes(known, n)
        n_query = dq if n_query is None else n_query
        n_train = dt if n_train is None else n_train
        splits = hashing_splits(n, n_query, n_train, seed, name=ds_name)
    label_names = known_label_names(known, L.shape[1])
    return PairedDataset(
        name=ds_name, text_to_image=np.arange(n), n_images=n, image_features=X,
        image_paths=image_paths, text_features=T, labels=L, label_names=label_names,
        splits=splits, image_ids=image_ids, root=str(path if path.is_dir() else path.parent),
        meta={"protocol": "hashing", "layout": "dcmh_mat", "seed": None if own else seed,
              "split": "param" if own else "random", "split_file": str(own[1]) if own else None,
              "dataset": known.name if known else None, "n_query": n_query, "n_train": n_train,
              "sources": {k: str(m.path) for k, m in src.items()}, "image_var": img_var,
              "images_dir": None if out_dir is None else str(out_dir), "file_names": file_names},
    )


def load_mat(path: str | Path, **kwargs: Any) -> PairedDataset:
    """A ``.mat`` file by the variables it holds: the ``*_cnn.mat`` layout (``I_tr``/``T_tr``/
    ``L_tr``, :func:`~xmodal.data.mirflickr.load_cnn_mat`) or the DCMH layout
    (:func:`load_dcmh_mat`, which takes ``kwargs``)."""
    from .mirflickr import load_cnn_mat

    path = Path(path)
    mat = MatFile(path)
    cnn = any(f"{k}_tr" in mat for k in "ITL")
    if not cnn and any(v in mat for v in DCMH_VARS):
        return load_dcmh_mat(path, **kwargs)
    if not cnn:
        raise DataError(f"{path}: not a known .mat layout: expected I_tr, T_tr, L_tr (*_cnn.mat) or "
                        f"{TEXT_VAR}, {LABEL_VAR} and {IMAGE_VARS[0]} (DCMH); found {mat.names}")
    return load_cnn_mat(path, **kwargs)  # refuses split options: the file holds its splits


# ------------------------------------------------------- index.mat / caption.mat / label.mat
INDEX_FILES = ("index.mat", "caption.mat", "label.mat")


def is_index_caption_folder(folder: str | Path) -> bool:
    """Whether ``folder`` holds the ``index.mat`` / ``caption.mat`` / ``label.mat`` layout."""
    folder = Path(folder)
    return folder.is_dir() and all((folder / f).is_file() for f in INDEX_FILES)


def _relocate(stored: list[str], folder: Path, image_dir: Path | None) -> list[str]:
    """Image paths written on another machine, found again: as stored when they exist, else
    under ``image_dir`` (default ``folder``) by their last one, two or three parts; the rule
    that finds an image of a sample (:func:`~xmodal.data._probe.first_rule`) is applied to all
    (missing images are reported by the encoder that reads them)."""
    base = image_dir if image_dir is not None else folder

    def under(k: int, s: str) -> str:
        return str(base.joinpath(*s.replace("\\", "/").split("/")[-k:]))

    rules: list[int] = ([0] if image_dir is None else []) + [3, 2, 1]  # 0: as stored
    k = first_rule(rules, stored, lambda k, s: s if k == 0 else under(k, s))
    if k is None:
        k = 2 if image_dir is not None else 0
    return list(stored) if k == 0 else [under(k, s) for s in stored]


def load_index_caption_mat(folder: str | Path, name: str | None = None, n_query: int | None = None,
                           n_train: int | None = None, seed: int = 0,
                           image_dir: str | Path | None = None) -> PairedDataset:
    """The ``.mat`` layout of CLIP-based cross-modal hashing code (DCHMT, Tu et al. 2022, and its
    followers): ``index.mat`` (``index``: image paths, often of the machine that wrote them),
    ``caption.mat`` (``caption``: the tag strings or captions, one per item or a cell of
    several per item, each then a text of its image), ``label.mat`` (``label``, or
    ``category`` as some writers name it: 0/1, items x labels) and optionally
    ``caption_one_hot.mat`` (``caption_one_hot``: tag vectors, one per item, used as text
    features of each of its captions). Image paths that do not exist are looked up under
    ``image_dir`` (default the folder) by their last parts. Splits and their default sizes as
    :func:`load_dcmh_mat`."""
    folder = Path(folder)
    for f in INDEX_FILES:
        if not (folder / f).is_file():
            raise DataError(f"{folder / f}: file not found (the index/caption/label .mat layout)")
    if image_dir is not None and not Path(image_dir).is_dir():
        raise DataError(f"{image_dir}: image folder not found (images of {folder / 'index.mat'})")

    def strings(fname: str, var: str) -> list[str]:
        m = MatFile(folder / fname)
        if var not in m:
            raise DataError(f"{folder / fname}: variable {var} not found; the file holds {m.names}")
        return m.read_strings(var)

    stored = strings("index.mat", "index")
    n = len(stored)
    # one caption (or tag string) per item, or a cell of several (caption datasets)
    m = MatFile(folder / "caption.mat")
    if "caption" not in m:
        raise DataError(f"{m.path}: variable caption not found; the file holds {m.names}")
    groups = m.read_string_groups("caption", n)
    if len(groups) != n:
        raise DataError(f"{folder / 'caption.mat'}: caption holds {len(groups)} items, but index.mat holds {n}")
    for i, g in enumerate(groups):
        if not g:
            raise DataError(f"{folder / 'caption.mat'}: caption item {i} (0-based) is empty")
    texts = [t for g in groups for t in g]
    t2i = np.repeat(np.arange(n), [len(g) for g in groups])

    def item_rows(fname: str, names: tuple[str, ...]) -> tuple[np.ndarray, Path, str]:
        """The first of ``names`` in ``fname`` as one row per item (stored either way round)."""
        m = MatFile(folder / fname)
        var = next((v for v in names if v in m), None)
        if var is None:
            also = f" (or {', '.join(names[1:])})" if len(names) > 1 else ""
            raise DataError(f"{m.path}: variable {names[0]}{also} not found; the file holds {m.names}")
        raw = np.atleast_2d(m.read(var))
        if n not in raw.shape:
            raise DataError(f"{m.path}: {var} has shape {raw.shape}, but index.mat holds {n} items")
        return _rows(raw, n), m.path, var

    # "category": the name some writers of this layout give the labels
    L = _check_labels(*item_rows("label.mat", ("label", "category")))
    T = None
    if (folder / "caption_one_hot.mat").is_file():
        # one row per item: each of the item's captions gets it
        T = _check_features(*item_rows("caption_one_hot.mat", ("caption_one_hot",)))[t2i]
    image_paths = _relocate(stored, folder, None if image_dir is None else Path(image_dir))
    known = identify([name or "", folder.resolve().name], L.shape[1], n)
    dq, dt = default_split_sizes(known, n)
    n_query = dq if n_query is None else n_query
    n_train = dt if n_train is None else n_train
    ds_name = name or folder.resolve().name  # "." has no name
    label_names = known_label_names(known, L.shape[1])
    return PairedDataset(
        name=ds_name, text_to_image=t2i, n_images=n, image_paths=image_paths,
        text_features=T, texts=texts, labels=L, label_names=label_names,
        splits=hashing_splits(n, n_query, n_train, seed, name=ds_name),
        image_ids=unique_image_ids(stored, str(folder / "index.mat")), root=str(folder),
        meta={"protocol": "hashing", "layout": "index_caption_mat", "seed": seed,
              "dataset": known.name if known else None, "n_query": n_query, "n_train": n_train,
              "stored_paths": stored},
    )
