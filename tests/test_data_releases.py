"""Loaders on small synthetic copies of the official downloads, laid out exactly as they unpack:
Karpathy's caption_datasets.zip (dataset_coco.json, dataset_flickr30k.json, dataset_flickr8k.json)
next to the COCO / Flickr image folders, and MIRFlickr-25K's mirflickr25k.zip with its
annotation zip."""

import json

import numpy as np
import pytest

from xmodal.data import DataError, load_dataset
from xmodal.data.karpathy import load_karpathy


# ------------------------------------------------------------------------------ Karpathy
def _sent(raw, k):
    return {"tokens": raw.lower().split(), "raw": raw, "imgid": 0, "sentid": k}


def coco_doc(n_sents=(5, 6, 7, 5, 5, 5)):
    """dataset_coco.json as Karpathy wrote it: filepath train2014/val2014, restval, 5-7 captions."""
    splits = ["train", "restval", "val", "test", "test", "restval"]
    images = []
    for i, (split, k) in enumerate(zip(splits, n_sents)):
        folder = "train2014" if split == "train" else "val2014"
        images.append({"filepath": folder, "sentids": list(range(10 * i, 10 * i + k)),
                       "filename": f"COCO_{folder}_{i:012d}.jpg", "imgid": i, "split": split,
                       "sentences": [_sent(f"Picture {i} caption {j}.", 10 * i + j) for j in range(k)],
                       "cocoid": 1000 + i})
    return {"images": images, "dataset": "coco"}


def flickr_doc(name, n=4):
    splits = ["train", "train", "val", "test"]
    return {"dataset": name, "images": [
        {"sentids": list(range(5 * i, 5 * i + 5)), "imgid": i, "split": splits[i % 4],
         "filename": f"{1000092795 + i}.jpg",
         "sentences": [_sent(f"Photo {i}, caption {j}", 5 * i + j) for j in range(5)]}
        for i in range(n)]}


def touch_images(folder, doc):
    for rec in doc["images"]:
        p = folder / rec.get("filepath", "") / rec["filename"]
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"\xff\xd8\xff")  # the loader only resolves paths


@pytest.mark.parametrize("name,images", [("flickr30k", "flickr30k-images"), ("flickr8k", "Flicker8k_Dataset")])
def test_karpathy_release_file_names_and_image_folders(tmp_path, name, images):
    # caption_datasets.zip unpacks to dataset_<name>.json; the images ship in their own folder.
    doc = flickr_doc(name)
    (tmp_path / f"dataset_{name}.json").write_text(json.dumps(doc))
    touch_images(tmp_path / images, doc)
    for arg in (tmp_path / f"dataset_{name}.json", tmp_path):
        ds = load_dataset(str(arg))
        assert ds.name == name and ds.n_images == 4 and ds.n_texts == 20
        assert ds.image_paths[3] == str(tmp_path / images / "1000092798.jpg")
        assert ds.texts[5] == "Photo 1, caption 0"
        np.testing.assert_array_equal(ds.splits["test"], [3])


def test_karpathy_folder_with_several_release_files_names_them(tmp_path):
    for name in ("coco", "flickr30k", "flickr8k"):
        doc = coco_doc() if name == "coco" else flickr_doc(name)
        (tmp_path / f"dataset_{name}.json").write_text(json.dumps(doc))
    with pytest.raises(DataError, match=r"dataset_coco.json, dataset_flickr30k.json, dataset_flickr8k.json"):
        load_dataset(str(tmp_path))
    assert load_dataset(str(tmp_path / "dataset_flickr8k.json")).name == "flickr8k"


