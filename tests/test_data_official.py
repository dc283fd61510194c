"""Loaders of the caption datasets' own downloads, on small synthetic copies laid out as they
unpack: MS-COCO's annotations/captions_*.json (+ instances_*.json, its 80 categories as
labels), Flickr8k's Flickr8k.token.txt with its split lists, Flickr30k's
results_20130124.token and Kaggle's results.csv; and COCO's labels joined to Karpathy's
dataset_coco.json by cocoid."""

import json
import logging
import os

import numpy as np
import pytest
from PIL import Image

from test_data_releases import coco_doc, flickr_doc, touch_images
from xmodal.data import DataError, dataset_files, dataset_layout, load_dataset
from xmodal.data.coco import load_coco
from xmodal.data.flickr import load_flickr
from xmodal.data.karpathy import load_karpathy

# COCO's 80 category ids, with the gaps of the real list (12, 26, 29, 30, 45, 66, 68, 69, 71, 83).
CAT_IDS = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]
assert len(CAT_IDS) == 80


def categories():
    cats = [{"supercategory": "thing", "id": c, "name": f"cat{c}"} for c in CAT_IDS]
    return cats[::-1]  # listed out of id order: columns follow the ids


def image(path, colour=(200, 30, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 16), colour).save(path)


def write_coco(root, year=2014, ids=None, categories_of=None, n_caps=None, instances=("train", "val"),
               images=True):
    """A COCO download: annotations/captions_<split><year>.json (+ instances), <split><year>/
    images. ``ids``: image ids per split; ``categories_of[id]``: the category ids annotated on
    it (repeats allowed); ``n_caps[id]``: captions of the image (default 5)."""
    ids = ids or {"train": [9, 25, 30, 34, 36, 49], "val": [42, 73, 74, 133]}
    categories_of = categories_of if categories_of is not None else {
        9: [1, 1, 51], 25: [25], 30: [64, 86], 34: [], 36: [1, 90], 49: [3, 3, 3],
        42: [18], 73: [2, 5], 74: [], 133: [90]}
    n_caps = n_caps or {9: 7, 42: 6}
    ann = root / "annotations"
    ann.mkdir(parents=True, exist_ok=True)
    for split, split_ids in ids.items():
        name = (lambda i: f"COCO_{split}{year}_{i:012d}.jpg") if year == 2014 else (lambda i: f"{i:012d}.jpg")
        imgs = [{"license": 3, "file_name": name(i), "height": 16, "width": 16, "id": i} for i in split_ids]
        caps, aid = [], 100
        for i in split_ids:
            for k in range(n_caps.get(i, 5)):
                # Annotation ids run backwards within an image: the first five by id are k = n-1..n-5.
                caps.append({"image_id": i, "id": aid + (n_caps.get(i, 5) - k) * 1000 + i,
                             "caption": f"Image {i} caption {k}.\n"})
        caps = caps[::2] + caps[1::2]  # not grouped by image in the file
        doc = {"info": {"year": year}, "images": imgs, "licenses": [], "annotations": caps}
        (ann / f"captions_{split}{year}.json").write_text(json.dumps(doc))
        if split in instances:
            objs = [{"id": 5000 + j, "image_id": i, "category_id": c, "iscrowd": 0, "area": 1.0,
                     "bbox": [0, 0, 1, 1], "segmentation": [[0, 0, 1, 1]]}
                    for j, (i, c) in enumerate((i, c) for i in split_ids for c in categories_of.get(i, []))]
            doc = {"info": {}, "images": imgs, "licenses": [], "annotations": objs[::-1], "categories": categories()}
            (ann / f"instances_{split}{year}.json").write_text(json.dumps(doc))
        if images:
            for im in imgs:
                image(root / f"{split}{year}" / im["file_name"])
    return ids, categories_of


def expected_labels(image_ids, categories_of):
    out = np.zeros((len(image_ids), 80), dtype=np.uint8)
    for r, i in enumerate(image_ids):
        for c in categories_of.get(i, []):
            out[r, CAT_IDS.index(c)] = 1
    return out


