"""The records of ``xmodal bench`` (src/xmodal/evaluation/records.py): which records pool over
seeds, which replace each other, and how they are written and read back. No fitting: hand-made
records only."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

from xmodal.data import DataError
from xmodal.evaluation.bench import read_jsonl, summarize_seeds, write_json
from xmodal.evaluation.records import differing_fields


def _rec(seed: int, m: float = 0.5, **extra) -> dict:
    return {"dataset": "d", "method": "cca", "bits": None, "seed": seed, "settings": {},
            "params": {"random_state": seed, "alpha": 1.0, "beta": 2.0},
            "i2t": {"map": m}, "t2i": {"map": m}, **extra}


def test_seeds_pool_whatever_the_key_order_of_settings_and_params():
    """A record read back from a file written by another version may list its settings or
    params in another order: it is the same configuration, so its seeds pool and a redone seed
    replaces the old one."""
    a = _rec(0, 0.2, settings={"alpha": 1, "beta": 2})
    b = _rec(1, 0.4, settings={"beta": 2, "alpha": 1}, params={"beta": 2.0, "random_state": 1, "alpha": 1.0})
    out = summarize_seeds([a, b])
    assert len(out) == 1 and out[0]["seeds"] == [0, 1]
    assert out[0]["i2t"]["map"] == pytest.approx(0.3)
    redone = _rec(0, 0.6, settings={"beta": 2, "alpha": 1})
    out = summarize_seeds([a, redone])
    assert len(out) == 1 and out[0]["i2t"]["map"] == 0.6 and "seeds" not in out[0]
    assert differing_fields([a, b]) == []


def test_seed_and_bit_length_params_are_no_difference_but_others_are_named():
    a, b = _rec(0), _rec(1, params={"random_state": 1, "bits": 64, "alpha": 1.0, "beta": 2.0})
    assert differing_fields([a, b]) == []
    c = _rec(1, params={"random_state": 1, "alpha": 3.0, "beta": 2.0, "gamma": 1})
    assert differing_fields([a, c]) == ["params (alpha, gamma)"]
    # a dict-valued parameter listed in another order is not among the differing ones
    d = _rec(0, params={"random_state": 0, "alpha": 1.0, "beta": 2.0, "opt": {"lr": 1, "wd": 0}})
    e = _rec(1, params={"random_state": 1, "alpha": 5.0, "beta": 2.0, "opt": {"wd": 0, "lr": 1}})
    assert differing_fields([d, e]) == ["params (alpha)"]
    assert differing_fields([a, _rec(1, ties="other")]) == ["ties"]
    assert len(summarize_seeds([a, c])) == 2


def test_seed_summary_means_timings_and_keeps_std_for_mr_only():
    recs = [_rec(s, 0.1 * (s + 1), mR=10.0 * (s + 1), fit_seconds=float(s), encode_seconds=2.0 * s)
            for s in range(3)]
    s = summarize_seeds(recs)[0]
    assert s["seeds"] == [0, 1, 2] and "seed" not in s
    assert s["mR"] == pytest.approx(20.0) and s["std"]["mR"] == pytest.approx(10.0)  # ddof=1
    assert s["fit_seconds"] == pytest.approx(1.0) and s["encode_seconds"] == pytest.approx(2.0)
    assert set(s["std"]) == {"i2t", "t2i", "mR"}
    # a timing missing in one seed is not averaged over the rest
    recs[1] = {k: v for k, v in recs[1].items() if k != "fit_seconds"}
    assert summarize_seeds(recs)[0]["fit_seconds"] == 0.0  # the first record's, as it was


def test_a_torn_last_line_is_skipped_and_cut_with_repair_only(tmp_path):
    path = tmp_path / "r.jsonl"
    good = json.dumps(_rec(0)) + "\n"
    path.write_text(good + "\n" + good + '{"dataset": "d", "meth')
    assert len(read_jsonl(path)) == 2
    assert path.read_text().endswith('"meth')  # not repaired unless asked
    assert len(read_jsonl(path, repair=True)) == 2
    assert path.read_text() == good + "\n" + good
    path.write_text('{"torn\n' + good)
    with pytest.raises(DataError, match="line 1 is not valid JSON"):
        read_jsonl(path)
    assert read_jsonl(tmp_path / "absent.jsonl") == []


def test_a_json_list_file_given_for_records_says_which_file_resume_takes(tmp_path):
    listed = tmp_path / "r.json"
    write_json([_rec(0), _rec(1)], listed)
    with pytest.raises(DataError, match=r"line 1 is not valid JSON \(a --json file, one JSON list: --resume takes"):
        read_jsonl(listed)
    other = tmp_path / "r.jsonl"
    other.write_text("not json\n" + json.dumps(_rec(0)) + "\n")
    with pytest.raises(DataError, match=r"line 1 is not valid JSON$"):
        read_jsonl(other)


def test_written_records_are_plain_json(tmp_path):
    out = tmp_path / "r.json"
    rec = _rec(0, i2t={"map": np.float64(np.inf), "per_query": {"ap": np.array([0.5, np.nan])}},
               t2i={"map": -np.inf}, shape=(2, 3), where=Path("runs") / "a.jsonl", n=np.int64(7))
    write_json([rec], out)
    back = json.loads(out.read_text())
    assert back[0]["i2t"] == {"map": None, "per_query": {"ap": [0.5, None]}} and back[0]["t2i"] == {"map": None}
    assert back[0]["shape"] == [2, 3] and back[0]["params"]["alpha"] == 1.0
    assert back[0]["where"] == str(Path("runs") / "a.jsonl") and back[0]["n"] == 7  # other objects as text
    assert os.listdir(tmp_path) == ["r.json"]  # no temp file left


def test_a_write_that_fails_midway_leaves_the_earlier_records_file_whole(tmp_path, monkeypatch):
    out = tmp_path / "r.json"
    write_json([_rec(0)], out)
    before = out.read_text()

    def torn_write(self, text, *args, **kwargs):  # a full disk: half the text, then the error
        with open(self, "w") as fh:
            fh.write(text[: len(text) // 2])
        raise OSError(28, "No space left on device")

    def full_disk_sync(fd):  # the same full disk met where the written bytes are synced
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", torn_write)
    monkeypatch.setattr(os, "fsync", full_disk_sync)
    with pytest.raises(OSError):
        write_json([_rec(0), _rec(1)], out)
    assert out.read_text() == before
    assert os.listdir(tmp_path) == ["r.json"]  # no half-written temp file left behind


def test_a_file_that_is_no_records_file_is_refused_not_cut(tmp_path):
    """Only a last line that begins as a record ('{') is a torn record: a one-line text file
    given as records is refused, naming the file and line, and kept as it is; a binary file
    is refused as such (it raised UnicodeDecodeError)."""
    text = tmp_path / "notes.txt"
    text.write_text("my notes about the run\n")
    for repair in (False, True):
        with pytest.raises(DataError, match=rf"{re.escape(str(text))}: not a records file: line 1 is not valid JSON$"):
            read_jsonl(text, repair=repair)
    assert text.read_text() == "my notes about the run\n"
    good = json.dumps(_rec(0)) + "\n"
    text.write_text(good + "a last line of text")
    with pytest.raises(DataError, match=rf"{re.escape(str(text))}: not a records file: line 2 is not valid JSON$"):
        read_jsonl(text, repair=True)
    assert text.read_text() == good + "a last line of text"
    text.write_text(good + '  {"dataset": "d", "meth')  # a torn record, indented or not
    assert len(read_jsonl(text, repair=True)) == 1 and text.read_text() == good
    binary = tmp_path / "r.jsonl"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe")
    with pytest.raises(DataError, match=rf"{re.escape(str(binary))}: not a records file: not UTF-8 text"):
        read_jsonl(binary, repair=True)
    assert binary.read_bytes() == b"\x89PNG\r\n\x1a\n\x00\xff\xfe"
    with pytest.raises(DataError, match=rf"{re.escape(str(tmp_path))}: not a records file: a folder"):
        read_jsonl(tmp_path)
