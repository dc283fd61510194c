"""NUS-WIDE and Pascal Sentences loaders on small synthetic folders in the release layouts."""

import numpy as np
import pytest

from xmodal.data import DataError, LOADERS, load_dataset
from xmodal.data.nuswide import load_nus_wide, relative_image_path
from xmodal.data.pascal import load_pascal_sentences

# ------------------------------------------------------------------------------------ NUS-WIDE
N_IMG = 60
CONCEPTS = ["animal", "lake", "sky", "toy", "water"]
# Column sums 6, 10, 25, 2, 18: the 3 most frequent are sky, water, lake.
FREQ = {"animal": 6, "lake": 10, "sky": 25, "toy": 2, "water": 18}
NO_TAGS = (3, 7, 40)


def nus_arrays():
    rng = np.random.default_rng(5)
    tags = (rng.random((N_IMG, 1000)) < 0.01).astype(np.uint8)
    tags[:, 0] = 1
    tags[list(NO_TAGS)] = 0
    labels = np.zeros((N_IMG, len(CONCEPTS)), dtype=np.uint8)
    for c, name in enumerate(CONCEPTS):
        labels[rng.choice(N_IMG, FREQ[name], replace=False), c] = 1
    return tags, labels


def write_nus(root, tags, labels, flickr=True, taglist=True):
    root.mkdir(parents=True, exist_ok=True)
    cats = ["actor", "beach", "cat"]
    entries = [f"C:\\ImageData\\Flickr\\{cats[i % 3]}\\{i:04d}_{1000 + i}.jpg" for i in range(N_IMG)]
    (root / "ImageList").mkdir()
    (root / "ImageList" / "Imagelist.txt").write_text("\n".join(entries) + "\n")
    (root / "NUS_WID_Tags").mkdir()
    # The release writes a tab after every value.
    (root / "NUS_WID_Tags" / "AllTags1k.txt").write_text(
        "".join("".join(f"{v}\t" for v in row) + "\n" for row in tags))
    if taglist:
        (root / "NUS_WID_Tags" / "TagList1k.txt").write_text("\n".join(f"tag{j}" for j in range(1000)) + "\n")
    (root / "Concepts81.txt").write_text("\n".join(CONCEPTS) + "\n")
    (root / "Groundtruth" / "AllLabels").mkdir(parents=True)
    for c, name in enumerate(CONCEPTS):
        (root / "Groundtruth" / "AllLabels" / f"Labels_{name}.txt").write_text(
            "\n".join(str(v) for v in labels[:, c]) + "\n")
    if flickr:
        from PIL import Image

        for i in range(0, N_IMG, 7):  # a few real files are enough: paths are what is checked
            p = root / "Flickr" / cats[i % 3] / f"{i:04d}_{1000 + i}.jpg"
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8), (i * 4, 0, 0)).save(p)
    return root


@pytest.fixture
def nus(tmp_path):
    tags, labels = nus_arrays()
    return write_nus(tmp_path / "nus_wide", tags, labels), tags, labels


def test_nus_wide_release_layout(nus):
    root, tags, labels = nus
    ds = load_nus_wide(str(root.parent), n_concepts=3, n_query=5, n_train=12)
    assert ds.label_names == ["lake", "sky", "water"]  # concept-list order, not frequency order
    assert ds.meta["concept_counts"] == {"lake": 10, "sky": 25, "water": 18}
    top = [CONCEPTS.index(c) for c in ds.label_names]
    keep = np.flatnonzero(labels[:, top].any(axis=1) & tags.any(axis=1))
    assert not set(NO_TAGS) & set(keep.tolist())
    assert ds.n_images == ds.n_texts == len(keep)
    np.testing.assert_array_equal(ds.meta["release_rows"], keep)
    np.testing.assert_array_equal(ds.labels, labels[keep][:, top])
    assert ds.text_features.shape == (len(keep), 1000) and ds.text_features.dtype == np.float32
    np.testing.assert_array_equal(ds.text_features, tags[keep])
    np.testing.assert_array_equal(ds.text_to_image, np.arange(len(keep)))
    assert ds.image_features is None and not ds.is_single_label
    i = keep[2]
    assert ds.image_ids[2] == f"{i:04d}_{1000 + i}"
    assert ds.image_paths[2] == str(root / "Flickr" / ["actor", "beach", "cat"][i % 3] / f"{i:04d}_{1000 + i}.jpg")
    assert ds.texts[2].split() == [f"tag{j}" for j in np.flatnonzero(tags[i])]
    sp = ds.splits
    assert len(sp["query"]) == 5 and len(sp["train"]) == 12
    assert len(sp["query"]) + len(sp["database"]) == ds.n_images
    assert not set(sp["query"]) & set(sp["database"]) and set(sp["train"]) <= set(sp["database"])
    assert (sp["test"] == sp["query"]).all()
    again = load_dataset("nus_wide", data_dir=str(root.parent), n_concepts=3, n_query=5, n_train=12)
    assert all((again.splits[k] == sp[k]).all() for k in sp)
    other = load_nus_wide(str(root.parent), n_concepts=3, n_query=5, n_train=12, seed=1)
    assert not (other.splits["query"] == sp["query"]).all()
    assert "nus_wide" in LOADERS


