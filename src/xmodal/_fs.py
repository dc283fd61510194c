"""File-system helpers shared by the feature cache, encoders and collections."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable


def _umask() -> int:
    """The process umask, read without changing it where Linux allows (``os.umask`` sets it,
    which would race with other threads creating files)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def blocking_file(path: str | os.PathLike) -> Path | None:
    """The first existing folder above ``path`` when it is a file, not a folder (``afile/x``:
    ``path`` can never be created, and ``mkdir`` would say only "File exists"); else None."""
    above = Path(path).absolute().parent
    while not above.exists() and above != above.parent:
        above = above.parent
    return None if above.is_dir() else above


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> None:
    """Write a file through ``write(fh)`` so that a crash leaves the old file or the new one,
    never a torn one: temp file in the same folder, fsync, rename. The temp name ends in ``.tmp``.
    The file gets the mode an ordinary ``open`` would give it (the old file's mode, else
    0666 less the umask): ``mkstemp`` alone would leave it readable by its owner only."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = path.stat().st_mode & 0o7777
    except OSError:
        mode = 0o666 & ~_umask()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, mode)
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """:func:`atomic_write` of ``data``."""
    atomic_write(path, lambda fh: fh.write(data))


def json_default(v: Any) -> Any:
    """``json.dumps(default=...)`` for NumPy scalars and arrays (and tuples) in saved metadata."""
    import numpy as np

    if isinstance(v, (np.integer, np.floating, np.bool_)):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, tuple):
        return list(v)
    raise TypeError(f"cannot serialise {type(v).__name__}")
