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


# The names the official downloads unpack to, tried after the dataset's own name.
ALIASES: dict[str, tuple[str, ...]] = {
    "wikipedia": ("wikipedia_dataset", "wikipedia_info"),
    "nus_wide": ("NUS-WIDE", "nuswide", "nus-wide", "NUS_WIDE"),
    "mirflickr25k": ("MIRFLICKR25K", "mirflickr25k.v3b", "MIRFlickr25K"),
    "pascal_sentences": ("pascal-sentences", "PascalSentences", "pascal_sentence"),
    "ucm_captions": ("UCM_captions", "UCM-Captions", "UCM_Captions"),
}


def resolve_dataset_dir(name: str, data_dir: str | os.PathLike | None = None,
                        marker: str | None = None) -> Path:
    """The folder of dataset ``name``: ``ROOT/name`` (or ``ROOT/alias``, the folder names of the
    official downloads: :data:`ALIASES`) or ROOT itself when it holds ``marker``."""
    tried = []
    names = (name, *ALIASES.get(name, ()))
    for root in candidate_roots(data_dir):
        for cand in (*(root / n for n in names), root):
            tried.append(str(cand))
            if cand.is_dir() and (marker is None or (cand / marker).exists()):
                if cand == root and marker is None:
                    continue
                return cand
    if marker is not None:
        # A folder of the dataset's name that lacks the marker: name what is missing in it.
        for root in candidate_roots(data_dir):
            for cand in (*(root / n for n in names), root):
                if cand.name in names and cand.is_dir():
                    raise DataError(f"{cand / marker}: not found, so {cand} is not a {name!r} folder")
    raise DataError(f"dataset {name!r} not found; looked in {tried}. Pass --data-dir or set ${ENV_VAR}.")
