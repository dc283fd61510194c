"""HTTP API: every role against every route (public and private reading), searches of every
kind, relevance feedback, add/delete with audit, metrics, and hostile uploads."""

import io
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from threadpoolctl import threadpool_limits

from conftest import ucm_caption_folder
from xmodal.index import build_collection
from xmodal.service import create_app
from xmodal.service.auth import create_key, revoke_key


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root, folder, _, mp = ucm_caption_folder(tmp_path_factory, "service", 175)  # 12 images, 12 classes
    with threadpool_limits(1):  # see test_collection.py
        coll = build_collection(folder, root / "coll", image_encoder="efficientnet-lite0",
                                text_encoder="tfidf", quiet=True)
        keys = {r: create_key(coll, r, f"test {r}") for r in ("read", "write", "admin")}
        client = TestClient(create_app(coll, max_upload_bytes=2_000_000, max_image_pixels=50_000_000))
        yield {"coll": coll, "client": client, "keys": keys, "folder": folder, "root": root,
               "image": sorted(folder.glob("*.jpg"))[0]}
    coll.close()
    mp.undo()


def jpeg_bytes(path):
    return Path(path).read_bytes()


def routes(s):
    img = jpeg_bytes(s["image"])
    some_id = s["coll"].list_items("image", limit=1)[0].id
    public = s["coll"].public_read
    return [
        ("read", "GET", "/api/info", {}),
        ("read", "GET", "/api/search?q=airplane&k=3", {}),
        ("read", "POST", "/api/search", {"json": {"text": "a green forest", "k": 3}}),
        ("read", "POST", "/api/search", {"json": {"item_id": some_id, "k": 3}}),
        ("read", "POST", "/api/search/image", {"files": {"file": ("q.jpg", img, "image/jpeg")}}),
        ("read", "POST", "/api/search/batch", {"json": {"texts": ["a green forest", "a beach"], "k": 2}}),
        ("read", "GET", "/api/items?limit=3", {}),
        ("read", "GET", f"/api/items/{some_id}", {}),
        ("read", "GET", f"/api/items/{some_id}/thumbnail", {}),
        ("write", "POST", "/api/items", {"files": {"file": ("new.jpg", img, "image/jpeg")},
                                          "data": {"captions": "a picture\nanother line", "key": "mat/one.jpg"}}),
        ("write", "POST", "/api/texts", {"json": {"text": "a lonely caption", "key": "lonely"}}),
        ("write", "DELETE", "/api/items/999999", {}),
        ("admin", "GET", "/api/keys", {}),
        ("admin", "POST", "/api/keys", {"json": {"role": "read", "name": "matrix"}}),
        ("admin", "DELETE", "/api/keys/nosuchkey", {}),
        ("admin", "GET", "/api/audit", {}),
        ("admin", "PUT", "/api/settings", {"json": {"public_read": public}}),
    ]


RANK = {None: 0, "bad": 0, "read": 1, "write": 2, "admin": 3}
ALLOWED_MISS = {"/api/items/999999", "/api/keys/nosuchkey"}  # past auth, then 404


@pytest.mark.parametrize("public_read", [True, False])
def test_every_role_against_every_route(setup, public_read):
    s, c = setup, setup["client"]
    s["coll"].set_setting("public_read", public_read)
    try:
        for who in (None, "bad", "read", "write", "admin"):
            headers = {}
            if who == "bad":
                headers["X-API-Key"] = "xmk_0000_not-a-real-secret"
            elif who:
                headers["X-API-Key"] = s["keys"][who]
            for need, method, url, kw in routes(s):
                r = c.request(method, url, headers=headers, **kw)
                ok = RANK[who] >= RANK[need] or (need == "read" and public_read and who is None)
                if ok:
                    expected = {404} if url in ALLOWED_MISS else {200, 201}
                    assert r.status_code in expected, (who, method, url, r.status_code, r.text)
                elif who == "bad" or who is None:
                    assert r.status_code == 401, (who, method, url, r.status_code, r.text)
                else:
                    assert r.status_code == 403, (who, method, url, r.status_code, r.text)
                    assert need in r.json()["detail"]
            # public routes never need a key (/metrics does when reading does)
            for url in ("/health", "/", "/openapi.json", "/static/app.js"):
                assert c.get(url).status_code == 200, url
            assert c.get("/metrics").status_code == (200 if public_read else 401)
    finally:
        s["coll"].set_setting("public_read", True)


