"""NUS-WIDE copies that hold only the release's train/test files (Groundtruth/TrainTestLabels,
Train_Tags1k.dat / Test_Tags1k.dat), and the release's own train/test split (split="official")."""

import os

import numpy as np
import pytest

from xmodal.data import DataError, load_dataset
from xmodal.data.mirflickr import hashing_splits
from xmodal.data.nuswide import load_nus_wide, read_label_column

CATS = ["actor", "beach", "cat"]
CONCEPTS = ["animal", "lake", "sky", "water"]
VOCAB = ["t0", "t1", "t2", "t3", "t4", "t5"]
N = 15
# Within each category the release interleaves train and test images, as its lists do.
TRAIN = [0, 1, 3, 4, 6, 9, 10, 12, 14]
TEST = [2, 5, 7, 8, 11, 13]
ENTRIES = [f"{CATS[i * 3 // N]}\\{i:04d}_{2000 + i}.jpg" for i in range(N)]


def arrays():
    rng = np.random.default_rng(11)
    tags = (rng.random((N, len(VOCAB))) < 0.4).astype(np.uint8)
    tags[:, 0] = 1
    tags[[4, 8]] = 0  # no tag: dropped by the protocol
    labels = (rng.random((N, len(CONCEPTS))) < 0.4).astype(np.uint8)
    labels[:, 2] = 1  # sky is the most frequent
    labels[[1, 13], :] = 0  # no concept: dropped
    labels[[0, 5], 1] = 1
    return tags, labels


def _tag_rows(m):
    return "".join("".join(f"{v}\t" for v in row) + "\n" for row in m)


def _column(v):
    return "".join(f"{x}\n" for x in v)


def write_release(root, tags, labels, all_labels=True, split_labels=True, all_tags=True, split_tags=True):
    (root / "ImageList").mkdir(parents=True)
    (root / "ImageList" / "Imagelist.txt").write_text(
        "".join(f"C:\\ImageData\\Flickr\\{e}\n" for e in ENTRIES))
    # The split lists name the images relative to Flickr/, with backslashes.
    (root / "ImageList" / "TrainImagelist.txt").write_text("".join(ENTRIES[i] + "\n" for i in TRAIN))
    (root / "ImageList" / "TestImagelist.txt").write_text("".join(ENTRIES[i] + "\n" for i in TEST))
    tag_dir = root / "NUS_WID_Tags"
    tag_dir.mkdir()
    (tag_dir / "TagList1k.txt").write_text("\n".join(VOCAB) + "\n")
    if all_tags:
        (tag_dir / "AllTags1k.txt").write_text(_tag_rows(tags))
    if split_tags:
        (tag_dir / "Train_Tags1k.dat").write_text(_tag_rows(tags[TRAIN]))
        (tag_dir / "Test_Tags1k.dat").write_text(_tag_rows(tags[TEST]))
    (root / "Concepts81.txt").write_text("\n".join(CONCEPTS) + "\n")
    if all_labels:
        (root / "Groundtruth" / "AllLabels").mkdir(parents=True)
        for c, name in enumerate(CONCEPTS):
            (root / "Groundtruth" / "AllLabels" / f"Labels_{name}.txt").write_text(_column(labels[:, c]))
    if split_labels:
        d = root / "Groundtruth" / "TrainTestLabels"
        d.mkdir(parents=True)
        for c, name in enumerate(CONCEPTS):
            (d / f"Labels_{name}_Train.txt").write_text(_column(labels[TRAIN, c]))
            (d / f"Labels_{name}_Test.txt").write_text(_column(labels[TEST, c]))
    return root


KW = dict(n_concepts=3, n_query=3, n_train=4)


def _same(a, b):
    assert a.label_names == b.label_names and a.image_ids == b.image_ids and a.texts == b.texts
    assert [os.path.relpath(p, a.root) for p in a.image_paths] == [os.path.relpath(p, b.root) for p in b.image_paths]
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.text_features, b.text_features)
    np.testing.assert_array_equal(a.meta["release_rows"], b.meta["release_rows"])
    assert sorted(a.splits) == sorted(b.splits)
    for k in a.splits:
        np.testing.assert_array_equal(a.splits[k], b.splits[k])


