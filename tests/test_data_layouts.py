"""Layouts and details that real copies of the datasets hold and the authors' own copies did
not: each test builds a small copy as the download (or the user's spreadsheet) writes it. Then
end-to-end checks of the official download layouts on miniature copies built from real
UCM-Captions pixels and captions, read through ``load_dataset`` by folder."""

from __future__ import annotations

import pytest

from xmodal.data import DataError, load_dataset
import json
import shutil
import numpy as np
from pathlib import Path


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


def _pascal(root, per_class=3):
    from PIL import Image
    for cat in ("aeroplane", "bird"):
        for k in range(per_class):
            stem = f"2008_{cat[0]}{k:05d}"
            (root / "dataset" / cat).mkdir(parents=True, exist_ok=True)
            (root / "sentence" / cat).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8), (k * 40, 0, 0)).save(root / "dataset" / cat / f"{stem}.jpg")
            (root / "sentence" / cat / f"{stem}.txt").write_bytes(
                "".join(f" A {cat} in the sky, caf\u00e9 {j}.\r\n" for j in range(5)).encode())
    return root


def test_pascal_copy_packed_on_macos_with_appledouble_files(tmp_path):
    # A tar or zip made on macOS (or a copy to a FAT/exFAT drive) holds "._NAME" metadata files
    # beside the real ones, also in sentence/<category>/: they are no sentence files.
    root = _pascal(tmp_path / "pascal")
    for sub in ("dataset/aeroplane/._2008_a00000.jpg", "sentence/aeroplane/._2008_a00000.txt",
                "sentence/bird/._2008_b00001txt", "sentence/.DS_Store", "dataset/bird/.DS_Store"):
        (root / sub).write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        ")
    ds = load_dataset(str(root), n_val_per_class=1, n_test_per_class=1)
    assert ds.n_images == 6 and len(ds.texts) == 30
    assert ds.labels.sum(axis=0).tolist() == [3, 3]
    assert not any("._" in p for p in ds.image_paths)
    # a real orphan sentence file is still an error naming it
    (root / "sentence" / "bird" / "2008_b00009.txt").write_text("A bird.\n")
    with pytest.raises(DataError, match=r"2008_b00009.txt: sentence file with no image"):
        load_dataset(str(root), n_val_per_class=1, n_test_per_class=1)


APPLEDOUBLE = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + b"\x00" * 60


def test_mat_folders_unzipped_from_a_macos_zip(tmp_path):
    # A zip made on macOS unpacks with __MACOSX/._NAME (and sometimes ._NAME beside the file):
    # AppleDouble metadata, not MATLAB files, whose "cannot read" stopped the whole load.
    import numpy as np
    import scipy.io as sio

    rng = np.random.default_rng(0)
    n = 30
    labels = (rng.random((n, 24)) < 0.2).astype(np.uint8)
    labels[:, 0] = 1
    dcmh = tmp_path / "FLICKR"
    (dcmh / "__MACOSX").mkdir(parents=True)
    sio.savemat(dcmh / "FLICKR-25K.mat", {"IAll": rng.integers(0, 255, (n, 3, 8, 8), dtype=np.uint8),
                                          "YAll": (rng.random((n, 20)) < 0.2).astype(np.float32),
                                          "LAll": labels})
    (dcmh / "__MACOSX" / "._FLICKR-25K.mat").write_bytes(APPLEDOUBLE)
    (dcmh / "._FLICKR-25K.mat").write_bytes(APPLEDOUBLE)
    ds = load_dataset(str(dcmh), n_query=5, n_train=10)
    assert ds.n_images == n and ds.labels.tolist() == labels.tolist()
    assert load_dataset("mirflickr25k", data_dir=str(dcmh), n_query=5, n_train=10).n_images == n

    cnn = tmp_path / "data" / "mirflickr25k"
    cnn.mkdir(parents=True)
    parts = {f"{v}_{p}": rng.random((4, 3)).astype(np.float32) for v in "IT" for p in ("tr", "te")}
    parts.update({f"L_{p}": (rng.random((4, 24)) < 0.5).astype(np.uint8) for p in ("tr", "te")})
    sio.savemat(cnn / "mir_cnn.mat", parts)
    (cnn / "._mir_cnn.mat").write_bytes(APPLEDOUBLE)  # sorts before mir_cnn.mat
    ds = load_dataset("mirflickr25k", data_dir=str(tmp_path / "data"))
    assert ds.n_images == 8 and len(ds.splits["query"]) == 4


