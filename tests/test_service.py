"""HTTP API: every role against every route (public and private reading), searches of every
kind, relevance feedback, add/delete with audit, metrics, and hostile uploads."""

import io
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from threadpoolctl import threadpool_limits

from conftest import labelled_photos, ucm_caption_folder, vector_collection
from xmodal.index import build_collection
from xmodal.service import create_app
from xmodal.service.auth import create_key, revoke_key
from xmodal.index import Collection
import json


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
    # a bad key is a bad field: 422 naming it, as every other field's (it was a 400 "item key ...")
    for key in ("../../etc/passwd", "/abs/path.jpg", "a/../../b.jpg", "a\\b.jpg", "ok/./x.jpg", "x" * 2000, "a\tb"):
        r = c.post("/api/items", files={"file": ("x.jpg", img, "image/jpeg")}, data={"key": key}, headers=w)
        assert r.status_code == 422 and r.json()["detail"].startswith("key: item key "), (key, r.text)
        r = c.post("/api/texts", json={"text": "t", "key": key}, headers=w)
        assert r.status_code == 422 and r.json()["detail"].startswith("key: item key "), (key, r.text)
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


def test_http_errors_without_a_body_get_none_and_details_are_scrubbed(tmp_path):
    # the service's HTTPException handler (it scrubs the collection's path from details) kept
    # FastAPI's rule for bodies: 205 (Reset Content) has none, as 204 and 304
    from fastapi import HTTPException
    from fastapi.testclient import TestClient

    from xmodal.service import create_app

    Collection.create(tmp_path / "c", dim=4).close()
    app = create_app(tmp_path / "c")

    @app.get("/probe/{code}")
    def probe(code: int):
        raise HTTPException(code, f"{tmp_path / 'c'}: a detail", headers={"X-Probe": "1"})

    client = TestClient(app)
    for code in (204, 205, 304):
        r = client.get(f"/probe/{code}")
        assert r.status_code == code and r.content == b"" and r.headers["x-probe"] == "1"
    r = client.get("/probe/409")
    assert r.status_code == 409 and r.json() == {"detail": "a detail"} and r.headers["x-probe"] == "1"



# ---------------------------------------------------------------- 5: writes on a read-only server
@pytest.mark.parametrize("keys", [False, True])
def test_a_read_only_server_answers_writes_403_before_checking_the_key(tmp_path, keys):
    from fastapi.testclient import TestClient

    from xmodal.index import Collection
    from xmodal.service import create_app
    from xmodal.service.auth import create_key

    coll = vector_collection(tmp_path / "w.xmc", labelled_photos(tmp_path))
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


@pytest.fixture(scope="module")
def setup_no_raise(tmp_path_factory):
    root, folder, _, mp = ucm_caption_folder(tmp_path_factory, "service_review", 175)  # 12 images
    with threadpool_limits(1):  # see test_collection.py
        coll = build_collection(folder, root / "coll", image_encoder="efficientnet-lite0",
                                text_encoder="tfidf", quiet=True)
        keys = {r: create_key(coll, r, f"review {r}") for r in ("read", "write", "admin")}
        client = TestClient(create_app(coll, max_upload_bytes=2_000_000), raise_server_exceptions=False)
        yield {"coll": coll, "client": client, "keys": keys, "folder": folder,
               "image": sorted(folder.glob("*.jpg"))[0]}
    coll.close()
    mp.undo()


def post_raw(c, url, body: str, headers=None):
    """``body`` sent byte for byte: JSON's "\\ud800" escape (a lone surrogate) is valid JSON
    that no UTF-8 encoder can take."""
    return c.post(url, content=body.encode(), headers={"Content-Type": "application/json", **(headers or {})})


