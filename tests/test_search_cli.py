"""The command line as a practitioner typed it (each test failed before its fix)."""

import numpy as np
from typer.testing import CliRunner

from xmodal.cli import app
from xmodal.index import Collection
import json

from conftest import beach_images_plain_texts, labelled_photos
from PIL import Image


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _labelled(tmp_path):
    coll = Collection.create(tmp_path / "c.xmc", dim=4)
    rng = np.random.default_rng(0)
    coll.add_vectors("image", [f"beach/{j}.jpg" for j in range(3)] + [f"forest/{j}.jpg" for j in range(3)],
                     rng.normal(size=(6, 4)).astype(np.float32),
                     labels=[["beach"]] * 3 + [["forest"]] * 3)
    coll.close()
    return tmp_path / "c.xmc"


def test_search_with_a_label_no_item_has_is_an_error_naming_it(tmp_path):
    # A mistyped --label printed nothing and exited 0: "no results" for a typo.
    path = _labelled(tmp_path)
    res = run("search", "-c", path, "--item", 1, "--label", "beech")
    assert res.exit_code == 2
    assert "beech" in res.output and "beach, forest" in res.output
    ok = run("search", "-c", path, "--item", 1, "--label", "forest", "--target", "image")
    assert ok.exit_code == 0, ok.output
    assert len(ok.output.strip().splitlines()) == 3
    # labels are stored trimmed: a filter typed with a space means the same label (as over HTTP)
    padded = run("search", "-c", path, "--item", 1, "--label", " forest ", "--target", "image")
    assert padded.exit_code == 0 and padded.output == ok.output


def test_search_of_a_collection_without_targets_says_so(tmp_path):
    # An empty answer printed nothing at all: was the query bad, or the collection empty?
    coll = Collection.create(tmp_path / "t.xmc", dim=4)
    coll.add_vectors("text", ["a", "b"], np.eye(2, 4, dtype=np.float32), texts=["a", "b"])
    coll.close()
    res = CliRunner().invoke(app, ["search", "-c", str(tmp_path / "t.xmc"), "--item", "1",
                                   "--target", "image"])
    assert res.exit_code == 0
    assert "holds no images" in res.output
    assert "holds no" not in run("search", "-c", tmp_path / "t.xmc", "--item", 1).output


def test_index_rerun_refuses_options_it_would_ignore(tmp_path):
    # `xmodal index SRC -c my.xmc --index HNSW32` on an existing Flat collection printed
    # "index Flat" and kept it: the option was silently ignored.
    coll = Collection.create(tmp_path / "c.xmc", dim=4)
    coll.close()
    src = tmp_path / "src"
    src.mkdir()
    res = run("index", src, "-c", tmp_path / "c.xmc", "--index", "HNSW32", "--rerank")
    assert res.exit_code == 2
    assert "--index HNSW32 (it has Flat)" in res.output and "--rerank" in res.output
    assert "--rebuild" in res.output
    assert Collection.open(tmp_path / "c.xmc").stats()["index"] == "Flat"
    # the same options as the collection's, or none typed, go on to the source
    for extra in ([], ["--index", "Flat"], ["--index", "Flat", "--dry-run"]):
        res = run("index", src, "-c", tmp_path / "c.xmc", *extra)
        assert res.exit_code == 2 and "no images found" in res.output, res.output


def test_rerank_with_a_real_valued_method_is_refused(tmp_path):
    # `--rerank` with CCA made a collection without it, silently; a rerun with --rebuild
    # could never get it either.
    import pytest
    from xmodal.index import CollectionError, build_collection, plan_collection

    src = tmp_path / "src"
    src.mkdir()
    Image.new("RGB", (8, 8)).save(src / "a.jpg")
    (src / "a.txt").write_text("a caption\n")
    for call in (build_collection, plan_collection):
        with pytest.raises(CollectionError, match="real-valued"):
            call(src, tmp_path / "c.xmc", method="cca", rerank=True)
    assert not (tmp_path / "c.xmc").exists()
    res = run("index", src, "-c", tmp_path / "c.xmc", "--rerank", "--dry-run")
    assert res.exit_code == 2 and "real-valued" in res.output