# --------------------------------------------------------------------------------- COCO
def test_coco_official_folder_captions_splits_and_category_labels(tmp_path):
    ids, cats = write_coco(tmp_path)
    assert dataset_layout(tmp_path) == "coco_official"
    ds = load_dataset(str(tmp_path))
    # Images 34 and 74 carry no category: dropped, as DCMH/SSAH-style MS-COCO.
    kept = [9, 25, 30, 36, 49, 42, 73, 133]
    assert ds.name == "coco" and ds.n_images == 8 and ds.meta["unlabelled_dropped"] == 2
    assert ds.image_ids == [f"COCO_train2014_{i:012d}" for i in kept[:5]] + [f"COCO_val2014_{i:012d}" for i in kept[5:]]
    np.testing.assert_array_equal(ds.splits["train"], np.arange(5))
    np.testing.assert_array_equal(ds.splits["val"], np.arange(5, 8))
    assert "test" not in ds.splits
    np.testing.assert_array_equal(ds.labels, expected_labels(kept, cats))
    assert ds.label_names == [f"cat{c}" for c in CAT_IDS]
    # Five captions each, the first five by annotation id (caption 6 .. 2 of the 7 of image 9).
    np.testing.assert_array_equal(ds.texts_per_image, [5] * 8)
    assert ds.texts[:5] == [f"Image 9 caption {k}." for k in (6, 5, 4, 3, 2)]
    assert ds.texts[5:10] == [f"Image 25 caption {k}." for k in (4, 3, 2, 1, 0)]
    assert ds.meta["captions_dropped"] == 2 + 1  # past the fifth of images 9 (7) and 42 (6)
    assert all(p.endswith(".jpg") and os.path.isfile(p) for p in ds.image_paths)
    assert ds.image_paths[5] == str(tmp_path / "val2014" / "COCO_val2014_000000000042.jpg")
    names = [p.name for p in dataset_files(tmp_path).files]
    assert sorted(names) == ["captions_train2014.json", "captions_val2014.json",
                             "instances_train2014.json", "instances_val2014.json"]
    assert dataset_files(tmp_path).layout == "coco_official"
    # Given the annotations/ folder itself: the same dataset, images found beside it.
    assert dataset_layout(tmp_path / "annotations") == "coco_official"
    same = load_dataset(str(tmp_path / "annotations"))
    assert same.image_paths == ds.image_paths and same.texts == ds.texts


def test_coco_keep_unlabelled_labels_off_and_every_caption(tmp_path):
    ids, cats = write_coco(tmp_path)
    every = ids["train"] + ids["val"]
    ds = load_coco(tmp_path, drop_unlabelled=False)
    assert ds.n_images == 10 and ds.meta["unlabelled_dropped"] == 0 and ds.meta["unlabelled"] == 2
    np.testing.assert_array_equal(ds.labels, expected_labels(every, cats))
    assert not ds.labels[every.index(34)].any()
    none = load_coco(tmp_path, labels=False)
    assert none.labels is None and none.n_images == 10
    all_caps = load_coco(tmp_path, max_captions=None)
    assert all_caps.texts_per_image[0] == 7 and all_caps.texts[:7] == [f"Image 9 caption {k}." for k in range(6, -1, -1)]
    with pytest.raises(DataError, match="drop_unlabelled must be True or False"):
        load_coco(tmp_path, drop_unlabelled="yes")
    with pytest.raises(DataError, match="max_captions"):
        load_coco(tmp_path, max_captions=0)


def test_coco_missing_instances_of_one_split_is_named(tmp_path):
    write_coco(tmp_path, instances=("train",))
    with pytest.raises(DataError, match=r"instances_val2014.json: file not found.*labels=False"):
        load_coco(tmp_path)
    assert load_coco(tmp_path, labels=False).n_images == 10
    # None at all: captions only, unless labels are required.
    (tmp_path / "annotations" / "instances_train2014.json").unlink()
    assert load_dataset(str(tmp_path)).labels is None
    with pytest.raises(DataError, match=r"instances_train2014.json: file not found"):
        load_coco(tmp_path, labels=True)
    assert [p.name for p in dataset_files(tmp_path).files] == ["captions_train2014.json", "captions_val2014.json"]


