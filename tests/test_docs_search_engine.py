"""docs/search-engine.md followed literally by a newcomer with their own photos and captions
(each test failed before its fix)."""

import json
import shutil

import pytest
from typer.testing import CliRunner

from conftest import need
from xmodal.cli import app
from xmodal.index import Collection


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture
def pairs(tmp_path, monkeypatch):
    """A pairs file over 6 UCM-Captions images (3 airplane, 3 harbor), 2 captions each."""
    data = need("ucm_captions")
    monkeypatch.setenv("XMODAL_CACHE", str(tmp_path / "cache"))
    ds = json.loads((data / "dataset.json").read_text())["images"]
    rows = []
    for first, label in ((101, "airplane"), (1001, "harbor")):
        for iid in range(first, first + 3):
            img = tmp_path / "photos" / f"{iid}.jpg"
            img.parent.mkdir(exist_ok=True)
            shutil.copy(data / "imgs" / f"{iid}.jpg", img)
            entry = next(e for e in ds if e["filename"] == f"{iid}.tif")
            rows += [{"image": str(img), "text": s["raw"], "label": label} for s in entry["sentences"][:2]]
    return tmp_path, rows


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_a_label_fixed_in_the_source_reaches_the_collection_on_a_rerun(pairs):
    # A label corrected in pairs.jsonl ("harbor" -> "port") and `xmodal index` run again:
    # every item counted "unchanged" (same image bytes, same caption text), the old labels
    # stayed, and `--label port` said no item has it. Labels are now updated in place (ids
    # kept, nothing re-encoded) and counted as relabelled, in --dry-run too.
    tmp, rows = pairs
    src, coll = tmp / "pairs.jsonl", tmp / "my.xmc"
    write(src, rows)
    res = run("index", src, "-c", coll, "--text-encoder", "tfidf", "-q")
    assert res.exit_code == 0, res.output
    before = {h.key: h.id for h in Collection.open(coll).list_items(limit=100)}
    write(src, [dict(r, label="port" if r["label"] == "harbor" else r["label"]) for r in rows])
    plan = run("index", src, "-c", coll, "--dry-run", "--json")
    assert plan.exit_code == 0, plan.output
    plan = json.loads(plan.stdout)
    assert len(plan["image"]["relabelled"]) == 3 and len(plan["text"]["relabelled"]) == 6
    assert plan["image"]["unchanged"] == 3 and plan["text"]["unchanged"] == 6
    human = run("index", src, "-c", coll, "--dry-run")
    assert "3 relabelled" in human.output and "6 relabelled" in human.output
    res = run("index", src, "-c", coll, "--json")
    assert res.exit_code == 0, res.output
    done = json.loads(res.stdout)
    assert done["run"]["relabelled"] == 9 and done["run"]["unchanged"] == 9
    assert done["run"]["added"] == done["run"]["replaced"] == 0
    assert done["labels"] == ["airplane", "port"]
    hits = run("search", "-c", coll, "boats", "--label", "port", "--json")
    assert hits.exit_code == 0, hits.output
    assert {h["labels"][0] for h in json.loads(hits.stdout)} == {"port"} and len(json.loads(hits.stdout)) == 3
    c = Collection.open(coll)
    assert {h.key: h.id for h in c.list_items(limit=100)} == before  # ids kept
    c.close()
    again = run("index", src, "-c", coll, "--json")
    assert json.loads(again.stdout)["run"]["relabelled"] == 0


def test_a_write_without_a_key_says_how_to_send_one_and_make_one(tmp_path):
    # The guide's first `curl -X POST /api/items -F file=@a.jpg` answered only "this route
    # needs an API key with role 'write'": not which header carries it, nor how to get one.
    from fastapi.testclient import TestClient

    from xmodal.service import create_app

    coll = Collection.create(tmp_path / "c.xmc", dim=4)
    client = TestClient(create_app(coll))
    res = client.post("/api/texts", json={"text": "a caption"})
    assert res.status_code == 401
    detail = res.json()["detail"]
    assert "X-API-Key" in detail and "Authorization: Bearer" in detail
    assert "xmodal keys add" in detail and "--role write" in detail
    assert str(tmp_path) not in detail  # client errors never name the server's folders
    assert client.get("/api/audit").json()["detail"].count("--role admin") == 1
    coll.close()


