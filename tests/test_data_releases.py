"""Loaders on small synthetic copies of the official downloads, laid out exactly as they unpack:
Karpathy's caption_datasets.zip (dataset_coco.json, dataset_flickr30k.json, dataset_flickr8k.json)
next to the COCO / Flickr image folders, and MIRFlickr-25K's mirflickr25k.zip with its
annotation zip."""

import json

import numpy as np
import pytest

from xmodal.data import DataError, load_dataset
from xmodal.data.karpathy import load_karpathy


# ------------------------------------------------------------------------------ Karpathy
def _sent(raw, k):
    return {"tokens": raw.lower().split(), "raw": raw, "imgid": 0, "sentid": k}


def coco_doc(n_sents=(5, 6, 7, 5, 5, 5)):
    """dataset_coco.json as Karpathy wrote it: filepath train2014/val2014, restval, 5-7 captions."""
    splits = ["train", "restval", "val", "test", "test", "restval"]
    images = []
    for i, (split, k) in enumerate(zip(splits, n_sents)):
        folder = "train2014" if split == "train" else "val2014"
        images.append({"filepath": folder, "sentids": list(range(10 * i, 10 * i + k)),
                       "filename": f"COCO_{folder}_{i:012d}.jpg", "imgid": i, "split": split,
                       "sentences": [_sent(f"Picture {i} caption {j}.", 10 * i + j) for j in range(k)],
                       "cocoid": 1000 + i})
    return {"images": images, "dataset": "coco"}


def flickr_doc(name, n=4):
    splits = ["train", "train", "val", "test"]
    return {"dataset": name, "images": [
        {"sentids": list(range(5 * i, 5 * i + 5)), "imgid": i, "split": splits[i % 4],
         "filename": f"{1000092795 + i}.jpg",
         "sentences": [_sent(f"Photo {i}, caption {j}", 5 * i + j) for j in range(5)]}
        for i in range(n)]}


def touch_images(folder, doc):
    for rec in doc["images"]:
        p = folder / rec.get("filepath", "") / rec["filename"]
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"\xff\xd8\xff")  # the loader only resolves paths


@pytest.mark.parametrize("name,images", [("flickr30k", "flickr30k-images"), ("flickr8k", "Flicker8k_Dataset")])
def test_karpathy_release_file_names_and_image_folders(tmp_path, name, images):
    # caption_datasets.zip unpacks to dataset_<name>.json; the images ship in their own folder.
    doc = flickr_doc(name)
    (tmp_path / f"dataset_{name}.json").write_text(json.dumps(doc))
    touch_images(tmp_path / images, doc)
    for arg in (tmp_path / f"dataset_{name}.json", tmp_path):
        ds = load_dataset(str(arg))
        assert ds.name == name and ds.n_images == 4 and ds.n_texts == 20
        assert ds.image_paths[3] == str(tmp_path / images / "1000092798.jpg")
        assert ds.texts[5] == "Photo 1, caption 0"
        np.testing.assert_array_equal(ds.splits["test"], [3])


def test_karpathy_folder_with_several_release_files_names_them(tmp_path):
    for name in ("coco", "flickr30k", "flickr8k"):
        doc = coco_doc() if name == "coco" else flickr_doc(name)
        (tmp_path / f"dataset_{name}.json").write_text(json.dumps(doc))
    with pytest.raises(DataError, match=r"dataset_coco.json, dataset_flickr30k.json, dataset_flickr8k.json"):
        load_dataset(str(tmp_path))
    assert load_dataset(str(tmp_path / "dataset_flickr8k.json")).name == "flickr8k"


def test_karpathy_coco_restval_filepath_and_five_captions(tmp_path):
    doc = coco_doc()
    (tmp_path / "dataset_coco.json").write_text(json.dumps(doc))
    touch_images(tmp_path / "images", doc)
    ds = load_dataset(str(tmp_path / "dataset_coco.json"))
    # restval is training data; val and test stay apart.
    np.testing.assert_array_equal(ds.splits["train"], [0, 1, 5])
    np.testing.assert_array_equal(ds.splits["val"], [2])
    np.testing.assert_array_equal(ds.splits["test"], [3, 4])
    assert ds.image_paths[1] == str(tmp_path / "images" / "val2014" / "COCO_val2014_000000000001.jpg")
    # The matching papers' COCO protocol: the first five captions of each image (25,000 for 5K test).
    np.testing.assert_array_equal(ds.texts_per_image, [5] * 6)
    assert ds.texts[5:10] == [f"Picture 1 caption {j}." for j in range(5)]
    assert ds.meta["captions_dropped"] == 3
    every = load_karpathy(tmp_path / "dataset_coco.json", max_captions=None)
    np.testing.assert_array_equal(every.texts_per_image, [5, 6, 7, 5, 5, 5])
    two = load_karpathy(tmp_path / "dataset_coco.json", max_captions=2)
    np.testing.assert_array_equal(two.texts_per_image, [2] * 6)
    with pytest.raises(DataError, match="max_captions"):
        load_karpathy(tmp_path / "dataset_coco.json", max_captions=0)


def test_karpathy_other_datasets_keep_every_caption(tmp_path):
    doc = flickr_doc("flickr30k")
    doc["images"][0]["sentences"].append(_sent("a sixth one", 99))
    (tmp_path / "dataset_flickr30k.json").write_text(json.dumps(doc))
    ds = load_dataset(str(tmp_path / "dataset_flickr30k.json"))
    assert ds.texts_per_image.tolist() == [6, 5, 5, 5]


def test_json_that_is_not_karpathy_is_named(tmp_path):
    p = tmp_path / "captions_train2014.json"  # the COCO annotation file, not Karpathy's
    p.write_text(json.dumps({"info": {}, "annotations": []}))
    with pytest.raises(DataError, match=r"captions_train2014.json: no 'images' list"):
        load_dataset(str(p))