def test_karpathy_coco_restval_filepath_and_five_captions(tmp_path):
    doc = coco_doc()
    (tmp_path / "dataset_coco.json").write_text(json.dumps(doc))
    touch_images(tmp_path / "images", doc)
    ds = load_dataset(str(tmp_path / "dataset_coco.json"))
    # restval is training data; val and test stay apart.
    np.testing.assert_array_equal(ds.splits["train"], [0, 1, 5])
    np.testing.assert_array_equal(ds.splits["val"], [2])
    np.testing.assert_array_equal(ds.splits["test"], [3, 4])
    assert ds.image_paths[1] == str(tmp_path / "images" / "val2014" / "COCO_val2014_000000000001.jpg")
    # The matching papers' COCO protocol: the first five captions of each image (25,000 for 5K test).
    np.testing.assert_array_equal(ds.texts_per_image, [5] * 6)
    assert ds.texts[5:10] == [f"Picture 1 caption {j}." for j in range(5)]
    assert ds.meta["captions_dropped"] == 3
    every = load_karpathy(tmp_path / "dataset_coco.json", max_captions=None)
    np.testing.assert_array_equal(every.texts_per_image, [5, 6, 7, 5, 5, 5])
    two = load_karpathy(tmp_path / "dataset_coco.json", max_captions=2)
    np.testing.assert_array_equal(two.texts_per_image, [2] * 6)
    with pytest.raises(DataError, match="max_captions"):
        load_karpathy(tmp_path / "dataset_coco.json", max_captions=0)


def test_karpathy_other_datasets_keep_every_caption(tmp_path):
    doc = flickr_doc("flickr30k")
    doc["images"][0]["sentences"].append(_sent("a sixth one", 99))
    (tmp_path / "dataset_flickr30k.json").write_text(json.dumps(doc))
    ds = load_dataset(str(tmp_path / "dataset_flickr30k.json"))
    assert ds.texts_per_image.tolist() == [6, 5, 5, 5]


def test_json_that_is_not_karpathy_is_named(tmp_path):
    p = tmp_path / "captions_train2014.json"  # the COCO annotation file, not Karpathy's
    p.write_text(json.dumps({"info": {}, "annotations": []}))
    with pytest.raises(DataError, match=r"captions_train2014.json: no 'images' list"):
        load_dataset(str(p))


# ----------------------------------------------------------------------------- MIRFlickr-25K
from xmodal.data.mirflickr import MIRFLICKR_LABELS, load_mirflickr25k  # noqa: E402

N_MIR = 50
VOCAB = ["sky", "sea", "dog", "night", "tree"]


def mir_tags(i):
    """Tags of image i (1-based): every 7th image has only rare tags, the rest some common ones."""
    if i % 7 == 0:
        return [f"rare{i}"]
    return [VOCAB[i % 5], f"rare{i}", VOCAB[(i * 3) % 5]]


def mir_labels(i):
    """Label columns of image i (1-based): every 5th image has none of the 24."""
    return [] if i % 5 == 0 else sorted({i % 24, (i * 7) % 24})


def write_mir_release(root, common_tags=True, annotations="mirflickr25k_annotations_v080"):
    """mirflickr25k.zip (mirflickr/im<N>.jpg, meta/tags/tags<N>.txt with Windows line ends,
    doc/common_tags.txt 'tag count') and mirflickr25k_annotations_v080.zip (<label>.txt and
    <label>_r1.txt listing 1-based image numbers, README.txt)."""
    rel = root / "mirflickr"
    (rel / "meta" / "tags").mkdir(parents=True)
    for i in range(1, N_MIR + 1):
        (rel / f"im{i}.jpg").write_bytes(b"\xff\xd8\xff")
        (rel / "meta" / "tags" / f"tags{i}.txt").write_bytes("".join(t + "\r\n" for t in mir_tags(i)).encode())
    if common_tags:
        (rel / "doc").mkdir()
        (rel / "doc" / "common_tags.txt").write_text("".join(f"{t} {40 - k}\n" for k, t in enumerate(VOCAB)))
    ann = root / annotations
    ann.mkdir(parents=True, exist_ok=True)
    for c, name in enumerate(MIRFLICKR_LABELS):
        ids = [i for i in range(1, N_MIR + 1) if c in mir_labels(i)]
        (ann / f"{name}.txt").write_bytes("".join(f"{i}\r\n" for i in ids).encode())
        # The "relevant" subsets are not the 24 labels of the papers: they must be ignored.
        (ann / f"{name}_r1.txt").write_bytes(b"1\r\n2\r\n")
    (ann / "README.txt").write_text("MIRFLICKR-25000 annotations v080\n")
    return root