def test_pairs_csv_with_the_trailing_empty_columns_of_a_spreadsheet(tmp_path):
    # A sheet whose used range reaches past the data (a column once used, then cleared) is
    # exported with a delimiter closing every line, header included: unnamed, empty columns.
    path = tmp_path / "pairs.csv"
    path.write_bytes(b"image;text;label;;\r\na.jpg;ein Bild;cat;;\r\nb.jpg;ein Hund;dog;;\r\n")
    ds = load_dataset(str(path))
    assert ds.n_images == 2 and ds.texts == ["ein Bild", "ein Hund"] and ds.label_names == ["cat", "dog"]
    # a value under an unnamed column is not dropped silently: the error names row and column
    path.write_bytes(b"image;text;label;\r\na.jpg;ein Bild;cat;\r\nb.jpg;ein Hund;dog;oops\r\n")
    with pytest.raises(DataError, match=r"pairs.csv:3: value 'oops' in column 4, which the header leaves unnamed"):
        load_dataset(str(path))
    # pandas' to_csv writes its index as an unnamed first column: said so, not "unknown field ''"
    path.write_bytes(b",image,text\n0,a.jpg,ein Bild\n1,b.jpg,ein Hund\n")
    with pytest.raises(DataError, match=r"pairs.csv:2: value '0' in column 1, .*index=False"):
        load_dataset(str(path))


def test_pairs_written_on_a_case_insensitive_disk(tmp_path):
    # A pairs file written on macOS or Windows, whose disks ignore case, names "photos/img_1.jpg"
    # for the camera's "Photos/IMG_1.JPG"; copied to Linux, every such image was dropped as
    # unreadable. The one file that matches but for case is taken (an ambiguous name is not).
    from PIL import Image
    (tmp_path / "Photos" / "Trip").mkdir(parents=True)
    for name in ("IMG_1.JPG", "IMG_2.jpg", "dup.jpg", "DUP.jpg"):
        Image.new("RGB", (8, 8)).save(tmp_path / "Photos" / "Trip" / name, "JPEG")
    path = tmp_path / "pairs.csv"
    path.write_text("image,text,label\nphotos/trip/img_1.jpg,a cat,cat\nPhotos\\Trip\\IMG_1.JPG,eine Katze,cat\n"
                    "PHOTOS/TRIP/img_2.JPG,a dog,dog\nphotos/trip/Dup.jpg,which one,dog\n")
    ds = load_dataset(str(path), require_images_exist=False)
    assert ds.n_images == 3  # the two spellings of IMG_1.JPG are one image
    real = str((tmp_path / "Photos" / "Trip").resolve())
    assert ds.image_paths[:2] == [f"{real}/IMG_1.JPG", f"{real}/IMG_2.jpg"]
    assert ds.text_to_image.tolist() == [0, 0, 1, 2]
    assert ds.image_paths[2] == str((tmp_path / "photos/trip/Dup.jpg").resolve())


def test_pairs_csv_header_written_with_capitals(tmp_path):
    # Spreadsheet users title their columns: "Image;Text;Label;Split" is the same header.
    path = tmp_path / "pairs.csv"
    path.write_bytes(b"\xef\xbb\xbfImage;Text;Label;Split\r\na.jpg;ein Bild;cat;Train\r\nb.jpg;ein Hund;dog;test\r\n")
    ds = load_dataset(str(path))  # and their split names: "Train" is train
    assert ds.splits["train"].tolist() == [0] and ds.splits["test"].tolist() == [1]
    assert ds.label_names == ["cat", "dog"]
    path.write_bytes(b"IMAGE,Text,LABELS\r\na.jpg,ein Bild,cat;dog\r\nb.jpg,ein Hund,dog\r\n")
    ds = load_dataset(str(path))
    assert ds.texts == ["ein Bild", "ein Hund"] and ds.labels.tolist() == [[1, 1], [0, 1]]
    path.write_bytes(b"image,Image,text\r\na.jpg,b.jpg,t\r\n")
    with pytest.raises(DataError, match=r"pairs.csv:1: header names column\(s\) \['image'\] more than once"):
        load_dataset(str(path))


def _jpg(path):
    from PIL import Image
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (200, 10, 10)).save(path, "JPEG")