def test_keys_over_http_are_the_records_keys_list_json_prints(tmp_path):
    # `xmodal keys list --json` gave {..., revoked: false, revoked_at: null}; GET /api/keys gave
    # the same keys as {..., revoked: null} (a timestamp once revoked): one record, two shapes.
    from fastapi.testclient import TestClient

    from xmodal.service import create_app
    from xmodal.service.auth import create_key

    path = tmp_path / "c.xmc"
    coll = Collection.create(path, dim=4)
    admin = create_key(coll, "admin", "admin")
    coll.close()
    assert run("keys", "add", "-c", path, "--role", "write", "--name", "ingest job").exit_code == 0
    listed = json.loads(run("keys", "list", "-c", path, "--json").stdout)
    run("keys", "revoke", listed[1]["key_id"], "-c", path)
    listed = json.loads(run("keys", "list", "-c", path, "--json").stdout)
    assert listed[1]["revoked"] is True and isinstance(listed[1]["revoked_at"], float)
    coll = Collection.open(path)
    got = TestClient(create_app(coll)).get("/api/keys", headers={"X-API-Key": admin}).json()["keys"]
    assert got == listed
    coll.close()


def test_remove_given_a_key_where_an_id_goes_says_to_use_key(tmp_path):
    # `xmodal remove -c my.xmc holidays/beach.jpg` (a key where the guide's first line puts
    # ids) answered "Input should be a valid integer": not that keys go after --key.
    path = tmp_path / "c.xmc"
    coll = Collection.create(path, dim=4)
    coll.add_vectors("image", ["holidays/beach.jpg", "b.jpg"], [[1, 0, 0, 0], [0, 1, 0, 0]])
    coll.close()
    res = run("remove", "-c", path, "holidays/beach.jpg")
    assert res.exit_code == 2
    assert "'holidays/beach.jpg' is not an item id" in res.output and "--key holidays/beach.jpg" in res.output
    assert Collection.open(path).count("image") == 2  # nothing removed
    ok = run("remove", "-c", path, "1", "--json")
    assert ok.exit_code == 0 and json.loads(ok.stdout) == {"removed": [1]}


def test_an_index_spec_refused_before_the_fit_names_no_made_up_width(tmp_path):
    # `xmodal index photos -c new.xmc --index hnsw32` said "cannot build FAISS index 'hnsw32'
    # for real vectors of dim 64" and `--index PCA8,HNSW32` "its PCAMatrix (64 -> 8)" on a
    # source whose space came out 8-d: 64 was only the width the spec was tried at before
    # the method was fitted. A lower-case spec now says factory strings are case-sensitive;
    # a spec given for the other kind of space says which spec to give.
    from xmodal.index.vector import IndexSpecError, check_spec

    with pytest.raises(IndexSpecError) as exc:
        check_spec("real", "hnsw32")
    assert "dim 64" not in str(exc.value) and "case-sensitive" in str(exc.value)
    with pytest.raises(IndexSpecError) as exc:
        check_spec("real", "PCA8,HNSW32")
    assert "64" not in str(exc.value).split("(e.g.")[0] and "PCAMatrix (to 8)" in str(exc.value)
    with pytest.raises(IndexSpecError) as exc:  # the width known: named
        check_spec("real", "hnsw32", dim=16)
    assert "dim 16" in str(exc.value)
    with pytest.raises(IndexSpecError) as exc:
        check_spec("real", "BFlat")
    assert "(Flat," in str(exc.value).split("real-valued", 1)[1] and "hashing" in str(exc.value)


def test_a_first_run_counts_the_unreadable_files_it_skipped(pairs):
    # `xmodal index . -c my.xmc --json` over a folder with one broken .jpg said "skipping 1
    # unreadable image(s)" on stderr but `run.skipped` 0; the rerun said 1 for the same file.
    tmp, _ = pairs
    folder = tmp / "photos"
    for p in sorted(folder.glob("*.jpg")):
        p.with_suffix(".txt").write_text("boats in a harbour\nplanes at an airport\n")
    (folder / "broken.jpg").write_text("not an image")
    first = run("index", folder, "-c", tmp / "f.xmc", "--text-encoder", "tfidf", "--json")
    assert first.exit_code == 0, first.output
    again = run("index", folder, "-c", tmp / "f.xmc", "--json")
    assert json.loads(first.stdout)["run"]["skipped"] == json.loads(again.stdout)["run"]["skipped"] == 1
    assert json.loads(first.stdout)["images"] == 6


def test_an_http_add_that_only_changes_labels_stores_them_and_answers_201(pairs):
    from fastapi.testclient import TestClient

    from xmodal.service import create_app
    from xmodal.service.auth import create_key

    tmp, rows = pairs
    write(tmp / "pairs.jsonl", rows)
    assert run("index", tmp / "pairs.jsonl", "-c", tmp / "c.xmc", "--text-encoder", "tfidf", "-q").exit_code == 0
    coll = Collection.open(tmp / "c.xmc")
    key = create_key(coll, "write", "ingest")
    client = TestClient(create_app(coll))
    body = {"text": "a quay at dusk", "key": "notes/1", "labels": ["harbor"]}
    assert client.post("/api/texts", json=body, headers={"X-API-Key": key}).status_code == 201
    same = client.post("/api/texts", json=body, headers={"X-API-Key": key})
    assert same.status_code == 200  # sent again: nothing written
    moved = client.post("/api/texts", json={**body, "labels": ["port"]}, headers={"X-API-Key": key})
    assert moved.status_code == 201 and moved.json()["item"]["labels"] == ["port"]
    assert moved.json()["id"] == same.json()["id"]  # updated in place
    assert [e["action"] for e in coll.audit_log(2)] == ["relabel", "add"]
    coll.close()