def test_mirflickr_full_release_dcmh_cleaning(tmp_path):
    root = write_mir_release(tmp_path / "mirflickr25k")
    ds = load_mirflickr25k(str(tmp_path), n_query=4, n_train=10)
    # DCMH's cleaning: an item needs one of the 24 labels and one of the common tags.
    kept = [i for i in range(1, N_MIR + 1) if mir_labels(i) and i % 7]
    assert ds.n_images == ds.n_texts == len(kept)
    assert ds.image_ids == [f"im{i}" for i in kept]
    np.testing.assert_array_equal(ds.meta["release_ids"], kept)
    assert ds.image_paths[0] == str(root / "mirflickr" / f"im{kept[0]}.jpg")
    assert ds.label_names == MIRFLICKR_LABELS
    for r, i in enumerate(kept):  # line "i" of a label file is image im<i>.jpg, not im<i+1>
        assert np.flatnonzero(ds.labels[r]).tolist() == mir_labels(i)
    assert ds.meta["tag_vocabulary"] == VOCAB  # common_tags.txt order
    assert ds.text_features.shape == (len(kept), 5)
    r = kept.index(8)
    assert sorted(np.array(VOCAB)[ds.text_features[r] > 0]) == sorted({VOCAB[3], VOCAB[4]})
    assert ds.texts[r] == f"{VOCAB[3]} {VOCAB[4]}"
    assert len(ds.splits["query"]) == 4 and len(ds.splits["train"]) == 10
    # The release folder itself, or the folder holding mirflickr/, may be the --data-dir.
    assert load_mirflickr25k(str(root), n_query=4, n_train=10).n_images == len(kept)
    again = load_mirflickr25k(str(root / "mirflickr"), n_query=4, n_train=10)  # annotations beside it
    np.testing.assert_array_equal(again.labels, ds.labels)


def test_mirflickr_release_without_common_tags_counts_them(tmp_path):
    # No doc/common_tags.txt: the vocabulary is every tag on min_tag_count images or more, most
    # frequent first as common_tags.txt lists them; the annotation zip unpacked straight into
    # the dataset folder.
    root = write_mir_release(tmp_path / "mirflickr25k", common_tags=False, annotations=".")
    ds = load_mirflickr25k(str(root), n_query=4, n_train=10, min_tag_count=5)
    counts = {t: sum(t in mir_tags(i) for i in range(1, N_MIR + 1)) for t in VOCAB}
    assert ds.meta["tag_vocabulary"] == sorted(VOCAB, key=lambda t: (-counts[t], t))
    with pytest.raises(DataError, match=r"meta/tags: no tag is on 1000 or more of the 50 images"):
        load_mirflickr25k(str(root), n_query=4, n_train=10, min_tag_count=1000)


@pytest.mark.parametrize("name,content,needle", [
    ("dog.txt", b"3\r\nx12\r\n", r"dog.txt:2: expected an image number, got 'x12'"),
    ("dog.txt", b"3\r\n51\r\n", r"dog.txt:2: image 51 outside 1..50"),
    ("dog.txt", b"0\n", r"dog.txt:1: image 0 outside 1..50"),
])
def test_mirflickr_release_bad_annotation_names_file_and_line(tmp_path, name, content, needle):
    root = write_mir_release(tmp_path / "mirflickr25k")
    (root / "mirflickr25k_annotations_v080" / name).write_bytes(content)
    with pytest.raises(DataError, match=needle):
        load_mirflickr25k(str(root), n_query=4, n_train=10)


def test_mirflickr_release_missing_files_are_named(tmp_path):
    root = write_mir_release(tmp_path / "mirflickr25k")
    (root / "mirflickr" / "meta" / "tags" / "tags17.txt").unlink()
    with pytest.raises(DataError, match=r"tags17.txt: file not found"):
        load_mirflickr25k(str(root), n_query=4, n_train=10)
    root = write_mir_release(tmp_path / "b" / "mirflickr25k")
    (root / "mirflickr25k_annotations_v080" / "sky.txt").unlink()
    with pytest.raises(DataError, match=r"sky.txt: file not found"):
        load_mirflickr25k(str(root), n_query=4, n_train=10)
    root = write_mir_release(tmp_path / "c" / "mirflickr25k", annotations="elsewhere")
    with pytest.raises(DataError, match=r"mirflickr25k_annotations_v080/animals.txt: file not found"):
        load_mirflickr25k(str(root), n_query=4, n_train=10)


