"""Behaviour of the HTTP service that mutation testing found unchecked (session 18): each test
here failed against at least one changed copy of src/xmodal/service/{app,auth,checks,
middleware}.py that every other service test passed. A small Wikipedia collection
(bag-of-words texts, each article's image stored at its text's vector): no image encoding."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
from fastapi.testclient import TestClient

from conftest import DATA, need
from xmodal.index.collection import Collection, TextItem
from xmodal.service import create_app
from xmodal.service.auth import PREFIX, create_key

N = 12  # Wikipedia test articles


@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    need("wikipedia")
    from xmodal.data import load_wikipedia
    from xmodal.encoders import get_encoder

    ds = load_wikipedia(str(DATA)).subset("test")
    texts = [ds.texts[i][:400] for i in range(N)]
    enc = get_encoder("bow", "text").fit(texts, progress=False)
    coll = Collection.create(tmp_path_factory.mktemp("mut") / "c.xmc", dim=enc.dim, text_encoder=enc)
    labels = [["even" if i % 2 == 0 else "odd"] for i in range(N)]
    coll.add_vectors("image", [f"wiki/{i}.jpg" for i in range(N)], enc.encode(texts, progress=False),
                     labels=labels)
    coll.add_items(texts=[TextItem(f"wiki/{i}.jpg#0", t, pair_key=f"wiki/{i}.jpg", labels=labels[i])
                          for i, t in enumerate(texts)], progress=False)
    keys = {r: create_key(coll, r, f"mut {r}") for r in ("read", "write", "admin")}
    yield {"coll": coll, "c": TestClient(create_app(coll), raise_server_exceptions=False), "keys": keys,
           "texts": texts}
    coll.close()


def hdr(svc, role: str) -> dict[str, str]:
    return {"X-API-Key": svc["keys"][role]}


# ------------------------------------------------------------------ auth
def test_a_known_key_id_with_a_wrong_secret_is_refused(svc):
    """Only the salted hash of the secret authenticates: a token naming a real key id with any
    other secret (or none) is a 401, on every route, never the key's role."""
    c = svc["c"]
    token = svc["keys"]["admin"]
    key_id, _, secret = token[len(PREFIX):].partition("_")
    forged = [f"{PREFIX}{key_id}_{'A' * len(secret)}", f"{PREFIX}{key_id}_{secret[:-1]}",
              f"{PREFIX}{key_id}_", f"{PREFIX}{key_id}", token + "x", "xmq_" + token[len(PREFIX):]]
    for bad in forged:
        for h in ({"X-API-Key": bad}, {"Authorization": f"Bearer {bad}"}):
            r = c.get("/api/keys", headers=h)
            assert r.status_code == 401, (bad, r.status_code)
            assert r.json()["detail"] == "invalid or revoked API key"
            assert r.headers["www-authenticate"] == "Bearer"
    assert c.get("/api/keys", headers={"X-API-Key": token}).status_code == 200
    # an over-long token is refused before any lookup
    assert c.get("/api/keys", headers={"X-API-Key": token + "A" * 200}).status_code == 401