def test_coco_2017_names_and_images_under_images(tmp_path):
    write_coco(tmp_path, year=2017, ids={"val": [139, 285, 632]}, categories_of={139: [1], 285: [23], 632: [65, 1]},
               instances=("val",), images=False)
    for i in (139, 285, 632):
        image(tmp_path / "images" / "val2017" / f"{i:012d}.jpg")
    assert dataset_layout(tmp_path) == "coco_official"
    ds = load_dataset(str(tmp_path))
    assert ds.meta["year"] == 2017 and list(ds.splits) == ["val"] and ds.n_images == 3
    assert ds.image_paths[0] == str(tmp_path / "images" / "val2017" / "000000000139.jpg")
    assert ds.labels[2, CAT_IDS.index(65)] == 1 and ds.labels[2].sum() == 2
    # 2014 beside 2017: 2014 is read unless the year is given.
    write_coco(tmp_path, year=2014, images=False)
    assert load_coco(tmp_path).meta["year"] == 2014
    assert load_coco(tmp_path, year=2017).n_images == 3
    with pytest.raises(DataError, match="year must be one of"):
        load_coco(tmp_path, year=2015)


@pytest.mark.parametrize("edit,match", [
    (lambda caps, inst: caps["annotations"][3].pop("caption"),
     r"captions_train2014.json: annotations\[3\]: field 'caption' missing or empty"),
    (lambda caps, inst: caps["annotations"][2].__setitem__("image_id", 77),
     r"captions_train2014.json: annotations\[2\]: image_id 77 is not in its 'images' list"),
    (lambda caps, inst: caps["images"][1].__setitem__("id", "25"),
     r"captions_train2014.json: images\[1\]: field 'id' missing or not an integer \(got '25'\)"),
    (lambda caps, inst: inst["annotations"][0].__setitem__("category_id", 12),
     r"instances_train2014.json: annotations\[0\]: category_id 12 is not in its categories list"),
    (lambda caps, inst: inst.pop("categories"),
     r"instances_train2014.json: no 'categories' list"),
])
def test_coco_malformed_annotations_are_named(tmp_path, edit, match):
    write_coco(tmp_path, images=False)
    ann = tmp_path / "annotations"
    caps = json.loads((ann / "captions_train2014.json").read_text())
    inst = json.loads((ann / "instances_train2014.json").read_text())
    edit(caps, inst)
    (ann / "captions_train2014.json").write_text(json.dumps(caps))
    (ann / "instances_train2014.json").write_text(json.dumps(inst))
    with pytest.raises(DataError, match=match):
        load_dataset(str(tmp_path))


def test_coco_annotation_file_given_as_karpathy_file_is_named(tmp_path):
    write_coco(tmp_path, images=False)
    with pytest.raises(DataError, match=r"captions_val2014.json: a COCO annotation file, not a Karpathy file"):
        load_dataset(str(tmp_path / "annotations" / "captions_val2014.json"))


# ----------------------------------------------------------- Karpathy's split, COCO's labels
def karpathy_with_instances(tmp_path, year=2014):
    doc = coco_doc()  # cocoid 1000..1005: train, restval, val, test, test, restval
    (tmp_path / "dataset_coco.json").write_text(json.dumps(doc))
    touch_images(tmp_path, doc)
    cats = {1000: [1, 44], 1001: [90], 1002: [], 1003: [7, 7], 1004: [62], 1005: [3]}
    # Karpathy's train images come from train2014, the rest from val2014.
    ids = {"train": [1000], "val": [1001, 1002, 1003, 1004, 1005]}
    write_coco(tmp_path, year=year, ids=ids, categories_of=cats, images=False)
    return doc, cats