def test_nus_wide_concepts_features_and_mat(nus, tmp_path):
    root, tags, labels = nus
    # Any whitespace between tag values is accepted, not just the release's single tab.
    _edit_line(root / "NUS_WID_Tags" / "AllTags1k.txt", 2, "  " + "  ".join(str(v) for v in tags[1]) + " ")
    ds = load_nus_wide(str(root), concepts=["toy", "animal"], n_query=1, n_train=2)
    assert ds.label_names == ["animal", "toy"]
    assert ds.n_images == int((labels[:, [0, 3]].any(axis=1) & tags.any(axis=1)).sum())
    X = np.arange(N_IMG * 4, dtype=np.float32).reshape(N_IMG, 4)
    np.save(root / "feats.npy", X)
    (root / "BoW_int.dat").write_text("\n".join(" ".join(str(int(v)) for v in r) for r in X) + "\n")
    for fname in ("feats.npy", str(root / "BoW_int.dat")):
        df = load_nus_wide(str(root), n_concepts=3, n_query=5, n_train=12, image_features=fname)
        np.testing.assert_array_equal(df.image_features, X[df.meta["release_rows"]])
        np.testing.assert_array_equal(df.text_features, tags[df.meta["release_rows"]])
    assert df.meta["image_feature"] == "BoW_int"
    # Without Flickr/ or TagList1k.txt: paths relative to the root, no raw texts.
    bare = write_nus(tmp_path / "bare", tags, labels, flickr=False, taglist=False)
    db = load_nus_wide(str(bare), n_concepts=5, n_query=5, n_train=10)
    i = db.meta["release_rows"][0]
    assert db.texts is None and db.image_paths[0] == str(bare / ["actor", "beach", "cat"][i % 3] / f"{i:04d}_{1000 + i}.jpg")
    assert relative_image_path("actor\\0001_2.jpg") == "actor/0001_2.jpg"
    assert relative_image_path("D:/x/flickr/cat/9.jpg") == "cat/9.jpg"
    import scipy.io

    mat_dir = tmp_path / "mat" / "nus_wide"
    mat_dir.mkdir(parents=True)
    rng = np.random.default_rng(0)
    scipy.io.savemat(mat_dir / "nus_cnn.mat", {f"{k}_{p}": rng.integers(0, 2, (n, 3)) for p, n in
                                               (("tr", 6), ("te", 2), ("db", 9)) for k in "ITL"})
    dm = load_dataset("nus_wide", data_dir=str(tmp_path / "mat"))
    assert dm.name == "nus_wide" and len(dm.splits["database"]) == 9


def _edit_line(path, lineno, new):
    lines = path.read_text().splitlines()
    lines[lineno - 1] = new
    path.write_text("\n".join(lines) + "\n")


def _tag_row(values):
    return "\t".join(values) + "\t"