def test_ctrl_c_while_indexing_says_what_is_kept(tmp_path, monkeypatch):
    # Ctrl-C ended `xmodal index` silently: was anything stored, should it be run again?
    import xmodal.index as index_pkg

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(index_pkg, "build_collection", interrupted)
    res = run("index", tmp_path, "-c", tmp_path / "c.xmc")
    assert res.exit_code == 130
    assert "interrupted" in res.output and "run the same command again" in res.output


def test_a_write_to_a_read_only_collection_says_why(tmp_path, monkeypatch):
    # "the collection is open read-only" left the user guessing: the folder's permissions
    # (the common case, or a read-only mount) are named now.
    import xmodal.index.collection as collection_mod

    _labelled(tmp_path)
    import xmodal.index.store as store_mod

    monkeypatch.setattr(collection_mod, "writable", lambda path: False)
    monkeypatch.setattr(store_mod, "writable", lambda folder, db: False)
    res = run("remove", "-c", tmp_path / "c.xmc", 1)
    assert res.exit_code == 2
    assert "cannot write the folder or its collection.db" in res.output


def test_keys_add_on_a_read_only_collection_says_why(tmp_path):
    _labelled(tmp_path)
    from xmodal.index import ReadOnlyError
    from xmodal.service.auth import create_key

    coll = Collection.open(tmp_path / "c.xmc", read_only=True)
    try:
        create_key(coll, "read", "x")
    except ReadOnlyError as exc:
        assert "opened read-only (--read-only)" in str(exc)
    else:
        raise AssertionError("a key was written into a read-only collection")


def test_image_query_that_is_a_folder_is_named_as_one(tmp_path):
    # "photos: no such file" for a folder that plainly exists
    path = _labelled(tmp_path)
    res = run("search", "-c", path, "--image", tmp_path)
    assert res.exit_code == 2 and "a folder; --image takes image files" in res.output


def test_plain_output_stays_three_tab_separated_columns(tmp_path):
    # a caption holding a tab split into a fourth column, breaking `cut -f3`
    coll = Collection.create(tmp_path / "t.xmc", dim=4)
    coll.add_vectors("text", ["a", "b"], np.eye(2, 4, dtype=np.float32),
                     texts=["col one\tcol two", "line one\r\nline two"])
    coll.close()
    res = run("search", "-c", tmp_path / "t.xmc", "--item", 1, "-k", 5)
    rows = res.output.strip().splitlines()
    assert len(rows) == 1 and rows[0].split("\t")[2] == "line one  line two"
    res = run("search", "-c", tmp_path / "t.xmc", "--item", 2)
    assert res.output.strip().split("\t")[2:] == ["col one col two"]


def test_index_rerun_reads_encoder_specs_as_the_encoders_do(tmp_path):
    # "a + b" names the encoder "a+b": typing it that way on a rerun is the same encoder,
    # not a different one to refuse.
    from xmodal.encoders import get_encoder

    enc = get_encoder("bow+tags", "text").fit(["a river", "two planes", "green trees"], progress=False)
    coll = Collection.create(tmp_path / "c.xmc", dim=4, text_encoder=enc)
    coll.close()
    src = tmp_path / "src"
    src.mkdir()
    res = run("index", src, "-c", tmp_path / "c.xmc", "--text-encoder", "bow + tags")
    assert res.exit_code == 2 and "no images found" in res.output, res.output
    res = run("index", src, "-c", tmp_path / "c.xmc", "--text-encoder", "bow")
    assert res.exit_code == 2 and "--text-encoder bow (it has bow+tags)" in res.output, res.output


def test_stats_of_a_collection_and_its_copy_is_not_searchable_as_shards(tmp_path):
    # `xmodal stats -c c.xmc -c copy.xmc` said "one common space: searchable as shards" and
    # exited 0, though `xmodal search` with the same two refuses them (one collection, its
    # hits counted twice): a script checking stats first read success.
    import json

    path = _labelled(tmp_path)
    with Collection.open(path) as coll:
        coll.snapshot(tmp_path / "copy.xmc")
    res = run("stats", "-c", path, "-c", tmp_path / "copy.xmc")
    assert res.exit_code == 1, res.output
    assert "one collection" in res.stdout and "one common space: searchable" not in res.stdout, res.stdout
    res = run("stats", "-c", path, "-c", tmp_path / "copy.xmc", "--json")
    assert res.exit_code == 1
    out = json.loads(res.stdout)
    assert out["one_space"] is True and out["searchable"] is False
    assert out["same_collection"] == [[str(path), str(tmp_path / "copy.xmc")]]
    one = json.loads(run("stats", "-c", path, "--json").stdout)
    assert one["searchable"] is True and one["same_collection"] == []