def test_karpathy_coco_gets_category_labels_by_cocoid(tmp_path):
    doc, cats = karpathy_with_instances(tmp_path)
    assert dataset_layout(tmp_path) == "karpathy"  # the Karpathy file wins over the COCO files
    # by default Karpathy's splits stay whole: cocoid 1002, its only val image, has no category
    whole = load_dataset(str(tmp_path))
    assert whole.n_images == 6 and not whole.labels[2].any() and whole.meta["unlabelled_dropped"] == 0
    np.testing.assert_array_equal(whole.splits["val"], [2])
    ds = load_dataset(str(tmp_path), drop_unlabelled=True)  # the hashing papers drop it
    assert ds.n_images == 5 and ds.meta["unlabelled_dropped"] == 1 and ds.meta["protocol"] == "karpathy"
    kept = [1000, 1001, 1003, 1004, 1005]
    np.testing.assert_array_equal(ds.labels, expected_labels(kept, cats))
    np.testing.assert_array_equal(ds.splits["train"], [0, 1, 4])
    np.testing.assert_array_equal(ds.splits["val"], np.zeros(0, dtype=int))
    np.testing.assert_array_equal(ds.splits["test"], [2, 3])
    assert ds.texts[5 * 2] == "Picture 3 caption 0." and ds.image_ids[2] == "COCO_val2014_000000000003"
    kept_all = load_karpathy(tmp_path / "dataset_coco.json", drop_unlabelled=False)
    assert kept_all.n_images == 6 and not kept_all.labels[2].any()
    np.testing.assert_array_equal(kept_all.splits["val"], [2])
    plain = load_karpathy(tmp_path / "dataset_coco.json", instances=None)
    assert plain.labels is None and plain.n_images == 6
    # The fingerprint hashes the instances files it reads (in annotations/), folder or file.
    names = [p.name for p in dataset_files(tmp_path).files]
    assert "instances_train2014.json" in names and "instances_val2014.json" in names
    assert "captions_train2014.json" not in names
    names = [p.name for p in dataset_files(tmp_path / "dataset_coco.json").files]
    assert names == ["dataset_coco.json", "instances_train2014.json", "instances_val2014.json"]
    # Loaded by its file, the same labels.
    np.testing.assert_array_equal(load_dataset(str(tmp_path / "dataset_coco.json"), drop_unlabelled=True).labels,
                                  ds.labels)


def test_karpathy_coco_joins_2017_instances_too(tmp_path):
    # 2017 re-splits the same images under the same ids: its instances pair serves as well.
    _, cats = karpathy_with_instances(tmp_path, year=2017)
    ds = load_dataset(str(tmp_path), drop_unlabelled=True)
    np.testing.assert_array_equal(ds.labels, expected_labels([1000, 1001, 1003, 1004, 1005], cats))
    assert [p.rsplit("/", 1)[-1] for p in ds.meta["label_files"]] == ["instances_train2017.json",
                                                                      "instances_val2017.json"]


def test_karpathy_coco_with_half_the_instances_loads_unlabelled(tmp_path, caplog):
    karpathy_with_instances(tmp_path)
    (tmp_path / "annotations" / "instances_train2014.json").unlink()
    with caplog.at_level(logging.WARNING, logger="xmodal.data"):
        ds = load_dataset(str(tmp_path))
    assert ds.labels is None and ds.n_images == 6
    assert "instances_train2014.json: not found" in caplog.text
    assert "instances_val2014.json" not in [p.name for p in dataset_files(tmp_path).files]


def test_karpathy_cocoid_missing_from_instances_is_named(tmp_path):
    doc, _ = karpathy_with_instances(tmp_path)
    doc["images"][4]["cocoid"] = 555
    (tmp_path / "dataset_coco.json").write_text(json.dumps(doc))
    with pytest.raises(DataError, match=r"images\[4\] \(COCO_val2014_000000000004.jpg\): cocoid 555 is in none of"):
        load_dataset(str(tmp_path))
    # Flickr files carry no cocoid: instances beside them are not read.
    (tmp_path / "dataset_coco.json").unlink()
    (tmp_path / "dataset_flickr8k.json").write_text(json.dumps(flickr_doc("flickr8k")))
    assert load_dataset(str(tmp_path)).labels is None


# ----------------------------------------------------------------------------- Flickr8k
F8K_IMAGES = [f"{1000268201 + i}_693b08cb0e.jpg" for i in range(12)]