def test_tokens_carry_a_256_bit_secret_and_keys_keep_their_names(svc):
    c = svc["c"]
    r = c.post("/api/keys", json={"role": "read", "name": "grafana"}, headers=hdr(svc, "admin"))
    assert r.status_code == 201
    made = r.json()
    assert made["token"].startswith(PREFIX) and made["name"] == "grafana" and made["role"] == "read"
    key_id, _, secret = made["token"][len(PREFIX):].partition("_")
    assert key_id == made["key_id"]
    assert len(base64.urlsafe_b64decode(secret + "=" * (-len(secret) % 4))) == 32  # 256 bits, as documented
    listed = {k["key_id"]: k for k in c.get("/api/keys", headers=hdr(svc, "admin")).json()["keys"]}
    assert listed[key_id]["name"] == "grafana" and listed[key_id]["role"] == "read"
    assert listed[key_id]["revoked"] is False and listed[key_id]["revoked_at"] is None
    assert c.get("/api/info", headers={"X-API-Key": made["token"]}).status_code == 200
    gone = c.delete(f"/api/keys/{key_id}", headers=hdr(svc, "admin"))
    assert gone.status_code == 200 and gone.json() == {"revoked": key_id, "key_id": key_id}
    listed = {k["key_id"]: k for k in c.get("/api/keys", headers=hdr(svc, "admin")).json()["keys"]}
    assert listed[key_id]["revoked"] is True and listed[key_id]["revoked_at"] > listed[key_id]["created"]
    r = c.get("/api/info", headers={"X-API-Key": made["token"]})
    assert r.status_code == 401
    # both writes are in the audit log, newest first, with the admin key's id and the client
    admin_id = svc["keys"]["admin"][len(PREFIX):].split("_")[0]
    log = c.get("/api/audit", params={"limit": 2}, headers=hdr(svc, "admin")).json()["entries"]
    assert [(e["action"], e["detail"]["key_id"], e["actor"], e["remote"]) for e in log] == [
        ("revoke_key", key_id, f"key:{admin_id}", "testclient"), ("create_key", key_id, f"key:{admin_id}", "testclient")]
    assert log[1]["detail"] == {"key_id": key_id, "role": "read", "name": "grafana"}
    # revoking it again: no active key of that id
    r = c.delete(f"/api/keys/{key_id}", headers=hdr(svc, "admin"))
    assert r.status_code == 404 and key_id in r.json()["detail"]


# ------------------------------------------------------------------ body limit
def _asgi(mw, headers: dict[bytes, bytes], chunks: list[bytes]) -> tuple[int, bytes, int]:
    """``mw`` (wrapping an app that reads the whole body, then answers 200) sent ``chunks``:
    (status, body, bytes the app read)."""
    import asyncio

    got = {"read": 0}

    async def app(scope, receive, send):
        while True:
            msg = await receive()
            got["read"] += len(msg.get("body", b""))
            if not msg.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    msgs = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
    sent = []

    async def receive():
        return msgs.pop(0)

    async def send(msg):
        sent.append(msg)

    scope = {"type": "http", "method": "POST", "path": "/api/search", "headers": list(headers.items())}
    asyncio.run(mw(app)(scope, receive, send))
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    return status, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body"), got["read"]