def test_lone_surrogates_anywhere_in_a_request_answer_422_naming_the_field(setup_no_raise):
    """A lone surrogate inside a list (batch texts, labels) or an optional string (space)
    passed validation and crashed the encoder or SQLite: 500 with no JSON."""
    c, w = setup_no_raise["client"], {"X-API-Key": setup_no_raise["keys"]["write"]}
    cases = [
        ("/api/search/batch", '{"texts": ["ok", "ab\\ud800cd"]}', {}, "texts"),
        ("/api/search/batch", '{"texts": ["ok"], "labels": ["\\ud800"]}', {}, "labels"),
        ("/api/search", '{"text": "a beach", "labels": ["\\ud800"]}', {}, "labels"),
        ("/api/search", '{"text": "a beach", "space": "\\ud800"}', {}, "space"),
        ("/api/texts", '{"text": "a note", "labels": ["x\\ud800"]}', w, "labels"),
        ("/api/texts", '{"text": "a note", "key": "k\\udfff"}', w, "key"),
    ]
    for url, body, headers, field in cases:
        r = post_raw(c, url, body, headers)
        assert r.status_code == 422, (url, body, r.status_code, r.text)
        assert r.headers["content-type"] == "application/json"
        assert field in json.dumps(r.json()["detail"]), (url, body, r.text)


def test_search_label_filters_are_trimmed_as_stored_labels_are(setup_no_raise):
    """Labels are stored trimmed (" harbour " is "harbour"), and the 422 for an unknown one
    lists them as "harbour, quay"; a filter typed the same way ("harbour, quay") answered 422
    "no item has the label ' quay'" on every search route, and a stray comma ("harbour,") or
    a blank between commas in the image search form the same for ''."""
    s, c = setup_no_raise, setup_no_raise["client"]
    w = {"X-API-Key": s["keys"]["write"]}
    made = c.post("/api/texts", json={"text": "boats moored at a quay", "labels": ["harbour", "quay"]},
                  headers=w).json()["id"]
    img = s["image"].read_bytes()
    try:
        answers = [
            c.get("/api/search", params={"q": "boats", "labels": "harbour, quay", "target": "text"}),
            c.get("/api/search", params={"q": "boats", "labels": " quay ,", "target": "text"}),
            c.post("/api/search", json={"text": "boats", "labels": [" harbour"], "target": "text"}),
            c.post("/api/search/batch", json={"texts": ["boats"], "labels": ["quay "], "target": "text"}),
            c.post("/api/search/image", files={"file": ("q.jpg", img, "image/jpeg")},
                   data={"labels": "harbour, , quay", "target": "text"}),
        ]
        for r in answers:
            assert r.status_code == 200, r.text
            res = r.json()["queries"][0]["results"] if "queries" in r.json() else r.json()["results"]
            assert [h["id"] for h in res] == [made], r.text
        # still refused: a label no item has, trimmed in the message
        r = c.get("/api/search", params={"q": "boats", "labels": "harbour, nosuch"})
        assert r.status_code == 422 and "'nosuch'" in r.json()["detail"], r.text
    finally:
        c.delete(f"/api/items/{made}", headers=w)


def test_a_streamed_body_over_the_limit_answers_413(setup_no_raise):
    """A body sent without Content-Length (chunked: `curl -T -`, a streaming client) was cut
    off at the limit inside FastAPI's body parser, which answered 400 "There was an error
    parsing the body": the caller could not tell that the upload was too large."""
    s, c = setup_no_raise, setup_no_raise["client"]
    w = {"X-API-Key": s["keys"]["write"]}

    def chunks(total, head=b""):
        yield head
        sent = 0
        while sent < total:
            yield b" " * 65536
            sent += 65536

    for url, headers, head in (
            ("/api/search", {"Content-Type": "application/json"}, b'{"text": "x"'),
            ("/api/items", {**w, "Content-Type": "multipart/form-data; boundary=B"},
             b'--B\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n'
             b"Content-Type: image/jpeg\r\n\r\n"),
            ("/api/search/image", {"Content-Type": "multipart/form-data; boundary=B"},
             b'--B\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n'
             b"Content-Type: image/jpeg\r\n\r\n")):
        r = c.post(url, content=chunks(2_100_000, head), headers=headers)
        assert r.status_code == 413, (url, r.status_code, r.text)
        assert "over 2000000 bytes" in r.json()["detail"]
    # under the limit, streamed, all is as before
    ok = c.post("/api/search", content=iter([b'{"text": "a beach", ', b'"k": 2}']),
                headers={"Content-Type": "application/json"})
    assert ok.status_code == 200 and len(ok.json()["results"]) == 2


