"""On-disk feature cache.

One folder per encoder state (spec + version + fitted-state hash); inside it, append-only
``shard-*.npz`` files, one per completed batch, each holding ``keys`` (content hashes) and
``features``. Shards are written to a temporary name and renamed, so a reader never sees a
half-written shard and an interrupted run keeps every batch it finished.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import time
import uuid
import zipfile
from pathlib import Path
from typing import BinaryIO

import numpy as np

from .._fs import atomic_write_bytes

ENV_VAR = "XMODAL_CACHE"


def default_cache_dir() -> Path:
    """``$XMODAL_CACHE`` or ``~/.cache/xmodal``."""
    env = os.environ.get(ENV_VAR)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "xmodal"


def resolve_cache_dir(cache_dir: str | os.PathLike | bool | None) -> Path | None:
    """``False`` disables caching, ``None``/``True`` means the default folder. An empty one
    (``--cache-dir "$UNSET"``) is an :class:`~xmodal.encoders.base.EncoderError`: as
    ``Path("")`` it was the current folder, which filled up with the cache's folders."""
    if cache_dir is False:
        return None
    if cache_dir is None or cache_dir is True:
        return default_cache_dir()
    if isinstance(cache_dir, str) and not cache_dir.strip():
        from .base import EncoderError  # base imports this module

        raise EncoderError(f"the feature cache folder is empty ({cache_dir!r}); give a folder "
                           "(--cache-dir, $XMODAL_CACHE), or cache_dir=False to turn the cache off")
    return Path(cache_dir).expanduser()


# Longest file-name stem a spec keeps as it is, by what is appended to it, within the 255-byte
# name limit of common file systems: a feature-cache folder ``<stem>-<16 hex>`` (made with
# mkdir: 238), a file ``<stem>-<24 hex>.zip`` written through a temporary
# ``.<name>.<8 random>.tmp`` (212). Stems up to these lengths keep the names they always had,
# so caches already on disk stay valid; longer ones could not be written at all.
MAX_STEM = 212
MAX_FOLDER_STEM = 238


