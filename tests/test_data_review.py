"""Regressions from the review of the data loaders: detection order, routing, probing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from xmodal.data import DataError
from xmodal.data import pairs as pairs_mod


class _CountingText(str):
    """A str that adds up how many characters ``count`` scans (the line-number bookkeeping)."""

    scanned = 0

    def count(self, sub, start=0, end=None):  # type: ignore[override]
        end = len(self) if end is None else end
        type(self).scanned += max(0, end - start)
        return str.count(self, sub, start, end)


def test_json_array_line_numbers_linear(tmp_path):
    rows = [{"image": f"imgs/{i}.jpg", "text": f"photo {i}"} for i in range(2000)]
    rows[1500] = {"image": "imgs/x.jpg", "text": "x", "colour": "red"}
    text = json.dumps(rows, indent=1)
    _CountingText.scanned = 0
    out = pairs_mod._json_array(_CountingText(text), tmp_path / "pairs.json")
    # Line numbers counted from the previous row, not from the file's start for each row.
    assert _CountingText.scanned <= 2 * len(text)
    loc, obj = out[1500]
    want = text[:text.index('"colour"')].count("\n") + 1 - 3  # the row's "{" is 3 lines up
    assert loc == f" [1500] (line {want})"
    assert obj["colour"] == "red"
    path = tmp_path / "pairs.json"
    path.write_text(text)
    with pytest.raises(DataError, match=rf"pairs.json: \[1500\] \(line {want}\): unknown field"):
        pairs_mod.load_pairs(path)
