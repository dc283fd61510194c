"""Tests that kill the data-loader mutants the older data tests let survive (session 18): the
error paths of the Karpathy, pairs and feature-file loaders and of PairedDataset's own checks,
each asserted by the file, row or field its message names."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from xmodal.data.dataset import DataError, PairedDataset, one_hot, random_splits
from xmodal.data.karpathy import is_karpathy_head, load_karpathy
from xmodal.data.npz import load_npz, save_npz
from xmodal.data.pairs import load_pairs

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _karpathy(tmp_path: Path, images: list, name: str = "dataset.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps({"dataset": "toy", "images": images}))
    return path


def _rec(filename: str, split: str = "train", **extra) -> dict:
    return {"filename": filename, "split": split, "sentences": [{"raw": f"a photo of {filename}"}], **extra}


# ------------------------------------------------------------------ Karpathy files
def test_karpathy_file_that_is_not_json_names_file_and_line(tmp_path):
    path = tmp_path / "dataset.json"
    path.write_text('{"images": [\n  {"filename": "a.jpg",,}\n]}')
    with pytest.raises(DataError, match=r"dataset\.json: invalid JSON at line 2"):
        load_karpathy(path)


def test_unreadable_path_is_no_karpathy_head(tmp_path):
    assert is_karpathy_head(tmp_path) is False  # a folder: open() fails, not a Karpathy file
    assert is_karpathy_head(tmp_path / "absent.json") is False


def test_karpathy_drop_unlabelled_must_be_a_bool(tmp_path):
    path = _karpathy(tmp_path, [_rec("a.jpg"), _rec("b.jpg")])
    with pytest.raises(DataError, match=r"dataset\.json: drop_unlabelled must be True or False, got 'yes'"):
        load_karpathy(path, drop_unlabelled="yes")


def test_karpathy_class_of_that_fails_names_the_record(tmp_path):
    path = _karpathy(tmp_path, [_rec("a.jpg", cls=0), _rec("b.jpg")])
    with pytest.raises(DataError, match=r"dataset\.json: images\[1\]: cannot derive class \('cls'\)"):
        load_karpathy(path, class_of=lambda r: r["cls"])
    with pytest.raises(DataError, match=r"dataset\.json: images\[1\]: cannot derive class \(int\(\) argument"):
        load_karpathy(path, class_of=lambda r: r.get("cls"))  # int(None): a TypeError
    ds = load_karpathy(_karpathy(tmp_path, [_rec("a.jpg", cls=1), _rec("b.jpg", cls=0)], "ok.json"),
                       class_of=lambda r: r["cls"])
    assert ds.labels.tolist() == [[0, 1], [1, 0]]


def test_karpathy_class_of_and_instances_are_refused_together(tmp_path):
    path = _karpathy(tmp_path, [_rec("a.jpg", cocoid=1)])
    inst = tmp_path / "instances_val2014.json"
    inst.write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    with pytest.raises(DataError, match=r"dataset\.json: give class_of or instances, not both"):
        load_karpathy(path, class_of=lambda r: 0, label_names=["x"], instances=str(inst))


def test_karpathy_record_without_cocoid_is_named_when_instances_are_given(tmp_path):
    path = _karpathy(tmp_path, [_rec("a.jpg", cocoid=1), _rec("b.jpg")])
    inst = tmp_path / "instances_val2014.json"
    inst.write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    with pytest.raises(DataError, match=r"dataset\.json: images\[1\] \(b\.jpg\): field 'cocoid' missing or "
                                        r"not an integer, needed to join the labels of instances_val2014\.json"):
        load_karpathy(path, instances=str(inst))


# ------------------------------------------------------------------ pairs files
def test_pretty_printed_json_object_is_no_pairs_file(tmp_path):
    from xmodal.data.pairs import is_pairs_json

    path = tmp_path / "export.json"
    path.write_text('{\n  "settings": {"a": 1},\n  "version": 2\n}\n')
    assert is_pairs_json(path) is False  # first line '{' is no whole object: the Karpathy loader's
    one = tmp_path / "one.json"
    one.write_text('{"image": "a.jpg", "text": "a cat"}\n')
    assert is_pairs_json(one) is True


@pytest.mark.parametrize("body, message", [
    ('[{"image": "a.jpg", "text": "x"},\n {"image": oops}]', r"pairs\.json:2: invalid JSON \(Expecting value\)"),
    ('[{"image": "a.jpg", "text": "x"}\n {"image": "b.jpg", "text": "y"}]',
     r"pairs\.json:2: invalid JSON \(expected ',' or '\]'\)"),
    ('[{"image": "a.jpg", "text": "x"}]\n\n[]', r"pairs\.json:1: invalid JSON \(the array must end the file\)"),
    ('[{"image": "a.jpg", "text": "x"},\n\n 7]', r"pairs\.json: \[1\] \(line 3\): expected a JSON object"),
    ('\n[{"image": "a.jpg", "text": "x"},\n\n 7]', r"pairs\.json: \[1\] \(line 4\): expected a JSON object"),
])
def test_json_array_pairs_errors_name_the_line(tmp_path, body, message):
    path = tmp_path / "pairs.json"
    path.write_text(body)
    with pytest.raises(DataError, match=message):
        load_pairs(path)


def test_json_lines_row_that_is_no_object_names_the_line(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"image": "a.jpg", "text": "x"}\n\n["b.jpg", "y"]\n')
    with pytest.raises(DataError, match=r"pairs\.jsonl:3: expected a JSON object"):
        load_pairs(path)


def test_pairs_file_of_unknown_format_or_no_rows_is_named(tmp_path):
    path = tmp_path / "pairs.txt"
    path.write_text("a.jpg\ta cat\n")
    with pytest.raises(DataError, match=r"pairs\.txt: unknown pairs format '\.txt' \(use \.jsonl or \.csv\)"):
        load_pairs(path)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(DataError, match=r"empty\.jsonl: no rows"):
        load_pairs(empty)


@pytest.mark.parametrize("cell, message", [
    ("['cat', 'dog'", None),  # no closing bracket: one label, as written
    ("['cat' 'dog' 'x' +]", r"looks like a list but is neither JSON nor a Python list"),
    ("['cat'], ['dog']", r"is not a list"),
])
def test_csv_labels_cell_that_looks_like_a_list(tmp_path, cell, message):
    path = tmp_path / "pairs.csv"
    path.write_text(f'image,text,labels\na.jpg,a cat,"{cell}"\n')
    if message is None:
        assert load_pairs(path).label_names == [cell]
        return
    with pytest.raises(DataError, match=r"pairs\.csv:2: field 'labels' .*" + message):
        load_pairs(path)


def test_pairs_images_must_exist_when_asked(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"x")
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"image": "a.jpg", "text": "x"}\n{"image": "gone.jpg", "text": "y"}\n')
    assert load_pairs(path).n_images == 2
    with pytest.raises(DataError, match=r"pairs\.jsonl:2: image .*gone\.jpg not found"):
        load_pairs(path, require_images_exist=True)


def test_pairs_case_mismatch_below_an_existing_folder(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "IMG_1.JPG").write_bytes(b"x")
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"image": "./photos/img_1.jpg", "text": "x"}\n')
    ds = load_pairs(path, require_images_exist=True)
    assert ds.image_paths == [str((tmp_path / "photos" / "IMG_1.JPG").resolve())]


def test_pairs_image_in_two_splits_names_both(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"image": "a.jpg", "text": "x", "split": "train"}\n'
                    '{"image": "a.jpg", "text": "y"}\n'
                    '{"image": "a.jpg", "text": "z", "split": "Test"}\n')
    with pytest.raises(DataError, match=r"pairs\.jsonl:3: image a\.jpg is in split 'train' on an earlier row, "
                                        r"'test' here"):
        load_pairs(path)


# ------------------------------------------------------------------ PairedDataset's checks
def _ds(**kw) -> PairedDataset:
    args = {"name": "toy", "text_to_image": [0, 1, 1, 2], "n_images": 3}
    return PairedDataset(**{**args, **kw})


def test_class_vector_labels_become_one_hot_and_negative_classes_are_named():
    ds = _ds(labels=np.array([2, 0, 1]), label_names=["a", "b", "c"])
    assert ds.labels.dtype == np.uint8 and ds.labels.tolist() == [[0, 0, 1], [1, 0, 0], [0, 1, 0]]
    assert ds.is_single_label and ds.class_ids.tolist() == [2, 0, 1]
    with pytest.raises(DataError, match=r"dataset 'toy': field labels: row 1 holds class -1; class ids must be >= 0"):
        _ds(labels=np.array([0, -1, 1]))
    with pytest.raises(DataError, match=r"one_hot: row 2 holds class -3"):
        one_hot([0, 1, -3])
    assert one_hot([1, 0], 3).tolist() == [[0, 1, 0], [1, 0, 0]]


@pytest.mark.parametrize("labels, message", [
    (np.zeros((3, 2, 1)), r"field labels must be a class vector or a 2-D 0/1 matrix, got shape \(3, 2, 1\)"),
    (np.array([[0, 1], [1, 0], [0, 2]]), r"field labels row 2 column 1 holds 2; labels must be 0/1"),
    (np.array([[0.0, 1.0], [-1.0, 1.0], [1.0, 0.0]]), r"field labels row 1 column 0 holds -1\.0"),
    (np.array([[1, 0], [0, 1], [1, 1]], dtype=np.int8), None),
])
def test_label_matrix_values(labels, message):
    if message is None:
        assert _ds(labels=labels).labels.tolist() == [[1, 0], [0, 1], [1, 1]]
        assert not _ds(labels=labels).is_single_label
        with pytest.raises(DataError, match=r"dataset 'toy' is not single-label; use \.labels"):
            _ds(labels=labels).class_ids
        return
    with pytest.raises(DataError, match=r"dataset 'toy': " + message):
        _ds(labels=labels)


def test_dataset_field_checks_name_the_field():
    with pytest.raises(DataError, match=r"dataset 'toy': field image_features must be 2-D, got shape \(3,\)"):
        _ds(image_features=np.zeros(3))
    with pytest.raises(DataError, match=r"dataset 'toy': labels have 2 columns but 3 label_names"):
        _ds(labels=np.eye(3, 2), label_names=["a", "b", "c"])
    with pytest.raises(DataError, match=r"dataset 'toy': split 'test' names an image index outside 0\.\.2"):
        _ds(splits={"train": [0, 1], "test": [2, 3]})
    with pytest.raises(DataError, match=r"split 'test' names an image index outside"):
        _ds(splits={"test": [-1]})
    _ds(splits={"train": [0, 1, 2], "test": []})  # an empty split is fine
    ds = _ds(splits={"train": [0, 2]})
    with pytest.raises(DataError, match=r"dataset 'toy' has no split 'val'; it has \['train'\]"):
        ds.subset("val")


def test_pairs_without_features_names_the_missing_side():
    X, Y = np.ones((3, 2)), np.ones((4, 5))
    with pytest.raises(DataError, match=r"dataset 'toy' has no image_features; encode it first"):
        _ds().pairs()
    with pytest.raises(DataError, match=r"dataset 'toy' has no image_features"):
        _ds(text_features=Y).pairs()
    with pytest.raises(DataError, match=r"dataset 'toy' has no text_features"):
        _ds(image_features=X).pairs()
    x, y, lab = _ds(image_features=X * [[1], [2], [3]], text_features=Y).pairs()
    assert x[:, 0].tolist() == [1, 2, 2, 3] and y.shape == (4, 5) and lab is None


def test_repr_names_sizes_features_and_splits():
    ds = _ds(image_features=np.zeros((3, 2)), text_features=np.zeros((4, 5)), labels=np.eye(3),
             splits={"train": [0, 1], "test": [2]})
    assert repr(ds) == ("PairedDataset('toy', images=3, texts=4, labels=(3, 3), image_features=(3, 2), "
                        "text_features=(4, 5), splits={'train': 2, 'test': 1})")
    assert repr(_ds()) == "PairedDataset('toy', images=3, texts=4, labels=None, , splits={})"


def test_random_splits_that_need_more_items_than_exist():
    out = random_splits(5, {"train": 3, "test": -1})
    assert sorted(np.concatenate(list(out.values())).tolist()) == [0, 1, 2, 3, 4] and len(out["test"]) == 2
    assert len(random_splits(5, {"train": 5})["train"]) == 5
    with pytest.raises(DataError, match=r"splits \{'train': 3, 'test': 3\} need 6 items but only 5 exist"):
        random_splits(5, {"train": 3, "test": 3})


# ------------------------------------------------------------------ feature files (.npz)
def _npz(tmp_path: Path, record: dict | None = None, **arrays) -> Path:
    path = tmp_path / "feats.npz"
    arrays.setdefault("text_to_image", np.array([0, 1, 1]))
    if record is not None:
        arrays["xmodal_meta"] = np.asarray(json.dumps(record))
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("arrays, message", [
    ({"xmodal_meta": np.asarray("[1, 2]")}, r"array 'xmodal_meta' must hold a JSON object"),
    ({"xmodal_meta": np.asarray('{"label_names": ["a", 2]}')}, r"xmodal_meta label_names must be a list of strings"),
    ({"xmodal_meta": np.asarray('{"label_names": "ab"}')}, r"xmodal_meta label_names must be a list of strings"),
    ({"xmodal_meta": np.asarray('{"meta": [1]}')}, r"xmodal_meta meta must be a JSON object"),
    ({"xmodal_meta": np.asarray('{"n_images": -1}')}, r"xmodal_meta n_images must be a count, got -1"),
    ({"xmodal_meta": np.asarray('{"n_images": 2.5}')}, r"xmodal_meta n_images must be a count, got 2\.5"),
    ({"xmodal_meta": np.asarray('{"n_images": true}')}, r"xmodal_meta n_images must be a count, got True"),
    ({"split_test": np.array([0.0, 1.0])}, r"array 'split_test' must be a 1-D array of integer indices, got float64"),
    ({"text_to_image": np.array([[0, 1]])}, r"array 'text_to_image' must be a 1-D array of integer indices"),
    ({"image_ids": np.array([0.5, 1.5])}, r"array 'image_ids' must be a 1-D array of strings, got float64 of shape"),
    ({"image_paths": np.array([["a"], ["b"]])}, r"array 'image_paths' must be a 1-D array of strings"),
    ({"labels": np.array(["a", "b"])}, r"array 'labels' must be a 0/1 matrix \(or class ids\), got <U1"),
    ({"labels": np.zeros((2, 2, 2))}, r"array 'labels' must be a 0/1 matrix \(or class ids\), got float64 of shape"),
    ({"labels": np.array([0, -1])}, r"array 'labels' \(class ids\) must hold integers >= 0"),
    ({"labels": np.array([0.0, 1.5])}, r"array 'labels' \(class ids\) must hold integers >= 0"),
    ({"labels": np.array([[0, 1], [1, 2]])}, r"array 'labels' must hold only 0 and 1"),
    ({"labels": np.eye(2), "xmodal_meta": np.asarray('{"label_names": ["a", "b", "c"]}')},
     r"array 'labels' has 2 columns but xmodal_meta names 3 labels"),
    ({"labels": np.array([0, 3]), "xmodal_meta": np.asarray('{"label_names": ["a", "b"]}')},
     r"dataset 'feats': labels have 4 columns but 2 label_names"),
])
def test_feature_file_problems_name_the_file_and_array(tmp_path, arrays, message):
    with pytest.raises(DataError, match=r"feats\.npz: " + message):
        load_npz(_npz(tmp_path, **arrays))


def test_feature_file_strings_and_class_ids_that_are_fine(tmp_path):
    ds = load_npz(_npz(tmp_path, image_ids=np.array([7, 8]), labels=np.array([1.0, 0.0]),
                       split_test=np.array([], dtype=float)))
    assert ds.image_ids == ["7", "8"] and ds.labels.tolist() == [[0, 1], [1, 0]]
    assert ds.splits["test"].tolist() == [] and ds.name == "feats"


def _rewrite_member(path: Path, member: str, change) -> None:
    with zipfile.ZipFile(path) as z:
        items = [(i, z.read(i.filename)) for i in z.infolist()]
    with zipfile.ZipFile(path, "w") as z:
        for info, data in items:
            z.writestr(info, change(data) if info.filename == member else data)


def test_damaged_feature_file_names_the_array(tmp_path):
    path = _npz(tmp_path, image_features=np.arange(6.0).reshape(2, 3))
    raw = bytearray(path.read_bytes())
    at = raw.rindex(np.arange(6.0).tobytes()[8:16])  # a byte of the matrix: its CRC no longer holds
    raw[at] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"feats\.npz: array 'image_features' is damaged \(.*CRC"):
        load_npz(path)


def test_feature_file_with_a_broken_zip_directory_is_named(tmp_path):
    path = _npz(tmp_path, image_features=np.zeros((2, 3)))
    raw = bytearray(path.read_bytes())
    at = raw.index(b"PK\x01\x02")  # the central directory's first entry: the end record still reads
    raw[at + 2] = 0x09
    path.write_bytes(bytes(raw))
    assert zipfile.is_zipfile(path)
    with pytest.raises(DataError, match=r"feats\.npz: not a \.npz file \("):
        load_npz(path)


def test_feature_file_member_that_is_not_an_npy_array_is_named(tmp_path):
    path = _npz(tmp_path, image_features=np.zeros((2, 3)))
    _rewrite_member(path, "text_to_image.npy", lambda data: b"not an array")
    with pytest.raises(DataError, match=r"feats\.npz: array 'text_to_image' is damaged \(not a \.npy array\)"):
        load_npz(path)


def test_unknown_arrays_and_unwritable_meta_are_logged(tmp_path, caplog):
    path = _npz(tmp_path, extra=np.zeros(2), split_test=np.array([1]))
    with caplog.at_level("WARNING", logger="xmodal"):
        assert load_npz(path).splits["test"].tolist() == [1]
    assert "feats.npz: ignoring arrays xmodal does not know: extra\n" in caplog.text + "\n"  # not split_test
    ds = _ds(meta={"ok": [1, 2], "obj": object()})
    caplog.clear()
    with caplog.at_level("DEBUG", logger="xmodal"):
        out = save_npz(ds, str(tmp_path / "saved.npz"))
    assert isinstance(out, Path) and out == tmp_path / "saved.npz"
    assert "saved.npz: meta 'obj' not written (not JSON)" in caplog.text
    back = load_npz(out).meta
    assert back["ok"] == [1, 2] and "obj" not in back


def test_truncated_array_is_damaged_not_a_pickle_problem(tmp_path):
    path = _npz(tmp_path, image_features=np.zeros((2, 3)))
    _rewrite_member(path, "image_features.npy", lambda data: data[:-8])
    with pytest.raises(DataError, match=r"feats\.npz: array 'image_features' is damaged \(.*EOF"):
        load_npz(path)
    obj = _npz(tmp_path, image_ids=np.array(["a", None], dtype=object))
    with pytest.raises(DataError, match=r"feats\.npz: array 'image_ids' cannot be read without pickle"):
        load_npz(obj)


# ------------------------------------------------------------------ the files a dataset is read from
def test_source_file_names_relative_to_the_root(tmp_path):
    from xmodal.data._files import SourceFiles

    root = tmp_path / "data"
    files = [root / "a.txt", root / "sub" / "b.txt", tmp_path / "elsewhere.txt"]
    assert SourceFiles("x", files, root).names() == ["a.txt", "sub/b.txt", "../elsewhere.txt"]
    assert SourceFiles("x", files, None).names() is None
    # a sibling folder whose name starts with the root's is not inside it
    assert SourceFiles("x", [tmp_path / "data2" / "c.txt"], root).names() == ["../data2/c.txt"]


def test_wikipedia_release_files_are_its_lists_features_and_texts():
    from xmodal.data._files import dataset_files

    wiki = DATA / "wikipedia"
    if not wiki.is_dir():
        pytest.skip("real Wikipedia data not present")
    src = dataset_files(wiki)
    assert src.layout == "wikipedia" and src.root == wiki
    names = src.names()
    assert names[:4] == ["categories.list", "trainset_txt_img_cat.list", "testset_txt_img_cat.list",
                         "raw_features.mat"]
    texts = names[4:]
    assert len(texts) == 2866 and texts == sorted(texts) and all(n.startswith("texts/") and n.endswith(".xml")
                                                                 for n in texts)


def test_mirflickr_full_release_files_are_its_tags_and_labels(tmp_path):
    from xmodal.data._files import dataset_files
    from xmodal.data.mirflickr import MIRFLICKR_LABELS

    rel = tmp_path / "mirflickr"
    (rel / "meta" / "tags").mkdir(parents=True)
    for i in (1, 2, 10):
        (rel / f"im{i}.jpg").write_bytes(b"\xff\xd8\xff")
        (rel / "meta" / "tags" / f"tags{i}.txt").write_text("sky\n")
    (rel / "meta" / "tags" / "notes.txt").write_text("not a tag file\n")
    src = dataset_files(tmp_path)
    assert src.layout == "mirflickr25k" and src.root == tmp_path
    tags = ["mirflickr/meta/tags/tags1.txt", "mirflickr/meta/tags/tags2.txt", "mirflickr/meta/tags/tags10.txt"]
    assert src.names() == tags  # numbered order; no common tags, no annotations yet
    (rel / "doc").mkdir()
    (rel / "doc" / "common_tags.txt").write_text("sky 3\n")
    ann = tmp_path / "mirflickr25k_annotations_v080"
    ann.mkdir()
    for name in MIRFLICKR_LABELS:
        (ann / f"{name}.txt").write_text("1\n")
    assert dataset_files(tmp_path).names() == tags + ["mirflickr/doc/common_tags.txt"] + [
        f"mirflickr25k_annotations_v080/{name}.txt" for name in MIRFLICKR_LABELS]


# ------------------------------------------------------------------ survivors of the run itself (Karpathy)
def test_karpathy_record_with_an_empty_sentences_list_is_named(tmp_path):
    path = _karpathy(tmp_path, [_rec("a.jpg"), {"filename": "b.jpg", "split": "test", "sentences": []}])
    with pytest.raises(DataError, match=r"dataset\.json: images\[1\] \(b\.jpg\): field 'sentences' missing or empty"):
        load_karpathy(path)


def test_karpathy_class_of_gives_one_column_per_label_name(tmp_path):
    path = _karpathy(tmp_path, [_rec("a.jpg", cls=1), _rec("b.jpg", cls=0)])
    ds = load_karpathy(path, class_of=lambda r: r["cls"], label_names=["a", "b", "c"])
    assert ds.labels.tolist() == [[0, 1, 0], [1, 0, 0]] and ds.label_names == ["a", "b", "c"]


def test_karpathy_class_of_wins_over_instances_files_found_beside(tmp_path):
    path = _karpathy(tmp_path, [_rec("a.jpg", cls=1, cocoid=1), _rec("b.jpg", cls=0, cocoid=2)])
    coco = {"images": [{"id": 1}, {"id": 2}], "annotations": [{"image_id": 1, "category_id": 5}],
            "categories": [{"id": 5, "name": "cat"}]}
    for split in ("train", "val"):
        (tmp_path / f"instances_{split}2014.json").write_text(json.dumps(coco))
    assert load_karpathy(path).label_names == ["cat"]  # found beside and joined by default
    ds = load_karpathy(path, class_of=lambda r: r["cls"], label_names=["x", "y"])
    assert ds.label_names == ["x", "y"] and ds.labels.tolist() == [[0, 1], [1, 0]]
    assert "label_files" not in ds.meta


def test_only_the_ucm_release_gets_ucm_classes(tmp_path):
    images = [_rec(f"{i}.jpg") for i in range(1, 2101)]
    assert load_karpathy(_karpathy(tmp_path, images, "other.json")).labels is None  # 2100 images, not UCM
    doc = json.loads((tmp_path / "other.json").read_text())
    (tmp_path / "ucm.json").write_text(json.dumps({**doc, "dataset": "UCM"}))
    ds = load_karpathy(tmp_path / "ucm.json")
    assert ds.labels.shape == (2100, 21) and ds.class_ids[[0, 99, 100, 2099]].tolist() == [0, 0, 1, 20]


def test_folder_with_several_karpathy_files_lists_them_all(tmp_path):
    from xmodal.data._files import dataset_files

    for name in ("dataset_coco.json", "dataset_flickr8k.json"):
        _karpathy(tmp_path, [_rec("a.jpg")], name)
    src = dataset_files(tmp_path)  # which one to load is the loader's error to name, not a crash here
    assert src.layout == "karpathy" and src.root is None
    assert [p.name for p in src.files] == ["dataset_coco.json", "dataset_flickr8k.json"]


# ------------------------------------------------------------------ survivors of the run itself (pairs)
@pytest.mark.parametrize("suffix, header, shown", [
    (".csv", "picture,caption", "['picture', 'caption']"),
    (".tsv", "picture\tcaption", "['picture', 'caption']"),
])
def test_pairs_header_without_an_image_column_is_split_by_the_file_type(tmp_path, suffix, header, shown):
    path = tmp_path / f"pairs{suffix}"
    path.write_text(f"{header}\na.jpg{header[7]}a cat\n")
    with pytest.raises(DataError, match=rf"pairs\{suffix}:1: header must name an 'image' column, got "
                                        + shown.replace("[", r"\[").replace("]", r"\]")):
        load_pairs(path)


def test_pascal_sentences_folder_files_are_its_sentence_files(tmp_path):
    from xmodal.data._files import dataset_files

    for c in ("cat", "dog"):
        (tmp_path / "dataset" / c).mkdir(parents=True)
        (tmp_path / "sentence" / c).mkdir(parents=True)
        for i in (1, 2):
            (tmp_path / "dataset" / c / f"{c}{i}.jpg").write_bytes(b"\xff\xd8\xff")
            (tmp_path / "sentence" / c / f"{c}{i}.txt").write_text(f"a {c}\n")
    (tmp_path / "sentence" / ".DS_Store").write_bytes(b"x")  # hidden files are no sentences
    src = dataset_files(tmp_path)
    assert src.layout == "pascal_sentences" and src.root == tmp_path
    assert src.names() == ["sentence/cat/cat1.txt", "sentence/cat/cat2.txt", "sentence/dog/dog1.txt",
                           "sentence/dog/dog2.txt"]


def test_folder_whose_reader_refuses_it_falls_back_to_the_legacy_file_list(tmp_path):
    from xmodal.data._files import dataset_files

    # Flickr8k's and Flickr30k's caption files side by side: which one is the loader's error to name
    (tmp_path / "Flickr8k.token.txt").write_text("a.jpg#0\ta dog\n")
    (tmp_path / "results_20130124.token").write_text("b.jpg#0\ta cat\n")
    src = dataset_files(tmp_path)
    assert (src.layout, src.files, src.root) == ("flickr_tokens", [], None)
