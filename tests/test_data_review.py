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


# ------------------------------------------------- which layout a folder is: one answer for all
from test_data_releases import flickr_doc, touch_images, write_index_caption_mat, write_pascal_page  # noqa: E402

from xmodal.data import dataset_files, dataset_layout, load_dataset  # noqa: E402
from xmodal.index.build import is_dataset_folder, scan_source  # noqa: E402


def test_index_mat_folder_with_a_web_page_stays_an_index_mat_folder(tmp_path):
    folder = tmp_path / "mirflickr25k_clip"
    write_index_caption_mat(folder)
    (folder / "index.html").write_text("<html><body>Project page</body></html>")
    assert dataset_layout(folder) == "index_caption_mat"
    assert is_dataset_folder(folder)
    ds = load_dataset(str(folder), n_query=5, n_train=10)
    assert ds.meta["layout"] == "index_caption_mat" and ds.n_images == 30
    names = {p.name for p in dataset_files(folder).files}
    assert {"index.mat", "caption.mat", "label.mat"} <= names and "index.html" not in names


def test_pascal_detection_needs_the_page_or_both_folders(tmp_path):
    # index.htm is one of the page names the loader reads: the folder is Pascal by it too.
    pas = write_pascal_page(tmp_path / "pas")
    (pas / "index.html").rename(pas / "index.htm")
    assert dataset_layout(pas) == "pascal_sentences" and is_dataset_folder(pas)
    assert load_dataset(str(pas)).name == "pascal_sentences"
    assert [p.name for p in dataset_files(pas).files] == ["index.htm"]
    # A sentence/ folder among photos, with no dataset/ beside it, is no Pascal release.
    photos = tmp_path / "photos"
    (photos / "sentence").mkdir(parents=True)
    from PIL import Image

    Image.new("RGB", (8, 8)).save(photos / "a.jpg")
    assert dataset_layout(photos) is None and not is_dataset_folder(photos)
    assert [i.key for i in scan_source(photos)[0]] == ["a.jpg"]


def test_unrelated_dataset_json_files_leave_a_photo_folder(tmp_path):
    from PIL import Image

    for i in range(3):
        Image.new("RGB", (8, 8)).save(tmp_path / f"p{i}.jpg")
        (tmp_path / f"p{i}.txt").write_text(f"photo {i}")
    (tmp_path / "dataset_export.json").write_text(json.dumps({"tool": "lightroom"}))
    (tmp_path / "dataset_settings.json").write_text(json.dumps({"x": 1}))
    assert dataset_layout(tmp_path) is None and not is_dataset_folder(tmp_path)
    assert len(scan_source(tmp_path)[0]) == 3
    # Beside a real Karpathy file, they do not make it ambiguous.
    doc = flickr_doc("flickr8k")
    (tmp_path / "dataset_flickr8k.json").write_text(json.dumps(doc))
    touch_images(tmp_path / "Flicker8k_Dataset", doc)
    assert dataset_layout(tmp_path) == "karpathy" and is_dataset_folder(tmp_path)
    assert load_dataset(str(tmp_path)).n_images == 4


def test_json_lines_pairs_file_named_json_loads_as_pairs(tmp_path):
    rows = [{"image": f"imgs/{i}.jpg", "text": f"photo {i}"} for i in range(5)]
    (tmp_path / "pairs.json").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    ds = load_dataset(str(tmp_path / "pairs.json"))
    assert ds.n_texts == 5 and ds.texts[2] == "photo 2"
    # A one-line Karpathy file is still Karpathy's.
    (tmp_path / "k.json").write_text(json.dumps(flickr_doc("flickr8k")))
    assert load_dataset(str(tmp_path / "k.json")).n_texts == 20


# ------------------------------------------------------------ Karpathy: where the images are
from xmodal.data.karpathy import load_karpathy  # noqa: E402


def test_karpathy_first_image_missing_still_finds_the_folder(tmp_path):
    doc = flickr_doc("flickr30k", n=8)
    touch_images(tmp_path / "flickr30k-images", doc)
    (tmp_path / "flickr30k-images" / doc["images"][0]["filename"]).unlink()  # a download missed it
    (tmp_path / "dataset_flickr30k.json").write_text(json.dumps(doc))
    ds = load_dataset(str(tmp_path))
    assert all(Path(p).parent == tmp_path / "flickr30k-images" for p in ds.image_paths)
    assert sum(Path(p).is_file() for p in ds.image_paths) == 7


def _count_disk_lookups(monkeypatch):
    import os
    import pathlib

    calls = [0]

    def counting(fn):
        def wrapped(*a, **k):
            calls[0] += 1
            return fn(*a, **k)
        return wrapped

    for owner, name in ((pathlib.Path, "exists"), (pathlib.Path, "is_file"),
                        (os.path, "isfile"), (os.path, "exists")):
        monkeypatch.setattr(owner, name, counting(getattr(owner, name)))
    return calls