def test_karpathy_coco_with_each_zip_unpacked_into_a_folder_of_its_name(tmp_path):
    # Windows' "Extract All" (and most archive tools' "extract to <name>/") turns train2014.zip
    # and val2014.zip into train2014/train2014/ and val2014/val2014/: the val2014 images, where
    # Karpathy's test split is, were all reported missing once train2014/ was taken as the base.
    import json
    recs = []
    for k, (sub, split) in enumerate([("train2014", "train"), ("train2014", "restval"), ("val2014", "test"),
                                      ("val2014", "val"), ("val2014", "test")]):
        name = f"COCO_{sub}_{k:012d}.jpg"
        _jpg(tmp_path / sub / sub / name)
        recs.append({"filepath": sub, "filename": name, "cocoid": k, "split": split,
                     "sentences": [{"raw": f"a red square number {k} .", "tokens": []}]})
    (tmp_path / "dataset_coco.json").write_text(json.dumps({"images": recs, "dataset": "coco"}))
    ds = load_dataset(str(tmp_path))
    assert [p.relative_to(tmp_path).as_posix() for p in map(__import__("pathlib").Path, ds.image_paths)] == \
        [f"{r['filepath']}/{r['filepath']}/{r['filename']}" for r in recs]
    assert ds.splits["test"].tolist() == [2, 4]


def test_flickr8k_images_zip_unpacked_into_a_folder_of_its_name(tmp_path):
    # Flickr8k_Dataset.zip holds Flicker8k_Dataset/ (sic): "Extract All" makes
    # Flickr8k_Dataset/Flicker8k_Dataset/*.jpg, one level below the folders looked in.
    names = [f"{1000268201 + i}_693b08cb0e.jpg" for i in range(6)]
    for n in names:
        _jpg(tmp_path / "Flickr8k_Dataset" / "Flicker8k_Dataset" / n)
    text = tmp_path / "Flickr8k_text"
    text.mkdir()
    (text / "Flickr8k.token.txt").write_text("".join(f"{n}#{j}\tA dog runs {j} .\n" for n in names for j in range(5)))
    for f, part in (("train", names[:4]), ("dev", names[4:5]), ("test", names[5:])):
        (text / f"Flickr_8k.{f}Images.txt").write_text("\n".join(part) + "\n")
    ds = load_dataset(str(tmp_path))
    import os
    assert ds.n_images == 6 and all(os.path.isfile(p) for p in ds.image_paths)


def test_pairs_csv_with_label_lists_written_by_pandas(tmp_path):
    # pandas' to_csv writes a column of lists as their repr, "['cat', 'dog']": that is two
    # labels, not one class named "['cat', 'dog']" (JSON's ["cat","dog"] likewise).
    import csv
    path = tmp_path / "pairs.csv"
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["", "image", "text", "labels"][1:])
        w.writerow(["a.jpg", "a cat and a dog", "['cat', 'dog']"])
        w.writerow(["b.jpg", "l'oiseau", '["bird"]'])
        w.writerow(["c.jpg", "nothing", "[]"])
        w.writerow(["d.jpg", "a dog", "dog"])
    ds = load_dataset(str(path))
    assert ds.label_names == ["bird", "cat", "dog"]
    assert ds.labels.tolist() == [[0, 1, 1], [1, 0, 0], [0, 0, 0], [0, 0, 1]]
    # a bracketed name without quotes that is no JSON stays the label it always was
    with open(path, "a", newline="") as fh:
        csv.writer(fh).writerow(["e.jpg", "a draft", "[draft];dog"])
    assert "[draft];dog" not in load_dataset(str(path)).label_names
    with open(path, "a", newline="") as fh:
        csv.writer(fh).writerow(["f.jpg", "a draft", "[draft]"])
    assert "[draft]" in load_dataset(str(path)).label_names


def test_karpathy_flickr30k_beside_kaggles_image_folders(tmp_path):
    # Kaggle's Flickr30k unpacks as flickr30k_images/flickr30k_images/*.jpg; with Karpathy's
    # dataset_flickr30k.json beside it every image was reported missing.
    import json
    import os
    names = [f"{1000092795 + i}.jpg" for i in range(4)]
    for n in names:
        _jpg(tmp_path / "flickr30k_images" / "flickr30k_images" / n)
    recs = [{"filename": n, "split": ("train", "train", "val", "test")[i],
             "sentences": [{"raw": "Two young guys .", "tokens": []}] * 5} for i, n in enumerate(names)]
    (tmp_path / "dataset_flickr30k.json").write_text(json.dumps({"images": recs, "dataset": "flickr30k"}))
    ds = load_dataset(str(tmp_path))
    assert ds.n_images == 4 and all(os.path.isfile(p) for p in ds.image_paths)


DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ucm_captions"


CLASSES = ["agricultural", "airplane", "baseballdiamond"]