NUS_ERRORS = [
    ("missing tags", lambda r: (r / "NUS_WID_Tags" / "AllTags1k.txt").unlink(), r"AllTags1k.txt: file not found"),
    ("short tag row", lambda r: _edit_line(r / "NUS_WID_Tags" / "AllTags1k.txt", 5, _tag_row(["0"] * 999)),
     r"AllTags1k.txt:5: expected 1000 tag values, got 999"),
    ("bad tag value", lambda r: _edit_line(r / "NUS_WID_Tags" / "AllTags1k.txt", 3, _tag_row(["0"] * 6 + ["2"] + ["0"] * 993)),
     r"AllTags1k.txt:3: column 7: value '2' is not 0 or 1"),
    ("tag rows short", lambda r: (r / "NUS_WID_Tags" / "AllTags1k.txt").write_text(
        "\n".join((r / "NUS_WID_Tags" / "AllTags1k.txt").read_text().splitlines()[:-1]) + "\n"),
     r"AllTags1k.txt: 59 rows, but Imagelist.txt lists 60 images"),
    ("tag rows long", lambda r: (r / "NUS_WID_Tags" / "AllTags1k.txt").open("a").write(_tag_row(["1"] * 1000) + "\n"),
     r"AllTags1k.txt:61: more rows than the 60 images"),
    ("blank tag row", lambda r: _edit_line(r / "NUS_WID_Tags" / "AllTags1k.txt", 9, ""), r"AllTags1k.txt:9: empty line"),
    ("bad label", lambda r: _edit_line(r / "Groundtruth" / "AllLabels" / "Labels_sky.txt", 4, "x"),
     r"Labels_sky.txt:4: expected 0 or 1, got 'x'"),
    ("label count", lambda r: (r / "Groundtruth" / "AllLabels" / "Labels_lake.txt").write_text("0\n" * 59),
     r"Labels_lake.txt: 59 lines, but Imagelist.txt lists 60 images"),
    ("missing label file", lambda r: (r / "Groundtruth" / "AllLabels" / "Labels_toy.txt").unlink(),
     r"Labels_toy.txt: file not found"),
    ("missing concepts", lambda r: (r / "Concepts81.txt").unlink(), r"Concepts81.txt: file not found"),
    ("blank image line", lambda r: _edit_line(r / "ImageList" / "Imagelist.txt", 3, " "), r"Imagelist.txt:3: empty line"),
    ("missing image list", lambda r: (r / "ImageList" / "Imagelist.txt").unlink(), r"Imagelist.txt: file not found"),
]


@pytest.mark.parametrize("what,breaker,needle", NUS_ERRORS, ids=[e[0] for e in NUS_ERRORS])
def test_nus_wide_errors_name_file_and_line(nus, what, breaker, needle):
    root = nus[0]
    breaker(root)
    with pytest.raises(DataError, match=needle):
        load_nus_wide(str(root), n_concepts=3, n_query=5, n_train=10)


def test_nus_wide_parameter_and_feature_errors(nus):
    root = nus[0]
    with pytest.raises(DataError, match="n_query \\+ n_train = 100 exceeds"):
        load_nus_wide(str(root), n_concepts=3, n_query=50, n_train=50)
    with pytest.raises(DataError, match="n_concepts=9, but .*Concepts81.txt lists 5"):
        load_nus_wide(str(root), n_concepts=9)
    with pytest.raises(DataError, match="Concepts81.txt: unknown concepts \\['cloud'\\]"):
        load_nus_wide(str(root), concepts=["cloud"])
    (root / "f.dat").write_text("1 2\n3 x\n")
    with pytest.raises(DataError, match="f.dat:2: non-numeric value"):
        load_nus_wide(str(root), n_concepts=3, n_query=5, n_train=10, image_features="f.dat")
    (root / "g.dat").write_text("1 2\n3 4 5\n")
    with pytest.raises(DataError, match="g.dat:2: 3 values, earlier rows have 2"):
        load_nus_wide(str(root), n_concepts=3, n_query=5, n_train=10, image_features="g.dat")
    np.save(root / "h.npy", np.zeros((N_IMG - 1, 3)))
    with pytest.raises(DataError, match=r"h.npy: feature matrix has shape \(59, 3\), expected 60 rows"):
        load_nus_wide(str(root), n_concepts=3, n_query=5, n_train=10, image_features="h.npy")
    with pytest.raises(DataError, match="nope.npy: file not found"):
        load_nus_wide(str(root), n_concepts=3, n_query=5, n_train=10, image_features="nope.npy")


# ------------------------------------------------------------------------------ Pascal Sentences
PASCAL_CATS = ["aeroplane", "bird", "cat"]
PER_CLASS = 12


