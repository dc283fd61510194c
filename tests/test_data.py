import json

import numpy as np
import pytest

from xmodal.data import DataError, PairedDataset, load_dataset, load_pairs
from xmodal.data.karpathy import load_karpathy, resolve_image
from xmodal.data.mirflickr import load_cnn_mat, load_mirflickr25k
from conftest import DATA, need


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
