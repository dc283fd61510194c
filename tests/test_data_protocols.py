"""The papers' protocols on the layouts whose own files fix them: an option a layout cannot
honour (a tag threshold on already-cleaned tags, a concept count on a release that fixed its
concepts, split sizes on a file that holds its splits) is refused, never silently dropped."""

import numpy as np
import pytest
import scipy.io

from conftest import DATA, need
from xmodal.data import DataError, load_dataset
from xmodal.data.mirflickr import MIRFLICKR_LABELS, load_mirflickr25k
from xmodal.data.nuswide import load_nus_wide


def test_mirflickr_real_counts_and_label_columns():
    # The hashing papers' MIRFlickr-25K: 20,015 items, 1386-d tags, 24 labels; DCMH's split.
    root = need("mirflickr25k")
    ds = load_mirflickr25k(str(DATA))
    assert ds.meta["tags_not_in_vocabulary"] == 0 and len(ds.meta["tag_vocabulary"]) == 1386
    assert (ds.labels.sum(1) > 0).all() and (ds.text_features.sum(1) > 0).all()
    sizes = {k: len(v) for k, v in ds.splits.items()}
    assert sizes == {"train": 10000, "query": 2000, "test": 2000, "database": 18015}
    # Columns are MIRFLICKR_LABELS: each row's names agree with labels_annotation.txt.
    names = (root / "labels_annotation.txt").read_text().splitlines()
    for r in range(0, ds.n_images, 997):
        got = sorted(np.array(MIRFLICKR_LABELS)[ds.labels[r] > 0])
        assert got == sorted(t for t in names[r].split(",") if t), r


def test_mirflickr_tag_threshold_only_where_it_applies():
    need("mirflickr25k")
    # The cleaned release already holds the 1386 tags on 20+ of the 25,000 images; within its
    # 20,015 items 22 of them are rarer, so re-counting would be wrong and ignoring it silent.
    with pytest.raises(DataError, match=r"min_tag_count applies to the full release .*all_tags.txt"):
        load_mirflickr25k(str(DATA), min_tag_count=50)
    with pytest.raises(DataError, match=r"min_tag_count"):
        load_dataset("mirflickr25k", data_dir=str(DATA), min_tag_count=20)
    assert load_mirflickr25k(str(DATA), n_query=2000, n_train=5000).text_features.shape == (20015, 1386)


def _cnn_mat(path, n_tr=30, n_te=10, n_db=50, n_labels=5):
    rng = np.random.default_rng(0)
    mat = {}
    for part, n in (("tr", n_tr), ("te", n_te), ("db", n_db)):
        mat[f"I_{part}"] = rng.normal(size=(n, 16))
        mat[f"T_{part}"] = rng.normal(size=(n, 8))
        mat[f"L_{part}"] = rng.integers(0, 2, size=(n, n_labels))
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(path, mat)
    return path


@pytest.mark.parametrize("option", [{"n_query": 2000}, {"n_train": 5000}, {"seed": 3}])
def test_cnn_mat_refuses_split_options(tmp_path, option):
    # *_cnn.mat holds its own train / query / database rows: split options cannot apply.
    path = _cnn_mat(tmp_path / "mirflickr25k" / "mir_cnn.mat")
    key = next(iter(option))
    with pytest.raises(DataError, match=rf"mir_cnn.mat: .*holds its own splits.*{key}"):
        load_dataset(str(path), **option)
    with pytest.raises(DataError, match=rf"mir_cnn.mat: .*holds its own splits.*{key}"):
        load_mirflickr25k(str(tmp_path), **option)
    with pytest.raises(DataError, match=rf"nus_cnn.mat: .*holds its own splits.*{key}"):
        load_nus_wide(str(_cnn_mat(tmp_path / "nus_wide" / "nus_cnn.mat").parent), **option)
    # Without them, the file's splits as they are; the folder itself may be the data dir.
    ds = load_mirflickr25k(str(tmp_path))
    assert load_mirflickr25k(str(path.parent)).n_images == 90
    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 30, "query": 10, "database": 50, "test": 10}


def _nus_cleaned(root, n=40, n_labels=21):
    rng = np.random.default_rng(1)
    root.mkdir(parents=True)
    labels = rng.integers(0, 2, size=(n, n_labels))
    labels[labels.sum(1) == 0, 0] = 1
    (root / "all_imgs.txt").write_text("".join(f"images/{i}.jpg\n" for i in range(n)))
    (root / "all_tags.txt").write_text("".join(f"t{i % 7},t{i % 3}\n" for i in range(n)))
    (root / "all_labels.txt").write_text("".join(" ".join(map(str, r)) + "\n" for r in labels))
    return root


def test_nus_wide_concept_count_fixed_by_the_layout(tmp_path):
    # The cleaned lists of deep hashing code fix 21 concepts: asking for 10 is refused, not
    # answered with 21 columns; asking for 21, or not asking, loads them.
    root = _nus_cleaned(tmp_path / "nus_wide")
    with pytest.raises(DataError, match=r"all_labels.txt: .*21 concepts.*n_concepts=10"):
        load_nus_wide(str(tmp_path), n_concepts=10, n_query=5, n_train=10)
    assert load_nus_wide(str(tmp_path), n_concepts=21, n_query=5, n_train=10).labels.shape == (40, 21)
    assert load_nus_wide(str(root), n_query=5, n_train=10).labels.shape == (40, 21)


