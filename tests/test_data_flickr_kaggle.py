"""Flickr8k as Kaggle's "adityajn105/flickr8k" unpacks: ``captions.txt`` (CSV, header
``image,caption``, five rows per image, a caption with commas quoted as the csv module writes
it) beside ``Images/`` holding the JPEGs, no split lists. Small synthetic copies laid out as
that download (and copies of it) hold it."""

import csv
import io
import json
import logging

import numpy as np
import pytest
from PIL import Image

from test_data_releases import flickr_doc
from xmodal.data import DataError, dataset_files, dataset_layout, load_dataset
from xmodal.data.flickr import load_flickr

NAMES = [f"{1000268201 + 37 * i}_693b08cb0e.jpg" for i in range(12)]


def captions_of(name):
    stem = name[:6]
    # as in the real file: most captions plain, some with commas, one with quotes inside
    return [f"A child in a pink dress is climbing stairs {stem} .",
            f"A girl , in pink , going into a wooden building {stem} .",
            f'A dog named "Rex" runs {stem} .',
            f"A little girl climbing into a playhouse {stem} .",
            f"  A little   girl {stem} .  "]


def caption_rows():
    """The data lines of captions.txt, each caption written by the csv module (quoted where it
    holds a comma or a quote), in file order."""
    rows = []
    for name in NAMES:
        for cap in captions_of(name):
            out = io.StringIO()
            csv.writer(out, lineterminator="").writerow([name, cap])
            rows.append(out.getvalue())
    return rows


def write_kaggle(root, header="image,caption", bom=False, newline="\n", images="Images", upper=False,
                 nested=False, rows=None, split_lists=False):
    root.mkdir(parents=True, exist_ok=True)
    text = newline.join([header] + (caption_rows() if rows is None else rows)) + newline
    (root / "captions.txt").write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode())
    folder = root / images / images if nested else root / images
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(NAMES):
        file = name[:-4] + ".JPG" if upper else name
        Image.new("RGB", (8, 8), (20 * i, 255 - 20 * i, 90)).save(folder / file, format="JPEG")
    if split_lists:
        (root / "Flickr_8k.trainImages.txt").write_text("\n".join(NAMES[:6]) + "\n")
        (root / "Flickr_8k.devImages.txt").write_text("\n".join(NAMES[6:8]) + "\n")
        (root / "Flickr_8k.testImages.txt").write_text("\n".join(NAMES[8:11]) + "\n")  # [11]: in no list
    return folder


def expected_texts(name):
    return [" ".join(c.split()) for c in captions_of(name)]


def test_kaggle_captions_csv_bom_crlf_quotes_and_a_seeded_random_split(tmp_path, caplog):
    root = tmp_path / "flickr8k"
    rows = caption_rows()
    rows[3] = f"{NAMES[0]}"  # no caption at all
    rows[11] = f"{NAMES[2]},"  # empty caption
    rows[17] = f'{NAMES[3]},"A dog runs across, and never closes its quote'
    write_kaggle(root, bom=True, newline="\r\n", rows=rows)
    assert dataset_layout(root) == "flickr_tokens"
    with pytest.raises(DataError, match=r"read as flickr8k.s captions, whose seeded random split of 1000 val \+ 1000 test images leaves none of its 12 images.*--data-option n_val="):
        load_dataset(str(root))
    with caplog.at_level(logging.WARNING, logger="xmodal.data"):
        ds = load_dataset(str(root), n_val=2, n_test=3)
    assert ds.name == "flickr8k" and ds.n_images == 12 and ds.n_texts == 57
    assert ds.meta["protocol"] == "random_split" and ds.meta["seed"] == 0
    assert ds.meta["caption_file"] == "captions.txt"
    # malformed rows skipped and named by file and line (the header is line 1)
    assert [m.split(": ")[0].rsplit("/", 1)[-1] for m in ds.meta["malformed_rows"]] == [
        "captions.txt:5", "captions.txt:13", "captions.txt:19"]
    assert "skipped 3 malformed row(s)" in caplog.text
    # captions of each image in file order, the csv quoting undone, whitespace collapsed
    assert ds.texts[:4] == [t for k, t in enumerate(expected_texts(NAMES[0])) if k != 3]
    assert ds.texts[4:9] == expected_texts(NAMES[1])
    assert ds.texts[5] == f"A girl , in pink , going into a wooden building {NAMES[1][:6]} ."
    assert ds.texts[6] == f'A dog named "Rex" runs {NAMES[1][:6]} .'
    np.testing.assert_array_equal(ds.texts_per_image, [4, 5, 4, 4] + [5] * 8)
    assert ds.image_ids[0] == NAMES[0][:-4]
    assert ds.image_paths == [str(root / "Images" / n) for n in NAMES]
    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 7, "val": 2, "test": 3}
    assert len(np.unique(np.concatenate(list(ds.splits.values())))) == 12
    again = load_flickr(root, n_val=2, n_test=3, seed=0)
    other = load_flickr(root, n_val=2, n_test=3, seed=1)
    assert all(np.array_equal(ds.splits[k], again.splits[k]) for k in ds.splits)
    assert not all(np.array_equal(ds.splits[k], other.splits[k]) for k in ds.splits)
    assert [p.name for p in dataset_files(root).files] == ["captions.txt"]