def test_thumbnails_are_served_when_the_cache_cannot_be_written(setup_no_raise, monkeypatch):
    """A collection on a read-only mount is served read-only by itself (README), but each
    thumbnail was written to thumbs/ before it was sent: the write's OSError (EROFS, a full
    disk) made every thumbnail a 500, so the web page showed no pictures."""
    import errno

    import xmodal.service.app as app_module

    s, c = setup_no_raise, setup_no_raise["client"]

    def read_only_disk(dest, data):
        raise OSError(errno.EROFS, "Read-only file system", str(dest))

    monkeypatch.setattr(app_module, "atomic_write_bytes", read_only_disk)
    item = s["coll"].list_items("image", 0, 1)[0]
    r = c.get(f"/api/items/{item.id}/thumbnail", params={"size": 512})  # not cached by other tests
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/jpeg" and r.content[:2] == b"\xff\xd8"
    assert not list((s["coll"].path / "thumbs").glob("*_512*.jpg"))


def test_a_blank_text_query_answers_422_naming_the_field(setup_no_raise):
    """A query of spaces answered 400 "text query is empty": another status than every other
    bad field (422) and no field named; the batch route already said texts[i]."""
    c = setup_no_raise["client"]
    for r, field in ((c.get("/api/search", params={"q": "   "}), "q"),
                     (c.post("/api/search", json={"text": " \t\n "}), "text")):
        assert r.status_code == 422, r.text
        assert r.json()["detail"].startswith(f"{field}: "), r.text


def test_an_unexpected_failure_answers_json_without_the_exception(setup_no_raise, monkeypatch):
    """An error the code did not foresee (an encoder dying, a disk error) answered Starlette's
    text/plain "Internal Server Error": the web page and API clients expect {"detail": ...}.
    The exception itself (paths, internals) stays in the server log."""
    s, c = setup_no_raise, setup_no_raise["client"]

    def dies(text):
        raise RuntimeError("encoder died in /secret/place")

    monkeypatch.setattr(s["coll"], "encode_query_text", dies)
    r = c.get("/api/search", params={"q": "a beach"})
    assert r.status_code == 500 and r.headers["content-type"] == "application/json"
    assert "internal" in r.json()["detail"] and "/secret/place" not in r.text


def test_an_uploads_captions_have_the_same_limit_as_a_text(setup_no_raise):
    """POST /api/texts refuses a text over 10,000 characters; the same text sent as a caption
    of an upload was stored whole (a 200,000-character caption went into the index)."""
    import io

    from PIL import Image

    s, c, coll = setup_no_raise, setup_no_raise["client"], setup_no_raise["coll"]
    w = {"X-API-Key": s["keys"]["write"]}
    buf = io.BytesIO()
    Image.open(s["image"]).rotate(15).save(buf, "PNG")
    before = coll.count()
    r = c.post("/api/items", files={"file": ("c.png", buf.getvalue(), "image/png")},
               data={"captions": "a fine caption\n" + "x" * 10001, "key": "long/caption.png"}, headers=w)
    assert r.status_code == 422 and r.json()["detail"].startswith("captions[1]: "), r.text
    assert coll.count() == before and coll.id_of("long/caption.png") is None


