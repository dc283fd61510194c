"""Quirks of real downloads found by rebuilding each release's layout in miniature: a split
list that names an image twice, the ``index.mat`` / ``caption.mat`` / ``label.mat`` layout as
its other writers save it (labels under ``category``, several captions per item)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.io
from PIL import Image

from xmodal.data import DataError, load_dataset
from conftest import savemat73

F8K = [f"{1000268201 + 3 * i}_693b08cb0e.jpg" for i in range(12)]


def _flickr8k(root):
    (root / "Flickr8k.token.txt").write_text(
        "".join(f"{n}#{k}\tA picture {i} caption {k} .\n" for i, n in enumerate(F8K) for k in range(5)))
    (root / "Flicker8k_Dataset").mkdir()
    for n in F8K:
        Image.new("RGB", (6, 4)).save(root / "Flicker8k_Dataset" / n)
    for name, part in (("train", F8K[:8]), ("dev", F8K[8:10]), ("test", F8K[10:])):
        (root / f"Flickr_8k.{name}Images.txt").write_text("".join(n + "\n" for n in part))


def test_flickr8k_split_list_naming_an_image_twice_is_named(tmp_path):
    # A repeated line would count the image twice in its split (a query asked twice, a
    # training pair weighted double) without a word.
    _flickr8k(tmp_path)
    ds = load_dataset(str(tmp_path))
    assert [len(ds.splits[s]) for s in ("train", "val", "test")] == [8, 2, 2]
    (tmp_path / "Flickr_8k.trainImages.txt").write_text("".join(n + "\n" for n in F8K[:8] + [F8K[3]]))
    with pytest.raises(DataError, match=rf"Flickr_8k.trainImages.txt:9: image {F8K[3]} listed twice "
                                        r"\(first at line 4\)"):
        load_dataset(str(tmp_path))


# ------------------------------------------------- index.mat / caption.mat / label.mat
N_ITEMS = 12


def _index_caption_folder(root, captions, label_var="label", version="v5"):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, (N_ITEMS, 5)).astype(float)
    labels[:, 0] = 1
    paths = [f"/home/someone/data/images/im{i}.jpg" for i in range(N_ITEMS)]
    for i in range(N_ITEMS):
        Image.new("RGB", (6, 4)).save(root / f"im{i}.jpg")
    if version == "v73":
        savemat73(root / "index.mat", {"index": paths})
        savemat73(root / "caption.mat", {"caption": captions})
        savemat73(root / "label.mat", {label_var: labels})
    else:
        scipy.io.savemat(root / "index.mat", {"index": np.array(paths)})
        scipy.io.savemat(root / "caption.mat", {"caption": captions})
        scipy.io.savemat(root / "label.mat", {label_var: labels})
    return labels


def test_index_caption_mat_labels_saved_as_category(tmp_path):
    # Some writers of this layout name the label variable "category" (their readers load
    # label.mat["category"]): the same labels, not a missing variable.
    caps = np.array([f"tag{i} sky" for i in range(N_ITEMS)], dtype=object)
    labels = _index_caption_folder(tmp_path, caps, label_var="category")
    ds = load_dataset(str(tmp_path), n_query=2, n_train=6)
    np.testing.assert_array_equal(ds.labels, labels)
    scipy.io.savemat(tmp_path / "label.mat", {"labels_of_something": labels})
    with pytest.raises(DataError, match=r"label.mat: variable label \(or category\) not found; the file "
                                        r"holds \['labels_of_something'\]"):
        load_dataset(str(tmp_path), n_query=2, n_train=6)


def _two_each():
    return [[f"a photo of item {i} .", f"item {i} seen again ."] for i in range(N_ITEMS)]


@pytest.mark.parametrize("version", ["v5", "v73"])
def test_index_caption_mat_several_captions_per_item(tmp_path, version):
    # A caption.mat of caption datasets holds a cell of captions per item (their readers pick
    # one at random): each becomes a text of its image, none merged with another.
    groups = _two_each()
    if version == "v5":
        caps = np.empty(N_ITEMS, dtype=object)
        for i, g in enumerate(groups):
            caps[i] = np.array(g, dtype=object)
    else:
        caps = groups
    _index_caption_folder(tmp_path, caps, version=version)
    ds = load_dataset(str(tmp_path), n_query=2, n_train=6)
    assert ds.n_images == N_ITEMS and ds.texts == [c for g in groups for c in g]
    np.testing.assert_array_equal(ds.text_to_image, np.repeat(np.arange(N_ITEMS), 2))


def test_index_caption_mat_string_matrix_of_captions_is_not_merged(tmp_path):
    # numpy's N x k string array saved by scipy: k captions per item, not one run-on text.
    groups = _two_each()
    _index_caption_folder(tmp_path, np.array(groups))
    ds = load_dataset(str(tmp_path), n_query=2, n_train=6)
    assert ds.texts == [c for g in groups for c in g]
    np.testing.assert_array_equal(ds.text_to_image, np.repeat(np.arange(N_ITEMS), 2))


def test_index_caption_mat_one_hot_rows_follow_each_caption(tmp_path):
    groups = _two_each()
    caps = np.empty(N_ITEMS, dtype=object)
    for i, g in enumerate(groups):
        caps[i] = np.array(g, dtype=object)
    _index_caption_folder(tmp_path, caps)
    bow = np.eye(N_ITEMS)
    scipy.io.savemat(tmp_path / "caption_one_hot.mat", {"caption_one_hot": bow})
    ds = load_dataset(str(tmp_path), n_query=2, n_train=6)
    np.testing.assert_array_equal(ds.text_features, np.repeat(bow, 2, axis=0))
    caps[3] = np.array([], dtype=object).reshape(1, 0)
    scipy.io.savemat(tmp_path / "caption.mat", {"caption": caps})
    with pytest.raises(DataError, match=r"caption.mat: caption item 3 \(0-based\) is empty"):
        load_dataset(str(tmp_path), n_query=2, n_train=6)


# ------------------------------------------------------------------------ *_cnn.mat
def test_cnn_mat_partial_database_block_is_named_not_dropped(tmp_path):
    # I_db and L_db without T_db: the database would silently become the training rows.
    rng = np.random.default_rng(0)
    blocks = {}
    for part, n in (("tr", 20), ("te", 5), ("db", 30)):
        blocks |= {f"I_{part}": rng.random((n, 6)), f"T_{part}": rng.random((n, 4)),
                   f"L_{part}": rng.integers(0, 2, (n, 3)).astype(float)}
    path = tmp_path / "mir_cnn.mat"
    scipy.io.savemat(path, blocks)
    ds = load_dataset(str(path))
    assert len(ds.splits["database"]) == 30 and len(ds.splits["train"]) == 20
    del blocks["T_db"]
    scipy.io.savemat(path, blocks)
    with pytest.raises(DataError, match=r"mir_cnn.mat: the database block lacks T_db \(it holds I_db, L_db\)"):
        load_dataset(str(path))


# ------------------------------------------------------------------- the user's pairs
def test_pairs_image_path_under_the_home_folder(tmp_path, monkeypatch):
    # "~/photos/a.jpg" written by hand means the home folder, as in a shell; a folder
    # named "~" beside the pairs file, where there is one, keeps precedence.
    home = tmp_path / "home"
    (home / "photos").mkdir(parents=True)
    (home / "photos" / "a.jpg").write_bytes(b"\xff\xd8\xff")
    monkeypatch.setenv("HOME", str(home))
    lists = tmp_path / "lists"
    lists.mkdir()
    path = lists / "pairs.jsonl"
    path.write_text('{"image": "~/photos/a.jpg", "text": "a dog"}\n')
    ds = load_dataset(str(path))
    assert ds.image_paths == [str(home / "photos" / "a.jpg")]
    (lists / "~" / "photos").mkdir(parents=True)
    (lists / "~" / "photos" / "a.jpg").write_bytes(b"\xff\xd8\xff")
    assert load_dataset(str(path)).image_paths == [str(lists / "~" / "photos" / "a.jpg")]
    path.write_text('{"image": "~nosuchuser_xm/a.jpg", "text": "a dog"}\n')
    assert load_dataset(str(path)).image_paths == [str(lists / "~nosuchuser_xm" / "a.jpg")]


# ------------------------------------------------------------- sparse MATLAB matrices
@pytest.mark.parametrize("version", ["v5", "v73"])
def test_sparse_tag_matrices_read_as_their_values(tmp_path, version):
    # MATLAB users keep bag-of-words and tag matrices sparse: the same numbers as dense
    # (a v5 one crashed the DCMH loader with an IndexError, a v7.3 one was "not found").
    import scipy.sparse as sp

    rng = np.random.default_rng(0)
    n = 40
    X = rng.random((n, 16))
    Y = (rng.random((n, 30)) < 0.2).astype(float)
    Y[:, 0] = 1
    L = rng.integers(0, 2, (n, 24)).astype(float)
    L[:, 0] = 1
    path = tmp_path / "FLICKR-25K.mat"
    if version == "v5":
        scipy.io.savemat(path, {"XAll": X, "YAll": sp.csc_matrix(Y), "LAll": sp.csc_matrix(L)})
    else:
        savemat73(path, {"XAll": X, "YAll": sp.csc_matrix(Y), "LAll": sp.csc_matrix(L)})
    ds = load_dataset(str(path), n_query=5, n_train=20)
    np.testing.assert_array_equal(ds.text_features, Y.astype(np.float32))
    np.testing.assert_array_equal(ds.labels, L)
    np.testing.assert_allclose(ds.image_features, X.astype(np.float32))
    cnn = tmp_path / "wiki_cnn.mat"
    blocks = {"I_tr": X[:30], "T_tr": sp.csc_matrix(Y[:30]), "L_tr": L[:30],
              "I_te": X[30:], "T_te": sp.csc_matrix(Y[30:]), "L_te": L[30:]}
    scipy.io.savemat(cnn, blocks) if version == "v5" else savemat73(cnn, blocks)
    np.testing.assert_array_equal(load_dataset(str(cnn)).text_features, Y.astype(np.float32))


# --------------------------------------------------- MS-COCO's cleaned lists (all_txts.txt)
def _coco_cleaned(root, n=30):
    """MS-COCO as the cleaned lists of CLIP-based hashing code ship it: ``all_imgs.txt``,
    ``all_txts.txt`` (an image's five captions on one line, ``;`` between them) and
    ``all_labels.txt`` (80 columns; some rows all zero), images named as in COCO 2014."""
    rng = np.random.default_rng(0)
    names = [f"COCO_{'train' if i % 3 else 'val'}2014_{100000 + i:012d}.jpg" for i in range(n)]
    (root / "images").mkdir()
    for name in names:
        Image.new("RGB", (6, 4)).save(root / "images" / name)
    (root / "all_imgs.txt").write_text("".join(f"images/{name}\n" for name in names))
    caps = [[f"a photo {i} number {k}." for k in range(5)] for i in range(n)]
    (root / "all_txts.txt").write_bytes("".join(";".join(c) + "\r\n" for c in caps).encode())
    labels = rng.integers(0, 2, (n, 80))
    labels[4] = 0
    (root / "all_labels.txt").write_text("".join(" ".join(map(str, r)) + "\n" for r in labels))
    return names, caps, labels


def test_coco_cleaned_lists_with_five_captions_a_line(tmp_path):
    # all_txts.txt instead of all_tags.txt: was "all_tags.txt: file not found".
    names, caps, labels = _coco_cleaned(tmp_path)
    ds = load_dataset(str(tmp_path), n_query=5, n_train=15)
    assert ds.n_images == 30 and ds.texts == [c for cs in caps for c in cs]
    np.testing.assert_array_equal(ds.text_to_image, np.repeat(np.arange(30), 5))
    np.testing.assert_array_equal(ds.labels, labels)  # no row dropped unasked
    assert ds.text_features is None  # sentences: a text encoder reads them
    assert ds.image_paths == [str(tmp_path / "images" / n) for n in names]
    assert ds.meta["dataset"] == "mscoco" and ds.meta["text_file"] == "all_txts.txt"
    assert len(ds.splits["query"]) == 5 and len(ds.splits["train"]) == 15
    from xmodal.data import dataset_files

    assert (tmp_path / "all_txts.txt") in dataset_files(tmp_path).files
    (tmp_path / "all_txts.txt").write_text("".join(";".join(c) + "\n" for c in caps[:29]) + " ; \n")
    with pytest.raises(DataError, match=r"all_txts.txt:30: no caption"):
        load_dataset(str(tmp_path), n_query=5, n_train=15)


def test_cleaned_lists_image_paths_of_another_machine_found_by_their_last_parts(tmp_path):
    # all_imgs.txt written where the lists were made (absolute, Windows or another prefix):
    # the images beside the lists are found by their last parts, as for index.mat.
    names, _, _ = _coco_cleaned(tmp_path)
    (tmp_path / "all_imgs.txt").write_text("".join(f"C:\\Users\\me\\coco\\images\\{n}\n" for n in names))
    ds = load_dataset(str(tmp_path), n_query=5, n_train=15)
    assert ds.image_paths == [str(tmp_path / "images" / n) for n in names]
    (tmp_path / "all_imgs.txt").write_text("".join(f"/data/coco_all/{n}\n" for n in names))
    ds = load_dataset(str(tmp_path), n_query=5, n_train=15)
    assert ds.image_paths == [str(tmp_path / "images" / n) for n in names]


def test_index_caption_mat_char_matrix_per_item_is_one_caption_a_row(tmp_path):
    # MATLAB's char(['a dog';'a cat']) in a cell: two captions (its rows), not "a doga cat".
    caps = np.empty(N_ITEMS, dtype=object)
    for i in range(N_ITEMS):
        caps[i] = np.array([f"first of {i:02d}", f"other of {i:02d}"])  # one char matrix each
    _index_caption_folder(tmp_path, caps)
    ds = load_dataset(str(tmp_path), n_query=2, n_train=6)
    assert ds.texts[:4] == ["first of 00", "other of 00", "first of 01", "other of 01"]


# ------------------------------------------------ DCMH files that carry their own split
def _dcmh_with_param(path, fields: dict, version: str, n: int = 40):
    rng = np.random.default_rng(1)
    X, Y = rng.random((n, 8)), (rng.random((n, 12)) < 0.3).astype(float)
    L = rng.integers(0, 2, (n, 10)).astype(float)
    L[:, 0] = 1
    if version == "v5":
        scipy.io.savemat(path, {"XAll": X, "YAll": Y, "LAll": L,
                                "param": {k: np.asarray(v, float).reshape(1, -1) for k, v in fields.items()}})
        return
    import h5py

    savemat73(path, {"XAll": X, "YAll": Y, "LAll": L})
    with h5py.File(path, "r+") as f:
        g = f.create_group("param")
        g.attrs["MATLAB_class"] = np.bytes_("struct")
        for k, v in fields.items():
            g.create_dataset(k, data=np.asarray(v, float).reshape(-1, 1))  # MATLAB's 1 x k


@pytest.mark.parametrize("version,names", [("v5", ("indexQuery", "indexRetrieval", "indexTrain")),
                                           ("v73", ("indexTest", "indexDatabase", "indexTrain"))])
def test_dcmh_file_split_in_param_is_followed(tmp_path, version, names):
    # DCMH's nus-wide-tc10.mat / FLICKR-25K.mat hold their split in the struct param (MATLAB
    # indices, from 1); the papers' numbers are on it, so it is the default over a random one.
    perm = np.random.default_rng(5).permutation(40)
    query, database = np.sort(perm[:6]), np.sort(perm[6:])
    train = np.sort(database[:20])
    path = tmp_path / "nus-wide-tc10.mat"
    _dcmh_with_param(path, dict(zip(names, (query + 1, database + 1, train + 1))), version)
    ds = load_dataset(str(path))
    np.testing.assert_array_equal(ds.splits["query"], query)
    np.testing.assert_array_equal(ds.splits["test"], query)
    np.testing.assert_array_equal(ds.splits["database"], database)
    np.testing.assert_array_equal(ds.splits["train"], train)
    assert ds.meta["split"] == "param"
    # asked for, the random split of the sizes given
    ds = load_dataset(str(path), n_query=5, n_train=10)
    assert len(ds.splits["query"]) == 5 and ds.meta["split"] == "random"


def test_dcmh_file_split_errors_name_the_field(tmp_path):
    path = tmp_path / "FLICKR-25K.mat"
    _dcmh_with_param(path, {"indexQuery": [1, 2, 41], "indexRetrieval": np.arange(3, 41),
                            "indexTrain": [3, 4]}, "v5")
    with pytest.raises(DataError, match=r"FLICKR-25K.mat: param.indexQuery holds 41, outside 1..40"):
        load_dataset(str(path))
    _dcmh_with_param(path, {"indexQuery": [1, 2], "indexTrain": [3, 4]}, "v5")
    with pytest.raises(DataError, match=r"FLICKR-25K.mat: param holds indexQuery, indexTrain but no "
                                        r"indexRetrieval / indexDatabase"):
        load_dataset(str(path))
    _dcmh_with_param(path, {"indexQuery": [1, 2, 2], "indexRetrieval": np.arange(3, 41),
                            "indexTrain": [3, 4]}, "v5")
    with pytest.raises(DataError, match=r"param.indexQuery lists item 2 twice"):
        load_dataset(str(path))


def test_named_loaders_follow_the_split_a_dcmh_file_carries(tmp_path):
    perm = np.random.default_rng(6).permutation(40)
    query, database = np.sort(perm[:4]), np.sort(perm[4:])
    fields = {"indexTest": query + 1, "indexDatabase": database + 1, "indexTrain": database[:10] + 1}
    for name, fname in (("nus_wide", "nus-wide-tc10.mat"), ("mirflickr25k", "FLICKR-25K.mat")):
        folder = tmp_path / name
        folder.mkdir()
        _dcmh_with_param(folder / fname, fields, "v5")
        ds = load_dataset(name, data_dir=str(folder))
        np.testing.assert_array_equal(ds.splits["query"], query)
        np.testing.assert_array_equal(ds.splits["train"], database[:10])
        with pytest.raises(DataError, match=r"n_query \+ n_train = .* exceeds 40 items"):
            load_dataset(name, data_dir=str(folder), seed=1)  # the papers' random sizes, as asked
