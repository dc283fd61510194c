import json

import numpy as np
import pytest

from xmodal.data import DataError, PairedDataset, load_dataset, load_pairs
from xmodal.data.karpathy import load_karpathy, resolve_image
from xmodal.data.mirflickr import load_cnn_mat, load_mirflickr25k
from conftest import DATA, need
import scipy.io
from pathlib import Path
from xmodal.data import pairs as pairs_mod, dataset_files, dataset_layout
from test_data_releases import flickr_doc, touch_images, write_index_caption_mat, write_pascal_page, write_nus_cleaned
from xmodal.index.build import is_dataset_folder, scan_source


def test_wikipedia_layout(wikipedia):
    ds = wikipedia
    assert (ds.n_images, ds.n_texts) == (2866, 2866)
    assert ds.image_features.shape == (2866, 128) and ds.text_features.shape == (2866, 10)
    assert len(ds.splits["train"]) == 2173 and len(ds.splits["test"]) == 693
    assert ds.is_single_label and ds.labels.shape == (2866, 10)
    assert ds.label_names[0] == "art"
    assert ds.texts is not None and len(ds.texts[0]) > 100 and "<text>" not in ds.texts[0]
    te = ds.subset("test")
    assert te.n_images == 693 and te.image_features.shape == (693, 128)


def test_ucm_karpathy(ucm):
    ds = ucm
    assert ds.n_images == 2100 and ds.n_texts == 10500
    assert {k: len(v) for k, v in ds.splits.items() if k in ("train", "val", "test")} == {"train": 1680, "val": 210, "test": 210}
    assert (ds.texts_per_image == 5).all()
    # class = (id - 1) // 100; image paths resolve the .tif names to the .jpg files
    i = ds.image_ids.index("101")
    assert ds.class_ids[i] == 1 and ds.label_names[1] == "airplane"
    assert ds.image_paths[i].endswith("101.jpg")
    te = ds.subset("test")
    assert te.n_texts == 1050 and (np.bincount(te.text_to_image) == 5).all()
    X = np.arange(te.n_images, dtype=float)[:, None]
    tx = te.with_features(image_features=X, text_features=np.zeros((1050, 2)))
    Xp, Yp, Lp = tx.pairs()
    assert Xp.shape == (1050, 1) and (Xp[:, 0] == tx.text_to_image).all() and Lp.shape == (1050, 21)


def test_mirflickr_cleaned():
    need("mirflickr25k")
    ds = load_mirflickr25k(str(DATA))
    assert ds.n_images == 20015 and ds.text_features.shape == (20015, 1386)
    assert ds.labels.shape == (20015, 24) and not ds.is_single_label
    assert len(ds.splits["query"]) == 2000 and len(ds.splits["train"]) == 10000
    assert not set(ds.splits["query"]) & set(ds.splits["database"])
    assert set(ds.splits["train"]) <= set(ds.splits["database"])


def test_cnn_mat_layout(tmp_path):
    import scipy.io

    rng = np.random.default_rng(0)
    mat = {}
    for part, n in (("tr", 30), ("te", 10), ("db", 50)):
        mat[f"I_{part}"] = rng.normal(size=(n, 16))
        mat[f"T_{part}"] = rng.normal(size=(n, 8))
        mat[f"L_{part}"] = rng.integers(0, 2, size=(n, 5))
    scipy.io.savemat(tmp_path / "mir_cnn.mat", mat)
    ds = load_dataset(str(tmp_path / "mir_cnn.mat"))
    assert len(ds.splits["train"]) == 30 and len(ds.splits["query"]) == 10 and len(ds.splits["database"]) == 50
    np.testing.assert_allclose(ds.subset("query").image_features, mat["I_te"].astype(np.float32))
    del mat["T_te"]
    scipy.io.savemat(tmp_path / "bad_cnn.mat", mat)
    with pytest.raises(DataError, match="bad_cnn.mat.*T_te"):
        load_cnn_mat(tmp_path / "bad_cnn.mat")