def test_key_transports_and_revocation(setup):
    s, c = setup, setup["client"]
    coll = s["coll"]
    tok = create_key(coll, "admin", "temp")
    assert c.get("/api/keys", headers={"Authorization": f"Bearer {tok}"}).status_code == 200
    # never in the URL (logs, history, Referer): refused on every method
    assert c.get(f"/api/keys?api_key={tok}").status_code == 401
    assert c.post(f"/api/texts?api_key={s['keys']['write']}", json={"text": "x"}).status_code == 401
    listed = c.get("/api/keys", headers={"X-API-Key": tok}).json()["keys"]
    assert all("hash" not in k and "salt" not in k for k in listed)
    stored = coll.store.query("SELECT hash FROM api_keys")
    assert all(tok.encode() not in h and tok.split("_", 2)[2].encode() not in h for (h,) in stored)
    revoke_key(coll, tok[4:].split("_")[0])
    assert c.get("/api/keys", headers={"X-API-Key": tok}).status_code == 401
    made = c.post("/api/keys", json={"role": "write", "name": "via http"},
                  headers={"X-API-Key": s["keys"]["admin"]}).json()
    assert c.post("/api/texts", json={"text": "hello there"}, headers={"X-API-Key": made["token"]}).status_code == 201
    assert c.post("/api/keys", json={"role": "root"}, headers={"X-API-Key": s["keys"]["admin"]}).status_code == 422


