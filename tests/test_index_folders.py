"""Folders as practitioners keep them (each test failed before its fix)."""

import os

from PIL import Image

from xmodal.index.build import scan_folder


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