# ---------------------------------------------------------------------------------- NUS-WIDE
from test_data_nuswide_pascal import N_IMG, nus_arrays, write_nus  # noqa: E402

from xmodal.data.nuswide import load_nus_wide  # noqa: E402


@pytest.mark.parametrize("folder", ["images", "Images"])
def test_nus_wide_flat_image_folder(tmp_path, folder):
    # Many copies of the images (mirrors, images fetched from NUS-WIDE-urls.txt) keep them in one
    # folder, without Imagelist.txt's category sub-folders.
    tags, labels = nus_arrays()
    root = write_nus(tmp_path / "nus_wide", tags, labels, flickr=False)
    (root / folder).mkdir()
    for i in range(0, N_IMG, 3):
        (root / folder / f"{i:04d}_{1000 + i}.jpg").write_bytes(b"\xff\xd8\xff")
    ds = load_nus_wide(str(tmp_path), n_concepts=3, n_query=5, n_train=12)
    for p, i in zip(ds.image_paths, ds.meta["release_rows"]):
        assert p == str(root / folder / f"{i:04d}_{1000 + i}.jpg")
    # image_dir names such a folder anywhere; a folder that does not exist is an error.
    elsewhere = tmp_path / "pics"
    (root / folder).rename(elsewhere)
    ds = load_nus_wide(str(tmp_path), n_concepts=3, n_query=5, n_train=12, image_dir=elsewhere)
    i = ds.meta["release_rows"][0]
    assert ds.image_paths[0] == str(elsewhere / f"{i:04d}_{1000 + i}.jpg")
    with pytest.raises(DataError, match=r"nope: image folder not found"):
        load_nus_wide(str(tmp_path), n_concepts=3, n_query=5, n_train=12, image_dir=tmp_path / "nope")


def write_nus_cleaned(root, n=40, n_labels=21, taglist="Concepts"):
    """The cleaned lists deep hashing code (DCHMT and its followers) ships for NUS-WIDE:
    all_imgs.txt, all_tags.txt (comma-separated tags of TagList1k.txt), all_labels.txt (N x 21)."""
    rng = np.random.default_rng(3)
    root.mkdir(parents=True)
    vocab = [f"tag{j}" for j in range(1000)]
    (root / "all_imgs.txt").write_text("".join(f"images/{i:04d}_{1000 + i}.jpg\n" for i in range(n)))
    tags = [sorted(rng.choice(1000, 3, replace=False).tolist()) for _ in range(n)]
    (root / "all_tags.txt").write_text("".join(",".join(vocab[j] for j in t) + "\n" for t in tags))
    labels = rng.integers(0, 2, (n, n_labels))
    labels[:, 0] = 1
    (root / "all_labels.txt").write_text("".join(" ".join(map(str, r)) + "\n" for r in labels))
    if taglist:
        (root / taglist).mkdir(exist_ok=True)
        (root / taglist / "TagList1k.txt").write_text("\n".join(vocab) + "\n")
    return tags, labels


