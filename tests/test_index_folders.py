"""Folders as practitioners keep them (each test failed before its fix)."""

import os

from PIL import Image

from conftest import DATA
from xmodal.index.build import scan_folder
import numpy as np
from xmodal.index import Collection


def _img(path, caption=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8)).save(path)
    if caption is not None:
        path.with_suffix(".txt").write_text(caption + "\n")


def test_symlinked_subfolder_is_indexed_once_and_a_loop_is_harmless(tmp_path):
    # A sub-folder linked in from another disk was skipped without a word (os.walk does not
    # follow links); following them must not recurse through a loop or index a folder twice.
    lib = tmp_path / "library"
    _img(lib / "beach" / "a.jpg", "sand")
    other = tmp_path / "other-disk" / "holidays"
    _img(other / "b.jpg", "snow")
    os.symlink(other, lib / "holidays")
    os.symlink(other, lib / "holidays-again")   # a second link to the same folder
    os.symlink(lib, lib / "beach" / "loop")      # a loop back to the top
    os.symlink(lib / "beach", lib / "a-shortcut")  # a link inside: beach/ keeps its own name
    images, texts = scan_folder(lib)
    assert sorted(i.key for i in images) == ["beach/a.jpg", "holidays/b.jpg"]
    assert {i.key: i.labels for i in images}["holidays/b.jpg"] == ["holidays"]
    assert sorted(t.text for t in texts) == ["sand", "snow"]


def test_a_collection_kept_inside_its_source_folder_is_not_indexed(tmp_path):
    # `cd photos && xmodal index . -c my.xmc`: the next run indexed the collection's own
    # thumbnails (thumbs/*.jpg) and uploaded files as new images labelled "my.xmc".
    from xmodal.index import Collection

    _img(tmp_path / "beach" / "a.jpg", "sand")
    Collection.create(tmp_path / "my.xmc", dim=4).close()
    _img(tmp_path / "my.xmc" / "thumbs" / "abc_128.jpg")
    _img(tmp_path / "my.xmc" / "files" / "abc.jpg")
    images, _ = scan_folder(tmp_path)
    assert [i.key for i in images] == ["beach/a.jpg"]


def test_the_source_folder_itself_as_the_collection_is_refused(tmp_path):
    import pytest

    from xmodal.index import CollectionError, build_collection, plan_collection

    _img(tmp_path / "photos" / "a.jpg", "sand")
    for call in (build_collection, plan_collection):
        with pytest.raises(CollectionError, match="cannot be the source folder"):
            call(tmp_path / "photos", tmp_path / "photos" / ".")
    assert not (tmp_path / "photos" / "collection.db").exists()


def test_fitted_method_for_other_encoders_is_refused_before_the_collection_exists(tmp_path, env):
    # `xmodal index SRC -c new.xmc --method cca.zip --text-encoder tfidf` (the method was
    # fitted on MiniLM's 384-d features) left a collection with images and no captions.
    import numpy as np
    import pytest

    from xmodal import methods
    from xmodal.data import PairedDataset
    from xmodal.index import CollectionError, build_collection

    rng = np.random.default_rng(0)
    ds = PairedDataset(name="x", text_to_image=np.arange(20), n_images=20,
                       image_features=rng.normal(size=(20, 6)), text_features=rng.normal(size=(20, 5)))
    fitted = methods.create("cca", n_components=2).fit(ds)
    for i in range(3):
        _img(tmp_path / "src" / f"{i}.jpg", f"caption {i}")
    with pytest.raises(CollectionError, match="does not take the encoders' features"):
        build_collection(tmp_path / "src", tmp_path / "c.xmc", method=fitted,
                         image_encoder="efficientnet-lite0", text_encoder="tfidf", quiet=True)
    assert not (tmp_path / "c.xmc" / "collection.db").exists()