def _expected(tags, labels, names=("lake", "sky", "water")):
    cols = [CONCEPTS.index(c) for c in names]
    keep = np.flatnonzero(labels[:, cols].any(axis=1) & tags.any(axis=1))
    return keep, labels[keep][:, cols]


@pytest.fixture
def data():
    return arrays()


def test_train_test_label_files_alone_rebuild_the_labels(tmp_path, data):
    tags, labels = data
    full = load_nus_wide(str(write_release(tmp_path / "full", tags, labels, split_labels=False)), **KW)
    root = write_release(tmp_path / "tt", tags, labels, all_labels=False)
    ds = load_nus_wide(str(root), **KW)
    keep, lab = _expected(tags, labels)
    assert ds.label_names == ["lake", "sky", "water"]  # the 3 most frequent, in list order
    np.testing.assert_array_equal(ds.meta["release_rows"], keep)
    np.testing.assert_array_equal(ds.labels, lab)
    assert ds.meta["concept_counts"] == {c: int(labels[:, CONCEPTS.index(c)].sum()) for c in ds.label_names}
    _same(ds, full)
    # Groundtruth.zip unpacked without its folder: TrainTestLabels/ straight in the dataset folder.
    (root / "Groundtruth" / "TrainTestLabels").rename(root / "TrainTestLabels")
    _same(load_nus_wide(str(root), **KW), full)


def test_train_test_tag_files_stand_in_for_alltags(tmp_path, data):
    tags, labels = data
    full = load_nus_wide(str(write_release(tmp_path / "full", tags, labels, split_tags=False)), **KW)
    ds = load_nus_wide(str(write_release(tmp_path / "tt", tags, labels, all_tags=False)), **KW)
    keep, _ = _expected(tags, labels)
    np.testing.assert_array_equal(ds.text_features, tags[keep])
    assert ds.texts[0].split() == [VOCAB[j] for j in np.flatnonzero(tags[keep[0]])]
    _same(ds, full)
    # Neither AllLabels nor AllTags1k.txt: both come from the split files.
    bare = write_release(tmp_path / "bare", tags, labels, all_labels=False, all_tags=False)
    _same(load_nus_wide(str(bare), **KW), full)
    _same(load_dataset("nus_wide", data_dir=str(bare), **KW), full)


def test_default_split_is_unchanged_random_hashing_split(tmp_path, data):
    tags, labels = data
    ds = load_nus_wide(str(write_release(tmp_path / "r", tags, labels)), seed=3, **KW)
    keep, _ = _expected(tags, labels)
    want = hashing_splits(len(keep), 3, 4, 3)
    assert sorted(ds.splits) == sorted(want) and ds.meta["split"] == "random"
    for k in want:
        np.testing.assert_array_equal(ds.splits[k], want[k])
    # The papers' sizes stay the default: 2100 + 10500 do not fit 11 images.
    with pytest.raises(DataError, match=r"n_query \+ n_train = 12600 exceeds"):
        load_nus_wide(str(tmp_path / "r"), n_concepts=3)


@pytest.mark.parametrize("layout", ["all", "split_only"])
def test_official_split_follows_the_image_lists(tmp_path, data, layout):
    tags, labels = data
    only = layout == "split_only"
    root = write_release(tmp_path / "nus_wide", tags, labels, all_labels=not only, all_tags=not only)
    ds = load_nus_wide(str(tmp_path), n_concepts=3, split="official")
    keep, lab = _expected(tags, labels)
    np.testing.assert_array_equal(ds.labels, lab)
    rows = ds.meta["release_rows"]
    np.testing.assert_array_equal(rows, keep)
    train = [i for i in TRAIN if i in keep]
    test = [i for i in TEST if i in keep]
    assert rows[ds.splits["train"]].tolist() == train and rows[ds.splits["test"]].tolist() == test
    np.testing.assert_array_equal(ds.splits["query"], ds.splits["test"])
    np.testing.assert_array_equal(ds.splits["database"], ds.splits["train"])
    assert sorted(ds.splits) == ["database", "query", "test", "train"]
    assert ds.meta["split"] == "official"
    i = keep[ds.splits["test"][0]]
    assert ds.image_paths[ds.splits["test"][0]] == str(root / ENTRIES[i].replace("\\", "/"))
    # The seed draws nothing here.
    again = load_dataset("nus_wide", data_dir=str(tmp_path), n_concepts=3, split="official", seed=9)
    _same(again, ds)


