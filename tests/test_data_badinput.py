"""Unusual and malformed input files for every loader: good-but-unusual input loads, bad input
raises DataError naming the file, row or field (never a bare numpy/Unicode/Type error)."""


import json
import shutil

import numpy as np
import pytest

from conftest import karpathy_file
import scipy.io

from xmodal.data import DataError, load_dataset, load_pairs
from xmodal.data.karpathy import UCM_CLASSES, _ucm_class, load_karpathy
from xmodal.data.mirflickr import MIRFLICKR_LABELS, load_cnn_mat, load_mirflickr25k
from xmodal.data.nuswide import load_nus_wide
from xmodal.data.pascal import load_pascal_sentences
from xmodal.data.wikipedia import load_wikipedia
from test_data_nuswide_pascal import nus_arrays, write_nus, write_pascal

BOM = b"\xef\xbb\xbf"


def jsonl(*rows, **dumps) -> str:
    return "\n".join(json.dumps(r, **dumps) for r in rows) + "\n"


# ---------------------------------------------------------------------------------- pairs files
def test_pairs_bom_crlf_and_grouped_captions(tmp_path):
    rows = [{"image": "img/a b.jpg", "text": "first", "label": 3, "split": "train"},
            {"image": "img/c.jpg", "text": "other", "label": "3", "split": "test"},
            {"image": "./img/a b.jpg", "text": "second", "labels": [" 3 ", None], "split": "restval"}]
    p = tmp_path / "pairs.jsonl"
    p.write_bytes(BOM + jsonl(*rows).replace("\n", "\r\n").encode())
    ds = load_pairs(p)
    assert ds.n_images == 2 and list(ds.text_to_image) == [0, 1, 0]
    assert ds.texts == ["first", "other", "second"] and ds.label_names == ["3"]
    assert ds.image_paths[0] == str((tmp_path / "img" / "a b.jpg").resolve())
    assert list(ds.splits["train"]) == [0] and list(ds.splits["test"]) == [1]
    c = tmp_path / "pairs.csv"  # Excel's "CSV UTF-8" starts with a byte-order mark
    c.write_bytes(BOM + b"image,text,labels\r\na.jpg,one,x;y\r\nb.jpg,\"two\r\nlines\",y\r\n")
    dc = load_pairs(c)
    assert dc.texts == ["one", "two\r\nlines"] and dc.labels.tolist() == [[1, 1], [0, 1]]


def test_pairs_jsonl_keeps_unicode_line_separators(tmp_path):
    # Valid JSON: json.dumps(ensure_ascii=False) leaves U+2028 and U+0085 unescaped.
    p = tmp_path / "pairs.jsonl"
    p.write_text(jsonl({"image": "a.jpg", "text": "one\u2028two"}, {"image": "b.jpg", "text": "x\x85y"},
                       ensure_ascii=False), encoding="utf-8")
    assert load_pairs(p).texts == ["one\u2028two", "x\x85y"]


@pytest.mark.parametrize("name,content,needle", [
    ("pairs.jsonl", b'{"image": "a.jpg", "text": "t"}\n{"image": "b.jpg", "text": "caf\xe9"}\n',
     r"pairs.jsonl:2: not UTF-8"),
    ("pairs.csv", b"image,text\na.jpg,t\nb.jpg,caf\xe9\n", r"pairs.csv:3: not UTF-8"),
    ("pairs.csv", BOM + b"image,text\na.jpg,t\nb.jpg,caf\xe9\n", r"pairs.csv:3: not UTF-8 \(byte 0xe9 at offset 31\)"),
    ("pairs.jsonl", jsonl({"image": "a.jpg", "text": "t", "split": "tset"}).encode(),
     r"pairs.jsonl:1: unknown split 'tset'"),
    ("pairs.jsonl", jsonl({"image": "a.jpg", "text": ["one", "two"]}).encode(),
     r"pairs.jsonl:1: field 'text' must be a string.*one row per caption"),
    ("pairs.jsonl", jsonl({"image": ["a.jpg"], "text": "t"}).encode(), r"pairs.jsonl:1: field 'image' must be"),
    ("pairs.jsonl", jsonl({"image": "a.jpg", "text": "t", "labels": {"cat": 1}}).encode(),
     r"pairs.jsonl:1: a label must be a string or a number"),
    ("pairs.csv", b"image,text\na.jpg,t\n   ,u\n", r"pairs.csv:3: field 'image' missing or empty"),
    ("pairs.csv", b"image,text\na.jpg,t,extra\n", r"pairs.csv:2: 3 values, but the header has 2 columns"),
    ("pairs.csv", b"image,text,text\na.jpg,t,u\n", r"pairs.csv:1: header names column\(s\) \['text'\] more than once"),
    # A blank line before the bad row: the reported line is the file's, not the row count + 2.
    ("pairs.csv", b"image,text\na.jpg,t\n\nb.jpg,\n", r"pairs.csv:4: field 'text' missing"),
])
def test_pairs_bad_input_names_file_and_row(tmp_path, name, content, needle):
    p = tmp_path / name
    p.write_bytes(content)
    with pytest.raises(DataError, match=needle):
        load_pairs(p)