def test_nus_wide_cleaned_lists(tmp_path):
    root = tmp_path / "nus_wide"
    tags, labels = write_nus_cleaned(root)
    ds = load_nus_wide(str(tmp_path), n_query=5, n_train=10)
    assert ds.n_images == ds.n_texts == 40
    np.testing.assert_array_equal(ds.labels, labels)
    # Text features are the 1000-d tag vectors over TagList1k.txt, in its order.
    assert ds.text_features.shape == (40, 1000)
    assert np.flatnonzero(ds.text_features[7]).tolist() == tags[7]
    assert ds.texts[7] == " ".join(f"tag{j}" for j in tags[7])
    assert ds.image_paths[7] == str(root / "images" / "0007_1007.jpg")
    assert len(ds.splits["query"]) == 5 and len(ds.splits["train"]) == 10
    # Same loader for the folder itself; a row of another width names its line.
    lines = (root / "all_labels.txt").read_text().splitlines()
    lines[11] = lines[11] + " 0"
    (root / "all_labels.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"all_labels.txt:12: expected 21 0/1 values"):
        load_nus_wide(str(root), n_query=5, n_train=10)


def test_cleaned_lists_folder_by_path(tmp_path):
    # MS-COCO ships in the same cleaned lists (80 labels); any such folder loads by path.
    root = tmp_path / "coco"
    tags, labels = write_nus_cleaned(root, n=60, n_labels=80, taglist=None)
    ds = load_dataset(str(root), n_query=5, n_train=10)
    assert ds.name == "coco" and ds.labels.shape == (60, 80) and ds.meta["dataset"] == "mscoco"
    assert len(ds.splits["query"]) == 5 and len(ds.splits["train"]) == 10
    np.testing.assert_array_equal(ds.labels, labels)
    mine = tmp_path / "mydata"
    write_nus_cleaned(mine, n=60, n_labels=3, taglist=None)
    ds = load_dataset(str(mine))  # an unknown dataset: 10% queries, half the rest to train
    assert len(ds.splits["query"]) == 6 and len(ds.splits["train"]) == 27


def test_karpathy_coco_with_2017_images(tmp_path):
    # Many have only COCO 2017 on disk: the 2014 files renamed <cocoid:012d>.jpg and split
    # between train2017/ and val2017/.
    doc = coco_doc()
    (tmp_path / "dataset_coco.json").write_text(json.dumps(doc))
    for rec in doc["images"]:
        sub = "val2017" if rec["imgid"] % 2 else "train2017"
        p = tmp_path / "coco" / sub / f"{rec['cocoid']:012d}.jpg"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"\xff\xd8\xff")
    ds = load_dataset(str(tmp_path / "dataset_coco.json"))
    assert ds.image_paths[0] == str(tmp_path / "coco" / "train2017" / "000000001000.jpg")
    assert ds.image_paths[3] == str(tmp_path / "coco" / "val2017" / "000000001003.jpg")
    assert ds.image_ids[3] == "COCO_val2014_000000000003"  # ids stay Karpathy's


# --------------------------------------------------------------------------- Pascal Sentences
from xmodal.data.pascal import load_pascal_sentences  # noqa: E402

PAS_CATS = ["aeroplane", "bicycle", "bird"]


def write_pascal_page(root, per_class=12, break_row=None):
    """The dataset's own page (vision.cs.uiuc.edu/pascal-sentences/index.html) saved with its
    images: one outer table row per image, <img src="<category>/<file>.jpg"> and a nested table
    of five sentences; old HTML (no closing </td>, entities, a sentence over two lines)."""
    rows = []
    for c, cat in enumerate(PAS_CATS):
        (root / cat).mkdir(parents=True)
        for k in range(per_class):
            name = f"2008_{c:02d}{k:04d}.jpg"
            (root / cat / name).write_bytes(b"\xff\xd8\xff")
            sents = "".join(f"<tr><td> A {cat} &amp; friend,\n picture {k} sentence {s}.\n"
                            for s in range(4 if (c, k) == break_row else 5))
            rows.append(f'<tr><td><img src="{cat}/{name}"></td>\n<td><table>\n{sents}</table></td></tr>\n')
    (root / "index.html").write_text("<html><head><title>Pascal Sentences</title></head><body>\n"
                                     "<table>\n" + "".join(rows) + "</table>\n</body></html>\n")
    return root


def test_pascal_sentences_official_page(tmp_path):
    root = write_pascal_page(tmp_path / "pascal_sentences")
    ds = load_pascal_sentences(str(tmp_path))
    assert ds.label_names == PAS_CATS and ds.n_images == 36 and ds.n_texts == 180
    i = ds.image_ids.index("2008_010003")
    assert ds.class_ids[i] == 1 and ds.image_paths[i] == str(root / "bicycle" / "2008_010003.jpg")
    assert [ds.texts[j] for j in np.flatnonzero(ds.text_to_image == i)] == \
        [f"A bicycle & friend, picture 3 sentence {s}." for s in range(5)]
    assert len(ds.splits["test"]) == 15 and len(ds.splits["val"]) == 15


def test_pascal_sentences_official_page_errors_name_the_line(tmp_path):
    root = write_pascal_page(tmp_path / "pascal_sentences", break_row=(1, 2))
    with pytest.raises(DataError, match=r"index.html:\d+: bicycle/2008_010002.jpg has 4 sentences, expected 5"):
        load_pascal_sentences(str(root))
    page = root / "index.html"
    page.write_text(page.read_text().replace('src="bird/2008_020005.jpg"', 'src="2008_020005.jpg"'))
    with pytest.raises(DataError, match=r"index.html:\d+: image '2008_020005.jpg' is not in a category folder"):
        load_pascal_sentences(str(root), sentences_per_image=None)