@pytest.fixture(scope="module")
def ucm_items():
    """Four images of each of three UCM classes: ``(ucm image path, class, captions)``."""
    if not (DATA / "dataset.json").is_file():
        pytest.skip("UCM-Captions data folder absent")
    doc = json.loads((DATA / "dataset.json").read_text())
    items = []
    for c in range(len(CLASSES)):
        for k in range(4):
            uid = c * 100 + 1 + 9 * k
            rec = doc["images"][uid - 1]
            items.append((DATA / "imgs" / f"{uid}.jpg", c, [s["raw"] for s in rec["sentences"]]))
    return items


def _check_pairs(ds, truth: dict[str, tuple[int, list[str]]], labelled: bool) -> None:
    """Every image of ``ds`` exists, carries exactly its own captions and (``labelled``) its class."""
    assert ds.n_images == len(truth)
    for i, p in enumerate(ds.image_paths):
        assert Path(p).is_file(), p
        c, caps = truth[Path(p).name]
        got = [ds.texts[j] for j in np.flatnonzero(ds.text_to_image == i)]
        assert sorted(got) == sorted(" ".join(s.split()) for s in caps), p
        if labelled:
            assert [ds.label_names[k] for k in np.flatnonzero(ds.labels[i])] == [CLASSES[c]], p


def test_coco_official_layout_keeps_captions_and_categories(tmp_path, ucm_items):
    # captions_*2014.json / instances_*2014.json as COCO ships them: category ids with gaps,
    # annotation ids not in caption order, captions ending in a newline
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    cats = [{"supercategory": "land", "id": 3 * i + 2, "name": n} for i, n in enumerate(CLASSES)]
    truth, ann_id = {}, 0
    for part in ("train", "val"):
        (root / f"{part}2014").mkdir()
        images, caps_ann, inst = [], [], []
        for j, (src, c, caps) in enumerate(ucm_items):
            if (j % 3 == 0) != (part == "val"):
                continue
            cid = 500 + 7 * j
            fn = f"COCO_{part}2014_{cid:012d}.jpg"
            shutil.copy(src, root / f"{part}2014" / fn)
            images.append({"license": 1, "file_name": fn, "height": 256, "width": 256, "id": cid})
            for s in reversed(caps):
                ann_id += 1
                caps_ann.append({"image_id": cid, "id": ann_id, "caption": s + "\n"})
            inst.append({"segmentation": [[0, 0, 1, 1, 2, 2]], "area": 1.0, "iscrowd": 0, "image_id": cid,
                         "bbox": [0, 0, 1, 1], "category_id": cats[c]["id"], "id": 9000 + j})
            truth[fn] = (c, caps)
        (root / "annotations" / f"captions_{part}2014.json").write_text(
            json.dumps({"info": {}, "licenses": [], "images": images, "annotations": caps_ann}))
        (root / "annotations" / f"instances_{part}2014.json").write_text(
            json.dumps({"info": {}, "licenses": [], "images": images, "annotations": inst, "categories": cats}))
    ds = load_dataset(str(root))
    _check_pairs(ds, truth, labelled=True)
    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 8, "val": 4}
    hashing = load_dataset(str(root), split="hashing", n_query=3, n_train=6)
    _check_pairs(hashing, truth, labelled=True)


def test_flickr8k_layout_keeps_captions_and_splits(tmp_path, ucm_items):
    # Flickr8k_text/ (token file + split lists) beside Flicker8k_Dataset/ (sic)
    root = tmp_path / "flickr8k"
    (root / "Flickr8k_text").mkdir(parents=True)
    (root / "Flicker8k_Dataset").mkdir()
    truth, lines, lists = {}, [], {"train": [], "dev": [], "test": []}
    for j, (src, c, caps) in enumerate(ucm_items):
        fn = f"{1000268201 + 37 * j}_693b08cb0{j % 10}.jpg"
        shutil.copy(src, root / "Flicker8k_Dataset" / fn)
        lines += [f"{fn}#{k}\t{s}" for k, s in enumerate(caps)]
        lists[("train", "train", "dev", "test")[j % 4]].append(fn)
        truth[fn] = (c, caps)
    (root / "Flickr8k_text" / "Flickr8k.token.txt").write_text("\n".join(lines) + "\n")
    for k, v in lists.items():
        (root / "Flickr8k_text" / f"Flickr_8k.{k}Images.txt").write_text("\n".join(v) + "\n")
    ds = load_dataset(str(root))
    _check_pairs(ds, truth, labelled=False)
    for split, name in (("train", "train"), ("val", "dev"), ("test", "test")):
        assert sorted(Path(ds.image_paths[i]).name for i in ds.splits[split]) == sorted(lists[name])