# ---------------------------------------------------------------------------- Karpathy dataset.json
def karpathy_doc(**over):
    rec = {"filename": "1.tif", "split": "train", "sentences": [{"raw": "a field", "tokens": ["a", "field"]}]}
    rec.update(over)
    return {"images": [rec], "dataset": "t"}


def test_karpathy_bom_and_token_only_sentences(tmp_path):
    doc = karpathy_doc(sentences=[{"raw": "", "tokens": ["a", "red", "roof"]}, {"tokens": ["route", 66]}])
    (tmp_path / "dataset.json").write_bytes(BOM + json.dumps(doc).encode())
    ds = load_karpathy(tmp_path)
    assert ds.texts == ["a red roof", "route 66"] and list(ds.text_to_image) == [0, 0]


@pytest.mark.parametrize("doc,needle", [
    ({"images": None}, r"no 'images' list"),
    ({"images": {"1.jpg": {}}}, r"no 'images' list"),
    ({"images": []}, r"'images' list is empty"),
    ({"images": ["1.jpg"]}, r"images\[0\]: expected an object"),
    (karpathy_doc(filename=None), r"images\[0\]: field 'filename' missing or not a string"),
    (karpathy_doc(sentences="a field"), r"images\[0\] \(1.tif\): field 'sentences' must be a list"),
    (karpathy_doc(sentences=[{"raw": "   "}]), r"images\[0\]: sentences\[0\] has no 'raw' text"),
    (karpathy_doc(sentences=[{"tokens": "afield"}]), r"images\[0\]: sentences\[0\] has no 'raw' text"),
    (karpathy_doc(split="tst"), r"images\[0\] \(1.tif\): unknown split 'tst'"),
    # UCM class = (id - 1) // 100: ids outside 1..2100 have no class.
    (karpathy_doc(filename="2500.tif"), r"images\[0\] \(2500.tif\): class 24 outside 0..20"),
    (karpathy_doc(filename="0.tif"), r"images\[0\] \(0.tif\): class -1 outside 0..20"),
])
def test_karpathy_bad_input_names_record(tmp_path, doc, needle):
    (tmp_path / "dataset.json").write_text(json.dumps(doc))
    with pytest.raises(DataError, match=needle):
        load_karpathy(tmp_path, class_of=_ucm_class, label_names=UCM_CLASSES)


def test_karpathy_not_utf8_and_missing_image_folder(tmp_path):
    p = tmp_path / "dataset.json"
    p.write_bytes(b'{"images": [\n{"filename": "1.jpg", "sentences": ["caf\xe9"]}]}')
    with pytest.raises(DataError, match=r"dataset.json:2: not UTF-8"):
        load_karpathy(p)
    p.write_text(json.dumps(karpathy_doc()))
    with pytest.raises(DataError, match=r"nope: image folder not found"):
        load_karpathy(p, image_dir=tmp_path / "nope")


# ----------------------------------------------------------------------------------- Wikipedia
CATS = ["art", "biology", "history"]


def write_wikipedia(root, n_train=6, n_test=3):
    root.mkdir(parents=True)
    (root / "categories.list").write_text("\n".join(CATS) + "\n")
    for name, n, off in (("trainset", n_train, 0), ("testset", n_test, n_train)):
        (root / f"{name}_txt_img_cat.list").write_text(
            "".join(f"t{off + i}\ti{off + i}\t{i % 3 + 1}\n" for i in range(n)))
    (root / "texts").mkdir()
    for i in range(n_train + n_test):
        (root / "texts" / f"t{i}.xml").write_text(f"<document><text>text {i}</text></document>")
    rng = np.random.default_rng(0)
    mat = {"I_tr": rng.random((n_train, 4)), "T_tr": rng.random((n_train, 2)),
           "I_te": rng.random((n_test, 4)), "T_te": rng.random((n_test, 2))}
    scipy.io.savemat(root / "raw_features.mat", mat)
    return root, mat