def test_pairs_jsonl_and_csv(tmp_path):
    rows = [
        {"image": "a.jpg", "text": "a red car", "labels": ["car", "red"], "split": "train"},
        {"image": "a.jpg", "text": "a car parked", "label": "car", "split": "train"},
        {"image": "b.jpg", "text": "a dog", "label": "dog", "split": "test"},
    ]
    p = tmp_path / "pairs.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in rows))
    ds = load_pairs(p)
    assert ds.n_images == 2 and ds.n_texts == 3
    assert list(ds.text_to_image) == [0, 0, 1]
    assert ds.label_names == ["car", "dog", "red"] and ds.labels[0].tolist() == [1, 0, 1]
    assert ds.image_paths[0] == str((tmp_path / "a.jpg").resolve())
    assert list(ds.splits["test"]) == [1]
    c = tmp_path / "pairs.csv"
    c.write_text("image,text,labels\nx.jpg,one,a;b\ny.jpg,two,b\nz.jpg,three,a\n")
    dc = load_dataset(str(c))
    assert dc.labels.tolist() == [[1, 1], [0, 1], [1, 0]]
    assert sum(len(v) for k, v in dc.splits.items() if k in ("train", "val", "test")) == 3


@pytest.mark.parametrize("content,needle", [
    ('{"image": "a.jpg"}\n', "pairs.jsonl:1: field 'text'"),
    ('{"image": "a.jpg", "text": "t"}\n{bad json\n', "pairs.jsonl:2: invalid JSON"),
    ('{"image": "a.jpg", "text": "t", "colour": 1}\n', "pairs.jsonl:1: unknown field"),
    ('{"image": "a.jpg", "text": "t", "label": "zebra"}\n', "pairs.jsonl:1: unknown label"),
])
def test_pairs_errors_name_file_and_row(tmp_path, content, needle):
    p = tmp_path / "pairs.jsonl"
    p.write_text(content)
    with pytest.raises(DataError, match=needle.replace("(", r"\(")):
        load_pairs(p, label_names=["car"])


def test_missing_files_are_named(tmp_path):
    with pytest.raises(DataError, match="nope.jsonl: file not found"):
        load_pairs(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match="not found"):
        load_dataset("wikipedia", data_dir=str(tmp_path))
    (tmp_path / "dataset.json").write_text('{"images": [{"filename": "1.jpg"}]}')
    with pytest.raises(DataError, match=r"images\[0\].*sentences"):
        load_karpathy(tmp_path)


def test_wikipedia_list_errors(tmp_path, wikipedia):
    import shutil

    root = tmp_path / "wikipedia"
    root.mkdir()
    src = DATA / "wikipedia"
    for f in ("categories.list", "testset_txt_img_cat.list"):
        shutil.copy(src / f, root / f)
    lines = (src / "trainset_txt_img_cat.list").read_text().splitlines()
    lines[4] = lines[4].rsplit("\t", 1)[0] + "\t42"
    (root / "trainset_txt_img_cat.list").write_text("\n".join(lines))
    from xmodal.data import load_wikipedia

    with pytest.raises(DataError, match=r"trainset_txt_img_cat.list:5: unknown category 42"):
        load_wikipedia(str(tmp_path))


def test_dataset_validation_names_field():
    with pytest.raises(DataError, match="image_features has 3 rows, expected 2"):
        PairedDataset("t", text_to_image=[0, 1], n_images=2, image_features=np.zeros((3, 2)))
    with pytest.raises(DataError, match="text row 1 points to image 5"):
        PairedDataset("t", text_to_image=[0, 5], n_images=2)
    with pytest.raises(DataError, match="text_features row 0 holds NaN"):
        PairedDataset("t", text_to_image=[0], n_images=1, text_features=np.array([[np.nan]]))


def test_resolve_image_any_extension(tmp_path):
    (tmp_path / "7.jpg").write_bytes(b"x")
    assert resolve_image(tmp_path, "7.tif") == tmp_path / "7.jpg"
    assert resolve_image(tmp_path, "8.tif") == tmp_path / "8.tif"


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