# -------------------------------------------------------------------------------- Wikipedia
from test_data_badinput import CATS, write_wikipedia  # noqa: E402

from xmodal.data.wikipedia import load_wikipedia  # noqa: E402


def test_wikipedia_release_folder_name_and_entities(tmp_path):
    # The release unpacks to wikipedia_dataset/; its texts keep HTML entities (&ndash; is in
    # over a thousand of the real files), which a text encoder must not see as words.
    root, _ = write_wikipedia(tmp_path / "wikipedia_dataset")
    (root / "texts" / "t1.xml").write_text(
        '<document id="x" name="Y" cat="2">\n<text>\nA &ndash; B &amp; C&#91;1&#93;\n</text>\n</document>')
    ds = load_wikipedia(str(tmp_path))
    assert ds.label_names == CATS and ds.n_images == 9
    assert ds.texts[1] == "A \u2013 B & C[1]"


def test_wikipedia_real_texts_have_no_entities(wikipedia):
    assert not any("&ndash;" in t or "&mdash;" in t for t in wikipedia.texts)


def test_nus_wide_official_folder_name(tmp_path):
    # The official zips and repository are named NUS-WIDE; Concepts81.txt sits in ConceptsList/.
    tags, labels = nus_arrays()
    root = write_nus(tmp_path / "NUS-WIDE", tags, labels, flickr=False)
    (root / "ConceptsList").mkdir()
    (root / "Concepts81.txt").rename(root / "ConceptsList" / "Concepts81.txt")
    ds = load_dataset("nus_wide", data_dir=str(tmp_path), n_concepts=3, n_query=5, n_train=12)
    assert ds.root == str(root) and ds.label_names == ["lake", "sky", "water"]


def test_nus_wide_zips_unpacked_without_their_folders(tmp_path):
    # ImageList.zip, NUS_WID_Tags.zip and Groundtruth.zip unpacked straight into one folder,
    # or Groundtruth spelled GroundTruth as some copies have it.
    tags, labels = nus_arrays()
    root = write_nus(tmp_path / "nus_wide", tags, labels, flickr=False)
    ref = load_nus_wide(str(root), n_concepts=3, n_query=5, n_train=12)
    (root / "Groundtruth").rename(root / "GroundTruth")
    np.testing.assert_array_equal(load_nus_wide(str(root), n_concepts=3, n_query=5, n_train=12).labels, ref.labels)
    (root / "GroundTruth" / "AllLabels").rename(root / "AllLabels")
    for f in ("AllTags1k.txt", "TagList1k.txt"):
        (root / "NUS_WID_Tags" / f).rename(root / f)
    (root / "ImageList" / "Imagelist.txt").rename(root / "Imagelist.txt")
    for d in ("GroundTruth", "NUS_WID_Tags", "ImageList"):
        (root / d).rmdir()
    ds = load_nus_wide(str(tmp_path), n_concepts=3, n_query=5, n_train=12)
    np.testing.assert_array_equal(ds.labels, ref.labels)
    np.testing.assert_array_equal(ds.text_features, ref.text_features)
    assert ds.texts == ref.texts and ds.image_paths == ref.image_paths


# ------------------------------------------------------ index.mat / caption.mat / label.mat
import scipy.io  # noqa: E402


def write_index_caption_mat(folder, n=30, one_hot=True, made_on="/home/someone/data"):
    """The layout of CLIP-based hashing code (DCHMT and its followers): scipy.io.savemat of the
    image paths of the machine that made it, the tag strings / captions, and the labels."""
    rng = np.random.default_rng(4)
    folder.mkdir(parents=True)
    for i in range(1, n + 1):
        p = folder / "mirflickr" / f"im{i}.jpg"
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(b"\xff\xd8\xff")
    labels = rng.integers(0, 2, (n, 24)).astype(np.float64)
    scipy.io.savemat(folder / "index.mat", {"index": np.array([f"{made_on}/mirflickr/im{i}.jpg" for i in range(1, n + 1)])})
    scipy.io.savemat(folder / "caption.mat", {"caption": np.array([f"sky tag{i}" for i in range(n)])})
    scipy.io.savemat(folder / "label.mat", {"label": labels})
    if one_hot:
        scipy.io.savemat(folder / "caption_one_hot.mat", {"caption_one_hot": rng.integers(0, 2, (n, 7)).astype(np.float32)})
    return labels