def write_flickr8k(root, images_folder="Flicker8k_Dataset", text_folder="."):
    text = root / text_folder
    text.mkdir(parents=True, exist_ok=True)
    lines = [f"{name}#{k}\t{name[:4]} caption {k} ." for name in F8K_IMAGES for k in (1, 0, 2, 3, 4)]
    lines += [f"2258277193_586949ec62.jpg.1#{k}\tnot an image {k}" for k in range(5)]  # as the release has
    (text / "Flickr8k.token.txt").write_text("\n".join(lines) + "\n")
    (text / "Flickr_8k.trainImages.txt").write_text("\n".join(F8K_IMAGES[:6]) + "\n")
    (text / "Flickr_8k.devImages.txt").write_text("\n".join(F8K_IMAGES[6:8]) + "\n")
    (text / "Flickr_8k.testImages.txt").write_text("\n".join(F8K_IMAGES[8:11]) + "\n")  # [11]: in no list
    for name in F8K_IMAGES:
        image(root / images_folder / name)


@pytest.mark.parametrize("images_folder,text_folder", [("Flicker8k_Dataset", "."), ("Flickr8k_Dataset", "Flickr8k_text")])
def test_flickr8k_token_file_and_split_lists(tmp_path, images_folder, text_folder):
    write_flickr8k(tmp_path, images_folder, text_folder)
    assert dataset_layout(tmp_path) == "flickr_tokens"
    ds = load_dataset(str(tmp_path))
    assert ds.name == "flickr8k" and ds.n_images == 11 and ds.n_texts == 55
    assert ds.meta["images_without_split"] == 2 and ds.meta["protocol"] == "official"
    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 6, "val": 2, "test": 3}
    assert ds.image_ids[0] == "1000268201_693b08cb0e"
    assert ds.image_paths[7] == str(tmp_path / images_folder / F8K_IMAGES[7])
    assert ds.texts[:5] == [f"1000 caption {k} ." for k in range(5)]  # by caption number
    np.testing.assert_array_equal(ds.texts_per_image, [5] * 11)
    np.testing.assert_array_equal(ds.splits["val"], [6, 7])
    assert sorted(p.name for p in dataset_files(tmp_path).files) == [
        "Flickr8k.token.txt", "Flickr_8k.devImages.txt", "Flickr_8k.testImages.txt", "Flickr_8k.trainImages.txt"]


@pytest.mark.parametrize("line,match", [
    ("1000268201_693b08cb0e.jpg#0 A child in a pink dress", r"Flickr8k.token.txt:3: expected '<image>#<n><TAB><caption>'"),
    ("1000268201_693b08cb0e.jpg#x\tA child", r"Flickr8k.token.txt:3: caption number 'x' is not a number"),
    ("1000268201_693b08cb0e.jpg#0\t  ", r"Flickr8k.token.txt:3: empty caption"),
])
def test_flickr_token_malformed_line_names_file_and_line(tmp_path, line, match):
    write_flickr8k(tmp_path)
    p = tmp_path / "Flickr8k.token.txt"
    lines = p.read_text().splitlines()
    lines[2] = line
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=match):
        load_dataset(str(tmp_path))


def test_flickr8k_split_list_problems_are_named(tmp_path):
    write_flickr8k(tmp_path)
    (tmp_path / "Flickr_8k.testImages.txt").write_text(F8K_IMAGES[8] + "\n\n99999_nope.jpg\n")
    with pytest.raises(DataError, match=r"Flickr_8k.testImages.txt:3: image 99999_nope.jpg has no caption"):
        load_dataset(str(tmp_path))
    (tmp_path / "Flickr_8k.testImages.txt").write_text(F8K_IMAGES[0] + "\n")
    with pytest.raises(DataError, match=r"Flickr_8k.testImages.txt: image 1000268201_693b08cb0e.jpg is also in "
                                        r"Flickr_8k.trainImages.txt"):
        load_dataset(str(tmp_path))
    (tmp_path / "Flickr_8k.testImages.txt").unlink()
    with pytest.raises(DataError, match=r"Flickr_8k.testImages.txt: file not found"):
        load_dataset(str(tmp_path))


# ---------------------------------------------------------------------------- Flickr30k
F30K = [str(1000092795 + 7 * i) + ".jpg" for i in range(10)]


def write_flickr30k_token(root):
    lines = [f"{name}#{k}\tPhoto {name[:-4]} caption {k} ." for name in F30K for k in range(5)]
    (root / "results_20130124.token").write_text("\n".join(lines) + "\n")
    for name in F30K:
        image(root / "flickr30k-images" / name)


