"""Gaps between the loaders and the releases (or what users hand them): a COCO image with no
caption, a pairs file labelling only some images, a Karpathy file's split written in another
case, Wikipedia's raw_features.mat re-saved as MATLAB v7.3."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from test_data_official import expected_labels, write_coco
from conftest import savemat73
from xmodal.data import DataError
from xmodal.data.coco import load_coco
from xmodal.data.karpathy import load_karpathy
from xmodal.data.pairs import load_pairs
from xmodal.data.wikipedia import load_wikipedia

WIKIPEDIA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "wikipedia"


# ------------------------------------------------------------------ COCO: image without captions
def test_coco_image_without_captions_is_dropped_counted_and_logged(tmp_path, caplog):
    # Every image of COCO's own caption files has five or more captions; a file with an image
    # that has none was edited. It is no image-text pair: Karpathy's splits never hold one and
    # the hashing protocol drops items without text, so it is left out, counted and logged.
    ids, cats = write_coco(tmp_path, n_caps={25: 0, 42: 6})
    with caplog.at_level(logging.WARNING, logger="xmodal.data"):
        ds = load_coco(tmp_path)
    kept = [9, 30, 36, 49, 42, 73, 133]  # 25 has no caption; 34 and 74 have no category
    assert ds.image_ids == [f"COCO_train2014_{i:012d}" for i in kept[:4]] + \
        [f"COCO_val2014_{i:012d}" for i in kept[4:]]
    assert ds.meta["uncaptioned_dropped"] == 1 and ds.meta["unlabelled_dropped"] == 2
    np.testing.assert_array_equal(ds.texts_per_image, [5] * 7)
    np.testing.assert_array_equal(ds.labels, expected_labels(kept, cats))
    np.testing.assert_array_equal(ds.splits["train"], np.arange(4))
    np.testing.assert_array_equal(ds.splits["val"], np.arange(4, 7))
    # each text still belongs to its own image
    assert all(t.startswith(f"Image {kept[i]} ") for t, i in zip(ds.texts, ds.text_to_image))
    msg = " ".join(r.getMessage() for r in caplog.records)
    assert "captions_train2014.json" in msg and "1 image" in msg and "id 25" in msg
    # None missing: counted as 0, nothing logged
    caplog.clear()
    write_coco(tmp_path / "full")
    with caplog.at_level(logging.WARNING, logger="xmodal.data"):
        assert load_coco(tmp_path / "full").meta["uncaptioned_dropped"] == 0
    assert not caplog.records


def test_coco_image_without_captions_dropped_before_the_instances_check(tmp_path):
    # An uncaptioned image the instances file does not list is not an error: it is dropped first.
    write_coco(tmp_path, n_caps={25: 0}, categories_of={i: [1] for i in (9, 30, 34, 36, 49, 42, 73, 74, 133)})
    inst = tmp_path / "annotations" / "instances_train2014.json"
    doc = json.loads(inst.read_text())
    doc["images"] = [im for im in doc["images"] if im["id"] != 25]
    inst.write_text(json.dumps(doc))
    ds = load_coco(tmp_path)
    assert ds.n_images == 9 and ds.meta["uncaptioned_dropped"] == 1 and ds.meta["unlabelled_dropped"] == 0


def test_coco_caption_file_without_any_caption_is_an_error(tmp_path):
    write_coco(tmp_path, n_caps={42: 0, 73: 0, 74: 0, 133: 0})
    with pytest.raises(DataError, match=r"captions_val2014.json: none of its 4 images has a caption"):
        load_coco(tmp_path)


# ------------------------------------------------------------------ pairs: labels on some images
def _pairs(tmp_path, rows) -> Path:
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_pairs_with_labels_on_some_images_warn_and_count_them(tmp_path, caplog):
    # A zero label row makes the image irrelevant to every query in class-based MAP (and a
    # query with no relevant item): said once, with the count and the first such row.
    path = _pairs(tmp_path, [
        {"image": "a.jpg", "text": "a cat", "labels": ["cat"], "split": "train"},
        {"image": "b.jpg", "text": "a dog", "split": "train"},
        {"image": "a.jpg", "text": "a cat again", "split": "train"},
        {"image": "c.jpg", "text": "a dog", "labels": ["dog"], "split": "test"},
        {"image": "d.jpg", "text": "a bird", "split": "test"},
        {"image": "d.jpg", "text": "a bird again", "split": "test"},
    ])
    with caplog.at_level(logging.WARNING, logger="xmodal.data"):
        ds = load_pairs(path)
    np.testing.assert_array_equal(ds.labels, [[1, 0], [0, 0], [0, 1], [0, 0]])
    assert ds.meta["unlabelled"] == 2
    msg = " ".join(r.getMessage() for r in caplog.records)
    assert f"{path}:2" in msg and "2 of 4 images" in msg and "b.jpg" in msg
    # all labelled, or none: nothing to say
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="xmodal.data"):
        full = load_pairs(_pairs(tmp_path, [{"image": "a.jpg", "text": "x", "label": "cat"},
                                            {"image": "b.jpg", "text": "y", "label": "dog"}]))
        bare = load_pairs(_pairs(tmp_path, [{"image": "a.jpg", "text": "x"}, {"image": "b.jpg", "text": "y"}]))
    assert full.meta["unlabelled"] == 0 and bare.labels is None and "unlabelled" not in bare.meta
    assert not caplog.records


def test_pairs_csv_unlabelled_row_named_by_its_line(tmp_path, caplog):
    path = tmp_path / "pairs.csv"
    path.write_text("image,text,labels\na.jpg,a cat,cat\nb.jpg,a dog,\nc.jpg,a cow,cow\n")
    with caplog.at_level(logging.WARNING, logger="xmodal.data"):
        ds = load_pairs(path)
    assert ds.meta["unlabelled"] == 1
    assert f"{path}:3" in " ".join(r.getMessage() for r in caplog.records)


# ------------------------------------------------------------------ Karpathy: split in any case
def test_karpathy_split_names_match_in_any_case(tmp_path):
    recs = [{"filename": f"{i}.jpg", "split": s, "sentences": [{"raw": f"caption {i}"}]}
            for i, s in enumerate(["Train", "TEST", "Val", "RestVal", "train", " test "])]
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps({"images": recs, "dataset": "mine"}))
    ds = load_karpathy(path)
    assert sorted(ds.splits) == ["test", "train", "val"]
    np.testing.assert_array_equal(ds.splits["train"], [0, 3, 4])
    np.testing.assert_array_equal(ds.splits["test"], [1, 5])
    np.testing.assert_array_equal(ds.splits["val"], [2])
    recs[2]["split"] = "Validation"
    path.write_text(json.dumps({"images": recs}))
    with pytest.raises(DataError, match=r"dataset.json: images\[2\] \(2.jpg\): unknown split 'Validation'"):
        load_karpathy(path)


# ------------------------------------------------------------------ Wikipedia: v7.3 features
def test_wikipedia_raw_features_saved_as_v73_read_alike(tmp_path):
    if not WIKIPEDIA.is_dir():
        pytest.skip("real Wikipedia data not present")
    root = tmp_path / "wikipedia"
    root.mkdir()
    for name in ("categories.list", "trainset_txt_img_cat.list", "testset_txt_img_cat.list"):
        (root / name).symlink_to(WIKIPEDIA / name)
    mat = scipy.io.loadmat(WIKIPEDIA / "raw_features.mat")
    savemat73(root / "raw_features.mat", {k: mat[k] for k in ("I_tr", "T_tr", "I_te", "T_te")})
    ref = load_wikipedia(str(WIKIPEDIA), with_texts=False)
    got = load_wikipedia(str(root), with_texts=False)
    assert got.image_features.shape == (2866, 128) and got.text_features.shape == (2866, 10)
    # the release's own file and the v7.3 copy: the same rows, train then test
    for ds in (ref, got):
        np.testing.assert_array_equal(ds.image_features, np.vstack([mat["I_tr"], mat["I_te"]]).astype(np.float32))
        np.testing.assert_array_equal(ds.text_features, np.vstack([mat["T_tr"], mat["T_te"]]).astype(np.float32))
    # a variable missing from the v7.3 copy is named as before
    savemat73(root / "raw_features.mat", {k: mat[k] for k in ("I_tr", "T_tr", "I_te")})
    with pytest.raises(DataError, match=r"raw_features.mat: variable T_te missing"):
        load_wikipedia(str(root), with_texts=False)