def test_nus_wide_dcmh_mat_concept_count(tmp_path):
    # DCMH's NUS-WIDE release is tc10 (LAll has 10 columns); n_concepts=21 is refused.
    rng = np.random.default_rng(2)
    root = tmp_path / "nus_wide"
    root.mkdir()
    n = 40
    scipy.io.savemat(root / "nus-wide-tc10-yall.mat", {"YAll": rng.integers(0, 2, size=(n, 30)).astype(np.uint8)})
    scipy.io.savemat(root / "nus-wide-tc10-lall.mat", {"LAll": rng.integers(0, 2, size=(n, 10)).astype(np.uint8)})
    scipy.io.savemat(root / "nus-wide-tc10-iall.mat", {"IAll": rng.random((n, 12))})
    with pytest.raises(DataError, match=r"nus-wide-tc10-lall.mat: .*10 concepts.*n_concepts=21"):
        load_nus_wide(str(tmp_path), n_concepts=21, n_query=5, n_train=10)
    assert load_nus_wide(str(tmp_path), n_concepts=10, n_query=5, n_train=10).labels.shape == (n, 10)
    # The cnn layout fixes them too.
    path = _cnn_mat(tmp_path / "c" / "nus_wide" / "nus_cnn.mat", n_labels=21)
    with pytest.raises(DataError, match=r"nus_cnn.mat: .*21 concepts.*n_concepts=10"):
        load_nus_wide(str(path.parent), n_concepts=10)
    assert load_nus_wide(str(path.parent)).labels.shape == (90, 21)


def test_cnn_mat_class_index_labels_become_one_hot(tmp_path):
    # Single-label *_cnn.mat files (Wikipedia, Pascal features) keep a column of class numbers;
    # "> 0" made that one all-ones column, every item relevant to every other (MAP 1.0).
    rng = np.random.default_rng(4)
    mat = {}
    for part, n in (("tr", 20), ("te", 6)):
        mat[f"I_{part}"], mat[f"T_{part}"] = rng.normal(size=(n, 4)), rng.normal(size=(n, 3))
        mat[f"L_{part}"] = (np.arange(n) % 10 + 1)[:, None]  # classes 1..10
    scipy.io.savemat(tmp_path / "wiki_cnn.mat", mat)
    ds = load_dataset(str(tmp_path / "wiki_cnn.mat"))
    assert ds.labels.shape == (26, 10) and ds.is_single_label
    classes = np.vstack([mat["L_tr"], mat["L_te"]])[:, 0]
    np.testing.assert_array_equal(ds.labels.argmax(1), classes - 1)
    assert ds.meta["label_values"] == list(range(1, 11))


@pytest.mark.parametrize("value", [2, 0.5])
def test_cnn_mat_multi_label_values_are_checked(tmp_path, value):
    path = _cnn_mat(tmp_path / "x_cnn.mat")
    mat = scipy.io.loadmat(path)
    mat["L_te"] = mat["L_te"].astype(float)
    mat["L_te"][3, 2] = value
    scipy.io.savemat(path, {k: v for k, v in mat.items() if not k.startswith("__")})
    with pytest.raises(DataError, match=rf"x_cnn.mat: L_te item 3 \(0-based\), column 2 holds {value}"):
        load_dataset(str(path))
    # The +-1 encoding of hashing code is read as 0/1.
    mat["L_te"] = np.where(mat["L_tr"][:10] > 0, 1, -1)
    scipy.io.savemat(path, {k: v for k, v in mat.items() if not k.startswith("__")})
    np.testing.assert_array_equal(load_dataset(str(path)).subset("query").labels, mat["L_tr"][:10])


def test_nus_wide_untagged_images_counted_and_optional(tmp_path):
    # Papers quote the label-filtered count (186,577 for the top 10 concepts); images without
    # any of the 1000 tags are dropped by default and counted, require_tag=False keeps them.
    from test_data_nuswide_pascal import NO_TAGS, nus_arrays, write_nus

    tags, labels = nus_arrays()
    write_nus(tmp_path / "nus_wide", tags, labels, flickr=False)
    top = np.sort(np.argsort(-labels.sum(0), kind="stable")[:3])
    labelled = labels[:, top].any(1)
    ds = load_nus_wide(str(tmp_path), n_concepts=3, n_query=5, n_train=12)
    untagged = int((labelled & (tags.sum(1) == 0)).sum())
    assert untagged == sum(labelled[i] for i in NO_TAGS) > 0
    assert ds.meta["untagged_dropped"] == untagged and ds.n_images == labelled.sum() - untagged
    kept = load_nus_wide(str(tmp_path), n_concepts=3, n_query=5, n_train=12, require_tag=False)
    assert kept.n_images == labelled.sum() and kept.meta["untagged_dropped"] == 0
    np.testing.assert_array_equal(kept.meta["release_rows"], np.flatnonzero(labelled))
    with pytest.raises(DataError, match=r"require_tag must be True or False"):
        load_nus_wide(str(tmp_path), n_concepts=3, require_tag="no")
    # The cleaned lists fixed their images: the release's filter cannot apply.
    _nus_cleaned(tmp_path / "c" / "nus_wide")
    with pytest.raises(DataError, match=r"all_labels.txt: require_tag applies to the release layout"):
        load_nus_wide(str(tmp_path / "c"), n_query=5, n_train=10, require_tag=False)