def test_searches_feedback_add_delete_and_audit(setup):
    s, c = setup, setup["client"]
    w = {"X-API-Key": s["keys"]["write"]}
    r = c.get("/api/search", params={"q": "many planes at an airport", "k": 5}).json()
    assert r["target"] == "image" and len(r["results"]) == 5
    top = r["results"][0]
    assert top["thumbnail"] == f"/api/items/{top['id']}/thumbnail" and top["path"] and top["caption"]
    thumb = c.get(top["thumbnail"])
    assert thumb.headers["content-type"] == "image/jpeg" and Image.open(io.BytesIO(thumb.content)).size[0] <= 256
    # image -> text by upload; text -> text with an explicit target
    up = c.post("/api/search/image", files={"file": ("q.jpg", jpeg_bytes(s["image"]), "image/jpeg")},
                data={"k": "4"}).json()
    assert up["target"] == "text" and all(h["modality"] == "text" and h["thumbnail"] for h in up["results"])
    tt = c.post("/api/search", json={"text": "a river", "target": "text", "k": 3}).json()
    assert all(h["modality"] == "text" for h in tt["results"])
    # a batch: one result list per text, the same as one request each
    qs = ["many planes at an airport", "a river", "green trees and a road"]
    b = c.post("/api/search/batch", json={"texts": qs, "k": 4}).json()["queries"]
    assert [x["query"] for x in b] == qs and all(x["target"] == "image" for x in b)
    for q, got in zip(qs, b):
        ref = c.post("/api/search", json={"text": q, "k": 4}).json()["results"]
        assert [h["id"] for h in got["results"]] == [h["id"] for h in ref]
    bt = c.post("/api/search/batch", json={"texts": qs[:1], "target": "text", "k": 2}).json()
    assert all(h["modality"] == "text" for h in bt["queries"][0]["results"])
    for bad in ({"texts": []}, {"texts": ["ok", "  "]}, {"texts": ["x" * 2001]}, {"texts": ["a"] * 257}):
        r = c.post("/api/search/batch", json=bad)
        assert r.status_code == 422, (bad, r.text)
    assert "texts[1]" in c.post("/api/search/batch", json={"texts": ["ok", " "]}).text
    # raw vector search agrees with the item's own vector
    item = top["id"]
    vec = s["coll"].item_vectors([item])[0][0].tolist()
    rv = c.post("/api/search", json={"vector": vec, "target": "image", "k": 1}).json()
    assert rv["results"][0]["id"] == item and rv["results"][0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert c.post("/api/search", json={"vector": [1.0, 2.0], "k": 1}).status_code == 422
    assert c.post("/api/search", json={"k": 1}).status_code == 422
    assert c.post("/api/search", json={"item_id": 10 ** 9}).status_code == 404
    # more like this excludes the item itself
    mlt = c.post("/api/search", json={"item_id": item, "k": 5}).json()
    own = s["coll"].get_item(item).modality
    assert mlt["target"] == own and all(h["modality"] == own for h in mlt["results"])  # as the CLI
    mlt = mlt["results"]
    assert item not in [h["id"] for h in mlt]
    # Rocchio: marking the 6th result relevant and the top one not relevant reorders them
    base = c.post("/api/search", json={"text": "green trees", "k": 12}).json()["results"]
    ids = [h["id"] for h in base]
    fb = c.post("/api/search", json={"text": "green trees", "k": 12, "relevant": [ids[5]],
                                     "nonrelevant": [ids[0]], "beta": 2.0, "gamma": 1.0}).json()["results"]
    fids = [h["id"] for h in fb]
    assert fids.index(ids[5]) < 5 and fids[0] != ids[0]
    # label filter
    lab = s["coll"].get_item(item).labels
    if lab:
        lr = c.get("/api/search", params={"q": "houses", "labels": lab[0]}).json()["results"]
        assert lr and all(lab[0] in h["labels"] for h in lr)
    # add an image with captions over HTTP, find it, delete it
    other = sorted(s["folder"].glob("*.jpg"))[-1]
    img = Image.open(other).transpose(Image.FLIP_LEFT_RIGHT)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    added = c.post("/api/items", files={"file": ("../../../evil.png", buf.getvalue(), "image/png")},
                   data={"captions": "a flipped test picture", "labels": "flipped"}, headers=w)
    assert added.status_code == 201, added.text
    new_id = added.json()["id"]
    got = c.get(f"/api/items/{new_id}").json()
    assert Path(got["path"]).parent == s["coll"].path / "files"  # named by hash, not by the client
    assert not (s["root"] / "evil.png").exists() and not (s["coll"].path.parent / "evil.png").exists()
    found = c.get("/api/search", params={"q": "a flipped test picture", "k": 3, "labels": "flipped"}).json()["results"]
    assert found[0]["id"] == new_id
    d = c.delete(f"/api/items/{new_id}", headers=w)
    assert d.status_code == 200 and new_id in d.json()["deleted"] and len(d.json()["deleted"]) == 2
    assert c.get(f"/api/items/{new_id}").status_code == 404
    assert new_id not in [h["id"] for h in c.get("/api/search", params={"q": "a flipped test picture"}).json()["results"]]
    audit = c.get("/api/audit", headers={"X-API-Key": s["keys"]["admin"]}).json()["entries"]
    wkey = s["keys"]["write"][4:].split("_")[0]
    mine = [e for e in audit if e["actor"] == f"key:{wkey}"]
    assert {"add", "delete"} <= {e["action"] for e in mine} and all(e["remote"] for e in mine)


def test_bad_uploads_and_traversal(setup, tmp_path):
    s, c = setup, setup["client"]
    w = {"X-API-Key": s["keys"]["write"]}
    for url, headers in (("/api/search/image", {}), ("/api/items", w)):
        r = c.post(url, files={"file": ("empty.jpg", b"", "image/jpeg")}, headers=headers)
        assert r.status_code == 400 and "empty" in r.json()["detail"]
        r = c.post(url, files={"file": ("notes.jpg", b"just some text, not pixels" * 10, "image/jpeg")},
                   headers=headers)
        assert r.status_code == 415 and "not an image" in r.json()["detail"]
        bomb = io.BytesIO()
        Image.new("1", (12000, 12000)).save(bomb, "PNG")  # 144 Mpx in a small file
        assert len(bomb.getvalue()) < 2_000_000
        r = c.post(url, files={"file": ("bomb.png", bomb.getvalue(), "image/png")}, headers=headers)
        assert r.status_code == 413 and "decompression bomb" in r.json()["detail"]
        r = c.post(url, files={"file": ("big.jpg", b"\xff" * 2_100_000, "image/jpeg")}, headers=headers)
        assert r.status_code == 413
        truncated = jpeg_bytes(s["image"])[:3000]
        r = c.post(url, files={"file": ("cut.jpg", truncated, "image/jpeg")}, headers=headers)
        assert r.status_code == 400 and "broken image" in r.json()["detail"]
    img = jpeg_bytes(s["image"])
    for key in ("../../etc/passwd", "/abs/path.jpg", "a/../../b.jpg", "a\\b.jpg", "ok/./x.jpg"):
        r = c.post("/api/items", files={"file": ("x.jpg", img, "image/jpeg")}, data={"key": key}, headers=w)
        assert r.status_code == 400 and "key" in r.json()["detail"], key
    assert c.post("/api/texts", json={"text": "t", "key": "../up"}, headers=w).status_code == 400
    for url in ("/api/items/..%2F..%2Fetc%2Fpasswd", "/api/items/..%2F..%2Fetc%2Fpasswd/thumbnail",
                "/static/../collection.db", "/static/%2e%2e/%2e%2e/collection.db", "/static/..%2Fapp.py",
                "/api/items/1/thumbnail?size=100000"):
        r = c.get(url)
        assert r.status_code in (404, 422), (url, r.status_code)
        assert b"SQLite" not in r.content and b"import" not in r.content
    text_item = s["coll"].list_items("text", limit=1)[0]
    assert c.get(f"/api/items/{text_item.id}/thumbnail").status_code == 404
    # a declared body over the limit is refused before it is read
    r = c.post("/api/search", content=b"{}", headers={"Content-Length": "999999999", "Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["detail"] == "request body over 2000000 bytes"
    from xmodal.service.app import _size  # a limit in whole MiB is said so, as it was set

    assert (_size(20 << 20), _size(4 << 20), _size(2_000_000)) == ("20 MiB", "4 MiB", "2000000 bytes")


def test_health_metrics_openapi(setup):
    c = setup["client"]
    h = c.get("/health").json()
    assert h["status"] == "ok" and h["items"] >= 12 * 6
    c.get("/api/search", params={"q": "beach"})
    m = c.get("/metrics")
    assert m.headers["content-type"].startswith("text/plain")
    text = m.text
    assert 'xmodal_requests_total{method="GET",route="/api/search",status="200"}' in text
    assert 'xmodal_request_seconds_bucket{route="/api/search",le="+Inf"}' in text
    assert 'xmodal_items{modality="image"}' in text
    paths = c.get("/openapi.json").json()["paths"]
    assert {"/api/search", "/api/search/image", "/api/items", "/api/items/{item_id}", "/api/keys",
            "/api/audit", "/health", "/metrics"} <= set(paths)


def test_an_upload_and_its_captions_are_stored_together_or_not_at_all(setup, monkeypatch):
    """POST /api/items is one add: if the captions cannot be stored (here the text encoder
    fails; a killed server is the same moment), the image must not be left behind alone."""
    s, c, coll = setup, setup["client"], setup["coll"]
    img = Image.open(s["image"]).rotate(90)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    before = coll.count()
    real = coll.encoder

    def text_encoder_dies(modality):
        if modality == "text":
            raise RuntimeError("text encoder died")
        return real(modality)

    monkeypatch.setattr(coll, "encoder", text_encoder_dies)
    with pytest.raises(RuntimeError, match="text encoder died"):
        c.post("/api/items", files={"file": ("r.png", buf.getvalue(), "image/png")},
               data={"captions": "a rotated picture\nturned on its side", "key": "atomic/r.png"},
               headers={"X-API-Key": s["keys"]["write"]})
    assert coll.id_of("atomic/r.png") is None and coll.count() == before
    import hashlib
    stray = coll.path / "files" / f"{hashlib.sha256(buf.getvalue()).hexdigest()}.png"
    assert not stray.exists()  # nor a copy of the upload that no item uses
    monkeypatch.undo()
    r = c.post("/api/items", files={"file": ("r.png", buf.getvalue(), "image/png")},
               data={"captions": "a rotated picture\nturned on its side", "key": "atomic/r.png"},
               headers={"X-API-Key": s["keys"]["write"]})
    assert r.status_code == 201 and r.json()["added"] == 3 and coll.count() == before + 3
    got = c.get(f"/api/items/{r.json()['id']}").json()
    assert got["caption"] == "a rotated picture"
    c.delete(f"/api/items/{r.json()['id']}", headers={"X-API-Key": s["keys"]["write"]})


def test_deleting_an_upload_removes_its_file_and_thumbnails(setup):
    """DELETE /api/items/{id} of an uploaded photo removes the stored copy and its cached
    thumbnails once no other item uses them (same bytes under two keys share one file)."""
    s, c, coll = setup, setup["client"], setup["coll"]
    w = {"X-API-Key": s["keys"]["write"]}
    img = Image.open(s["image"]).transpose(Image.FLIP_TOP_BOTTOM)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    ids = [c.post("/api/items", files={"file": ("p.png", buf.getvalue(), "image/png")},
                  data={"captions": "an upside-down picture", "key": key}, headers=w).json()["id"]
           for key in ("mine/one.png", "mine/two.png")]
    path = Path(c.get(f"/api/items/{ids[0]}").json()["path"])
    assert path.exists() and c.get(f"/api/items/{ids[0]}/thumbnail?size=128").status_code == 200
    thumbs = set((coll.path / "thumbs").glob("*_128*.jpg"))
    assert c.delete(f"/api/items/{ids[0]}", headers=w).status_code == 200
    assert path.exists()  # still the second item's file
    assert c.get(f"/api/items/{ids[1]}/thumbnail?size=128").status_code == 200
    assert c.delete(f"/api/items/{ids[1]}", headers=w).status_code == 200
    assert not path.exists()
    assert len(set((coll.path / "thumbs").glob("*_128*.jpg"))) == len(thumbs) - 1
    # an indexed folder's own files are never touched
    folder_item = coll.list_items("image", 0, 1)[0]
    assert Path(folder_item.path).exists()


def test_labels_sent_over_http_are_checked(setup):
    """A blank label, or one with a comma (search filters are comma-separated, so it could never
    be searched for), is refused naming the field, rather than stored."""
    s, c, coll = setup, setup["client"], setup["coll"]
    w = {"X-API-Key": s["keys"]["write"]}
    for bad in ([""], ["  "], ["a,b"], ["x" * 201]):
        r = c.post("/api/texts", json={"text": "a labelled note", "labels": bad}, headers=w)
        assert r.status_code == 422 and "labels" in r.text, (bad, r.text)
    r = c.post("/api/items", files={"file": ("l.jpg", jpeg_bytes(s["image"]), "image/jpeg")},
               data={"labels": "ok," + "y" * 201}, headers=w)
    assert r.status_code == 422 and "labels" in r.text
    # blanks between commas are dropped, but the error counts in the list as sent
    r = c.post("/api/items", files={"file": ("l.jpg", jpeg_bytes(s["image"]), "image/jpeg")},
               data={"labels": "ok,, ," + "z" * 201}, headers=w)
    assert r.status_code == 422 and "labels[3]" in r.text, r.text
    assert "" not in coll.stats()["labels"] and "a,b" not in coll.stats()["labels"]
    r = c.post("/api/texts", json={"text": "a labelled note", "labels": [" harbour "]}, headers=w)
    assert r.status_code == 201 and c.get(f"/api/items/{r.json()['id']}").json()["labels"] == ["harbour"]
    c.delete(f"/api/items/{r.json()['id']}", headers=w)


def test_writes_that_change_nothing_leave_the_index_files_alone(setup):
    """Re-sending an add that is already stored, or deleting an id that is not there, writes
    nothing: no new generation (every reader would reload), no index files rewritten (each
    write rewrote every index file: gigabytes for a large collection), no audit entry."""
    s, c, coll = setup, setup["client"], setup["coll"]
    w = {"X-API-Key": s["keys"]["write"]}
    first = c.post("/api/texts", json={"text": "a note sent twice"}, headers=w)
    assert first.status_code == 201

    def files():
        return {f.name: f.stat().st_ino for f in (coll.path / "indexes").glob("*.faiss")}

    before, gen = files(), coll.store.generation()
    audit = len(coll.audit_log(10000))
    again = c.post("/api/texts", json={"text": "a note sent twice"}, headers=w)
    assert again.status_code == 200 and again.json()["unchanged"] == 1
    assert c.delete("/api/items/987654321", headers=w).status_code == 404
    assert files() == before and coll.store.generation() == gen and len(coll.audit_log(10000)) == audit
    c.delete(f"/api/items/{first.json()['id']}", headers=w)


def test_replacing_an_upload_removes_the_old_file(setup):
    """Uploading new bytes under an existing key replaces the item; the old photo's stored
    copy must not stay behind on the server's disk."""
    s, c = setup, setup["client"]
    w = {"X-API-Key": s["keys"]["write"]}
    paths = []
    for angle in (180, 270):
        buf = io.BytesIO()
        Image.open(s["image"]).rotate(angle).save(buf, "PNG")
        r = c.post("/api/items", files={"file": ("p.png", buf.getvalue(), "image/png")},
                   data={"key": "mine/replaced.png"}, headers=w)
        assert r.status_code == 201, r.text
        paths.append(Path(c.get(f"/api/items/{r.json()['id']}").json()["path"]))
    assert r.json()["replaced"] == 1 and paths[0] != paths[1]
    assert not paths[0].exists() and paths[1].exists()
    c.delete(f"/api/items/{r.json()['id']}", headers=w)
    assert not paths[1].exists()


def test_uploads_are_found_whatever_the_servers_working_folder(setup, monkeypatch, tmp_path):
    """`xmodal serve -c my.xmc` (a relative path, the usual way) stored uploads as
    'my.xmc/files/…': relative to where the server was started, so a server or command run
    from anywhere else lost every uploaded image (thumbnails 404, encoders skip it)."""
    from xmodal.index import Collection

    s = setup
    monkeypatch.chdir(s["coll"].path.parent)
    client = TestClient(create_app(Collection.open(s["coll"].path.name)))
    buf = io.BytesIO()
    Image.open(s["image"]).transpose(Image.TRANSPOSE).save(buf, "PNG")
    r = client.post("/api/items", files={"file": ("t.png", buf.getvalue(), "image/png")},
                    headers={"X-API-Key": s["keys"]["write"]})
    assert r.status_code == 201, r.text
    new = r.json()["id"]
    assert Path(client.get(f"/api/items/{new}").json()["path"]).is_absolute()
    monkeypatch.chdir(tmp_path)  # the same collection served from elsewhere
    assert s["client"].get(f"/api/items/{new}/thumbnail").status_code == 200
    s["client"].delete(f"/api/items/{new}", headers={"X-API-Key": s["keys"]["write"]})


def test_a_snapshot_carries_the_uploaded_images(setup, tmp_path):
    """`xmodal snapshot` is a self-contained copy to serve elsewhere: the photos uploaded over
    HTTP live inside the collection, so they travel with it (and the copy points at its own)."""
    from xmodal.index import Collection

    s, c, coll = setup, setup["client"], setup["coll"]
    w = {"X-API-Key": s["keys"]["write"]}
    buf = io.BytesIO()
    Image.open(s["image"]).transpose(Image.TRANSVERSE).save(buf, "PNG")
    new = c.post("/api/items", files={"file": ("s.png", buf.getvalue(), "image/png")},
                 data={"captions": "a shipped upload"}, headers=w).json()["id"]
    coll.snapshot(tmp_path / "snap.xmc")
    c.delete(f"/api/items/{new}", headers=w)  # gone from the original, file and all
    with Collection.open(tmp_path / "snap.xmc") as snap:
        got = snap.get_item(new)
        assert Path(got.path).parent == (tmp_path / "snap.xmc" / "files").resolve() and Path(got.path).exists()
        assert TestClient(create_app(snap)).get(f"/api/items/{new}/thumbnail").status_code == 200
        folder_item = snap.list_items("image", 0, 1)[0]
        assert Path(folder_item.path).parent == s["folder"].resolve()  # indexed folders stay where they are


def test_a_moved_or_copied_collection_still_finds_its_uploads(setup, tmp_path):
    """A collection folder copied to another machine (rsync) or moved: the photos uploaded
    over HTTP travel inside it, but their recorded paths named the old place."""
    import shutil

    from xmodal.index import Collection

    s, c = setup, setup["client"]
    w = {"X-API-Key": s["keys"]["write"]}
    buf = io.BytesIO()
    Image.open(s["image"]).rotate(45).save(buf, "PNG")
    new = c.post("/api/items", files={"file": ("m.png", buf.getvalue(), "image/png")},
                 data={"captions": "a copied upload"}, headers=w).json()["id"]
    shutil.copytree(s["coll"].path, tmp_path / "moved.xmc")
    c.delete(f"/api/items/{new}", headers=w)  # the original's copy of the file is gone
    with Collection.open(tmp_path / "moved.xmc") as moved:
        got = moved.get_item(new)
        assert Path(got.path) == (tmp_path / "moved.xmc" / "files" / Path(got.path).name).resolve()
        client = TestClient(create_app(moved))
        assert client.get(f"/api/items/{new}/thumbnail").status_code == 200
        hits = client.get("/api/search", params={"q": "a copied upload", "target": "text", "k": 5}).json()
        mine = [h for h in hits["results"] if h["text"] == "a copied upload"]
        assert mine and mine[0]["thumbnail"] == f"/api/items/{new}/thumbnail"


def test_searches_go_on_while_an_upload_is_being_saved(setup, monkeypatch):
    """An upload rewrites its modality's index files (seconds for a large collection); the
    server held its query-encoder lock and the collection's index lock throughout, so every
    search waited for the disk."""
    import threading

    import xmodal.index.collection as collection_module

    s, c = setup, setup["client"]
    saving, release = threading.Event(), threading.Event()
    real_write = collection_module.atomic_write_bytes

    def slow_disk(dest, data):
        if Path(dest).suffix == ".faiss":
            saving.set()
            release.wait(20)
        return real_write(dest, data)

    monkeypatch.setattr(collection_module, "atomic_write_bytes", slow_disk)
    buf = io.BytesIO()
    Image.open(s["image"]).rotate(30).save(buf, "PNG")
    results = {}

    def upload():
        results["add"] = c.post("/api/items", files={"file": ("u.png", buf.getvalue(), "image/png")},
                                data={"captions": "saved slowly"}, headers={"X-API-Key": s["keys"]["write"]})

    def search():
        results["search"] = c.get("/api/search", params={"q": "green trees", "k": 3})

    adder = threading.Thread(target=upload)
    adder.start()
    try:
        assert saving.wait(30), "the upload never reached its index files"
        searcher = threading.Thread(target=search)
        searcher.start()
        searcher.join(10)
        assert not searcher.is_alive(), "the search waited for the upload's index files"
        assert results["search"].status_code == 200 and len(results["search"].json()["results"]) == 3
    finally:
        release.set()
        adder.join(30)
    assert results["add"].status_code == 201, results["add"].text
    c.delete(f"/api/items/{results['add'].json()['id']}", headers={"X-API-Key": s["keys"]["write"]})


def test_health_and_metrics_reveal_nothing_without_a_key_on_a_private_collection(setup):
    """With public_read off, /health stays open (load balancers send no key) but says only
    that the server is up; /metrics (item counts, the write generation, routes) needs a read
    key, which Prometheus sends as `Authorization: Bearer`. Public collections are as before."""
    s, c = setup, setup["client"]
    read = s["keys"]["read"]
    s["coll"].set_setting("public_read", False)
    try:
        h = c.get("/health")
        assert h.status_code == 200 and h.json() == {"status": "ok"}
        for bad in ({}, {"Authorization": "Bearer xmk_0000_not-a-real-secret"}):
            assert c.get("/health", headers=bad).json() == {"status": "ok"}
            assert c.get("/metrics", headers=bad).status_code == 401
        full = c.get("/health", headers={"X-API-Key": read}).json()
        assert full["items"] == s["coll"].count() and full["generation"] == s["coll"].store.generation()
        m = c.get("/metrics", headers={"Authorization": f"Bearer {read}"})
        assert m.status_code == 200 and 'xmodal_items{modality="image"}' in m.text
        assert c.get(f"/metrics?api_key={read}").status_code == 401  # keys go in a header only
    finally:
        s["coll"].set_setting("public_read", True)
    assert c.get("/health").json()["items"] == s["coll"].count()
    assert "xmodal_generation" in c.get("/metrics").text


def test_a_search_for_a_label_no_item_has_is_refused(setup):
    """Over HTTP an unknown label (a typo) answered an empty list, the command line an error:
    every search route answers 422 naming it and a few labels the collection has."""
    s, c = setup, setup["client"]
    w = {"X-API-Key": s["keys"]["write"]}
    made = c.post("/api/texts", json={"text": "boats moored at a quay", "labels": ["harbour", "quay"]},
                  headers=w).json()["id"]
    known = s["coll"].stats()["labels"]
    assert "harbour" in known
    img = jpeg_bytes(s["image"])
    # searches of texts (the labels are a text's): the answer lists the texts' labels
    answers = [
        c.get("/api/search", params={"q": "houses", "labels": "nosuch", "target": "text"}),
        c.get("/api/search", params={"q": "houses", "labels": f"{known[0]},nosuch", "target": "text"}),
        c.post("/api/search", json={"text": "houses", "labels": ["nosuch"], "target": "text"}),
        c.post("/api/search/batch", json={"texts": ["houses"], "labels": ["nosuch"], "target": "text"}),
        c.post("/api/search/image", files={"file": ("q.jpg", img, "image/jpeg")}, data={"labels": "nosuch"}),
    ]
    for r in answers:
        assert r.status_code == 422, r.text
        detail = r.json()["detail"]
        assert "'nosuch'" in detail and known[0] in detail and "'harbour'" not in detail, detail
    ok = c.get("/api/search", params={"q": "houses", "labels": known[0], "target": "text"})
    assert ok.status_code == 200 and [h["id"] for h in ok.json()["results"]] == [made]
    # a routing server forwards its filter to shards that may lack the label: no 422 there
    fwd = c.post("/api/search", json={"text": "houses", "labels": ["nosuch"], "check_labels": False})
    assert fwd.status_code == 200 and fwd.json()["results"] == []
    c.delete(f"/api/items/{made}", headers=w)


def test_an_add_that_changed_nothing_answers_200_with_the_existing_item(setup):
    """Sending the same upload and captions (or text) again stores nothing: that is not
    201 Created but 200, with the item already there."""
    s, c = setup, setup["client"]
    w = {"X-API-Key": s["keys"]["write"]}
    buf = io.BytesIO()
    Image.open(s["image"]).transpose(Image.ROTATE_90).save(buf, "PNG")
    send = dict(files={"file": ("a.png", buf.getvalue(), "image/png")},
                data={"captions": "sent twice\nthe same captions", "key": "twice/a.png"}, headers=w)
    first = c.post("/api/items", **send)
    assert first.status_code == 201 and first.json()["added"] == 3
    again = c.post("/api/items", **send)
    assert again.status_code == 200, again.text
    body = again.json()
    assert body["id"] == first.json()["id"] and body["added"] == 0 and body["unchanged"] == 3
    assert body["item"]["id"] == body["id"] and body["item"]["key"] == "twice/a.png"
    more = c.post("/api/items", files=send["files"], headers=w,
                  data={"captions": "sent twice\nthe same captions\nand a new one", "key": "twice/a.png"})
    assert more.status_code == 201 and more.json()["added"] == 1
    t1 = c.post("/api/texts", json={"text": "a text sent twice", "key": "twice/t"}, headers=w)
    t2 = c.post("/api/texts", json={"text": "a text sent twice", "key": "twice/t"}, headers=w)
    assert t1.status_code == 201 and t2.status_code == 200 and t2.json()["id"] == t1.json()["id"]
    assert t2.json()["item"]["text"] == "a text sent twice"
    paths = c.get("/openapi.json").json()["paths"]
    for route in ("/api/items", "/api/texts"):
        responses = paths[route]["post"]["responses"]
        assert {"200", "201"} <= set(responses) and "unchanged" in responses["200"]["description"]
    c.delete(f"/api/items/{first.json()['id']}", headers=w)
    c.delete(f"/api/items/{t1.json()['id']}", headers=w)


def test_a_failed_upload_in_a_moved_collection_keeps_the_file_an_older_item_uses(setup, tmp_path):
    """An item uploaded before the collection moved names the file under the old place; a
    failed upload of the same bytes in the moved copy must not delete that one file."""
    import shutil

    from xmodal.index import Collection

    s, c = setup, setup["client"]
    w = {"X-API-Key": s["keys"]["write"]}
    buf = io.BytesIO()
    Image.open(s["image"]).rotate(30).save(buf, "PNG")
    data = buf.getvalue()
    old = c.post("/api/items", files={"file": ("o.png", data, "image/png")}, data={"key": "before/move.png"},
                 headers=w).json()["id"]
    shutil.copytree(s["coll"].path, tmp_path / "moved.xmc")
    c.delete(f"/api/items/{old}", headers=w)
    with Collection.open(tmp_path / "moved.xmc") as moved:
        mc = TestClient(create_app(moved))
        f = Path(moved.get_item(old).path)
        assert f.parent == (tmp_path / "moved.xmc" / "files").resolve() and f.exists()
        other = io.BytesIO()
        Image.open(s["image"]).rotate(60).save(other, "PNG")
        assert mc.post("/api/items", files={"file": ("x.png", other.getvalue(), "image/png")},
                       data={"key": "clash#0"}, headers=w).status_code == 201
        # the same bytes again, its caption key taken by an image: refused, nothing stored
        r = mc.post("/api/items", files={"file": ("o.png", data, "image/png")},
                    data={"key": "clash", "captions": "a caption"}, headers=w)
        assert r.status_code == 400, r.text
        assert f.exists() and Path(moved.get_item(old).path) == f
