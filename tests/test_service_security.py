"""The HTTP service as someone exposing it on a network meets it: keys never in URLs, hostile
request sizes refused before the work (and never echoed back), no server paths in client
errors, security headers, and the optional per-client rate limit (a clock injected, no
sleeping)."""

import pytest
from fastapi.testclient import TestClient
from threadpoolctl import threadpool_limits

from conftest import ucm_caption_folder
from xmodal.index import Collection, build_collection
from xmodal.service import create_app
from xmodal.service.auth import create_key


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root, folder, _, mp = ucm_caption_folder(tmp_path_factory, "security", 175)  # 12 images
    with threadpool_limits(1):  # see test_collection.py
        coll = build_collection(folder, root / "coll", image_encoder="efficientnet-lite0",
                                text_encoder="tfidf", quiet=True)
        read = create_key(coll, "read", "security")
        client = TestClient(create_app(coll), raise_server_exceptions=False)
        yield {"coll": coll, "client": client, "read": read, "folder": folder}
    coll.close()
    mp.undo()


@pytest.fixture
def private(setup):
    setup["coll"].set_setting("public_read", False)
    yield setup
    setup["coll"].set_setting("public_read", True)


def test_a_key_in_the_url_is_refused_and_never_echoed(private):
    """`?api_key=` put keys into access logs, proxy logs, browser history and Referer headers;
    keys go in a header only. A key sent in the URL anyway is refused saying so, and the
    answer does not repeat it."""
    s, c = private, private["client"]
    first = s["coll"].list_items("image", 0, 1)[0].id
    for url in ("/api/info", f"/api/items/{first}/thumbnail", "/metrics"):
        r = c.get(url, params={"api_key": s["read"]})
        assert r.status_code == 401, (url, r.status_code)
        assert "X-API-Key" in r.json()["detail"] and s["read"] not in r.text
        assert c.get(url, headers={"X-API-Key": s["read"]}).status_code == 200
        assert c.get(url, headers={"Authorization": "Bearer " + s["read"]}).status_code == 200
    # a header key beside a stray query one: the header decides, the request is refused all the same
    r = c.get("/api/info", params={"api_key": s["read"]}, headers={"X-API-Key": s["read"]})
    assert r.status_code == 401


def test_security_headers_and_a_csp_on_the_page(setup):
    c = setup["client"]
    for url in ("/", "/api/info", "/static/app.js", "/nope"):
        r = c.get(url)
        assert r.headers["x-content-type-options"] == "nosniff", url
        assert r.headers["referrer-policy"] == "no-referrer", url
    page = c.get("/")
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "blob:" in csp  # the page shows a private collection's thumbnails as blob: URLs
    assert page.headers["x-frame-options"] == "DENY"
    # /docs (Swagger UI) loads its scripts from a CDN: not under the page's policy
    assert "content-security-policy" not in c.get("/docs").headers