def test_nan_or_infinite_numbers_in_a_search_answer_422_naming_the_field(setup_no_raise):
    """NaN / Infinity (Python's json and many clients write them) in `vector` or the Rocchio
    weights passed validation: the answer was "vectors hold NaN or inf" naming no field, or
    with no feedback ids a 200 as if the weight were fine."""
    c = setup_no_raise["client"]
    some = setup_no_raise["coll"].list_items("image", 0, 1)[0].id
    width = setup_no_raise["coll"].dim
    cases = [('{"vector": [NaN%s]}' % (", 0" * (width - 1)), "vector"),
             ('{"vector": [Infinity%s]}' % (", 0" * (width - 1)), "vector"),
             ('{"text": "a beach", "alpha": NaN}', "alpha"),
             ('{"text": "a beach", "beta": Infinity, "relevant": [%d]}' % some, "beta"),
             ('{"text": "a beach", "gamma": -Infinity, "nonrelevant": [%d]}' % some, "gamma")]
    for body, field in cases:
        r = post_raw(c, "/api/search", body)
        assert r.status_code == 422, (body[:60], r.text)
        assert r.json()["detail"][0]["loc"][:2] == ["body", field], (body[:60], r.text)


CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def page_of(setup_no_raise):
    """The web page over the module's collection in headless chromium (skipped without it)."""
    from pathlib import Path

    from conftest import serving

    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed in .venv")
    args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
    with serving(create_app(setup_no_raise["coll"])) as url, sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=args, headless=True)
        yield lambda: (b.new_page(bypass_csp=True), url)  # CSP: test_browser.py
        b.close()


@pytest.mark.browser
def test_the_page_shows_a_validation_error_as_field_and_message(page_of):
    """A shared link with k=5000 (over the API's 1000) showed the raw pydantic list:
    'Error 422: [{"type":"less_than_equal","loc":["body","k"],...}]'."""
    page, url = page_of()
    page.goto(url + "/#q=a%20beach&k=5000")
    page.wait_for_function("document.querySelector('#status').textContent.startsWith('Error')")
    status = page.inner_text("#status")
    assert status.startswith("Error 422: k: ") and "1000" in status, status
    assert "loc" not in status and "{" not in status, status
    page.close()


@pytest.mark.browser
def test_a_slow_answer_does_not_overwrite_a_newer_search(setup_no_raise, page_of, monkeypatch):
    """Searches are not cancelled: a slow text query answered after a newer search (a click
    on a result, a link followed) replaced its results and status, so the page showed the
    old query's results under the new URL."""
    import threading
    import time

    coll = setup_no_raise["coll"]
    real = coll.encode_query_text
    released = threading.Event()

    def slow(text):
        if "slowly" in text:
            released.wait(10)
        return real(text)

    monkeypatch.setattr(coll, "encode_query_text", slow)
    item = coll.list_items("image", 0, 1)[0].id
    page, url = page_of()
    try:
        page.goto(url + "/#q=searched%20slowly")
        time.sleep(0.5)  # the slow search is in flight
        page.evaluate(f"location.hash = 'item={item}&target=image'")  # followed a link: a newer search
        page.wait_for_function("document.querySelector('#status').textContent.includes('for item')")
        released.set()
        time.sleep(1.5)  # the slow answer arrives
        status = page.inner_text("#status")
        assert f"for item {item}" in status and "slowly" not in status, status
        ids = [int(x) for x in page.eval_on_selector_all(".card", "cs => cs.map(c => c.dataset.id)")]
        assert item not in ids and ids, ids  # more like this: the item itself left out
    finally:
        released.set()
        page.close()