def test_karpathy_missing_images_cost_no_stat_each(tmp_path, monkeypatch):
    # COCO with none of its images here: the layout is probed on a sample, not per record.
    n = 3000
    doc = {"dataset": "coco", "images": [
        {"filepath": "train2014", "filename": f"COCO_train2014_{i:012d}.jpg", "cocoid": i,
         "split": "train", "sentences": [{"raw": f"cat {i}"}]} for i in range(n)]}
    (tmp_path / "dataset_coco.json").write_text(json.dumps(doc))
    (tmp_path / "train2017").mkdir()
    calls = _count_disk_lookups(monkeypatch)
    ds = load_karpathy(tmp_path / "dataset_coco.json")
    assert calls[0] < n
    assert ds.image_paths[5] == str(tmp_path / "train2014" / "COCO_train2014_000000000005.jpg")


# ------------------------------------------------------------------------------ small ones
import numpy as np  # noqa: E402
import scipy.io  # noqa: E402

from test_data_releases import write_nus_cleaned  # noqa: E402


def test_folder_given_as_dot_is_named_after_the_folder(tmp_path, monkeypatch):
    write_nus_cleaned(tmp_path / "coco", n=60, n_labels=80, taglist=None)
    write_index_caption_mat(tmp_path / "mirflickr25k_clip")
    monkeypatch.chdir(tmp_path / "coco")
    ds = load_dataset(".", n_query=5, n_train=10)
    assert ds.name == "coco" and ds.meta["dataset"] == "mscoco"
    monkeypatch.chdir(tmp_path / "mirflickr25k_clip")
    ds = load_dataset(".", n_query=5, n_train=10)
    assert ds.name == "mirflickr25k_clip" and ds.meta["dataset"] == "mirflickr25k"


def test_cleaned_lists_blank_first_label_row_is_named(tmp_path):
    root = tmp_path / "mydata"
    write_nus_cleaned(root, n=20, n_labels=3, taglist=None)
    rows = (root / "all_labels.txt").read_text().splitlines()
    rows[0] = ""
    (root / "all_labels.txt").write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError, match=r"all_labels.txt:1: expected 3 0/1 values, got 0"):
        load_dataset(str(root), n_query=2, n_train=5)


def test_nus_wide_cleaned_lists_missing_image_dir_is_named(tmp_path):
    from xmodal.data import load_nus_wide

    write_nus_cleaned(tmp_path / "NUS-WIDE", n=40)
    with pytest.raises(DataError, match=r"nowhere: image folder not found"):
        load_nus_wide(str(tmp_path), n_query=5, n_train=10, image_dir=str(tmp_path / "nowhere"))


def test_index_mat_images_of_one_name_in_two_folders_keep_apart(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    stored = [f"/data/{split}/{i}.jpg" for split in ("train", "val") for i in range(10)]
    scipy.io.savemat(folder / "index.mat", {"index": np.array(stored)})
    scipy.io.savemat(folder / "caption.mat", {"caption": np.array([f"tag{i}" for i in range(20)])})
    scipy.io.savemat(folder / "label.mat", {"label": np.eye(20, 3)})
    ds = load_dataset(str(folder), n_query=2, n_train=5)
    assert len(set(ds.image_ids)) == 20
    assert ds.image_ids[0] == "train/0" and ds.image_ids[10] == "val/0"
    # One image listed twice is two items of one image: named, both rows.
    stored[7] = stored[3]
    scipy.io.savemat(folder / "index.mat", {"index": np.array(stored)})
    with pytest.raises(DataError, match=r"index.mat: item 7 \(0-based\) is the image of item 3"):
        load_dataset(str(folder), n_query=2, n_train=5)


def test_relocate_builds_only_the_sample_for_each_rule(tmp_path, monkeypatch):
    import pathlib

    from xmodal.data import dcmh_mat

    n = 3000
    stored = [f"/elsewhere/a/b/{i}.jpg" for i in range(n)]
    calls = [0]
    real = pathlib.Path.joinpath

    def counting(self, *a):
        calls[0] += 1
        return real(self, *a)

    monkeypatch.setattr(pathlib.Path, "joinpath", counting)
    out = dcmh_mat._relocate(stored, tmp_path, tmp_path)
    assert out[5] == str(tmp_path / "b" / "5.jpg")  # nothing found: last two parts under image_dir
    assert calls[0] < 2 * n


def test_encoder_state_without_spec_names_the_field():
    import io
    import json as _json
    import zipfile

    from xmodal.encoders.base import FORMAT, EncoderError
    from xmodal.encoders.dataset import encoder_from_state

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("encoder.json", _json.dumps({"format": FORMAT, "dim": 4}))
    with pytest.raises(EncoderError, match=r"m.zip: encoder_state: unusable fitted encoder state .*'spec'"):
        encoder_from_state(buf.getvalue(), "m.zip: encoder_state")