def _nus_release(root: Path, ucm_items) -> None:
    """A NUS-WIDE release of the 12 images: Imagelist with Windows paths, 1000-column tags,
    81 concepts, one label file per concept, images under Flickr/<category>/."""
    for sub in ("ImageList", "NUS_WID_Tags", "Groundtruth/AllLabels", "ConceptsList"):
        (root / sub).mkdir(parents=True)
    concepts = CLASSES + [f"concept{i}" for i in range(78)]
    (root / "ConceptsList" / "Concepts81.txt").write_text("\n".join(concepts) + "\n")
    entries, rows = [], []
    for j, (src, c, _) in enumerate(ucm_items):
        fn = f"{j:04d}_{2124494179 + j}.jpg"
        (root / "Flickr" / CLASSES[c]).mkdir(parents=True, exist_ok=True)
        shutil.copy(src, root / "Flickr" / CLASSES[c] / fn)
        entries.append(f"C:\\ImageData\\Flickr\\{CLASSES[c]}\\{fn}")
        rows.append(" ".join("1" if k in (j, 500 + c) else "0" for k in range(1000)))
    (root / "ImageList" / "Imagelist.txt").write_text("\r\n".join(entries) + "\r\n")
    (root / "NUS_WID_Tags" / "AllTags1k.txt").write_text("\n".join(rows) + "\n")
    for k, name in enumerate(concepts):
        col = ["1" if k == c else "0" for _, c, _ in ucm_items]
        (root / "Groundtruth" / "AllLabels" / f"Labels_{name}.txt").write_text("\n".join(col) + "\n")


def test_nus_wide_release_subset_loads_with_labels_on_their_images(tmp_path, ucm_items):
    root = tmp_path / "NUS-WIDE"
    _nus_release(root, ucm_items)
    ds = load_dataset(str(root), n_concepts=3, n_query=3, n_train=6)
    assert ds.n_images == 12 and ds.text_features.shape == (12, 1000)
    for i, p in enumerate(ds.image_paths):
        assert Path(p).is_file() and Path(p).parent.name == ds.label_names[int(np.flatnonzero(ds.labels[i])[0])]


def test_a_download_too_small_for_the_hashing_split_says_which_options_fit(tmp_path, ucm_items):
    # A part of NUS-WIDE (or a small COCO with split=hashing) under the default 2100 + 10500:
    # the error names the options and values that fit, since the defaults were never typed.
    root = tmp_path / "NUS-WIDE"
    _nus_release(root, ucm_items)
    with pytest.raises(DataError, match=r"n_query \+ n_train = 12600 exceeds the 12 images.*"
                                        r"--data-option n_query=2 --data-option n_train=10\b"):
        load_dataset(str(root), n_concepts=3)
    # the values it suggests load
    ds = load_dataset(str(root), n_concepts=3, n_query=2, n_train=10)
    assert len(ds.splits["query"]) == 2 and len(ds.splits["train"]) == 10


def test_a_flickr30k_part_too_small_for_the_random_split_says_which_options_fit(tmp_path, ucm_items):
    # results_20130124.token beside flickr30k-images/, 12 images under the default 1000 + 1000:
    # the values the error suggests must themselves fit (it used to say 100 + 100 whatever the size)
    root = tmp_path / "flickr30k"
    (root / "flickr30k-images").mkdir(parents=True)
    truth, lines = {}, []
    for j, (src, c, caps) in enumerate(ucm_items):
        fn = f"{1000092795 + 31 * j}.jpg"
        shutil.copy(src, root / "flickr30k-images" / fn)
        lines += [f"{fn}#{k}\t{s}" for k, s in enumerate(caps)]
        truth[fn] = (c, caps)
    (root / "results_20130124.token").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"none of its 12 images.*--data-option n_val=1 --data-option n_test=1\b"):
        load_dataset(str(root))
    ds = load_dataset(str(root), n_val=1, n_test=1)
    _check_pairs(ds, truth, labelled=False)
    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 10, "val": 1, "test": 1}


def test_the_ucm_release_by_path_has_its_classes_as_by_name():
    """`xmodal index /data/ucm_captions` (by path) gave a collection without labels, while
    `xmodal index ucm_captions` had the 21 classes: label filters found nothing."""
    from conftest import need

    from xmodal.data import load_dataset

    folder = need("ucm_captions")
    by_name, by_path = load_dataset("ucm_captions"), load_dataset(str(folder))
    assert by_path.labels is not None and by_path.label_names == by_name.label_names
    np.testing.assert_array_equal(by_path.labels, by_name.labels)
    assert by_path.labels.shape == (2100, 21) and by_path.labels.sum() == 2100