def test_the_body_limit_is_exact_declared_or_streamed_and_multipart_has_its_own():
    from xmodal.service.middleware import BodyLimit

    def mw(app):
        return BodyLimit(app, limit=2000, json_limit=1000)

    json_h = {b"content-type": b"application/json"}
    multi = {b"content-type": b"Multipart/Form-Data; boundary=x"}  # the type's case does not matter
    for headers, limit in ((json_h, 1000), ({}, 1000), (multi, 2000)):
        for declared in (True, False):
            for n, ok in ((limit, True), (limit + 1, False)):
                h = {**headers, b"content-length": str(n).encode()} if declared else headers
                status, body, read = _asgi(mw, h, [b"x" * (n // 2), b"x" * (n - n // 2)])
                if ok:
                    assert (status, read) == (200, n), (headers, declared, n, status)
                else:
                    assert status == 413, (headers, declared, n, status)
                    assert json.loads(body) == {"detail": f"request body over {limit} bytes"}
                    assert read <= limit  # a declared size over the limit is refused before reading
                    if declared:
                        assert read == 0
    # a Content-Length that is no size at all is refused as one over the limit
    for bad in (b"-1", b"abc"):
        status, _, read = _asgi(mw, {b"content-length": bad}, [b"x"])
        assert (status, read) == (413, 0), bad
    # the JSON limit never exceeds the upload limit; sizes in whole MiB are named so
    assert BodyLimit(None, limit=500, json_limit=1000).json_limit == 500
    assert BodyLimit(None, limit=500).json_limit == 500
    status, body, _ = _asgi(lambda app: BodyLimit(app, limit=3 << 20), {b"content-length": b"3145729"}, [b""])
    assert status == 413 and json.loads(body)["detail"] == "request body over 3 MiB"
    status, body, _ = _asgi(lambda app: BodyLimit(app, limit=(1 << 20) + 1), {b"content-length": b"9999999"}, [b""])
    assert json.loads(body)["detail"] == f"request body over {(1 << 20) + 1} bytes"
    status, body, _ = _asgi(lambda app: BodyLimit(app, limit=512 << 10), {b"content-length": b"9999999"}, [b""])
    assert json.loads(body)["detail"] == f"request body over {512 << 10} bytes"


# ------------------------------------------------------------------ rate limit
class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_rate_limit_refills_gradually_and_retry_after_rounds_up(svc):
    """A token every 60/N s, never more than N saved up; Retry-After is the whole seconds until
    the next one (rounded up, at least 1), and the 429 is JSON naming the limit."""
    clock = Clock()
    c = TestClient(create_app(svc["coll"], rate_limit=4, clock=clock))  # a token each 15 s
    assert [c.get("/api/info").status_code for _ in range(5)] == [200] * 4 + [429]
    r = c.get("/api/info")
    assert r.status_code == 429 and r.headers["retry-after"] == "15"
    assert r.headers["content-type"] == "application/json"
    assert r.json() == {"detail": "rate limit: 4 requests a minute per client; retry after 15 s"}
    assert r.headers["x-content-type-options"] == "nosniff"  # the 429 passes the security headers
    clock.now += 5.5  # a third of a token (refused requests took none): 9.5 s to go
    assert c.get("/api/info").headers["retry-after"] == "10"
    clock.now += 9.4999  # a hair short of one token: still refused, told 1 s
    r = c.get("/api/info")
    assert r.status_code == 429 and r.headers["retry-after"] == "1"
    clock.now += 0.0002
    assert c.get("/api/info").status_code == 200
    assert c.get("/api/info").status_code == 429
    clock.now += 3600  # an hour idle saves up N tokens, not more
    assert [c.get("/api/info").status_code for _ in range(5)] == [200] * 4 + [429]
    # the page's files and an image's thumbnail are not API requests
    clock.now += 3600
    for _ in range(6):
        assert c.get("/static/app.js").status_code == 200
        assert c.get("/api/items/1/thumbnail").status_code != 429
    assert c.get("/api/info").status_code == 200


def test_rate_limit_buckets_are_per_client_address(svc):
    import asyncio

    import httpx

    clock = Clock()
    app = create_app(svc["coll"], rate_limit=2, clock=clock)

    async def go(addr: str) -> list[int]:
        t = httpx.ASGITransport(app=app, client=(addr, 1234))
        async with httpx.AsyncClient(transport=t, base_url="http://t") as c:
            return [(await c.get("/api/info")).status_code for _ in range(3)]

    assert asyncio.run(go("10.0.0.1")) == [200, 200, 429]
    assert asyncio.run(go("10.0.0.2")) == [200, 200, 429]
    assert asyncio.run(go("10.0.0.1")) == [429] * 3


# ------------------------------------------------------------------ metrics, headers, HEAD
def test_metrics_count_each_request_once_in_cumulative_buckets():
    from types import SimpleNamespace

    from xmodal.service.middleware import Metrics

    m = Metrics()
    for method, status, secs in (("GET", 200, 0.001), ("GET", 200, 0.003), ("POST", 429, 20.0)):
        m.observe(method, "/api/x", status, secs)
    coll = SimpleNamespace(count=lambda modality: {"image": 7, "text": 9}[modality],
                           store=SimpleNamespace(generation=lambda: 42))
    lines = m.render(coll).splitlines()
    assert 'xmodal_requests_total{method="GET",route="/api/x",status="200"} 2' in lines
    assert 'xmodal_requests_total{method="POST",route="/api/x",status="429"} 1' in lines
    buckets = {ln.split('le="')[1].split('"')[0]: int(ln.rsplit(" ", 1)[1]) for ln in lines
               if ln.startswith("xmodal_request_seconds_bucket")}
    # cumulative: a request counts in every bucket at or above its time (le: "less or equal")
    assert buckets["0.001"] == 1 and buckets["0.0025"] == 1 and buckets["0.005"] == 2
    assert buckets["10"] == 2 and buckets["+Inf"] == 3 and len(buckets) == len(Metrics.BUCKETS) + 1
    assert 'xmodal_request_seconds_sum{route="/api/x"} 20.004000' in lines
    assert 'xmodal_request_seconds_count{route="/api/x"} 3' in lines
    assert 'xmodal_items{modality="image"} 7' in lines and 'xmodal_items{modality="text"} 9' in lines
    assert "xmodal_generation 42" in lines
    # each family is declared with its type (Prometheus reads _bucket/_sum/_count as a histogram only so)
    for family, kind in (("xmodal_requests_total", "counter"), ("xmodal_request_seconds", "histogram"),
                         ("xmodal_items", "gauge"), ("xmodal_generation", "gauge")):
        at = lines.index(f"# TYPE {family} {kind}")
        assert lines[at - 1].startswith(f"# HELP {family} "), family
        assert lines[at + 1].startswith(family), family


def test_metrics_through_the_app_name_the_route_and_status(svc):
    c = TestClient(create_app(svc["coll"]), raise_server_exceptions=False)
    c.get("/api/items/1")
    c.get("/api/items/999999")
    c.get("/no/such/route")
    c.post("/api/search", json={"text": "x"}, headers={"X-API-Key": "xmk_nope_nope"})
    text = c.get("/metrics").text
    assert 'xmodal_requests_total{method="GET",route="/api/items/{item_id}",status="200"} 1' in text
    assert 'xmodal_requests_total{method="GET",route="/api/items/{item_id}",status="404"} 1' in text
    assert 'xmodal_requests_total{method="GET",route="other",status="404"} 1' in text
    assert 'xmodal_requests_total{method="POST",route="/api/search",status="401"} 1' in text
    assert 'xmodal_request_seconds_count{route="/api/items/{item_id}"} 2' in text
    assert f'xmodal_items{{modality="image"}} {N}' in text and f'xmodal_items{{modality="text"}} {N}' in text


def test_security_headers_keep_a_routes_own_and_the_csp_is_the_pages_only(svc):
    from xmodal.service.middleware import PAGE_CSP, SecurityHeaders

    c = svc["c"]
    page = c.get("/")
    assert page.headers["content-security-policy"] == PAGE_CSP and page.headers["x-frame-options"] == "DENY"
    for url in ("/api/info", "/static/app.js", "/health", "/nope"):
        r = c.get(url)
        assert "content-security-policy" not in r.headers and "x-frame-options" not in r.headers, url
    # a header the answer already has is not sent twice, nor overridden
    import asyncio

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": [(b"Referrer-Policy", b"same-origin")]})
        await send({"type": "http.response.body", "body": b""})

    sent = []

    async def send(msg):
        sent.append(msg)

    asyncio.run(SecurityHeaders(app)({"type": "http", "path": "/"}, None, send))
    names = [k.lower() for k, _ in sent[0]["headers"]]
    assert sorted(names) == sorted([b"referrer-policy", b"x-content-type-options", b"content-security-policy",
                                    b"x-frame-options"])
    assert (b"Referrer-Policy", b"same-origin") in sent[0]["headers"]


def test_head_and_trailing_slashes(svc):
    c = svc["c"]
    g = c.get("/api/items/1")
    h = c.head("/api/items/1")
    assert h.status_code == 200 and h.content == b"" and h.headers["content-type"] == g.headers["content-type"]
    assert c.get("/api/items/1/").json() == g.json()
    assert c.get("/api/items/1//").json() == g.json()
    assert c.head("/api/items/1/").status_code == 200 and c.head("/api/items/1/").content == b""
    assert c.head("/api/items/999999").status_code == 404
    assert c.get("/").status_code == 200 and c.get("/").headers["content-type"].startswith("text/html")
    # a write with a trailing slash is the same route (and the same 401 without a key)
    assert c.post("/api/texts/", json={"text": "x"}).status_code == 401
    assert c.delete("/api/items/1/").status_code == 401


# ------------------------------------------------------------------ texts and thumbnails
def test_a_text_added_as_a_caption_names_an_image_item(svc):
    c, coll = svc["c"], svc["coll"]
    w = hdr(svc, "write")
    img = coll.list_items("image", 0, 1)[0]
    txt = coll.list_items("text", 0, 1)[0]
    r = c.post("/api/texts", json={"text": "a caption sent later", "pair_id": img.id, "key": "late/cap-1"},
               headers=w)
    assert r.status_code == 201, r.text
    item = r.json()["item"]
    assert item["pair_id"] == img.id and item["caption"] == "a caption sent later" and item["key"] == "late/cap-1"
    for bad in (txt.id, 10**9):  # a text item, or no item at all: 404 naming the id
        r = c.post("/api/texts", json={"text": "another", "pair_id": bad}, headers=w)
        assert r.status_code == 404 and r.json()["detail"] == f"no image item with id {bad}", r.text
    assert c.delete(f"/api/items/{item['id']}", headers=w).json() == {"deleted": [item["id"]]}


def _png_claiming(w: int, h: int) -> bytes:
    """A small PNG whose header claims ``w`` x ``h`` pixels (a decompression bomb's shape)."""
    import io
    import struct
    import zlib

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (2, 2)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    ihdr = struct.pack(">II", w, h) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(data)


def test_a_thumbnail_of_a_stored_bomb_is_413_and_of_a_broken_file_500(svc, tmp_path):
    c, coll = svc["c"], svc["coll"]
    from PIL import Image

    bomb, broken, good = tmp_path / "bomb.png", tmp_path / "broken.png", tmp_path / "good.png"
    bomb.write_bytes(_png_claiming(20000, 20000))  # 400 Mpx: over every limit
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    Image.new("RGB", (40, 30), (0, 128, 255)).save(good)
    vec = np.zeros((3, coll.dim), dtype=np.float32)
    vec[:, 0] = 1
    keys = ["thumb/bomb.png", "thumb/broken.png", "thumb/good.png"]
    coll.add_vectors("image", keys, vec, paths=[str(bomb), str(broken), str(good)])
    try:
        ids = [coll.id_of(k) for k in keys]
        # a public collection's thumbnail may be kept by shared caches; a private one's only by the client
        r = c.get(f"/api/items/{ids[2]}/thumbnail", params={"size": 128})
        assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
        assert r.headers["cache-control"] == "max-age=3600"
        coll.set_setting("public_read", False)
        try:
            assert c.get(f"/api/items/{ids[2]}/thumbnail").status_code == 401
            r = c.get(f"/api/items/{ids[2]}/thumbnail", headers=hdr(svc, "read"))
            assert r.status_code == 200 and r.headers["cache-control"] == "private, max-age=3600"
        finally:
            coll.set_setting("public_read", True)
        r = c.get(f"/api/items/{ids[0]}/thumbnail")
        assert r.status_code == 413 and r.json()["detail"].startswith(f"item {ids[0]}: cannot thumbnail the image")
        assert "decompression bomb" in r.json()["detail"]
        r = c.get(f"/api/items/{ids[1]}/thumbnail")
        assert r.status_code == 500 and r.json()["detail"].startswith(f"item {ids[1]}: cannot thumbnail the image")
    finally:
        coll.delete(keys=keys)


def test_rate_limit_forgets_a_bucket_the_moment_it_is_full_again():
    from xmodal.service.middleware import RateLimit

    now = [0.0]
    rl = RateLimit(None, per_minute=60, clock=lambda: now[0])  # one token a second, exactly
    rl.MAX_CLIENTS = 1
    assert rl.take("a") == 0.0  # 59 of 60 left
    now[0] = 0.5
    assert rl.take("b") == 0.0  # a: 59.5, not full: kept past the bound
    assert list(rl.buckets) == ["a", "b"]
    now[0] = 1.0
    assert rl.take("c") == 0.0  # a: exactly full again: forgotten; b (59.5) stops the sweep
    assert list(rl.buckets) == ["b", "c"]


def test_an_upload_between_one_and_two_pillow_limits_is_refused_without_a_warning():
    """Pillow warns (DecompressionBombWarning) on opening 89-179 Mpx images; the upload check
    refuses them itself with 413, naming the size, and the warning is not spread into the log."""
    import warnings

    from fastapi import HTTPException

    from xmodal.service.checks import check_image_bytes

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(HTTPException) as got:
            check_image_bytes(_png_claiming(10000, 10000), "big.png")
    assert got.value.status_code == 413
    assert got.value.detail.startswith("big.png: image is 10000x10000 = 100000000 pixels, over the limit of 40000000")


def test_uploads_are_checked_by_format_and_by_their_decoded_pixels():
    import io

    from fastapi import HTTPException
    from PIL import Image

    from xmodal.service.checks import check_image_bytes

    def encoded(fmt: str, size=(8, 6), **kw) -> bytes:
        buf = io.BytesIO()
        Image.new("RGB", size, (200, 10, 10)).save(buf, fmt, **kw)
        return buf.getvalue()

    for fmt in ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP"):
        assert check_image_bytes(encoded(fmt)) == fmt
    for data, status, says in ((b"", 400, "x.img: empty upload (0 bytes)"),
                               (b"not an image at all", 415, "x.img: not an image Pillow can read"),
                               (encoded("PPM"), 415, "x.img: image format PPM is not accepted"),
                               (encoded("PNG", (300, 300))[:200], 400, "x.img: broken image")):
        with pytest.raises(HTTPException) as got:
            check_image_bytes(data, "x.img")
        assert got.value.status_code == status and got.value.detail.startswith(says), got.value.detail
    # the pixel limit is inclusive, and applies to the picture as decoded: a sequential JPEG at
    # up to 1/8 scale, a progressive one (and any other format) at full size
    png = encoded("PNG", (100, 50))
    assert check_image_bytes(png, max_pixels=5000) == "PNG"
    with pytest.raises(HTTPException) as got:
        check_image_bytes(png, "p.png", max_pixels=4999)
    assert got.value.status_code == 413 and "100x50 = 5000 pixels, over the limit of 4999" in got.value.detail
    jpg = encoded("JPEG", (800, 400))
    assert check_image_bytes(jpg, max_pixels=800 * 400 // 64) == "JPEG"  # decoded at 100x50
    with pytest.raises(HTTPException) as got:
        check_image_bytes(jpg, max_pixels=800 * 400 // 64 - 1)
    assert got.value.status_code == 413
    with pytest.raises(HTTPException) as got:
        check_image_bytes(encoded("JPEG", (800, 400), progressive=True), max_pixels=800 * 400 - 1)
    assert got.value.status_code == 413


def test_a_binary_collection_takes_vector_queries_as_code_bytes(tmp_path):
    codes = np.array([[0, 255], [15, 240], [255, 0]], dtype=np.uint8)
    with Collection.create(tmp_path / "b.xmc", output="binary", dim=16) as coll:
        coll.add_vectors("image", ["a.jpg", "b.jpg", "c.jpg"], codes)
        c = TestClient(create_app(coll), raise_server_exceptions=False)
        r = c.post("/api/search", json={"vector": [0, 255], "k": 3})
        assert r.status_code == 200, r.text
        assert [h["key"] for h in r.json()["results"]][0] == "a.jpg"
        assert c.post("/api/search", json={"vector": [255, 0], "k": 1}).json()["results"][0]["key"] == "c.jpg"
        for bad in ([0, 256], [-1, 0], [0.5, 0]):
            r = c.post("/api/search", json={"vector": bad})
            assert r.status_code == 422 and r.json()["detail"] == "binary collections take vector as code bytes 0..255"
        r = c.post("/api/search", json={"vector": [0, 255, 0]})
        assert r.status_code == 422 and r.json()["detail"] == "vector must have 2 values, got 3"
        r = c.post("/api/search", json={"vector": [0, 255], "fvector": [0.5, 0.5]})
        assert r.status_code == 422 and r.json()["detail"].startswith("fvector: this collection keeps no float")


def test_a_bad_item_key_is_repeated_only_when_short(svc):
    c, w = svc["c"], hdr(svc, "write")
    for key, shown in (("k" * 199 + "!", repr("k" * 199 + "!")), ("k" * 200 + "!", "of 201 characters"),
                       ("k" * 600, "of 600 characters")):
        r = c.post("/api/texts", json={"text": "a caption", "key": key}, headers=w)
        assert r.status_code == 422, r.text
        assert r.json()["detail"].startswith(f"key: item key {shown}: "), r.json()["detail"][:80]
        if len(key) > 200:
            assert "k" * 201 not in r.text
    # the longest key a collection stores is taken; one character more is not
    r = c.post("/api/texts", json={"text": "a long-keyed caption", "key": "k" * 512}, headers=w)
    assert r.status_code == 201, r.text[:200]
    r = c.post("/api/texts", json={"text": "a long-keyed caption", "key": "k" * 513}, headers=w)
    assert r.status_code == 422 and r.json()["detail"] == "key: item key of 513 characters: over 512 characters"
    assert c.delete(f"/api/items/{svc['coll'].id_of('k' * 512)}", headers=w).status_code == 200


def test_more_like_this_on_a_routing_server_answers_k_hits_without_the_item_itself(svc, tmp_path):
    from conftest import serving
    from xmodal.encoders import get_encoder

    coll, texts = svc["coll"], svc["texts"]
    enc = get_encoder("bow", "text").fit(texts, progress=False)
    with Collection.create(tmp_path / "s.xmc", dim=coll.dim, text_encoder=enc) as other:
        other.add_vectors("image", [f"s/{i}.jpg" for i in range(3)], enc.encode(texts[:3], progress=False))
        with serving(create_app(other)) as url:
            router = TestClient(create_app(coll, shards=[url]), raise_server_exceptions=False)
            first = coll.list_items("image", 0, 1)[0].id
            for k in (1, 4):
                r = router.post("/api/search", json={"item_id": first, "k": k})
                assert r.status_code == 200, r.text
                hits = r.json()["results"]
                assert len(hits) == k and r.json()["failed_shards"] == []
                assert not any(h["id"] == first and not h.get("shard") for h in hits)
            # this server alone: no shard was asked, so no failed_shards (nor on a plain server)
            r = router.post("/api/search", json={"item_id": first, "k": 2, "local_only": True})
            assert r.status_code == 200 and "failed_shards" not in r.json()
            assert not any(h.get("shard") for h in r.json()["results"])
    r = svc["c"].post("/api/search", json={"item_id": first, "k": 2})
    assert r.status_code == 200 and "failed_shards" not in r.json()


def test_info_names_no_server_folder(svc):
    coll = svc["coll"]
    r = svc["c"].get("/api/info")
    assert r.status_code == 200 and "path" not in r.json()
    for p in (str(coll.path), str(coll.path.resolve())):
        assert p not in r.text
    assert r.json()["max_upload_bytes"] == 20 * 1024 * 1024 and "shards" not in r.json()


def test_upload_errors_name_the_file_as_sent(svc):
    c = svc["c"]
    for url, h in (("/api/search/image", {}), ("/api/items", hdr(svc, "write"))):
        r = c.post(url, files={"file": ("holiday.png", b"", "image/png")}, headers=h)
        assert r.status_code == 400 and r.json()["detail"] == "holiday.png: empty upload (0 bytes)", (url, r.text)
        r = c.post(url, files={"file": ("notes.png", b"plain text", "image/png")}, headers=h)
        assert r.status_code == 415 and r.json()["detail"].startswith("notes.png: not an image"), (url, r.text)


def test_a_422_echoes_an_input_of_up_to_200_characters(svc):
    c = svc["c"]
    for n, echoed in ((200, True), (201, False)):
        r = c.post("/api/search", json={"text": "a beach", "target": "x" * n})
        assert r.status_code == 422
        err = r.json()["detail"][0]
        assert err["loc"] == ["body", "target"]
        assert ("input" in err) is echoed and (err.get("input") == "x" * n) is echoed, n
