from __future__ import annotations

import os
from pathlib import Path

import pytest

DATA = Path(os.environ.get("XMODAL_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))


def need(name: str) -> Path:
    path = DATA / name
    if not path.exists():
        pytest.skip(f"reference data {path} not present")
    return path


@pytest.fixture(scope="session")
def data_root() -> Path:
    if not DATA.exists():
        pytest.skip(f"reference data {DATA} not present")
    return DATA


@pytest.fixture(scope="session")
def wikipedia():
    need("wikipedia")
    from xmodal.data import load_wikipedia

    return load_wikipedia(str(DATA))


@pytest.fixture(scope="session")
def ucm():
    need("ucm_captions")
    from xmodal.data import load_ucm_captions

    return load_ucm_captions(str(DATA))