def test_flickr30k_token_seeded_random_split(tmp_path):
    write_flickr30k_token(tmp_path)
    assert dataset_layout(tmp_path) == "flickr_tokens"
    with pytest.raises(DataError, match=r"1000 val \+ 1000 test images leaves none of its 10 images"):
        load_dataset(str(tmp_path))
    ds = load_dataset(str(tmp_path), n_val=2, n_test=3)
    assert ds.name == "flickr30k" and ds.n_images == 10 and ds.n_texts == 50
    assert ds.meta["protocol"] == "random_split" and ds.meta["seed"] == 0
    sizes = {k: len(v) for k, v in ds.splits.items()}
    assert sizes == {"train": 5, "val": 2, "test": 3}
    assert len(np.unique(np.concatenate(list(ds.splits.values())))) == 10
    again = load_flickr(tmp_path, n_val=2, n_test=3, seed=0)
    other = load_flickr(tmp_path, n_val=2, n_test=3, seed=1)
    assert all(np.array_equal(ds.splits[k], again.splits[k]) for k in ds.splits)
    assert not all(np.array_equal(ds.splits[k], other.splits[k]) for k in ds.splits)
    assert ds.image_paths[0] == str(tmp_path / "flickr30k-images" / F30K[0])
    with pytest.raises(DataError, match="n_val must be a non-negative integer"):
        load_flickr(tmp_path, n_val=-1)


def test_flickr30k_kaggle_csv_skips_and_lists_malformed_rows(tmp_path, caplog):
    root = tmp_path / "flickr30k_images"
    rows = ["image_name| comment_number| comment"]
    rows += [f"{name}| {k}| Photo {name[:-4]} caption {k} ." for name in F30K for k in range(5)]
    rows[7] = f"{F30K[1]}| 1   A dog runs across the grass ."  # as Kaggle's copy has one
    rows[12] = f"{F30K[2]}| 1|  "
    (root / "flickr30k_images").mkdir(parents=True)
    (root / "results.csv").write_text("\n".join(rows) + "\n")
    for name in F30K:
        image(root / "flickr30k_images" / name)
    for folder in (root, tmp_path):  # the Kaggle folder, or the folder above it
        assert dataset_layout(folder) == "flickr_tokens"
        with caplog.at_level(logging.WARNING, logger="xmodal.data"):
            ds = load_dataset(str(folder), n_val=2, n_test=2)
        assert ds.name == "flickr30k" and ds.n_images == 10 and ds.n_texts == 48
        assert [m.split(": ")[0].rsplit("/", 1)[-1] for m in ds.meta["malformed_rows"]] == ["results.csv:8",
                                                                                             "results.csv:13"]
        assert "results.csv:8: expected '<image>| <n>| <caption>'" in ds.meta["malformed_rows"][0]
        assert "skipped 2 malformed row(s)" in caplog.text
        assert ds.image_paths[0] == str(root / "flickr30k_images" / F30K[0])
        assert ds.texts[0] == f"Photo {F30K[0][:-4]} caption 0 ."
        assert [p.name for p in dataset_files(folder).files] == ["results.csv"]


def test_results_csv_of_something_else_is_no_dataset(tmp_path):
    (tmp_path / "results.csv").write_text("epoch,loss\n1,0.5\n")
    image(tmp_path / "a.jpg")
    assert dataset_layout(tmp_path) is None


# ------------------------------------------------------------- one answer, old ones kept
def test_new_layouts_leave_the_old_answers(tmp_path):
    # A Karpathy file beside Flickr8k's own files: still Karpathy's (it carries the split).
    a = tmp_path / "a"
    write_flickr8k(a)
    (a / "dataset_flickr8k.json").write_text(json.dumps(flickr_doc("flickr8k")))
    assert dataset_layout(a) == "karpathy" and load_dataset(str(a)).n_images == 4
    # Cleaned lists beside COCO's annotations: still cleaned lists.
    b = tmp_path / "b"
    write_coco(b, images=False)
    (b / "all_imgs.txt").write_text("x.jpg\n")
    assert dataset_layout(b) == "cleaned_lists"
    # A folder of photos with no caption file stays one.
    c = tmp_path / "c"
    image(c / "p.jpg")
    (c / "annotations").mkdir()
    (c / "annotations" / "notes.json").write_text("{}")
    assert dataset_layout(c) is None


