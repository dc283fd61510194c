"""Pairs files as a researcher writes them (pandas, spreadsheets): labels that are numbers,
rows that give both ``label`` and ``labels``."""

from __future__ import annotations

import json

import pytest

from xmodal.data import DataError, load_dataset


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_integral_number_labels_are_one_class_however_written(tmp_path):
    # pandas writes an integer column holding NaN as floats: 1.0 is class 1, not a new class
    path = _write(tmp_path / "p.jsonl", [{"image": "a.jpg", "text": "t", "label": 1},
                                         {"image": "b.jpg", "text": "u", "label": 1.0},
                                         {"image": "c.jpg", "text": "v", "labels": [2.0, 1]},
                                         {"image": "d.jpg", "text": "w", "label": 2.5}])
    ds = load_dataset(str(path))
    assert ds.label_names == ["1", "2", "2.5"]
    assert ds.labels.tolist() == [[1, 0, 0], [1, 0, 0], [1, 1, 0], [0, 0, 1]]


def test_boolean_label_is_refused_naming_the_row(tmp_path):
    path = _write(tmp_path / "p.jsonl", [{"image": "a.jpg", "text": "t", "label": "x"},
                                         {"image": "b.jpg", "text": "u", "label": True}])
    with pytest.raises(DataError, match=r"p\.jsonl:2: .*label.*true"):
        load_dataset(str(path))


def test_label_and_labels_that_disagree_are_refused(tmp_path):
    path = _write(tmp_path / "p.jsonl", [{"image": "a.jpg", "text": "t", "label": "x", "labels": ["y", "z"]}])
    with pytest.raises(DataError, match=r"p\.jsonl:1: .*'label' x is not among its 'labels'"):
        load_dataset(str(path))
    # agreeing fields are fine: label is then one of the labels
    _write(path, [{"image": "a.jpg", "text": "t", "label": "y", "labels": ["y", "z"]},
                  {"image": "b.jpg", "text": "u", "label": "x"}])
    assert load_dataset(str(path)).label_names == ["x", "y", "z"]


def test_csv_label_and_labels_columns(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text('image,text,label,labels\na.jpg,"t, with comma",x,y;z\n')
    with pytest.raises(DataError, match=r"p\.csv:2: "):
        load_dataset(str(path))


def test_spreadsheet_csv_with_semicolons_or_tabs(tmp_path):
    # Excel in locales with a decimal comma saves "CSV" with ';' between fields; a .csv
    # exported as tab-separated text is common too. Both are read by their header.
    for delim in (";", "\t"):
        path = tmp_path / f"pairs{len(delim)}{ord(delim)}.csv"
        path.write_text(delim.join(["image", "text", "labels"]) + "\r\n"
                        + delim.join(["a.jpg", "a dog, on grass", "dog;animal" if delim == "\t" else "dog"]) + "\r\n"
                        + delim.join(["b.jpg", "a cat", "cat"]) + "\r\n")
        ds = load_dataset(str(path))
        assert ds.texts == ["a dog, on grass", "a cat"]
        assert ds.n_images == 2 and ds.labels.sum() == (3 if delim == "\t" else 2)
    bad = tmp_path / "bad.csv"
    bad.write_text("picture;caption\nx.jpg;y\n")
    with pytest.raises(DataError, match=r"bad.csv:1: header must name an 'image' column"):
        load_dataset(str(bad))


def test_pairs_as_one_json_array(tmp_path):
    # A pairs file written with json.dump(rows, f, indent=2): one array, not one object a line.
    path = tmp_path / "pairs.json"
    path.write_text(json.dumps([{"image": "a.jpg", "text": "a dog", "label": "dog"},
                                {"image": "b.jpg", "text": "a cat", "label": "cat"},
                                {"image": "a.jpg", "text": "the dog again", "split": ""}], indent=2))
    ds = load_dataset(str(path))
    assert ds.texts == ["a dog", "a cat", "the dog again"] and ds.n_images == 2
    assert ds.label_names == ["cat", "dog"]
    path.write_text(json.dumps([{"image": "a.jpg", "text": "a dog"}, ["b.jpg", "x"]], indent=2))
    with pytest.raises(DataError, match=r"pairs.json: \[1\] \(line 6\): expected a JSON object"):
        load_dataset(str(path))
    path.write_text(json.dumps([{"image": "a.jpg", "text": "a dog"}, {"image": "b.jpg"}], indent=2))
    with pytest.raises(DataError, match=r"pairs.json: \[1\] \(line 6\): field 'text' missing or empty"):
        load_dataset(str(path))


def test_pairs_windows_paths(tmp_path):
    # A pairs file written on Windows: backslashes between folders, CRLF line ends.
    (tmp_path / "imgs" / "sub").mkdir(parents=True)
    (tmp_path / "imgs" / "sub" / "a.jpg").write_bytes(b"\xff\xd8\xff")
    path = tmp_path / "pairs.csv"
    path.write_bytes(b"image,text\r\nimgs\\sub\\a.jpg,a dog\r\nimgs/sub/a.jpg,the same dog\r\n")
    ds = load_dataset(str(path))
    assert ds.n_images == 1 and ds.image_paths == [str(tmp_path / "imgs" / "sub" / "a.jpg")]


def test_pairs_csv_written_by_hand_with_spaces_after_commas(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text('image, text, label\na.jpg, "a dog, on grass", dog\nb.jpg, a cat, cat\n')
    ds = load_dataset(str(path))
    assert ds.texts == ["a dog, on grass", "a cat"] and ds.label_names == ["cat", "dog"]
    assert ds.image_paths[0] == str(tmp_path / "a.jpg")
    path.write_text('image ,text ;label\na.jpg,a dog,dog\n'.replace(";", ","))
    assert load_dataset(str(path)).texts == ["a dog"]
