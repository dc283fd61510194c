"""Where datasets live: --data-dir, then $XMODAL_DATA, then ../shared/data."""

from __future__ import annotations

import os
from pathlib import Path

from .dataset import DataError

ENV_VAR = "XMODAL_DATA"


def candidate_roots(data_dir: str | os.PathLike | None = None) -> list[Path]:
    if data_dir is not None:
        return [Path(data_dir)]
    roots = []
    if os.environ.get(ENV_VAR):
        roots.append(Path(os.environ[ENV_VAR]))
    roots.append(Path.cwd().parent / "shared" / "data")
    # A checkout's sibling shared/ folder, wherever the command is run from.
    roots.append(Path(__file__).resolve().parents[4] / "shared" / "data")
    return roots


def resolve_dataset_dir(name: str, data_dir: str | os.PathLike | None = None,
                        marker: str | None = None) -> Path:
    """The folder of dataset ``name``: ``ROOT/name`` or ROOT itself when it holds ``marker``."""
    tried = []
    for root in candidate_roots(data_dir):
        for cand in (root / name, root):
            tried.append(str(cand))
            if cand.is_dir() and (marker is None or (cand / marker).exists()):
                if cand == root and marker is None:
                    continue
                return cand
    if marker is not None:
        # A folder of the dataset's name that lacks the marker: name what is missing in it.
        for root in candidate_roots(data_dir):
            for cand in (root / name, root):
                if cand.name == name and cand.is_dir():
                    raise DataError(f"{cand / marker}: not found, so {cand} is not a {name!r} folder")
    raise DataError(f"dataset {name!r} not found; looked in {tried}. Pass --data-dir or set ${ENV_VAR}.")
