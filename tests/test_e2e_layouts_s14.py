"""End-to-end checks of the official download layouts on miniature copies built from real
UCM-Captions pixels and captions: each layout's files as the real download names and shapes
them, read through ``load_dataset`` by folder, every image found and every caption and label
still on its own image. No encoding here (test_encoders*/test_collection* cover that)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from xmodal.data import DataError, load_dataset

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


def test_encode_takes_data_options_as_bench_and_index_do(tmp_path):
    """`xmodal encode` had no --data-option: a partial NUS-WIDE / MIRFlickr / Flickr copy, whose
    loader's error says to pass --data-option n_query=..., could not be encoded at all."""
    import json

    from typer.testing import CliRunner

    from xmodal.cli import app
    from xmodal.data import load_dataset

    pairs = tmp_path / "pairs.jsonl"
    rows = [{"image": f"img{i}.jpg", "text": f"a {lab} seen from above {i}", "label": lab,
             "split": "train" if i < 8 else "test"} for i, lab in enumerate(["harbor", "beach"] * 5)]
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "p.npz"
    opt = 'label_names=["harbor", "beach"]'
    res = CliRunner().invoke(app, ["encode", "--dataset", str(pairs), "--text-encoder", "tfidf",
                                   "--data-option", opt, "--out", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    assert load_dataset(str(out)).label_names == ["harbor", "beach"]  # the option's order, not sorted
    res = CliRunner().invoke(app, ["encode", "--dataset", str(pairs), "--text-encoder", "tfidf",
                                   "--data-option", 'label_names=["beach"]', "--out", str(tmp_path / "q.npz")])
    assert res.exit_code == 2 and "harbor" in res.output, res.output
    res = CliRunner().invoke(app, ["encode", "--dataset", str(pairs), "--text-encoder", "tfidf",
                                   "--data-option", "no_such_option=1", "--out", str(tmp_path / "r.npz")])
    assert res.exit_code == 2 and "no_such_option" in res.output, res.output


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