def test_official_split_parameters(tmp_path, data):
    tags, labels = data
    root = write_release(tmp_path / "nus_wide", tags, labels)
    with pytest.raises(DataError, match=r"split must be 'random' or 'official', got 'offical'"):
        load_nus_wide(str(root), split="offical")
    with pytest.raises(DataError, match=r"n_query and n_train apply to split='random'"):
        load_nus_wide(str(root), split="official", n_query=3)
    (root / "ImageList" / "TrainImagelist.txt").unlink()
    with pytest.raises(DataError, match=r"ImageList/TrainImagelist.txt: file not found"):
        load_nus_wide(str(root), n_concepts=3, split="official")
    # Without TrainImagelist.txt the default split still loads from AllLabels and AllTags1k.txt.
    assert load_nus_wide(str(root), **KW).n_images == 11
    # No image of TestImagelist.txt has a tag: the test split would be empty.
    bare = write_release(tmp_path / "bare", tags, labels, all_tags=False)
    (bare / "NUS_WID_Tags" / "Test_Tags1k.dat").write_text(_tag_rows(np.zeros((len(TEST), len(VOCAB)), int)))
    with pytest.raises(DataError, match=r"TestImagelist.txt: none of its images is among the images with a tag"):
        load_nus_wide(str(bare), n_concepts=3, split="official")
    assert load_nus_wide(str(bare), n_concepts=3, n_query=2, n_train=3).n_images == len(set(TRAIN) - {1, 4})
    cleaned = tmp_path / "cleaned"
    cleaned.mkdir()
    (cleaned / "all_imgs.txt").write_text("a.jpg\n")
    with pytest.raises(DataError, match=r"split='official' needs the release's ImageList/"):
        load_nus_wide(str(cleaned), split="official")


def _edit(path, lineno, new):
    lines = path.read_text().splitlines()
    if new is None:
        del lines[lineno - 1]
    else:
        lines[lineno - 1] = new
    path.write_text("".join(line + "\n" for line in lines))


TT = ("Groundtruth", "TrainTestLabels")
ERRORS = [
    ("train labels short", lambda r: _edit(r.joinpath(*TT, "Labels_sky_Train.txt"), 4, None),
     r"Labels_sky_Train.txt: 8 lines, but TrainImagelist.txt lists 9 images"),
    ("test labels long", lambda r: r.joinpath(*TT, "Labels_lake_Test.txt").open("a").write("0\n1\n"),
     r"Labels_lake_Test.txt:7: more lines than the 6 images TestImagelist.txt lists \(8 lines\)"),
    ("bad test label", lambda r: _edit(r.joinpath(*TT, "Labels_water_Test.txt"), 3, "2"),
     r"Labels_water_Test.txt:3: expected 0 or 1, got '2'"),
    ("missing test labels", lambda r: r.joinpath(*TT, "Labels_animal_Test.txt").unlink(),
     r"TrainTestLabels/Labels_animal_Test.txt: file not found"),
    ("train tags short", lambda r: _edit(r / "NUS_WID_Tags" / "Train_Tags1k.dat", 2, None),
     r"Train_Tags1k.dat: 8 rows, but TrainImagelist.txt lists 9 images"),
    ("bad test tag", lambda r: _edit(r / "NUS_WID_Tags" / "Test_Tags1k.dat", 5, "0\t1\t7\t0\t0\t0\t"),
     r"Test_Tags1k.dat:5: column 3: value '7' is not 0 or 1"),
    ("missing test tags", lambda r: (r / "NUS_WID_Tags" / "Test_Tags1k.dat").unlink(),
     r"Test_Tags1k.dat: file not found"),
    ("unknown image", lambda r: _edit(r / "ImageList" / "TrainImagelist.txt", 3, "zebra\\9999_1.jpg"),
     r"TrainImagelist.txt:3: 'zebra\\\\9999_1.jpg' is not in Imagelist.txt"),
    ("image in both", lambda r: _edit(r / "ImageList" / "TestImagelist.txt", 2, ENTRIES[TRAIN[3]]),
     r"TestImagelist.txt:2: 'actor\\\\0004_2004.jpg' is also listed at TrainImagelist.txt:4"),
    ("image in neither", lambda r: _edit(r / "ImageList" / "TestImagelist.txt", 3, None),
     r"Imagelist.txt:8: 'C:\\\\ImageData\\\\Flickr\\\\beach\\\\0007_2007.jpg' is in neither "
     r"TrainImagelist.txt nor TestImagelist.txt"),
    ("image twice", lambda r: _edit(r / "ImageList" / "Imagelist.txt", 6, "C:\\ImageData\\Flickr\\" + ENTRIES[2]),
     r"Imagelist.txt:6: 'C:\\\\ImageData\\\\Flickr\\\\actor\\\\0002_2002.jpg' is listed twice \(first at line 3\)"),
    ("missing test list", lambda r: (r / "ImageList" / "TestImagelist.txt").unlink(),
     r"ImageList/TestImagelist.txt: file not found"),
]