def test_xmodal_index_reads_a_coco_folder(tmp_path, monkeypatch):
    from threadpoolctl import threadpool_limits
    from typer.testing import CliRunner

    from xmodal.cli import app
    from xmodal.index.build import scan_source

    monkeypatch.setenv("XMODAL_CACHE", str(tmp_path / "cache"))
    colours = iter([(r, g, 90) for r in range(0, 250, 60) for g in range(0, 250, 80)])
    ids, cats = write_coco(tmp_path / "coco", images=False)
    for split, split_ids in ids.items():
        for i in split_ids:
            image(tmp_path / "coco" / f"{split}2014" / f"COCO_{split}2014_{i:012d}.jpg", next(colours))
    # captions in words (tf-idf drops the numbers of "Image 9 caption 0.", which leaves every
    # text the same vector: CCA then rightly finds no correlated direction to index with)
    words = ["harbour", "forest", "desert", "river", "beach", "farmland", "airport", "stadium", "bridge", "meadow"]
    for split in ids:
        f = tmp_path / "coco" / "annotations" / f"captions_{split}2014.json"
        doc = json.loads(f.read_text())
        order = {i: n for n, i in enumerate(sorted({a["image_id"] for a in doc["annotations"]}))}
        for a in doc["annotations"]:
            n = order[a["image_id"]] + (4 if split == "val" else 0)
            a["caption"] = f"{words[n]} scene with a {words[(n + a['id']) % 10]}"
        f.write_text(json.dumps(doc))
    images, texts = scan_source(tmp_path / "coco")
    assert len(images) == 8 and len(texts) == 40
    assert images[0].key == "COCO_train2014_000000000009" and images[0].labels == ["cat1", "cat51"]
    assert texts[0].pair_key == images[0].key
    with threadpool_limits(1):
        r = CliRunner().invoke(app, ["index", str(tmp_path / "coco"), "-c", str(tmp_path / "coll"),
                                     "--image-encoder", "efficientnet-lite0", "--text-encoder", "tfidf", "-q"])
    assert r.exit_code == 0, r.output
    assert "8 images, 40 texts" in r.output


def test_coco_hashing_split_pools_the_images(tmp_path):
    # the deep hashing papers' MS-COCO protocol: random queries, the rest the database, a
    # training set drawn from the database; seeded, labels required
    write_coco(tmp_path)
    ds = load_coco(tmp_path, split="hashing", n_query=3, n_train=4, seed=1)
    assert ds.n_images == 8 and ds.meta["split"] == "hashing"
    q, db, tr = ds.splits["query"], ds.splits["database"], ds.splits["train"]
    assert len(q) == 3 and len(db) == 5 and len(tr) == 4
    assert set(tr) <= set(db) and not set(q) & set(db) and set(q) | set(db) == set(range(8))
    np.testing.assert_array_equal(ds.splits["test"], q)
    again = load_coco(tmp_path, split="hashing", n_query=3, n_train=4, seed=1)
    np.testing.assert_array_equal(again.splits["query"], q)
    with pytest.raises(DataError, match="split must be 'official' or 'hashing'"):
        load_coco(tmp_path, split="random")
    with pytest.raises(DataError, match="needs the labels"):
        load_coco(tmp_path, split="hashing", labels=False)
    with pytest.raises(DataError, match="exceeds the 8 images"):
        load_coco(tmp_path, split="hashing", n_query=5, n_train=4)
    # through load_dataset's folder dispatch too
    assert load_dataset(str(tmp_path), split="hashing", n_query=2, n_train=2).meta["split"] == "hashing"


def test_bench_on_coco_own_files_says_how_to_get_a_test_split(tmp_path):
    from xmodal.evaluation.bench import run_bench

    write_coco(tmp_path)
    with pytest.raises(DataError, match="split=hashing"):
        run_bench(str(tmp_path), ["lsh"], bits=[16])