def write_pascal(root, per_class=PER_CLASS):
    from PIL import Image

    for c, cat in enumerate(PASCAL_CATS):
        (root / "dataset" / cat).mkdir(parents=True)
        (root / "sentence" / cat).mkdir(parents=True)
        for k in range(per_class):
            stem = f"2008_{c:02d}{k:04d}"
            Image.new("RGB", (8, 8), (c * 60, k * 10, 0)).save(root / "dataset" / cat / f"{stem}.jpg")
            # "bird" uses the dot-less name of a common download script.
            name = f"{stem}txt" if cat == "bird" else f"{stem}.txt"
            (root / "sentence" / cat / name).write_text(
                "".join(f"A {cat} picture {k} sentence {s}.\n" for s in range(5)))
    return root


@pytest.fixture
def pascal(tmp_path):
    return write_pascal(tmp_path / "pascal_sentences")


def test_pascal_sentences_layout_and_splits(pascal):
    ds = load_pascal_sentences(str(pascal.parent))
    n = len(PASCAL_CATS) * PER_CLASS
    assert ds.n_images == n and ds.n_texts == 5 * n and (ds.texts_per_image == 5).all()
    assert ds.label_names == PASCAL_CATS and ds.labels.shape == (n, 3) and ds.is_single_label
    assert ds.image_features is None and ds.text_features is None
    i = ds.image_ids.index("2008_010003")
    assert ds.class_ids[i] == 1 and ds.image_paths[i] == str(pascal / "dataset" / "bird" / "2008_010003.jpg")
    assert [ds.texts[j] for j in np.flatnonzero(ds.text_to_image == i)] == \
        [f"A bird picture 3 sentence {s}." for s in range(5)]
    sp = ds.splits
    for name, per in (("test", 5), ("val", 5), ("train", PER_CLASS - 10)):
        assert (np.bincount(ds.class_ids[sp[name]], minlength=3) == per).all(), name
    parts = [set(sp[k].tolist()) for k in ("train", "val", "test")]
    assert set().union(*parts) == set(range(n)) and sum(map(len, parts)) == n
    assert (sp["query"] == sp["test"]).all() and (sp["database"] == sp["train"]).all()
    again = load_dataset("pascal_sentences", data_dir=str(pascal.parent))
    assert all((again.splits[k] == sp[k]).all() for k in sp)
    other = load_pascal_sentences(str(pascal), seed=3, n_val_per_class=2, n_test_per_class=3)
    assert len(other.splits["test"]) == 9 and len(other.splits["val"]) == 6
    assert not (load_pascal_sentences(str(pascal), seed=3).splits["test"] == sp["test"]).all()
    te = ds.subset("test")
    assert te.n_texts == 5 * 15 and te.labels.shape == (15, 3)
    assert "pascal_sentences" in LOADERS


def _sentences(root, cat="cat", k=4):
    return root / "sentence" / cat / f"2008_02{k:04d}.txt"


PASCAL_ERRORS = [
    ("missing sentence file", lambda r: _sentences(r).unlink(), r"sentence/cat/2008_020004.txt: file not found"),
    ("too few sentences", lambda r: _sentences(r).write_text("a\nb\nc\nd\n"),
     r"2008_020004.txt: 4 sentences, expected 5"),
    ("too many sentences", lambda r: _sentences(r).write_text("a\nb\nc\nd\ne\nf\n"),
     r"2008_020004.txt:6: sentence 6, but an image has 5"),
    ("blank sentence", lambda r: _sentences(r).write_text("a\n\nc\nd\ne\n"), r"2008_020004.txt:2: empty sentence"),
    ("orphan sentence file", lambda r: _sentences(r, k=99).write_text("a\nb\nc\nd\ne\n"),
     r"2008_020099.txt: sentence file with no image"),
    ("missing category sentences", lambda r: __import__("shutil").rmtree(r / "sentence" / "bird"),
     r"sentence/bird: folder not found"),
    ("extra sentence category", lambda r: (r / "sentence" / "dog").mkdir(), r"sentence/dog: sentence category with no image folder"),
    ("missing image folder", lambda r: __import__("shutil").rmtree(r / "dataset"), r"dataset: folder not found"),
    ("small class", lambda r: [p.unlink() for d in ("dataset", "sentence") for p in sorted((r / d / "bird").iterdir())[:2]],
     r"class bird has 10 images"),
]


@pytest.mark.parametrize("what,breaker,needle", PASCAL_ERRORS, ids=[e[0] for e in PASCAL_ERRORS])
def test_pascal_errors_name_file_and_line(pascal, what, breaker, needle):
    breaker(pascal)
    with pytest.raises(DataError, match=needle):
        load_pascal_sentences(str(pascal))