def test_wikipedia_bom_in_list_files(tmp_path):
    root, _ = write_wikipedia(tmp_path / "wikipedia")
    for f in ("categories.list", "trainset_txt_img_cat.list"):
        (root / f).write_bytes(BOM + (root / f).read_bytes())
    ds = load_wikipedia(str(tmp_path))
    assert ds.label_names == CATS and ds.text_ids[0] == "t0" and ds.texts[0] == "text 0"
    assert ds.image_paths[0] == str(root / "images" / "art" / "i0.jpg")


def test_wikipedia_bad_files_name_file_and_counts(tmp_path):
    root, mat = write_wikipedia(tmp_path / "wikipedia")
    lst = root / "testset_txt_img_cat.list"
    lst.write_bytes(lst.read_bytes() + b"t\xe9\ti9\t1\n")
    with pytest.raises(DataError, match=r"testset_txt_img_cat.list:4: not UTF-8"):
        load_wikipedia(str(tmp_path))
    lst.write_text("".join(lst.read_text(errors="replace").splitlines(keepends=True)[:2]))
    with pytest.raises(DataError, match=r"raw_features.mat: I_te has shape \(3, 4\), but "
                                        r"testset_txt_img_cat.list has 2 rows"):
        load_wikipedia(str(tmp_path))
    write_wikipedia(tmp_path / "w2" / "wikipedia")
    scipy.io.savemat(tmp_path / "w2" / "wikipedia" / "raw_features.mat", {**mat, "I_te": mat["I_te"][:, :3]})
    with pytest.raises(DataError, match=r"raw_features.mat: I_tr has 4 columns but I_te has 3"):
        load_wikipedia(str(tmp_path / "w2"))
    (tmp_path / "w2" / "wikipedia" / "categories.list").write_text("\n\n")
    with pytest.raises(DataError, match=r"categories.list: no category names"):
        load_wikipedia(str(tmp_path / "w2"))


# ---------------------------------------------------------------------------------- MIRFlickr
def write_mirflickr(root, n=40):
    rng = np.random.default_rng(1)
    root.mkdir(parents=True)
    (root / "all_imgs.txt").write_text("".join(f"mirflickr/im{i + 1}.jpg\n" for i in range(n)))
    (root / "all_tags.txt").write_text("".join(f"sky,tag{i % 5}\n" for i in range(n)))
    labels = rng.integers(0, 2, (n, len(MIRFLICKR_LABELS)))
    (root / "all_labels.txt").write_text("".join(" ".join(map(str, r)) + "\n" for r in labels))
    return root


def test_mirflickr_unusual_but_good_files(tmp_path):
    root = write_mirflickr(tmp_path / "mirflickr25k")
    imgs = root / "all_imgs.txt"
    imgs.write_bytes(BOM + imgs.read_bytes() + b"\n\n")  # BOM, and trailing blank lines
    labels = root / "all_labels.txt"
    labels.write_bytes(BOM + labels.read_bytes())
    # --data-dir may name the dataset folder itself, as for the other datasets.
    ds = load_mirflickr25k(str(root), n_query=5, n_train=10)
    assert ds.n_images == 40 and ds.image_paths[0] == str(root / "mirflickr" / "im1.jpg")


def test_mirflickr_inner_blank_image_line(tmp_path):
    root = write_mirflickr(tmp_path / "mirflickr25k")
    lines = (root / "all_imgs.txt").read_text().splitlines()
    (root / "all_imgs.txt").write_text("\n".join(lines[:3] + [""] + lines[3:]) + "\n")
    with pytest.raises(DataError, match=r"all_imgs.txt:4: empty line"):
        load_mirflickr25k(str(tmp_path), n_query=5, n_train=10)


@pytest.mark.parametrize("over,needle", [
    ({"I_te": np.zeros((10, 12))}, r"I_te has 12 columns but I_tr has 16"),
    ({"L_db": np.zeros((50, 4))}, r"L_db has 4 columns but L_tr has 5"),
    ({"I_te": np.zeros((10, 4, 4))}, r"I_te must be a 2-D matrix, got shape \(10, 4, 4\)"),
])
def test_cnn_mat_shapes_name_variables(tmp_path, over, needle):
    rng = np.random.default_rng(0)
    mat = {}
    for part, n in (("tr", 30), ("te", 10), ("db", 50)):
        mat[f"I_{part}"], mat[f"T_{part}"] = rng.normal(size=(n, 16)), rng.normal(size=(n, 8))
        mat[f"L_{part}"] = rng.integers(0, 2, size=(n, 5))
    scipy.io.savemat(tmp_path / "x_cnn.mat", {**mat, **over})
    with pytest.raises(DataError, match="x_cnn.mat: " + needle):
        load_cnn_mat(tmp_path / "x_cnn.mat")