@pytest.mark.parametrize("what,breaker,needle", ERRORS, ids=[e[0] for e in ERRORS])
def test_split_files_errors_name_file_and_line(tmp_path, data, what, breaker, needle):
    tags, labels = data
    root = write_release(tmp_path / "nus_wide", tags, labels, all_labels=False, all_tags=False)
    breaker(root)
    with pytest.raises(DataError, match=needle):
        load_nus_wide(str(root), **KW)


def test_all_labels_errors_still_name_file_and_line(tmp_path, data):
    tags, labels = data
    root = write_release(tmp_path / "nus_wide", tags, labels, split_labels=False)
    (root / "Groundtruth" / "AllLabels" / "Labels_sky.txt").open("a").write("1\n")
    with pytest.raises(DataError, match=r"Labels_sky.txt:16: more lines than the 15 images Imagelist.txt lists"):
        load_nus_wide(str(root), **KW)
    # Neither label folder: the message names the one the release's Groundtruth.zip has.
    import shutil

    shutil.rmtree(root / "Groundtruth")
    with pytest.raises(DataError, match=r"AllLabels/Labels_animal.txt: file not found \(nor is there a "
                                        r"Groundtruth/TrainTestLabels/ folder\)"):
        load_nus_wide(str(root), **KW)


@pytest.mark.parametrize("body", [b"0\n1\n1\n0\n", b"0\r\n1\r\n1\r\n0\r\n", b"0\n1\n1\n0", b" 0 \n1\t\n1\n0\n\n\n",
                                  b"0\r\n1\r\n1\r\n0"])
def test_label_column_line_endings(tmp_path, body):
    p = tmp_path / "Labels_x.txt"
    p.write_bytes(body)
    assert read_label_column(p, 4).tolist() == [0, 1, 1, 0]


def test_fingerprint_lists_the_split_files_a_train_test_copy_reads(tmp_path):
    # the bench's --resume fingerprint must cover what the loader reads: a copy with only
    # TrainTestLabels / Train_Tags1k.dat hashes those files and the two image lists
    from xmodal.data import dataset_files
    from xmodal.data.nuswide import release_files

    tags, labels = arrays()
    root = write_release(tmp_path / "tt", tags, labels, all_labels=False, all_tags=False)
    names = {p.name for p in dataset_files(root).files}
    files = release_files(root)
    assert {files.train_list.name, files.test_list.name} <= names
    assert {p.name for p in files.tag_files} <= names
    assert any(n.endswith("_Train.txt") for n in names) and any(n.endswith("_Test.txt") for n in names)


def test_fingerprint_covers_the_split_lists_of_a_full_copy_too(tmp_path):
    # split="official" reads TrainImagelist/TestImagelist even where AllLabels/ is there
    from xmodal.data import dataset_files

    tags, labels = arrays()
    root = write_release(tmp_path / "full", tags, labels, split_labels=False, split_tags=False)
    names = {p.name for p in dataset_files(root).files}
    assert {"TrainImagelist.txt", "TestImagelist.txt"} <= names