def test_sidecar_written_by_windows_notepad_has_no_byte_order_mark_in_its_caption(tmp_path):
    # Notepad's "UTF-8 with BOM" put U+FEFF in front of the first caption (shown on the web
    # page, and never equal to the same caption typed elsewhere).
    _img(tmp_path / "a.jpg")
    (tmp_path / "a.txt").write_bytes("\ufeffa sandy beach\r\nwaves\r\n".encode("utf-8"))
    _, texts = scan_folder(tmp_path)
    assert [t.text for t in texts] == ["a sandy beach", "waves"]


# ------------------------------------------------------------------------- dataset folders
UCM = DATA / "ucm_captions"  # DATA honours $XMODAL_DATA


def _flickr8k_like(root, n=8):
    """Karpathy's caption_datasets.zip layout: dataset_flickr8k.json beside Flicker8k_Dataset/,
    with real UCM-Captions images and captions (every 100th image: 8 classes)."""
    import json
    import shutil

    import pytest

    if not (UCM / "dataset.json").exists():
        pytest.skip("shared data folder absent")
    doc = json.loads((UCM / "dataset.json").read_text())
    records = []
    for rec in doc["images"][::100][:n]:
        stem = rec["filename"].rsplit(".", 1)[0]
        (root / "Flicker8k_Dataset").mkdir(parents=True, exist_ok=True)
        shutil.copy(UCM / "imgs" / f"{stem}.jpg", root / "Flicker8k_Dataset" / f"{stem}.jpg")
        records.append({"filename": f"{stem}.jpg", "split": rec["split"], "imgid": len(records),
                        "sentences": [{"raw": s["raw"], "tokens": s["tokens"]} for s in rec["sentences"]]})
    (root / "dataset_flickr8k.json").write_text(json.dumps({"images": records, "dataset": "flickr8k"}))
    return records


def test_karpathy_folder_is_indexed_with_its_captions(tmp_path):
    # `xmodal index /data/flickr8k coll` scanned Flicker8k_Dataset/ as a plain image folder:
    # every image labelled "Flicker8k_Dataset", and not one caption.
    from xmodal.index.build import scan_source

    records = _flickr8k_like(tmp_path / "flickr8k")
    images, texts = scan_source(tmp_path / "flickr8k")
    stems = [r["filename"][:-4] for r in records]
    assert [i.key for i in images] == stems
    assert all(i.labels == [] for i in images)
    assert [i.path for i in images] == [str((tmp_path / "flickr8k" / "Flicker8k_Dataset" / r["filename"]).resolve())
                                        for r in records]
    assert [(t.pair_key, t.text) for t in texts] == [(s, c["raw"]) for s, r in zip(stems, records)
                                                      for c in r["sentences"]]


def test_cleaned_lists_folder_is_indexed_with_its_tags_and_labels(tmp_path):
    from xmodal.index.build import scan_source

    root = tmp_path / "tagged"  # "mirflickr25k" would ask for the papers' 12,000 items
    for i in range(1, 5):
        _img(root / "mirflickr" / f"im{i}.jpg")
    (root / "all_imgs.txt").write_text("".join(f"mirflickr/im{i}.jpg\n" for i in range(1, 5)))
    (root / "all_tags.txt").write_text("sky,sea\ndog\ntree,night\nsky\n")
    (root / "all_labels.txt").write_text("".join(" ".join("1" if j == i % 24 else "0" for j in range(24)) + "\n"
                                                 for i in range(4)))
    images, texts = scan_source(root)
    keys = [f"mirflickr/im{i}.jpg" for i in range(1, 5)]
    assert [i.key for i in images] == keys
    assert [i.labels for i in images] == [["0"], ["1"], ["2"], ["3"]]  # label columns (no names given)
    assert [(t.pair_key, t.text) for t in texts] == list(zip(keys, ["sky sea", "dog", "tree night", "sky"]))


def test_photo_folder_with_a_web_page_or_other_json_stays_an_image_folder(tmp_path):
    # A web gallery's index.html or a tool's dataset_export.json among photos is no dataset.
    from xmodal.index.build import scan_source

    _img(tmp_path / "beach" / "a.jpg", "sand")
    (tmp_path / "index.html").write_text('<table><tr><td><img src="beach/a.jpg"></td></tr></table>')
    (tmp_path / "dataset_export.json").write_text('{"exported": ["beach/a.jpg"]}')
    images, texts = scan_source(tmp_path)
    assert [(i.key, i.labels) for i in images] == [("beach/a.jpg", ["beach"])]
    assert [t.text for t in texts] == ["sand"]