# ----------------------------------------------------------------------------------- NUS-WIDE
@pytest.fixture
def nus_root(tmp_path):
    tags, labels = nus_arrays()
    return write_nus(tmp_path / "nus_wide", tags, labels, flickr=False)


def test_nus_wide_concept_list_bom_and_duplicates(nus_root):
    kw = dict(n_concepts=3, n_query=5, n_train=10)
    concepts = nus_root / "Concepts81.txt"
    concepts.write_bytes(BOM + concepts.read_bytes())
    assert load_nus_wide(str(nus_root), **kw).label_names == ["lake", "sky", "water"]
    concepts.write_text("animal\nlake\nsky\ntoy\nwater\nsky\n")
    with pytest.raises(DataError, match=r"Concepts81.txt:6: concept 'sky' listed twice"):
        load_nus_wide(str(nus_root), **kw)


def test_nus_wide_bad_parameters_and_features(nus_root):
    with pytest.raises(DataError, match=r"concepts is empty"):
        load_nus_wide(str(nus_root), concepts=[], n_query=5, n_train=10)
    np.save(nus_root / "f.npy", np.array([["a", "b"]] * 60))
    with pytest.raises(DataError, match=r"f.npy: feature matrix holds <U1 values, not numbers"):
        load_nus_wide(str(nus_root), n_concepts=3, n_query=5, n_train=10, image_features="f.npy")


# ---------------------------------------------------------------------------- Pascal Sentences
def test_pascal_bom_sentences_and_same_stem_images(tmp_path):
    root = write_pascal(tmp_path / "pascal_sentences")
    s = root / "sentence" / "aeroplane" / "2008_000000.txt"
    s.write_bytes(BOM + s.read_bytes())
    assert load_pascal_sentences(str(root)).texts[0] == "A aeroplane picture 0 sentence 0."
    img = root / "dataset" / "aeroplane" / "2008_000000.jpg"
    img.with_suffix(".png").write_bytes(img.read_bytes())
    with pytest.raises(DataError, match=r"2008_000000.png: another image .* also named '2008_000000'"):
        load_pascal_sentences(str(root))


def test_dataset_folder_missing_its_marker_is_named(tmp_path):
    root = write_pascal(tmp_path / "pascal_sentences")
    shutil.rmtree(root / "sentence")
    with pytest.raises(DataError, match=r"pascal_sentences/sentence: not found"):
        load_pascal_sentences(str(tmp_path))
    root, _ = write_wikipedia(tmp_path / "wikipedia")
    (root / "trainset_txt_img_cat.list").unlink()
    with pytest.raises(DataError, match=r"wikipedia/trainset_txt_img_cat.list: not found"):
        load_dataset("wikipedia", data_dir=str(root))


# ------------------------------------------------------------------------------- load_dataset
def test_load_dataset_paths_that_do_not_exist(tmp_path):
    with pytest.raises(DataError, match=r"my_data: no such file or folder"):
        load_dataset(str(tmp_path / "my_data"))
    with pytest.raises(DataError, match=r"dataset.json: file not found \(a dataset folder"):
        load_dataset(str(tmp_path))
    with pytest.raises(DataError, match=r"unknown dataset 'wikipedai'"):
        load_dataset("wikipedai")


@pytest.mark.parametrize("value", [True, 5, [3]])
def test_karpathy_instances_of_the_wrong_kind_is_a_data_error(tmp_path, value):
    # instances=True ("give me the labels") was iterated as a list of files: TypeError
    path = karpathy_file(tmp_path)
    with pytest.raises(DataError, match=r"dataset_coco\.json.*instances"):
        load_dataset(str(path), instances=value)


def test_karpathy_instances_still_takes_files(tmp_path):
    path = karpathy_file(tmp_path)
    with pytest.raises(DataError, match="nope.json: file not found"):
        load_dataset(str(path), instances=[str(tmp_path / "nope.json")])
    assert load_dataset(str(path), instances=None).labels is None
