"""Layouts and details that real copies of the datasets hold and the authors' own copies did
not: each test builds a small copy as the download (or the user's spreadsheet) writes it."""

from __future__ import annotations

import pytest

from xmodal.data import DataError, load_dataset


def test_pairs_csv_from_a_spreadsheet_with_empty_rows(tmp_path):
    # Excel and LibreOffice write a row that was touched but left empty as ";;;" (",,," in
    # English locales), also at the end of the sheet: such a row is no pair, as a blank line is not.
    rows = [b"\xef\xbb\xbfimage;text;labels;split", b"a.JPG;\"ein Bild; von cat\";cat;train", b";;;",
            b"b.JPG;ein Hund \xc3\xbc;dog;test", b";;;", b" ; ;;", b""]
    path = tmp_path / "pairs.csv"
    path.write_bytes(b"\r\n".join(rows))
    ds = load_dataset(str(path))
    assert ds.n_images == 2 and ds.texts == ["ein Bild; von cat", "ein Hund ü"]
    assert ds.label_names == ["cat", "dog"] and ds.labels.tolist() == [[1, 0], [0, 1]]
    assert ds.splits["train"].tolist() == [0] and ds.splits["test"].tolist() == [1]
    # a row that is not wholly empty is still an error naming its line
    path.write_bytes(b"\r\n".join(rows[:3] + [b";orphan caption;;"]))
    with pytest.raises(DataError, match=r"pairs.csv:4: field 'image' missing or empty"):
        load_dataset(str(path))