def test_uploads_accept_phone_formats_and_check_large_jpegs_as_decoded():
    import io

    from fastapi import HTTPException
    from PIL import Image

    from xmodal.service.app import check_image_bytes

    def saved(fmt: str, size=(200, 160)) -> bytes:
        buf = io.BytesIO()
        im = Image.new("RGB", size, (120, 30, 200))
        extra = {"save_all": True, "append_images": [im.copy()]} if fmt == "MPO" else {}
        im.save(buf, fmt, **extra)
        return buf.getvalue()

    assert check_image_bytes(saved("MPO")) == "MPO"  # many phones write multi-picture JPEGs
    # a JPEG over the pixel limit is read at reduced scale, as the encoders read it ...
    assert check_image_bytes(saved("JPEG"), max_pixels=200 * 160 // 16) == "JPEG"
    # ... other formats, and JPEGs too large even at 1/8 scale, are refused
    for data in (saved("PNG"), saved("JPEG", (2000, 1600))):
        with pytest.raises(HTTPException) as err:
            check_image_bytes(data, max_pixels=200 * 160 // 16)
        assert err.value.status_code == 413


def test_thumbnails_cached_by_an_older_xmodal_are_not_served(setup_no_raise):
    """Older thumbnails were decoded without the EXIF orientation and with transparency on
    black: a cached one under the old name is made anew, not served."""
    from xmodal.index.collection import thumb_file

    s, c = setup_no_raise, setup_no_raise["client"]
    item = s["coll"].list_items("image", 1, 1)[0]
    tag = s["coll"].store.query("SELECT content_hash FROM items WHERE id = ?", (item.id,))[0][0]
    old = s["coll"].path / "thumbs" / f"{tag}_256.jpg"
    old.parent.mkdir(exist_ok=True)
    stale = b"\xff\xd8 an old sideways thumbnail"
    old.write_bytes(stale)
    thumb_file(s["coll"].path / "thumbs", tag, 256).unlink(missing_ok=True)  # made by an earlier test?
    r = c.get(f"/api/items/{item.id}/thumbnail", params={"size": 256})
    assert r.status_code == 200 and r.content != stale
    assert thumb_file(s["coll"].path / "thumbs", tag, 256).read_bytes() == r.content
    assert not old.exists()  # the older one is replaced, not left beside it


def test_a_large_single_scan_jpeg_gets_a_thumbnail_and_uploads_scale_down_exactly(tmp_path, monkeypatch):
    import io
    from types import SimpleNamespace

    from fastapi import HTTPException
    from PIL import Image

    import xmodal.service.app as app_module
    from xmodal.service.app import check_image_bytes, make_thumbnail

    # over twice Pillow's limit, which refuses it at open: decoded at 1/8 scale as the encoders do
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 4000)
    monkeypatch.setattr(app_module, "MAX_IMAGE_PIXELS", 4000)
    Image.new("RGB", (400, 320), (10, 200, 30)).save(tmp_path / "big.jpg")
    coll = SimpleNamespace(store=SimpleNamespace(query=lambda *a: []), path=tmp_path / "coll")
    thumb = Image.open(io.BytesIO(make_thumbnail(coll, 7, str(tmp_path / "big.jpg"), 32)))
    assert max(thumb.size) == 32
    monkeypatch.undo()
    # a side that is no multiple of 8 still decodes at 1/8 (not 1/4) for the check
    buf = io.BytesIO()
    Image.new("RGB", (2001, 1601), (1, 2, 3)).save(buf, "JPEG")
    assert check_image_bytes(buf.getvalue(), max_pixels=260 * 210) == "JPEG"
    buf = io.BytesIO()
    Image.new("RGB", (400, 320), (1, 2, 3)).save(buf, "JPEG", progressive=True)
    with pytest.raises(HTTPException) as err:  # progressive: its memory follows the full size
        check_image_bytes(buf.getvalue(), max_pixels=400 * 320 // 16)
    assert err.value.status_code == 413


def test_validation_errors_are_strict_json_and_blank_list_labels_are_dropped(setup_no_raise):
    import json

    c = setup_no_raise["client"]

    def strict(text):
        return json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in a JSON answer"))

    r = post_raw(c, "/api/search", '{"vector": [NaN, 1.0], "k": Infinity}')
    assert r.status_code == 422
    assert {tuple(e["loc"])[-1] for e in strict(r.text)["detail"]} >= {"k"}
    r = c.post("/api/search", json={"text": "a river", "labels": [" ", ""]})
    assert r.status_code == 200, r.text