def test_an_oversized_json_body_is_refused_before_it_is_parsed(setup):
    """JSON routes took bodies up to the upload limit (20 MB): a `vector` of 9 million zeros
    was parsed into a Python list (hundreds of MB) before its length was checked."""
    c = setup["client"]
    body = b'{"vector": [' + b"0," * 3_000_000 + b'0]}'  # 6 MB: under the upload limit
    r = c.post("/api/search", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "over 4 MiB" in r.json()["detail"]

    def streamed():  # no Content-Length: counted as it comes
        yield b'{"vector": ['
        for _ in range(100):
            yield b"0," * 30_000
        yield b"0]}"

    r = c.post("/api/search", content=streamed(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    # the largest legitimate search (a batch of 256 texts of 2000 escaped characters) fits
    texts = ["\u00e9" * 2000] * 256
    r = c.post("/api/search/batch", json={"texts": texts, "k": 1})
    assert r.status_code == 200, r.text[:300]
    # the limit is the app's setting
    small = TestClient(create_app(setup["coll"], max_json_bytes=1000))
    assert small.post("/api/search", json={"text": "x" * 1500}).status_code == 413
    assert small.post("/api/search", json={"text": "a beach", "k": 1}).status_code == 200


def test_validation_errors_do_not_echo_large_inputs(setup):
    """A 422 repeated the whole offending input: a 9-million-number `vector` came back as
    27 MB of JSON, a 100 000-character text as 100 KB."""
    c = setup["client"]
    for body, field in (({"vector": [0.0] * 70_000}, "vector"), ({"text": "a" * 100_000}, "text"),
                        ({"texts": ["x"] * 300}, "texts")):
        url = "/api/search/batch" if field == "texts" else "/api/search"
        r = c.post(url, json=body)
        assert r.status_code == 422
        assert len(r.content) < 2000, (field, len(r.content))
        err = r.json()["detail"][0]
        assert err["loc"] == ["body", field] and "at most" in err["msg"]
    # a small input is still shown as sent
    r = c.post("/api/search", json={"text": "a beach", "k": 0})
    assert r.json()["detail"][0]["input"] == 0


def test_huge_numbers_answer_4xx(setup):
    c = setup["client"]
    assert c.post("/api/search", json={"text": "x", "k": 10**9}).status_code == 422
    assert c.get("/api/search", params={"q": "x", "k": 10**9}).status_code == 422
    assert c.get(f"/api/items/{10**30}").status_code == 404
    assert c.post("/api/search", json={"item_id": 10**30}).status_code == 404


def test_client_errors_name_no_server_path(setup):
    """A read-only server's 403 began with the collection's folder on the server's disk."""
    coll = setup["coll"]
    ro = Collection.open(coll.path, read_only=True, follow=True)
    try:
        c = TestClient(create_app(ro))
        r = c.post("/api/texts", json={"text": "a caption"})
        assert r.status_code == 403 and "read-only" in r.json()["detail"]
        for p in (str(coll.path), str(coll.path.resolve()), str(coll.path.parent)):
            assert p not in r.text, r.text
    finally:
        ro.close()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_optional_rate_limit_answers_429_with_retry_after(setup):
    clock = Clock()
    c = TestClient(create_app(setup["coll"], rate_limit=3, clock=clock))
    for _ in range(3):
        assert c.get("/api/info").status_code == 200
    r = c.get("/api/info")
    assert r.status_code == 429 and r.json()["detail"].startswith("rate limit")
    assert int(r.headers["retry-after"]) == 20  # one request back each 60/3 s
    first = setup["coll"].list_items("image", 0, 1)[0].id
    for url in ("/health", "/metrics", "/", f"/api/items/{first}/thumbnail"):  # never limited
        assert c.get(url).status_code == 200, url
    clock.now += 20
    assert c.get("/api/info").status_code == 200
    assert c.get("/api/info").status_code == 429
    clock.now += 60
    for _ in range(3):
        assert c.get("/api/info").status_code == 200
    # off by default
    c = TestClient(create_app(setup["coll"], clock=clock))
    assert all(c.get("/api/info").status_code == 200 for _ in range(10))
    with pytest.raises(ValueError, match="rate_limit"):
        create_app(setup["coll"], rate_limit=0)


def test_concurrent_uploads_are_checked_and_decoded_a_few_at_a_time(setup, monkeypatch):
    """Each upload is decoded in full to be checked (up to 40 Mpx: ~120 MB of pixels): forty
    at once (the thread pool's size) took gigabytes. Uploads past ``max_concurrent_uploads``
    wait their turn (their bodies spooled to disk by the form parser), never decoded together."""
    import asyncio
    import threading
    import time

    import httpx

    import xmodal.service.app as service

    real, lock, now, most = service.check_image_bytes, threading.Lock(), [0], [0]

    def counted(*args, **kwargs):
        with lock:
            now[0] += 1
            most[0] = max(most[0], now[0])
        try:
            time.sleep(0.2)  # long enough for every request to arrive meanwhile
            return real(*args, **kwargs)
        finally:
            with lock:
                now[0] -= 1

    monkeypatch.setattr(service, "check_image_bytes", counted)
    app = create_app(setup["coll"], max_concurrent_uploads=2)
    img = sorted(setup["folder"].glob("*.jpg"))[0].read_bytes()

    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            return await asyncio.gather(*(c.post("/api/search/image", files={"file": ("q.jpg", img, "image/jpeg")},
                                                 data={"k": "1"}) for _ in range(5)))

    answers = asyncio.run(go())
    assert [r.status_code for r in answers] == [200] * 5
    assert most[0] <= 2, most[0]
    with pytest.raises(ValueError, match="max_concurrent_uploads"):
        create_app(setup["coll"], max_concurrent_uploads=0)


def test_rate_limit_forgets_the_addresses_not_seen_for_a_minute_and_still_limits_the_others():
    from xmodal.service.app import RateLimit

    now = [0.0]
    rl = RateLimit(None, per_minute=2, clock=lambda: now[0])
    rl.MAX_CLIENTS = 3
    for who in "abcd":  # none full yet (each took a token): all kept past the bound
        assert rl.take(who) == 0.0
    assert list(rl.buckets) == ["a", "b", "c", "d"]
    assert rl.take("a") == 0.0 and rl.take("a") == pytest.approx(30.0)  # a: spent, seen last
    now[0] = 40.0
    assert rl.take("e") == 0.0
    # b, c, d full again (seen 40 s ago at 1 of 2 tokens); a not (10 s of refill since)
    assert "a" in rl.buckets and "e" in rl.buckets and not {"b", "c", "d"} & set(rl.buckets)
    assert rl.take("a") == 0.0 and rl.take("a") > 0  # its limit kept
    now[0] = 200.0
    for who in "fgh":
        rl.take(who)
    assert list(rl.buckets) == ["f", "g", "h"]  # a and e, full since, went when g came


def test_a_read_only_servers_writes_answer_403_without_spending_the_rate_budget(tmp_path):
    """Under --read-only --rate-limit a write that can never succeed answered 429 once the
    client's budget was spent, and every refused write spent it: 403 comes first now, without
    taking a token (and without reading the body: an upload over the limit is a 403, not a 413)."""
    import numpy as np

    c = Collection.create(tmp_path / "c.xmc", dim=4)
    c.add_vectors("image", ["a.jpg"], np.eye(1, 4, dtype=np.float32))
    c.close()
    ro = Collection.open(tmp_path / "c.xmc", read_only=True)
    try:
        clock = Clock()
        client = TestClient(create_app(ro, rate_limit=2, clock=clock, max_upload_bytes=1000))
        for _ in range(5):
            for r in (client.post("/api/texts", json={"text": "a beach"}),
                      client.delete("/api/items/1"),
                      client.put("/api/settings", json={"public_read": True}),
                      client.post("/api/items", files={"file": ("x.jpg", b"\xff" * 5000, "image/jpeg")})):
                assert r.status_code == 403 and "read-only" in r.json()["detail"], r.text
                assert str(tmp_path) not in r.text
        # the reads' budget is whole; a POST that reads (a search) is counted as before
        assert client.get("/api/info").status_code == 200
        assert client.post("/api/search", json={"vector": [1, 0, 0, 0]}).status_code == 200
        assert client.get("/api/info").status_code == 429
    finally:
        ro.close()
