"""Defects a practitioner walkthrough met (unknown or wrong-kind encoders, a moved photo
folder, saved methods not named .zip, read-only writes, missing sources, index specs,
unknown label filters in Python, an interrupt before anything was stored, stats of two
spaces), each pinned by a test that failed before its fix."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from xmodal.cli import app


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _photos(root: Path, n: int = 3) -> Path:
    """``n`` small images in two label sub-folders, each with a one-line sidecar caption."""
    src = root / "photos"
    for i in range(n):
        label = "beach" if i % 2 else "forest"
        (src / label).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (16, 16), (40 * i, 90, 200 - 30 * i)).save(src / label / f"p{i}.png")
        (src / label / f"p{i}.txt").write_text(f"a {label} photo number {i}\n")
    return src


# ---------------------------------------------------------------- 1, 2: encoders
@pytest.mark.parametrize("dry", [False, True])
@pytest.mark.parametrize("opt, spec, says", [
    ("--image-encoder", "nosuch", "unknown encoder 'nosuch'"),
    ("--text-encoder", "nosuch", "unknown encoder 'nosuch'"),
    ("--image-encoder", "efficientnet-lite0:bogus", "unknown view set 'bogus'"),
    ("--image-encoder", "minilm", "'minilm' is a text encoder, but an image encoder is needed here"),
    ("--text-encoder", "efficientnet-lite0", "'efficientnet-lite0' is an image encoder, but a text "
                                             "encoder is needed here"),
])
def test_index_refuses_unknown_and_wrong_kind_encoders(tmp_path, opt, spec, says, dry):
    src = _photos(tmp_path)
    res = run("index", src, "-c", tmp_path / "e.xmc", opt, spec, "-q", *(["--dry-run"] if dry else []))
    assert res.exit_code == 2, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)
    assert says in " ".join(res.output.split())
    assert not (tmp_path / "e.xmc").exists()


def test_registry_names_the_modality_with_its_article():
    from xmodal.encoders import EncoderError, get_encoder
    from xmodal.encoders.registry import check_spec

    with pytest.raises(EncoderError, match="is a text encoder, but an image encoder is needed"):
        get_encoder("minilm", "image")
    with pytest.raises(EncoderError, match="is an image encoder, but a text encoder is needed"):
        check_spec("efficientnet-lite0+mobilenet-v2", "text")
    check_spec("efficientnet-lite0:flip+mobilenet-v2", "image")  # no model built, no error


@pytest.mark.parametrize("spec, says", [("nosuch", "unknown encoder 'nosuch'"),
                                        ("minilm", "is a text encoder, but an image encoder")])
def test_bench_refuses_a_bad_image_encoder_cleanly(tmp_path, spec, says):
    src = _photos(tmp_path, 6)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"image": str(p), "text": f"caption {i}",
                                         "split": "train" if i < 3 else "test"}) + "\n"
                             for i, p in enumerate(sorted(src.rglob("*.png")))))
    res = run("bench", "--dataset", pairs, "--methods", "cca", "--quiet", "--image-encoder", spec,
              "--text-encoder", "tfidf")
    assert res.exit_code == 2, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)
    assert says in " ".join(res.output.split())


# ---------------------------------------------------------------- 3: a moved folder
def _vector_collection(path: Path, src: Path):
    from xmodal.index import Collection
    from xmodal.index.build import scan_folder

    coll = Collection.create(path, dim=4)
    images, _ = scan_folder(src)
    rng = np.random.default_rng(0)
    coll.add_items(images, image_features=rng.normal(size=(len(images), 4)))
    return coll


def test_a_moved_folder_updates_the_stored_paths_without_re_encoding(tmp_path):
    from xmodal.index.build import scan_folder

    src = _photos(tmp_path / "one", 3)
    coll = _vector_collection(tmp_path / "mv.xmc", src)
    ids = sorted(h.id for h in coll.list_items("image"))
    moved = tmp_path / "two"
    shutil.move(str(src), str(moved))
    images, _ = scan_folder(moved)
    plan = coll.plan(images)
    assert sorted(plan["image"]["moved"]) == sorted(i.key for i in images)
    assert plan["image"]["unchanged"] == 0 and not plan["image"]["new"] and not plan["image"]["changed"]
    res = run("index", moved, "-c", tmp_path / "mv.xmc", "--dry-run")
    assert res.exit_code == 0, res.output
    assert "images: 0 new, 0 changed (re-encoded), 3 moved (path updated, not re-encoded), 0 unchanged" \
        in res.output
    # no features given: a re-encode would need an encoder this collection does not have
    rep = coll.add_items(images)
    assert (rep.added, rep.replaced, rep.moved, rep.unchanged) == (0, 0, 3, 0)
    items = coll.list_items("image")
    assert sorted(h.id for h in items) == ids
    assert all(Path(h.path).is_file() and Path(h.path).is_relative_to(moved.resolve()) for h in items)
    assert coll.audit_log(1)[0]["action"] == "move"
    # the same again: unchanged, nothing written
    gen = coll._gen
    rep = coll.add_items(images)
    assert (rep.moved, rep.unchanged) == (0, 3) and coll._gen == gen
    assert coll.plan(images)["image"]["moved"] == []
    coll.close()


# ---------------------------------------------------------------- 4: a saved method of any name
def _saved_cca(path: Path) -> Path:
    from xmodal.data import PairedDataset
    from xmodal.methods import create

    rng = np.random.default_rng(0)
    ds = PairedDataset(name="toy", text_to_image=np.arange(20), n_images=20,
                       image_features=rng.normal(size=(20, 8)).astype(np.float32),
                       text_features=rng.normal(size=(20, 6)).astype(np.float32))
    create("cca", n_components=2).fit(ds).save(path)
    return path


def test_method_file_is_told_by_content_not_by_suffix(tmp_path):
    src = _photos(tmp_path)
    saved = _saved_cca(tmp_path / "cca.xmodal")  # the README's own example name
    res = run("index", src, "-c", tmp_path / "m.xmc", "--method", saved, "--dry-run", "--json")
    assert res.exit_code == 0, res.output
    plan = json.loads(res.output)
    assert plan["action"] == "create" and plan["method"] == str(saved)
    (tmp_path / "notes.txt").write_text("not a method")
    res = run("index", src, "-c", tmp_path / "m.xmc", "--method", tmp_path / "notes.txt", "--dry-run")
    assert res.exit_code == 2 and "notes.txt: not a saved xmodal method" in " ".join(res.output.split())
    res = run("index", src, "-c", tmp_path / "m.xmc", "--method", "nosuchmethod", "--dry-run")
    assert res.exit_code == 2 and "unknown method 'nosuchmethod'" in res.output
    assert not (tmp_path / "m.xmc").exists()


# ---------------------------------------------------------------- 5: writes on a read-only server
@pytest.mark.parametrize("keys", [False, True])
def test_a_read_only_server_answers_writes_403_before_checking_the_key(tmp_path, keys):
    from fastapi.testclient import TestClient

    from xmodal.index import Collection
    from xmodal.service import create_app
    from xmodal.service.auth import create_key

    coll = _vector_collection(tmp_path / "w.xmc", _photos(tmp_path))
    coll.set_setting("public_read", False)
    reader = create_key(coll, "read")
    writer = create_key(coll, "write")
    coll.snapshot(tmp_path / "snap.xmc", keys=keys)
    coll.close()
    snap = Collection.open(tmp_path / "snap.xmc", read_only=True)
    client = TestClient(create_app(snap))
    for token in ("xmk_bogus", writer, None):
        head = {"X-API-Key": token} if token else {}
        r = client.post("/api/texts", json={"key": "t1", "text": "a beach"}, headers=head)
        assert r.status_code == 403 and "read-only" in r.json()["detail"], (token, r.text)
        r = client.delete("/api/items/1", headers=head)
        assert r.status_code == 403 and "read-only" in r.json()["detail"]
        r = client.put("/api/settings", json={"public_read": True}, headers=head)
        assert r.status_code == 403 and "read-only" in r.json()["detail"]
    # reads of a private collection still need a valid key
    assert client.get("/api/items").status_code == 401
    assert client.get("/api/items", headers={"X-API-Key": "xmk_bogus"}).status_code == 401
    r = client.get("/api/items", headers={"X-API-Key": reader})
    assert r.status_code == (200 if keys else 401)
    snap.close()


# ---------------------------------------------------------------- 6: a source that is not there
@pytest.mark.parametrize("name", ["nodir", "./nodir", "sub/nodir", "pairs.jsonl"])
def test_index_of_a_missing_source_says_no_such_file_or_folder(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    for extra in ([], ["--dry-run"]):
        res = run("index", name, "-c", "e1.xmc", *extra)
        assert res.exit_code == 2, res.output
        out = " ".join(res.output.split())
        assert f"{name}: no such file or folder" in out and "unknown dataset" not in out, out
    assert not (tmp_path / "e1.xmc").exists()


# ---------------------------------------------------------------- 7: index factory strings
def test_an_index_spec_is_parsed_before_its_kind_is_judged():
    from xmodal.index.vector import IndexSpecError, VectorIndex

    with pytest.raises(IndexSpecError) as err:
        VectorIndex("real", 64, "Bogus42")
    assert "could not parse index string Bogus42" in str(err.value)
    assert "is binary" not in str(err.value) and "Error in" not in str(err.value)
    for spec in ("BFlat", "BHNSW32", "BHash2x16"):
        with pytest.raises(IndexSpecError, match="is binary but this collection's space is real-valued"):
            VectorIndex("real", 64, spec)
    with pytest.raises(IndexSpecError, match="expected a number"):
        VectorIndex("real", 64, "HNSW32|efSearch=lots")
    with pytest.raises(IndexSpecError, match="expected a whole number"):
        VectorIndex("binary", 64, "HNSW32|efSearch=lots")


def test_index_cli_gives_faiss_parse_error_for_a_bogus_spec(tmp_path):
    src = _photos(tmp_path)
    res = run("index", src, "-c", tmp_path / "i.xmc", "--index", "Bogus42", "--dry-run")
    assert res.exit_code == 2
    out = " ".join(res.output.split())
    assert "could not parse index string Bogus42" in out and "is binary" not in out, out


# ---------------------------------------------------------------- 8: unknown labels in Python
def test_python_searches_refuse_a_label_no_item_has(tmp_path):
    from xmodal.index.shards import UnknownLabelError, open_shards

    a = _vector_collection(tmp_path / "a.xmc", _photos(tmp_path / "one", 3))
    q = np.ones(4, dtype=np.float32)
    assert {h.labels[0] for h in a.search_vector(q, "image", 5, labels=["beach"])} == {"beach"}
    with pytest.raises(UnknownLabelError) as err:
        a.search_vector(q, "image", 5, labels=["beach", "airplan"])
    assert "'airplan'" in str(err.value) and "beach, forest" in str(err.value)
    with pytest.raises(UnknownLabelError):
        a.search_vectors(q[None], "image", 5, labels=["airplan"])
    with pytest.raises(UnknownLabelError):
        a.search_item(a.list_items("image")[0].id, 2, labels=["airplan"])
    assert a.search_vector(q, "image", 5, labels=["airplan"], check_labels=False) == []
    # refused before the query is encoded (this collection has no encoder at all)
    for search in (a.search_text, a.search_texts, a.search_image, a.search_images):
        with pytest.raises(UnknownLabelError):
            search("planes" if search == a.search_text else ["planes"], 5, labels=["airplan"])
    # shards: a label on one shard only is known; one on none is refused
    b_src = tmp_path / "two" / "photos" / "harbour"
    b_src.mkdir(parents=True)
    Image.new("RGB", (16, 16), (1, 2, 3)).save(b_src / "h.png")
    b = _vector_collection(tmp_path / "b.xmc", b_src.parent)
    a.close(), b.close()
    shards = open_shards([tmp_path / "a.xmc", tmp_path / "b.xmc"])
    hits = shards.search_vector(q, "image", 5, labels=["harbour"])
    assert [h.labels for h in hits] == [["harbour"]]
    with pytest.raises(UnknownLabelError, match="'airplan'"):
        shards.search_vector(q, "image", 5, labels=["airplan"])
    with pytest.raises(UnknownLabelError, match="'airplan'"):
        shards.search_text("planes", labels=["airplan"])
    shards.close()


# ---------------------------------------------------------------- 9: Ctrl-C before anything was stored
def test_an_interrupt_says_whether_anything_was_stored(tmp_path, monkeypatch):
    import xmodal.index
    from xmodal.index import Collection

    def interrupted(*args, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(xmodal.index, "build_collection", interrupted)
    src = _photos(tmp_path)
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


def test_a_label_filter_given_as_a_number_means_the_label_as_stored(tmp_path):
    # labels are stored as text; the check compared sets and refused 3 though '3' is there
    from xmodal.index import Collection

    c = Collection.create(tmp_path / "n.xmc", dim=4)
    c.add_vectors("image", ["a", "b"], np.eye(2, 4, dtype=np.float32), labels=[["3"], ["cat"]])
    q = np.eye(1, 4, dtype=np.float32)[0]
    assert [h.key for h in c.search_vector(q, "image", 5, labels=[3])] == ["a"]


def test_an_upload_found_again_in_a_folder_leaves_no_copy_behind(tmp_path):
    # a photo uploaded over HTTP (files/<hash>) and later indexed from a folder under the same
    # key is moved to the folder's path; the upload copy, used by no item, goes as on a delete
    from xmodal.index import Collection
    from xmodal.index.collection import ImageItem

    c = Collection.create(tmp_path / "c.xmc", dim=4)
    (tmp_path / "A").mkdir()
    Image.new("RGB", (8, 8), (40, 40, 40)).save(tmp_path / "A" / "1.png")
    files = c.path / "files"
    files.mkdir(exist_ok=True)
    (files / "up1.png").write_bytes((tmp_path / "A" / "1.png").read_bytes())
    F = np.ones((1, 4), dtype=np.float32)
    c.add_items([ImageItem("u", str(files / "up1.png"))], image_features=F)
    r = c.add_items([ImageItem("u", str(tmp_path / "A" / "1.png"))], image_features=F)
    assert r.moved and not (files / "up1.png").exists()
    assert (tmp_path / "A" / "1.png").exists()  # the user's own file is never touched


def _beach_images_plain_texts(path: Path):
    """Images labelled beach / forest, captions added without labels: a vectors-only collection."""
    from xmodal.index import Collection

    c = Collection.create(path, dim=4)
    c.add_vectors("image", ["b.jpg", "f.jpg"], np.eye(2, 4, dtype=np.float32), labels=[["beach"], ["forest"]])
    c.add_vectors("text", ["t1", "t2"], np.eye(2, 4, dtype=np.float32), texts=["sand", "trees"])
    return c


def test_a_label_only_the_other_modality_has_is_refused_for_the_target(tmp_path):
    # a text search filtered by an image-only label passed the check (some item has it) and
    # answered nothing, silently: the check must count the searched modality's items only
    from xmodal.index.shards import UnknownLabelError

    c = _beach_images_plain_texts(tmp_path / "m.xmc")
    q = np.eye(1, 4, dtype=np.float32)[0]
    assert [h.key for h in c.search_vector(q, "image", 5, labels=["beach"])] == ["b.jpg"]
    with pytest.raises(UnknownLabelError) as err:
        c.search_vector(q, "text", 5, labels=["beach"])
    assert "no text item has the label 'beach' (image items do)" in str(err.value)
    assert err.value.target == "text" and err.value.elsewhere == ["beach"] and err.value.known == []
    with pytest.raises(UnknownLabelError, match=r"'beach', 'airplan' \('beach': on image items only\)"):
        c.search_vectors(q[None], "text", 5, labels=["beach", "airplan"])
    with pytest.raises(UnknownLabelError, match="no text item has the label 'beach'"):
        c.search_item(c.id_of("t1"), 2, labels=["beach"])  # more like this: texts
    with pytest.raises(UnknownLabelError, match="no text item has the label 'beach'"):
        c.search_item(c.id_of("b.jpg"), 2, target="text", labels=["beach"])
    for search in (c.search_image, c.search_images):  # image -> text: refused before encoding
        with pytest.raises(UnknownLabelError, match="no text item has"):
            search("q.jpg" if search == c.search_image else ["q.jpg"], 5, labels=["beach"])
    for search in (c.search_text, c.search_texts):
        with pytest.raises(UnknownLabelError, match="no text item has"):
            search("sea" if search == c.search_text else ["sea"], 5, "text", labels=["beach"])
    c.check_labels(["beach"])  # no target: any item's label counts, as before
    c.check_labels(["beach"], "image")
    assert c.stats()["labels_by_target"] == {"image": ["beach", "forest"], "text": []}
    c.close()


def test_search_cli_refuses_a_label_only_the_other_modality_has(tmp_path):
    _beach_images_plain_texts(tmp_path / "m.xmc").close()
    res = run("search", "-c", tmp_path / "m.xmc", "--item", 3, "--label", "beach")  # item 3: a text
    assert res.exit_code == 2, res.output
    assert "no text item has the label 'beach' (image items do)" in " ".join(res.output.split())
    res = run("search", "-c", tmp_path / "m.xmc", "--item", 3, "--label", "beach", "--target", "image")
    assert res.exit_code == 0 and "b.jpg" in res.output, res.output
    res = run("search", "-c", tmp_path / "m.xmc", "--image", tmp_path / "m.xmc" / "collection.db",
              "--label", "beach")  # image -> text: refused before the (impossible) encoding
    assert res.exit_code == 2 and "no text item has the label 'beach'" in " ".join(res.output.split())