def test_index_caption_label_mat_folder(tmp_path):
    folder = tmp_path / "mirflickr25k_clip"
    labels = write_index_caption_mat(folder)
    ds = load_dataset(str(folder), n_query=5, n_train=10)
    assert ds.n_images == ds.n_texts == 30
    # Paths of another machine: found again under the folder by their last parts.
    assert ds.image_paths[0] == str(folder / "mirflickr" / "im1.jpg")
    assert ds.texts[3] == "sky tag3"  # char-matrix padding stripped
    np.testing.assert_array_equal(ds.labels, labels)
    assert ds.text_features.shape == (30, 7) and ds.label_names[0] == "animals"  # 24 labels, "flickr" in the name
    assert len(ds.splits["query"]) == 5 and len(ds.splits["train"]) == 10
    # Without the one-hot file there are only raw texts; a label that is not 0/1 names its item.
    other = tmp_path / "b"
    labels = write_index_caption_mat(other, one_hot=False)
    labels[4, 2] = 0.5
    scipy.io.savemat(other / "label.mat", {"label": labels})
    with pytest.raises(DataError, match=r"label.mat: label item 4 \(0-based\), column 2 holds 0.5"):
        load_dataset(str(other), n_query=5, n_train=10)
    labels[4, 2] = 1
    scipy.io.savemat(other / "label.mat", {"label": labels})
    ds = load_dataset(str(other), n_query=5, n_train=10)
    assert ds.text_features is None and ds.texts[0] == "sky tag0"
    scipy.io.savemat(other / "caption.mat", {"caption": np.array(["a", "b"])})
    with pytest.raises(DataError, match=r"caption.mat: caption holds 2 items, but index.mat holds 30"):
        load_dataset(str(other), n_query=5, n_train=10)


def test_index_caption_mat_under_the_dataset_names(tmp_path):
    write_index_caption_mat(tmp_path / "mirflickr25k")
    ds = load_dataset("mirflickr25k", data_dir=str(tmp_path), n_query=5, n_train=10)
    assert ds.name == "mirflickr25k" and ds.n_images == 30 and ds.meta["layout"] == "index_caption_mat"
    write_index_caption_mat(tmp_path / "x" / "NUS-WIDE", made_on="C:\\data")
    ds = load_dataset("nus_wide", data_dir=str(tmp_path / "x" / "NUS-WIDE"), n_query=5, n_train=10)
    assert ds.name == "nus_wide" and ds.image_paths[1] == str(tmp_path / "x" / "NUS-WIDE" / "mirflickr" / "im2.jpg")


def test_karpathy_repeated_image_record_is_named(tmp_path):
    # Two records of one file would be two "different" images sharing captions' ground truth.
    doc = flickr_doc("flickr8k")
    doc["images"][3]["filename"] = doc["images"][1]["filename"]
    (tmp_path / "dataset_flickr8k.json").write_text(json.dumps(doc))
    with pytest.raises(DataError, match=r"images\[3\] \(1000092796.jpg\): same image as images\[1\]"):
        load_dataset(str(tmp_path / "dataset_flickr8k.json"))


def test_release_folders_load_by_path(tmp_path):
    # `xmodal bench --dataset /data/NUS-WIDE` as well as `--dataset nus_wide --data-dir /data`.
    tags, labels = nus_arrays()
    nus = write_nus(tmp_path / "a" / "NUS-WIDE", tags, labels, flickr=False)
    assert load_dataset(str(nus), n_concepts=3, n_query=5, n_train=12).name == "nus_wide"
    mir = write_mir_release(tmp_path / "b" / "MIRFLICKR")
    assert load_dataset(str(mir), n_query=4, n_train=10).name == "mirflickr25k"
    wiki, _ = write_wikipedia(tmp_path / "c" / "wiki")
    assert load_dataset(str(wiki)).name == "wikipedia"
    pas = write_pascal_page(tmp_path / "d" / "pascal")
    assert load_dataset(str(pas)).name == "pascal_sentences"