def test_kaggle_captions_with_flickr8k_split_lists_beside_them(tmp_path):
    write_kaggle(tmp_path, split_lists=True)
    ds = load_dataset(str(tmp_path))
    assert ds.meta["protocol"] == "official" and ds.meta["seed"] is None
    assert ds.n_images == 11 and ds.n_texts == 55 and ds.meta["images_without_split"] == 1
    np.testing.assert_array_equal(ds.splits["train"], range(6))
    np.testing.assert_array_equal(ds.splits["val"], [6, 7])
    np.testing.assert_array_equal(ds.splits["test"], [8, 9, 10])
    assert sorted(p.name for p in dataset_files(tmp_path).files) == [
        "Flickr_8k.devImages.txt", "Flickr_8k.testImages.txt", "Flickr_8k.trainImages.txt", "captions.txt"]
    # the lists' own problems, named as for Flickr8k's token file
    (tmp_path / "Flickr_8k.devImages.txt").write_text(NAMES[6] + "\n99999_nope.jpg\n")
    with pytest.raises(DataError, match=r"Flickr_8k.devImages.txt:2: image 99999_nope.jpg has no caption in "
                                        r"captions.txt"):
        load_dataset(str(tmp_path))
    (tmp_path / "Flickr_8k.devImages.txt").unlink()
    with pytest.raises(DataError, match=r"Flickr_8k.devImages.txt: file not found"):
        load_dataset(str(tmp_path))


@pytest.mark.parametrize("header,images,upper,nested", [
    ("Image,Caption", "images", False, False),  # header case, lower-case folder
    ("image,caption", "Images", True, False),  # .JPG files, .jpg names in captions.txt
    ("image,caption", "Images", False, True),  # Images.zip unpacked into Images/: Images/Images/
    ("IMAGE,CAPTION", "Images", True, True),
])
def test_kaggle_images_found_whatever_the_folder_and_extension_case(tmp_path, header, images, upper, nested):
    folder = write_kaggle(tmp_path, header=header, images=images, upper=upper, nested=nested)
    assert dataset_layout(tmp_path) == "flickr_tokens"
    ds = load_dataset(str(tmp_path), n_val=2, n_test=2)
    assert ds.n_images == 12 and ds.n_texts == 60
    assert ds.image_paths == [str(folder / (n[:-4] + ".JPG" if upper else n)) for n in NAMES]
    assert all((folder / p).is_file() for p in ds.image_paths)
    assert ds.image_ids == [n[:-4] for n in NAMES]


def test_karpathy_file_beside_kaggle_captions_keeps_precedence(tmp_path):
    write_kaggle(tmp_path)
    (tmp_path / "dataset_flickr8k.json").write_text(json.dumps(flickr_doc("flickr8k")))
    assert dataset_layout(tmp_path) == "karpathy"
    assert load_dataset(str(tmp_path)).n_images == 4


def test_image_folder_with_its_own_captions_txt_is_no_kaggle_flickr8k(tmp_path):
    from xmodal.index.build import scan_source

    # images beside captions.txt (no Images/ folder), captioned by sidecar files
    a = tmp_path / "a"
    a.mkdir()
    for stem in ("beach", "dog"):
        Image.new("RGB", (8, 8)).save(a / f"{stem}.jpg")
        (a / f"{stem}.txt").write_text(f"a photo of a {stem}\n")
    (a / "captions.txt").write_text("image,caption\nbeach.jpg,a beach\n")
    assert dataset_layout(a) is None
    images, texts = scan_source(a)
    assert sorted(i.key for i in images) == ["beach.jpg", "dog.jpg"]
    assert sorted(t.text for t in texts) == ["a photo of a beach", "a photo of a dog"]
    # an Images/ folder, but captions.txt of another header (or none): not this layout either
    for i, first in enumerate(["filename,caption", "image,caption,source", "beach.jpg,a beach",
                               "image\tcaption", "image;caption"]):
        b = tmp_path / f"b{i}"
        (b / "Images").mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(b / "Images" / "beach.jpg")
        (b / "captions.txt").write_text(first + "\nbeach.jpg,a beach\n")
        assert dataset_layout(b) is None, first
        assert dataset_files(b).layout == "folder"


def test_xmodal_index_reads_a_kaggle_flickr8k_folder(tmp_path, monkeypatch):
    from threadpoolctl import threadpool_limits
    from typer.testing import CliRunner

    from xmodal.cli import app
    from xmodal.index.build import scan_source

    monkeypatch.setenv("XMODAL_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "kaggle"
    write_kaggle(root, nested=True)
    images, texts = scan_source(root, {"n_val": 2, "n_test": 2})
    assert [i.key for i in images] == [n[:-4] for n in NAMES] and len(texts) == 60
    assert texts[0].pair_key == images[0].key and texts[0].text == expected_texts(NAMES[0])[0]
    with threadpool_limits(1):
        r = CliRunner().invoke(app, ["index", str(root), "-c", str(tmp_path / "coll"),
                                     "--image-encoder", "efficientnet-lite0", "--text-encoder", "tfidf",
                                     "--method", "cca", "--data-option", "n_val=2", "--data-option", "n_test=2",
                                     "-q"])
    assert r.exit_code == 0, r.output
    assert "12 images, 60 texts" in r.output