def test_search_for_an_item_not_there_names_the_collection(tmp_path):
    # "error: no item with id 99" named no collection (remove's own error does: "c.xmc: no item 99")
    path = _labelled(tmp_path)
    res = run("search", "-c", path, "--item", 99)
    assert res.exit_code == 2 and f"{path}: no item with id 99" in res.stderr, res.output
    assert res.stdout == ""


def test_export_names_the_option_of_a_bad_modality(tmp_path):
    # "error: modality must be 'image' or 'text', got 'images'": no option named, and the
    # collection was opened first
    path = _labelled(tmp_path)
    res = run("export", tmp_path / "v.npz", "-c", path, "--modality", "images")
    assert res.exit_code == 2 and "--modality must be image or text, got 'images'" in res.stderr, res.output
    assert not (tmp_path / "v.npz").exists()
    res = run("export", tmp_path / "v.npz", "-c", path, "--modality", "image", "--json")
    assert res.exit_code == 0, res.output
    import json

    assert json.loads(res.stdout)["images"] == 6


# ---------------------------------------------------------------- 9: Ctrl-C before anything was stored
def test_an_interrupt_says_whether_anything_was_stored(tmp_path, monkeypatch):
    import xmodal.index
    from xmodal.index import Collection

    def interrupted(*args, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(xmodal.index, "build_collection", interrupted)
    src = labelled_photos(tmp_path)
    res = run("index", src, "-c", tmp_path / "ci.xmc")
    assert res.exit_code == 130
    out = " ".join(res.output.split())
    assert "before anything was stored" in out and "was not created" in out
    assert "keeps every batch" not in out
    Collection.create(tmp_path / "ci.xmc", dim=4).close()
    res = run("index", src, "-c", tmp_path / "ci.xmc")
    assert res.exit_code == 130 and "keeps every batch stored so far" in " ".join(res.output.split())


# ---------------------------------------------------------------- 10: stats of two spaces
def test_stats_of_collections_in_different_spaces_exits_1(tmp_path):
    from xmodal.index import Collection

    Collection.create(tmp_path / "a.xmc", dim=4).close()
    Collection.create(tmp_path / "b.xmc", dim=8).close()
    res = run("stats", "-c", tmp_path / "a.xmc", "-c", tmp_path / "b.xmc")
    assert res.exit_code == 1 and "different common spaces: not searchable as one" in res.output
    assert res.output.count("0 images") == 2  # the report is still printed
    res = run("stats", "-c", tmp_path / "a.xmc", "-c", tmp_path / "b.xmc", "--json")
    assert res.exit_code == 1 and json.loads(res.output)["one_space"] is False
    assert run("stats", "-c", tmp_path / "a.xmc").exit_code == 0


def test_search_cli_refuses_a_label_only_the_other_modality_has(tmp_path):
    beach_images_plain_texts(tmp_path / "m.xmc").close()
    res = run("search", "-c", tmp_path / "m.xmc", "--item", 3, "--label", "beach")  # item 3: a text
    assert res.exit_code == 2, res.output
    assert "no text item has the label 'beach' (image items do)" in " ".join(res.output.split())
    res = run("search", "-c", tmp_path / "m.xmc", "--item", 3, "--label", "beach", "--target", "image")
    assert res.exit_code == 0 and "b.jpg" in res.output, res.output
    res = run("search", "-c", tmp_path / "m.xmc", "--image", tmp_path / "m.xmc" / "collection.db",
              "--label", "beach")  # image -> text: refused before the (impossible) encoding
    assert res.exit_code == 2 and "no text item has the label 'beach'" in " ".join(res.output.split())