def test_xmodal_index_on_a_karpathy_folder_searches_its_captions(tmp_path, env):
    from xmodal.index import build_collection

    records = _flickr8k_like(tmp_path / "flickr8k")
    coll = build_collection(tmp_path / "flickr8k", tmp_path / "c.xmc", image_encoder="efficientnet-lite0",
                            text_encoder="tfidf", quiet=True, search=False)
    try:
        assert coll.count("image") == len(records)
        assert coll.count("text") == sum(len(r["sentences"]) for r in records)
        stems = sorted(r["filename"][:-4] for r in records)
        assert sorted(h.key for h in coll.list_items("image")) == stems
        caps = coll.list_items("text", limit=1000)
        assert sorted(h.text for h in caps) == sorted(c["raw"] for r in records for c in r["sentences"])
        image_of = {h.id: h.key for h in coll.list_items("image")}
        cap = records[3]["sentences"][0]["raw"]
        assert {image_of[h.pair_id] for h in caps if h.text == cap} == {records[3]["filename"][:-4]}
    finally:
        coll.close()


def test_dataset_folder_without_its_images_is_named(tmp_path):
    # Wikipedia's release without its image archive: not a collection of 2,866 unreadable items.
    import pytest

    from xmodal.data import DataError
    from xmodal.index.build import scan_source

    records = _flickr8k_like(tmp_path / "flickr8k", n=3)
    for r in records:
        (tmp_path / "flickr8k" / "Flicker8k_Dataset" / r["filename"]).unlink()
    with pytest.raises(DataError, match=r"1\.jpg: image not found, nor any of the first 3 images"):
        scan_source(tmp_path / "flickr8k")


def unit(rng, n, d=8):
    X = rng.standard_normal((n, d)).astype(np.float32)
    return X / np.linalg.norm(X, axis=1, keepdims=True)


def test_a_file_name_that_is_not_utf8_is_skipped_and_named_and_the_run_goes_on(tmp_path):
    """A photo folder copied from an old camera or a Windows share can hold a name in another
    encoding (Python gives it lone surrogates): SQLite cannot store that key or path, and the
    whole run used to stop at the first lookup with a bare UnicodeEncodeError."""
    src = tmp_path / "photos"
    src.mkdir()
    (src / "good.jpg").write_bytes(b"good")
    (src / "good.txt").write_text("a good caption\n")
    bad = os.path.join(os.fsencode(src), b"caf\xe9.jpg")
    with open(bad, "wb") as fh:
        fh.write(b"bad")
    with open(os.path.join(os.fsencode(src), b"caf\xe9.txt"), "wb") as fh:
        fh.write(b"its caption\n")
    images, texts = scan_folder(src)
    assert len(images) == 2 and len(texts) == 2
    rng = np.random.default_rng(3)
    c = Collection.create(tmp_path / "c", dim=8)
    rep = c.add_items(images, texts, image_features=unit(rng, 2), text_features=unit(rng, 2))
    assert rep.added == 2  # good.jpg and its caption
    assert [os.path.basename(p) for p in rep.skipped] == [os.fsdecode(b"caf\xe9.jpg")]
    assert sorted(r[0] for r in c.store.query("SELECT key FROM items")) == ["good.jpg", "good.jpg#0"]
    # the rerun (what `xmodal index` does next time) goes as well, and plan() agrees
    plan = c.plan(images, texts, prune=True)
    assert plan["image"]["unreadable"] == [os.fsdecode(b"caf\xe9.jpg")] and plan["removed"] == []
    rep = c.add_items(images, texts, image_features=unit(rng, 2), text_features=unit(rng, 2))
    assert rep.unchanged == 2 and len(rep.skipped) == 1
    c.close()