def test_a_private_shard_is_named_with_the_option_to_use_once(tmp_path):
    # `xmodal search -c a.xmc --shard URL` to a private server quoted the server's whole 401
    # detail, which (for curl users) says to send an X-API-Key header: two cures, one wrong
    # for the command line. The shard's own words are cut to what it refused.
    from conftest import serving
    from xmodal.index import open_shards
    from xmodal.index.store import CollectionError
    from xmodal.service import create_app

    local = Collection.create(tmp_path / "a.xmc", dim=4)
    local.close()
    private = Collection.create(tmp_path / "b.xmc", dim=4)
    private.set_setting("public_read", False)
    with serving(create_app(private)) as url:
        with pytest.raises(CollectionError) as exc:
            open_shards([tmp_path / "a.xmc"], [url], timeout=5)
    msg = str(exc.value)
    assert "401" in msg and "needs an API key with role 'read'" in msg and "--api-key" in msg
    assert "X-API-Key header" not in msg and msg.count("xmodal keys add") == 1
    private.close()


def test_the_same_photos_given_another_way_are_noted_as_held_twice(pairs):
    # The guide's first two lines run one after the other on the same my.xmc (a folder, then
    # a pairs file over the same photos) stored every photo twice, under two keys, in
    # silence: each image search then showed each photo twice.
    tmp, rows = pairs
    folder = tmp / "photos"
    for p in sorted(folder.glob("*.jpg")):
        p.with_suffix(".txt").write_text("\n".join(r["text"] for r in rows if r["image"] == str(p)))
    write(tmp / "pairs.jsonl", rows)
    assert run("index", folder, "-c", tmp / "my.xmc", "--text-encoder", "tfidf", "-q").exit_code == 0
    res = CliRunner().invoke(app, ["index", str(tmp / "pairs.jsonl"), "-c", str(tmp / "my.xmc")])
    assert res.exit_code == 0, res.output
    assert "6 new image(s) have the same content as images already stored under other keys" in res.output
    assert "--rebuild" in res.output
    again = run("index", tmp / "pairs.jsonl", "-c", tmp / "my.xmc")  # nothing new: no note
    assert "same content" not in again.output


def test_unknown_label_error_is_importable_beside_collection(tmp_path):
    # The guide says search_text(labels=...) raises UnknownLabelError; `from xmodal.index
    # import UnknownLabelError` (where Collection comes from) was an ImportError.
    from xmodal.index import UnknownLabelError

    coll = Collection.create(tmp_path / "c.xmc", dim=4)
    coll.add_vectors("image", ["a.jpg"], [[1, 0, 0, 0]], labels=[["beach"]])
    with pytest.raises(UnknownLabelError, match="beech.*beach"):
        coll.search_vector([1, 0, 0, 0], labels=["beech"])
    coll.close()


def test_an_add_without_labels_never_clears_stored_labels(pairs):
    # Relabelling in place must not turn into data loss: the same photo or caption sent
    # again with no labels at all (a re-upload from the web page, an unlabelled copy of the
    # source) kept its labels before relabelling existed, and still does.
    from fastapi.testclient import TestClient

    from xmodal.service import create_app
    from xmodal.service.auth import create_key

    tmp, rows = pairs
    write(tmp / "pairs.jsonl", rows)
    assert run("index", tmp / "pairs.jsonl", "-c", tmp / "c.xmc", "--text-encoder", "tfidf", "-q").exit_code == 0
    write(tmp / "pairs.jsonl", [{k: v for k, v in r.items() if k != "label"} for r in rows])
    res = run("index", tmp / "pairs.jsonl", "-c", tmp / "c.xmc", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["run"]["relabelled"] == 0
    coll = Collection.open(tmp / "c.xmc")
    assert all(h.labels for h in coll.list_items(limit=100))
    key = create_key(coll, "write", "ingest")
    client = TestClient(create_app(coll))
    body = {"text": "a quay at dusk", "key": "notes/1", "labels": ["harbor"]}
    assert client.post("/api/texts", json=body, headers={"X-API-Key": key}).status_code == 201
    again = client.post("/api/texts", json={**body, "labels": []}, headers={"X-API-Key": key})
    assert again.status_code == 200 and again.json()["item"]["labels"] == ["harbor"]
    coll.close()
