"""What identifies a bench run's data in its records: digests of the dataset's files and of what was read.

:func:`dataset_fingerprint` hashes the files a dataset given by path is read from (cached by
path, size and modification time in ``<cache_dir>/dataset-sha256.json``), so ``--resume`` never
takes another file of the same name for this one; :func:`content_digest` hashes what a loader
made of the data (sizes, pairing, splits, labels, texts, a sample of features), so a record made
on data the loader now reads differently is redone. Records carry them as ``dataset_sha256`` and
``data_digest``; every name stays importable from :mod:`xmodal.evaluation.bench`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .._fs import atomic_write_bytes
from ..data import PairedDataset


FINGERPRINT_CACHE = "dataset-sha256.json"
_FINGERPRINT_CACHE_SIZE = 256  # entries kept (most recent): one per dataset path, a few KB
_RACY_S = 2.0  # a file modified this recently may change again within its mtime tick: not cached


_BIG_CACHE_ENTRY = 64  # files beyond which an entry keeps digests of its paths and stats, not lists


def _hash_files(files: Sequence[Path], names: Sequence[str] | None = None) -> str:
    """One SHA-256 over each file's name (its file name, or ``names[i]``) and bytes in turn."""
    digest = hashlib.sha256()
    for i, f in enumerate(files):
        digest.update((f.name if names is None else names[i]).encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _read_fingerprint_cache(path: Path | None) -> dict:
    """The cache's entries, or {} when it is absent, unreadable or not what we wrote."""
    if path is None:
        return {}
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # ValueError covers bad JSON and bad UTF-8
        return {}
    entries = doc.get("entries") if isinstance(doc, dict) and doc.get("format") == 1 else None
    return entries if isinstance(entries, dict) else {}


def _write_fingerprint_cache(path: Path, entries: dict) -> None:
    keep = dict(list(entries.items())[-_FINGERPRINT_CACHE_SIZE:])
    try:
        atomic_write_bytes(path, json.dumps({"format": 1, "entries": keep}).encode())
    except OSError:  # read-only or full disk: the next run hashes again, nothing worse
        pass


def content_digest(ds: PairedDataset) -> str:
    """SHA-256 of what a loader made of a dataset: sizes, pairing, splits, labels, texts, image
    names and a sample of released features. Records carry it (``data_digest``), so
    ``--resume`` redoes a record when the loader changed its reading of the same files (a
    caption cap, decoded entities, another split), which :func:`dataset_fingerprint` cannot
    see and named datasets have no file digest for. Image files are named, not read; of
    released features at most 1024 evenly spaced rows are hashed (a changed feature file
    of a dataset given by path changes :func:`dataset_fingerprint` anyway)."""
    h = hashlib.sha256(f"{ds.n_images}\0{len(ds.text_to_image)}\0".encode())
    h.update(np.ascontiguousarray(ds.text_to_image, dtype=np.int64).tobytes())
    for name in sorted(ds.splits):
        h.update(name.encode() + b"\0")
        h.update(np.ascontiguousarray(ds.splits[name], dtype=np.int64).tobytes())
    if ds.labels is not None:
        h.update(b"labels\0" + np.ascontiguousarray(ds.labels, dtype=np.float32).tobytes())
    for tag, strings in (("texts", ds.texts), ("names", ds.image_ids or (
            [Path(p).name for p in ds.image_paths] if ds.image_paths is not None else None))):
        if strings is not None:
            h.update(f"{tag}\0".encode())
            for t in strings:
                h.update(str(t).encode("utf-8", "surrogatepass") + b"\0")
    for tag, F in (("image_features", ds.image_features), ("text_features", ds.text_features)):
        if F is not None:
            rows = np.unique(np.linspace(0, len(F) - 1, min(len(F), 1024)).astype(np.int64)) if len(F) else []
            h.update(f"{tag}{F.shape}\0".encode())
            h.update(np.ascontiguousarray(np.asarray(F)[rows], dtype=np.float32).tobytes())
    return h.hexdigest()


def dataset_fingerprint(dataset: str | PairedDataset,
                        cache_dir: str | os.PathLike | bool | None = None) -> str | None:
    """SHA-256 of the files a dataset given by path is read from; None for a named dataset or
    a dataset object. Records carry it, so ``--resume`` never takes the records of
    ``a/pairs.jsonl`` for those of ``b/pairs.jsonl``, of an edited file (both named ``pairs``),
    or of another download of the same release.

    Which files: those the loader reads (:func:`xmodal.data.dataset_files`): the file itself
    (a pairs file, ``.mat``, ``.npz``, Karpathy ``.json``); for a folder, the lists, tags,
    labels, captions and ``.mat`` files of its layout (cleaned ``all_imgs.txt`` /
    ``all_tags.txt`` / ``all_labels.txt``; NUS-WIDE's ``Imagelist.txt``, ``AllTags1k.txt``,
    ``Concepts81.txt``, ``Labels_*.txt``; MIRFlickr-25K's ``meta/tags/tags<N>.txt``,
    ``common_tags.txt`` and label files; Pascal Sentences' sentence files or page; Wikipedia's
    lists, ``raw_features.mat`` and ``texts/``), each named by its path in the folder. Images
    are never read (tens of GB): the lists name them, so an image added, removed or renamed
    in a list changes the digest, but an image file replaced in place under the same name
    does not. Folders in the layouts fingerprinted before the release loaders (Karpathy
    ``dataset.json`` / ``dataset_*.json``, DCMH and index/caption/label ``.mat``) keep that
    digest: their ``.json`` and ``.mat`` files (also one level down) by file name.

    Hashing multi-GB files costs seconds per run, so the digest is kept in
    ``<cache_dir>/dataset-sha256.json`` (default folder as the feature cache's; ``False``: no
    cache) under the files' absolute paths with their sizes and modification times
    (nanoseconds): unchanged files are not read again, a changed size or time re-hashes. A
    missing, corrupt or unwritable cache only means hashing. The digest is the same with or
    without the cache (one SHA-256 over name and bytes of each file in turn, as records made
    before the cache carry), which is why a dataset's files share one entry."""
    from ..data import LOADERS, dataset_files

    if not isinstance(dataset, str) or dataset in LOADERS:
        return None
    path = Path(dataset)
    if not (path.is_file() or path.is_dir()):
        return None
    source = dataset_files(path)
    files, names = source.files, source.names()
    from ..encoders.cache import resolve_cache_dir

    root = resolve_cache_dir(cache_dir)
    cache_file = None if root is None else root / FINGERPRINT_CACHE
    try:
        stats = [[st.st_size, st.st_mtime_ns] for st in map(os.stat, files)]
        if names is None:
            resolved = [str(f.resolve()) for f in files]
        else:  # one resolve, not one per file (thousands in a release)
            top = str(source.root.resolve())
            resolved = [f"{top}/{n}" for n in names]
    except OSError:  # vanished meanwhile: hashing names the file in its error
        return _hash_files(files, names)
    # The entry of the layouts fingerprinted before keeps its key; a release's (another digest
    # of possibly the same files) is told apart, and a list of 25,000 tag files kept short.
    key = json.dumps(resolved if names is None else {"named": "relative", "files": resolved})
    stat_record: Any = stats
    if len(files) > _BIG_CACHE_ENTRY:
        key = "sha256:" + hashlib.sha256(key.encode()).hexdigest()
        stat_record = hashlib.sha256(json.dumps(stats).encode()).hexdigest()
    entries = _read_fingerprint_cache(cache_file)
    hit = entries.get(key)
    if (isinstance(hit, dict) and hit.get("stat") == stat_record and isinstance(hit.get("sha256"), str)
            and re.fullmatch(r"[0-9a-f]{64}", hit["sha256"])):
        return hit["sha256"]
    fingerprint = _hash_files(files, names)
    if cache_file is not None:
        try:
            after = [[st.st_size, st.st_mtime_ns] for st in map(os.stat, files)]
        except OSError:
            after = None
        # Written to while we read it, or so recently that a same-size rewrite could keep its
        # mtime (coarse file-system clocks): not trusted to stay unchanged, so not cached.
        newest = max((m for _, m in stats), default=0) / 1e9
        if after == stats and time.time() - newest > _RACY_S:
            entries.pop(key, None)  # re-inserted last: the most recent entries are the ones kept
            entries[key] = {"stat": stat_record, "sha256": fingerprint}
            _write_fingerprint_cache(cache_file, entries)
    return fingerprint