def safe_name(spec: str, max_len: int = MAX_STEM) -> str:
    """``spec`` as a file-name stem: runs of characters other than letters, digits, ``.``,
    ``_`` and ``-`` become ``_``. A stem longer than ``max_len`` (e.g. ``sbert:`` with a long
    folder path) is cut to a readable prefix plus 16 hex of the spec's SHA-256, so distinct long
    specs keep distinct, deterministic names."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", spec).strip("_") or "encoder"
    if len(stem) <= max_len:
        return stem
    digest = hashlib.sha256(spec.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"{stem[:max_len - 18].rstrip('_.-')}--{digest}"


def content_hash(data: bytes) -> str:
    # 128-bit BLAKE2b: collision-safe for caching and short enough for file names.
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def file_hash(fh: BinaryIO) -> str:
    """:func:`content_hash` of an open binary file, read in 1 MiB chunks."""
    h = hashlib.blake2b(digest_size=16)
    for block in iter(lambda: fh.read(1 << 20), b""):
        h.update(block)
    return h.hexdigest()


_FILE_HASHES: dict[tuple[str, int, int], str] = {}


def stable_file_hash(path: str | os.PathLike) -> str:
    """:func:`file_hash` of a file, computed once per process and file version (resolved path,
    size, modification time): model files are hashed to key the cache, not re-read per call."""
    p = Path(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _FILE_HASHES:
        with open(p, "rb") as fh:
            _FILE_HASHES[key] = file_hash(fh)
    return _FILE_HASHES[key]


def folder_hash(root: str | os.PathLike) -> str:
    """SHA-256 over a model folder's files (relative name, size, :func:`stable_file_hash`),
    hidden files and folders left out (``.gitattributes``, ``.cache``)."""
    root = Path(root)
    h = hashlib.sha256()
    for f in sorted(root.rglob("*")):
        rel = f.relative_to(root).as_posix()
        if f.is_file() and not any(part.startswith(".") for part in rel.split("/")):
            h.update(f"{rel}\0{f.stat().st_size}\0{stable_file_hash(f)}\n".encode())
    return h.hexdigest()


class FeatureCache:
    """Features of one encoder state, looked up by content hash."""

    def __init__(self, folder: Path, dim: int, info: dict | None = None) -> None:
        self.folder = Path(folder)
        self.dim = dim
        self.folder.mkdir(parents=True, exist_ok=True)
        info_path = self.folder / "encoder.json"
        if info and not info_path.exists():
            atomic_write_bytes(info_path, json.dumps(info, indent=1).encode())
        self._index: dict[str, tuple[Path, int]] = {}
        self._seen: set[str] = set()
        self.refresh()

    @classmethod
    def for_encoder(cls, root: Path, spec: str, key: str, dim: int, info: dict) -> "FeatureCache":
        return cls(Path(root) / f"{safe_name(spec, MAX_FOLDER_STEM)}-{key[:16]}", dim, info)

    def refresh(self) -> None:
        """Index shards written since the last look (by this or another process)."""
        for shard in sorted(self.folder.glob("shard-*.npz")):
            if shard.name in self._seen:
                continue
            try:
                with np.load(shard, allow_pickle=False) as z:
                    keys = z["keys"]
            except Exception:  # unreadable shard: ignore it, its items get recomputed
                continue
            self._seen.add(shard.name)
            for row, k in enumerate(keys.tolist()):
                self._index.setdefault(k, (shard, row))

    def __contains__(self, key: str) -> bool:
        return key in self._index

    def __len__(self) -> int:
        return len(self._index)

    def get_many(self, keys: list[str]) -> np.ndarray:
        """Features for ``keys`` (all must be present and readable), reading each shard once."""
        out, found = self.lookup(keys)
        if not found.all():
            raise KeyError(f"cache {self.folder}: {int((~found).sum())} entries are gone or unreadable")
        return out

    def lookup(self, keys: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(features, found) for indexed ``keys``, reading each shard once. A shard that has
        gone (the cache folder emptied under a running process) or cannot be read any more
        is forgotten, and its rows come back not found, to be computed again."""
        out = np.zeros((len(keys), self.dim), dtype=np.float32)
        found = np.zeros(len(keys), dtype=bool)
        by_shard: dict[Path, list[tuple[int, int]]] = {}
        for i, k in enumerate(keys):
            shard, row = self._index[k]
            by_shard.setdefault(shard, []).append((i, row))
        for shard, pairs in by_shard.items():
            dst, src = (list(t) for t in zip(*pairs))
            try:
                with np.load(shard, allow_pickle=False) as z:
                    feats = z["features"]
                out[dst] = feats[src]
            except (OSError, ValueError, EOFError, KeyError, IndexError, zipfile.BadZipFile):
                self._forget(shard)
                continue
            found[dst] = True
        return out, found

    def _forget(self, shard: Path) -> None:
        self._seen.discard(shard.name)
        for k in [k for k, (s, _) in self._index.items() if s == shard]:
            del self._index[k]

    def put_many(self, keys: list[str], features: np.ndarray) -> None:
        """Append one shard atomically."""
        if not keys:
            return
        features = np.ascontiguousarray(features, dtype=np.float32)
        if features.shape != (len(keys), self.dim):
            raise ValueError(f"cache {self.folder}: got features {features.shape}, "
                             f"expected ({len(keys)}, {self.dim})")
        name = f"shard-{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:8]}.npz"
        path = self.folder / name
        buf = io.BytesIO()
        np.savez(buf, keys=np.asarray(keys), features=features)
        atomic_write_bytes(path, buf.getvalue())
        self._seen.add(name)
        for row, k in enumerate(keys):
            self._index.setdefault(k, (path, row))
