"""RemoteShard's HTTP client (httpx) against small stand-in servers on 127.0.0.1: connections
kept between calls, one deadline for a whole answer, size limits, TLS and key errors named; then
shards as a user runs them: two or three `xmodal serve`s on 127.0.0.1 searched as one."""

from __future__ import annotations

import socket
import ssl
import subprocess
import sys
import threading
import time
from contextlib import contextmanager

import pytest

from conftest import canned_server
from xmodal.index import CollectionError, RemoteShard, ShardedCollection
from xmodal.index import shards as shards_mod
import json
import sqlite3
import numpy as np
from conftest import serving
from xmodal.index import Collection, open_shards

INFO = b'{"images": 0, "texts": 0, "labels": [], "space": "s"}'


def http11(routes: dict, seen: list | None = None):
    """A keep-alive (HTTP/1.1) stand-in server; ``seen`` gets each request's (client port, headers)."""
    return canned_server(routes, seen, keep_alive=True)


@contextmanager
def raw(talk, read_first: bool = True):
    """A bare TCP server: ``talk(conn)`` answers each connection as it likes (after reading
    the request, with ``read_first``)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)

    def loop():
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            threading.Thread(target=_talk, args=(conn,), daemon=True).start()

    def _talk(conn):
        try:
            if read_first:
                conn.recv(65536)
            talk(conn)
        except (OSError, ssl.SSLError):
            pass  # the client gave up
        finally:
            conn.close()

    threading.Thread(target=loop, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{srv.getsockname()[1]}"
    finally:
        srv.close()


def test_calls_reuse_one_connection_and_send_the_key(monkeypatch):
    """urllib opened a new connection (a TCP handshake, a TLS one for https) per call; the
    router makes one per shard per query. The key goes in X-API-Key on every call."""
    seen: list = []
    with http11({"/api/info": (200, {"Content-Type": "application/json"}, INFO),
                 "/api/search": (200, {"Content-Type": "application/json"}, b'{"results": []}')}, seen) as url:
        shard = RemoteShard(url, api_key="xmk_abc_secret", timeout=5)
        shard.stats()
        for _ in range(3):
            assert shard.search({"vector": [0.0], "k": 3}) == []
        shard.close()
    assert len(seen) == 4 and len({port for port, _ in seen}) == 1, seen
    assert all(h.get("x-api-key") == "xmk_abc_secret" for _, h in seen)
    assert seen[1][1]["content-type"] == "application/json"
    assert seen[0][1]["user-agent"].startswith("xmodal/")


def test_calls_start_no_thread_each_and_send_without_nagle(monkeypatch):
    """Each call's deadline started a timer thread (2 ms a query, doubling an HTTP shard's
    query time), and the body of a POST waited for the server's delayed ACK (Nagle): each
    call's network steps are bounded by its deadline in the calling thread, and connections set
    TCP_NODELAY."""
    import socket as socket_mod

    started: list = []
    real_start = threading.Thread.start
    monkeypatch.setattr(threading.Thread, "start", lambda self: (started.append(self.name), real_start(self))[1])
    nodelay: list = []
    real_setsockopt = socket_mod.socket.setsockopt

    def setsockopt(self, level, opt, value, *rest):
        if (level, opt) == (socket_mod.IPPROTO_TCP, socket_mod.TCP_NODELAY):
            nodelay.append(value)
        return real_setsockopt(self, level, opt, value, *rest)

    monkeypatch.setattr(socket_mod.socket, "setsockopt", setsockopt)
    with http11({"/api/search": (200, {"Content-Type": "application/json"}, b'{"results": []}')}) as url:
        shard = RemoteShard(url, timeout=5)
        shard.search({"vector": [0.0], "k": 3})  # the first call makes the client
        before = len(started)
        for _ in range(10):
            assert shard.search({"vector": [0.0], "k": 3}) == []
        shard.close()
    client_threads = [n for n in started[before:] if "process_request" not in n]  # not the server's per request
    assert client_threads == [], client_threads
    assert 1 in nodelay


def test_sharded_collection_close_closes_the_shards_connections():
    seen: list = []
    with http11({"/api/info": (200, {}, INFO)}, seen) as url:
        shard = RemoteShard(url, timeout=5)
        ShardedCollection([shard]).close()
        assert getattr(shard, "_client", "absent") is None
        shard.stats()  # a later call opens a new connection
    assert len({port for port, _ in seen}) == 2


@pytest.mark.parametrize("length", [True, False])
def test_a_json_answer_over_the_limit_is_refused(monkeypatch, length):
    """A JSON answer was read whole, however long: a server streaming without end filled the
    memory until the timeout."""
    monkeypatch.setattr(shards_mod, "MAX_JSON_ANSWER", 1000, raising=False)
    body = b'{"labels": ["' + b"x" * 5000 + b'"]}'

    def talk(conn):
        if length:
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n" % len(body) + body)
        else:  # no length said: refused once more than the limit has come
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n")
            for i in range(0, len(body), 500):
                conn.sendall(body[i:i + 500])
                time.sleep(0.01)

    with raw(talk) as url:
        with pytest.raises(CollectionError, match=rf"shard {url}: /api/info answered over 1000 bytes"):
            RemoteShard(url, timeout=5).stats()


def _stall(send, when: str) -> None:
    """Answer slowly: nothing, part of the answer then nothing, or headers a byte at a time."""
    if when == "mid-answer":
        time.sleep(0.6)
        send(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
    elif when == "trickled headers":  # every read gets a byte well within its timeout
        for b in b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Padding: " + b"x" * 40:
            send(bytes([b]))
            time.sleep(0.15)
    time.sleep(6)


@pytest.mark.parametrize("when", ["before the headers", "mid-answer", "trickled headers"])
def test_a_stalling_shard_is_cut_at_its_deadline_not_a_read_timeout_later(when):
    """The deadline bounds the whole answer: a server that stalls after part of its answer
    must not hold the call for a further read timeout, and one trickling its headers (urllib
    read them with a timeout per read only) must not hold it at all."""
    def talk(conn):
        _stall(conn.sendall, when)

    with raw(talk) as url:
        shard = RemoteShard(url, timeout=1.0)
        t0 = time.monotonic()
        with pytest.raises(CollectionError, match=r"timed out \(no complete answer within 1 s\)"):
            shard.stats()
        assert time.monotonic() - t0 < 1.5


def test_https_to_a_plain_http_port_is_named_as_tls():
    with http11({"/api/info": (200, {}, INFO)}) as url:
        tls = url.replace("http://", "https://")
        with pytest.raises(CollectionError) as exc:
            RemoteShard(tls, timeout=5).stats()
    msg = str(exc.value)
    assert msg.startswith(f"shard {tls}: no TLS connection") and "http://" in msg, msg


def test_a_refused_connection_is_unreachable():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"  # bound, not listening: refused
        with pytest.raises(CollectionError, match=rf"shard {url}: unreachable \(.*refused"):
            RemoteShard(url, timeout=5).stats()


@pytest.mark.parametrize("key", ["xmk_abc_secret\n", "xmk_abc_sécret", " xmk_abc_secret"])
def test_a_key_no_header_can_carry_is_refused_without_showing_it(key):
    """A key with a line break or a non-ASCII letter (a key file read with its newline) failed
    at the first call with a ValueError or UnicodeEncodeError that quoted it: a traceback
    from the command line, a 500 from a router."""
    seen: list = []
    with http11({"/api/info": (200, {}, INFO)}, seen) as url:
        with pytest.raises(CollectionError) as exc:
            RemoteShard(url, api_key=key, timeout=5).stats()
    assert url in str(exc.value) and "X-API-Key" in str(exc.value) and "secret" not in str(exc.value)
    assert seen == []


def test_importing_the_index_does_not_import_httpx():
    """httpx (about 0.1 s of imports) is loaded when a remote shard is first asked."""
    code = "import sys, xmodal.index; print('httpx' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.fixture(scope="module")
def tls_cert(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1 (made with the openssl command)."""
    import shutil

    if shutil.which("openssl") is None:
        pytest.skip("no openssl command to make a test certificate")
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem"), "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    return d / "cert.pem", d / "key.pem"


@pytest.mark.parametrize("stall", [None, "mid-answer", "trickled headers"])
def test_an_https_shard_is_verified_with_the_system_cas_and_cut_at_its_deadline(tls_cert, monkeypatch, stall):
    """Over TLS: the certificate is checked against the CAs this machine trusts ($SSL_CERT_FILE
    here, as urllib did), and a stalling server is cut at the deadline (the TLS socket is the
    one to shut down, not the TCP one it wraps)."""
    cert, key = tls_cert
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)

    def talk(conn):
        with ctx.wrap_socket(conn, server_side=True) as tls:
            tls.recv(65536)
            if stall:
                _stall(tls.sendall, stall)
            else:
                tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                            b"Content-Length: %d\r\n\r\n" % len(INFO) + INFO)

    with raw(talk, read_first=False) as url:
        tls_url = url.replace("http://", "https://")
        with pytest.raises(CollectionError, match=rf"shard {tls_url}: no TLS connection \(.*certificate"):
            RemoteShard(tls_url, timeout=5).stats()  # not trusted yet
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))
        shard = RemoteShard(tls_url, timeout=1.0)
        if not stall:
            assert shard.stats()["space"] == "s"
            return
        t0 = time.monotonic()
        with pytest.raises(CollectionError, match="timed out"):
            shard.stats()
        assert time.monotonic() - t0 < 1.5


def test_every_network_step_waits_at_most_what_is_left_of_the_call():
    """The call's deadline bounds each connect, read and write of httpcore's backend (a
    connection opened late, a kept one, a TLS upgrade): the step's own timeout is cut to what
    is left, and a step after the deadline is not started."""
    import httpcore

    calls = []

    class Fake:
        def connect_tcp(self, host, port, timeout=None, *a, **kw):
            calls.append(("connect", timeout))
            return self

        def read(self, n, timeout=None):
            calls.append(("read", timeout))
            return b"x"

        def write(self, buf, timeout=None):
            calls.append(("write", timeout))

    backend = shards_mod._DeadlineBackend(Fake())
    shards_mod._CALL.deadline = shards_mod._Deadline(0.5)
    try:
        stream = backend.connect_tcp("h", 1, timeout=30)
        stream.read(1, 30)
        stream.write(b"y", None)
        assert [k for k, _ in calls] == ["connect", "read", "write"]
        assert all(0 < t <= 0.5 for _, t in calls), calls
        shards_mod._CALL.deadline = shards_mod._Deadline(-1)  # passed
        for step, error in ((lambda: backend.connect_tcp("h", 1, timeout=30), httpcore.ConnectTimeout),
                            (lambda: stream.read(1, 30), httpcore.ReadTimeout),
                            (lambda: stream.write(b"y", 30), httpcore.WriteTimeout)):
            with pytest.raises(error):
                step()
        assert len(calls) == 3  # none started
        assert shards_mod._CALL.deadline.expired
    finally:
        shards_mod._CALL.deadline = None
    calls.clear()
    stream.read(1, 30)  # outside a call: the step's own timeout
    assert calls == [("read", 30)]


@pytest.mark.parametrize("when", ["before the headers", "trickled headers"])
def test_a_kept_connection_is_cut_at_the_deadline_too(when):
    """On a connection kept from an earlier call the socket was known only once the headers
    had come: a server trickling them held the call for as long as it liked (16 s for 1 s)."""
    def talk(conn):
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(INFO) + INFO)
        conn.recv(65536)  # the second call, on the same connection
        _stall(conn.sendall, when)

    with raw(talk) as url:
        shard = RemoteShard(url, timeout=1.0)
        shard.stats()
        shard._info = None  # asked again
        t0 = time.monotonic()
        with pytest.raises(CollectionError, match=r"timed out \(no complete answer within 1 s\)"):
            shard.stats()
        assert time.monotonic() - t0 < 1.5
        shard.close()


def test_shards_are_reached_directly_whatever_the_proxy_variables(monkeypatch):
    """docs/search-engine.md: proxy variables are not used for shards (a LAN shard behind a
    proxy meant for the internet would be unreachable)."""
    for var in ("HTTP_PROXY", "http_proxy", "ALL_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    with http11({"/api/search": (200, {"Content-Type": "application/json"}, b'{"results": []}')}) as url:
        shard = RemoteShard(url, timeout=5)
        assert shard.search({"vector": [0.0], "k": 3}) == []
        shard.close()


DIM = 8


def _vectors(seed: int, n: int) -> np.ndarray:
    X = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return X / np.linalg.norm(X, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """Three vectors-only collections of one space (8-d, real), 12 images each, and one
    holding all 36 (the reference a merge must equal)."""
    root = tmp_path_factory.mktemp("shards_review")
    colls, whole = [], Collection.create(root / "all.xmc", dim=DIM)
    for s in range(3):
        X = _vectors(s, 12)
        keys = [f"p{s}/img{i}.jpg" for i in range(12)]
        c = Collection.create(root / f"p{s}.xmc", dim=DIM)
        c.add_vectors("image", keys, X)
        whole.add_vectors("image", keys, X)
        colls.append(c)
    yield {"root": root, "parts": colls, "all": whole}
    for c in (*colls, whole):
        c.close()


canned = canned_server  # routes[(method, path)] = (status, headers, body)


def _info(coll: Collection) -> bytes:
    """A canned /api/info of another collection in ``coll``'s space (no db_id: as an older
    server answers; with coll's own, the router would rightly refuse it as coll served twice)."""
    s = coll.stats()
    s.pop("path")
    s.pop("db_id")
    return json.dumps(s).encode()


def test_a_redirecting_shard_is_refused_and_the_key_never_follows(parts):
    """urllib follows a redirect with every header the request had, X-API-Key included, to
    whatever host the Location names: a shard's key must go to the shard's URL only."""
    got: list = []
    with canned({("GET", "/api/info"): (200, {"Content-Type": "application/json"}, _info(parts["parts"][0])),
                 ("POST", "/api/search"): (200, {"Content-Type": "application/json"}, b'{"results": []}')},
                got) as elsewhere:
        moved = {("GET", "/api/info"): (302, {"Location": elsewhere + "/api/info"}, b""),
                 ("POST", "/api/search"): (307, {"Location": elsewhere + "/api/search"}, b"")}
        with canned(moved) as url:
            shard = RemoteShard(url, api_key="xmk_abc_secret", timeout=5)
            with pytest.raises(CollectionError) as exc:
                shard.stats()
            msg = str(exc.value)
            assert url in msg and "302" in msg and "redirect" in msg and elsewhere + "/api/info" in msg, msg
            with pytest.raises(CollectionError, match=r"307.*redirect"):
                shard.search({"vector": [0.0] * DIM, "k": 3})
    assert not any("x-api-key" in h for h in got), got


def test_a_routed_query_is_answered_by_the_shard_alone(parts):
    """A shard that routes to shards of its own (B --shard C) answered a router's query with
    C's hits too, tagged as B's: C's items twice (A routes to C as well) or under B's URL with
    C's ids (thumbnails of the wrong images), and a cycle (A -> B -> A) recursed."""
    from fastapi.testclient import TestClient

    from xmodal.service import create_app

    p0, p1, p2 = parts["parts"]
    with serving(create_app(p2)) as url_c, serving(create_app(p1, shards=[url_c])) as url_b:
        client = TestClient(create_app(p0, shards=[url_b, url_c]))
        q = _vectors(99, 1)[0]
        body = client.post("/api/search", json={"vector": q.tolist(), "k": 36, "target": "image"}).json()
        assert body["failed_shards"] == []
        ref = parts["all"].search_vector(q, "image", 36)
        assert [r["key"] for r in body["results"]] == [h.key for h in ref]
        owner = {"p0": None, "p1": url_b, "p2": url_c}
        assert all(r.get("shard") == owner[r["key"][:2]] for r in body["results"])
        # B asked directly still answers for its shards too
        direct = TestClient(create_app(p1, shards=[url_c])).post(
            "/api/search", json={"vector": q.tolist(), "k": 24}).json()
        assert {r["key"][:2] for r in direct["results"]} == {"p1", "p2"}


def _search_answer(hits: list[dict]) -> bytes:
    return json.dumps({"target": "image", "k": 3, "results": hits}).encode()


@pytest.mark.parametrize("bad, why", [
    ({"score": "high"}, "score"),
    ({"score": None}, "score"),
    ({"id": "seven"}, "id"),
    ({"modality": "video"}, "modality"),
    ({"key": 5}, "key"),
])
def test_a_shard_answering_garbage_hits_is_named_not_a_crash(parts, bad, why):
    """A result list of the wrong types (another service at that port, a proxy's rewrite)
    raised TypeError deep in the merge (a 500, a traceback), or ranked a NaN."""
    from fastapi.testclient import TestClient

    from xmodal.service import create_app

    p0 = parts["parts"][0]
    hit = {"id": 7, "score": 0.5, "modality": "image", "key": "x.jpg", **bad}
    with canned({("GET", "/api/info"): (200, {}, _info(p0)),
                 ("POST", "/api/search"): (200, {}, _search_answer([hit]))}) as url:
        with ShardedCollection([p0, RemoteShard(url, timeout=5)]) as sc:
            with pytest.raises(CollectionError) as exc:
                sc.search_vector(_vectors(5, 1)[0], "image", 3)
            assert url in str(exc.value) and why in str(exc.value), str(exc.value)
            hits = sc.search_vector(_vectors(5, 1)[0], "image", 3, on_error="skip")
            assert len(hits) == 3 and hits.failed[0][0] == url
        r = TestClient(create_app(p0, shards=[url])).post(
            "/api/search", json={"vector": _vectors(5, 1)[0].tolist(), "k": 3})
        assert r.status_code == 200, r.text
        assert r.json()["failed_shards"][0]["shard"] == url and why in r.json()["failed_shards"][0]["error"]


def test_a_nan_score_from_a_shard_is_refused(parts):
    """Python's json reads NaN; sorted among real scores it scrambles the merged order."""
    p0 = parts["parts"][0]
    body = b'{"results": [{"id": 7, "score": NaN, "modality": "image", "key": "x.jpg"}]}'
    with canned({("GET", "/api/info"): (200, {}, _info(p0)), ("POST", "/api/search"): (200, {}, body)}) as url:
        with ShardedCollection([p0, RemoteShard(url, timeout=5)]) as sc:
            with pytest.raises(CollectionError, match="score"):
                sc.search_vector(_vectors(5, 1)[0], "image", 3)


def test_a_shard_answering_the_other_modality_is_refused(parts):
    p0 = parts["parts"][0]
    hit = {"id": 7, "score": 0.5, "modality": "text", "key": "t", "text": "x"}
    with canned({("GET", "/api/info"): (200, {}, _info(p0)),
                 ("POST", "/api/search"): (200, {}, _search_answer([hit]))}) as url:
        with ShardedCollection([p0, RemoteShard(url, timeout=5)]) as sc:
            with pytest.raises(CollectionError, match=f"{url}.*text hits for an image search"):
                sc.search_vector(_vectors(5, 1)[0], "image", 3)


def test_open_shards_closes_the_collections_it_opened(parts, monkeypatch):
    """``with open_shards([...]) as sc`` left every collection it opened open (SQLite
    connections, file handles), and so did a start that failed (a shard down)."""
    opened: list[Collection] = []
    real_open = Collection.open.__func__

    def spy(cls, *a, **kw):
        c = real_open(cls, *a, **kw)
        opened.append(c)
        return c

    monkeypatch.setattr(Collection, "open", classmethod(spy))
    paths = [c.path for c in parts["parts"][:2]]
    with open_shards(paths) as sc:
        assert len(sc.search_vector(_vectors(3, 1)[0], "image", 5)) == 5
    assert len(opened) == 2
    for c in opened:
        with pytest.raises(sqlite3.ProgrammingError):
            c.store.conn.execute("SELECT 1")
    opened.clear()
    from conftest import free_port

    with pytest.raises(CollectionError, match="unreachable"):
        open_shards(paths, [f"http://127.0.0.1:{free_port()}"], timeout=2)
    assert len(opened) == 2
    for c in opened:
        with pytest.raises(sqlite3.ProgrammingError):
            c.store.conn.execute("SELECT 1")
    # collections a caller made and passed in stay the caller's to close
    with ShardedCollection(parts["parts"][:2]) as sc:
        pass
    assert parts["parts"][0].count() == 12


@pytest.fixture(scope="module")
def binary(tmp_path_factory):
    """Two shards of one 16-bit CCA-ITQ space that keep float projections (``--rerank``), a
    third without them, and one collection holding the first two's items."""
    from xmodal.data.dataset import PairedDataset
    from xmodal.methods import create

    rng = np.random.default_rng(0)
    X = rng.standard_normal((80, 16)).astype(np.float32)
    Y = X[:, :12] + 0.3 * rng.standard_normal((80, 12)).astype(np.float32)
    m = create("cca_itq", bits=16).fit(PairedDataset("r", np.arange(80), 80, image_features=X, text_features=Y))
    root = tmp_path_factory.mktemp("shards_binary")
    a, b, whole = (Collection.create(root / f"{n}.xmc", method=m, rerank=True) for n in ("a", "b", "all"))
    plain = Collection.create(root / "plain.xmc", method=m)
    for r, c in enumerate((a, b, plain)):
        rows = slice(12 * r, 12 * r + 12)
        codes, fv = c.features_to_space("image", X[rows])
        keys = [f"{'abp'[r]}/{i}.jpg" for i in range(12)]
        c.add_vectors("image", keys, codes, fvecs=fv)
        if r < 2:
            whole.add_vectors("image", keys, codes, fvecs=fv)
    assert a.space == b.space == whole.space == plain.space
    yield {"a": a, "b": b, "all": whole, "plain": plain, "Y": Y}
    for c in (a, b, whole, plain):
        c.close()


def test_binary_shards_rerank_alike_behind_a_server(binary):
    """A local binary shard re-ranked by cosine of float projections while a remote one answered
    by Hamming (1 - 2h/bits): two score scales merged as one. The float query now goes along."""
    from xmodal.service import create_app

    a, b, whole = binary["a"], binary["b"], binary["all"]
    code, fq = a.features_to_space("text", binary["Y"][40:41])
    # k = 6: a shortlist of 4k = 24 covers every item, so the whole collection's answer is
    # the exact cosine ranking, as each shard's is
    ref = whole.search_vector(code, "image", 6, fq=fq, rerank=4)
    hamming = whole.search_vector(code, "image", 6)
    assert [h.score for h in ref] != [h.score for h in hamming]  # the two scales differ here
    with serving(create_app(b)) as url:
        with ShardedCollection([a, RemoteShard(url)]) as sc:
            hits = sc.search_vector(code, "image", 6, fq=fq)
    assert [h.key for h in hits] == [h.key for h in ref]
    np.testing.assert_allclose([h.score for h in hits], [h.score for h in ref], atol=1e-5)


def test_binary_shards_without_float_projections_everywhere_merge_hamming_scores(binary):
    """One shard without float projections answers by Hamming: then every shard does, or the
    re-ranked shards' cosines are ranked against its Hamming scores."""
    a, plain = binary["a"], binary["plain"]
    code, fq = a.features_to_space("text", binary["Y"][40:41])
    with ShardedCollection([a, plain]) as sc:
        hits = sc.search_vector(code, "image", 24, fq=fq)
    ref = sorted([*a.search_vector(code, "image", 12), *plain.search_vector(code, "image", 12)],
                 key=lambda h: -h.score)
    assert sorted(h.score for h in hits) == sorted(h.score for h in ref)
    bits = 16
    assert all(abs(h.score * bits / 2 - round(h.score * bits / 2)) < 1e-6 for h in hits)  # Hamming scale


def test_a_server_takes_the_float_query_of_a_binary_collection(binary):
    """POST /api/search {vector, fvector}: the float projection re-ranks where the collection
    keeps them; a wrong length or a collection without them is a 422 naming fvector."""
    from fastapi.testclient import TestClient

    from xmodal.service import create_app

    a = binary["a"]
    code, fq = a.features_to_space("text", binary["Y"][40:41])
    body = {"vector": code[0].tolist(), "fvector": fq[0].tolist(), "k": 5, "target": "image"}
    r = TestClient(create_app(a)).post("/api/search", json=body)
    assert r.status_code == 200, r.text
    ref = a.search_vector(code, "image", 5, fq=fq, rerank=4)
    assert [h["key"] for h in r.json()["results"]] == [h.key for h in ref]
    r = TestClient(create_app(a)).post("/api/search", json={**body, "fvector": [0.5] * 3})
    assert r.status_code == 422 and "fvector" in r.json()["detail"] and "16" in r.json()["detail"]
    r = TestClient(create_app(binary["plain"])).post("/api/search", json=body)
    assert r.status_code == 422 and "fvector" in r.json()["detail"], r.text
    for other in ({"item_id": 1}, {"text": "a harbour"}):
        r = TestClient(create_app(a)).post("/api/search", json={**other, "fvector": fq[0].tolist()})
        assert r.status_code == 422 and "fvector" in r.json()["detail"], r.text


@pytest.mark.parametrize("answer", [b"SSH-2.0-OpenSSH_9.6\r\n",  # not HTTP at all
                                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"])  # broken chunks
def test_a_shard_url_that_is_not_http_is_named(parts, answer):
    """A --shard pointed at another service's port (ssh, a database) raised http.client's
    BadStatusLine / IncompleteRead: a traceback from the command line, a 500 from a router."""
    import socket

    from typer.testing import CliRunner

    from xmodal.cli import app

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)

    def talk():
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            conn.recv(65536)
            conn.sendall(answer)
            conn.close()

    threading.Thread(target=talk, daemon=True).start()
    url = f"http://127.0.0.1:{srv.getsockname()[1]}"
    with pytest.raises(CollectionError) as exc:
        RemoteShard(url, timeout=5).stats()
    assert url in str(exc.value) and "xmodal serve" in str(exc.value), str(exc.value)
    r = CliRunner().invoke(app, ["search", "-c", str(parts["parts"][0].path), "--shard", url, "x"])
    assert r.exit_code == 2 and url in r.output, r.output
    srv.close()


def test_two_private_shards_each_get_their_own_key(parts, tmp_path):
    """A key belongs to one collection, and one --shard-api-key / --api-key went to every
    shard: two private shards could not both be searched, and each was sent the other's key.
    URL=KEY gives each shard its own."""
    import shutil

    from fastapi.testclient import TestClient
    from typer.testing import CliRunner

    from xmodal.cli import app
    from xmodal.service import create_app
    from xmodal.service.auth import create_key

    served, tokens = [], []
    for s in (1, 2):
        shutil.copytree(parts["parts"][s].path, tmp_path / f"p{s}.xmc")
        c = Collection.open(tmp_path / f"p{s}.xmc")
        c.set_setting("public_read", False)
        tokens.append(create_key(c, "read", "router"))
        served.append(c)
    p0 = parts["parts"][0]
    q = _vectors(7, 1)[0]
    with serving(create_app(served[0])) as u1, serving(create_app(served[1])) as u2:
        pairs = [f"{u1}={tokens[0]}", f"{u2}/={tokens[1]}"]  # a trailing slash is the same shard
        client = TestClient(create_app(p0, shards=[u1, u2], shard_api_key=pairs))
        body = client.post("/api/search", json={"vector": q.tolist(), "k": 36}).json()
        assert body["failed_shards"] == [] and {r.get("shard") for r in body["results"]} == {None, u1, u2}
        # a plain key beside URL=KEY goes to the other shards
        client = TestClient(create_app(p0, shards=[u1, u2], shard_api_key=[tokens[0], pairs[1]]))
        assert client.post("/api/search", json={"vector": q.tolist(), "k": 3}).json()["failed_shards"] == []
        # one key for both: the shard it is not from says so (401, which option to use)
        with pytest.raises(CollectionError, match=rf"{u2}.*401.*URL=KEY"):
            create_app(p0, shards=[u1, u2], shard_api_key=tokens[0])
        with pytest.raises(CollectionError, match=r"names no shard given"):
            create_app(p0, shards=[u1], shard_api_key=[pairs[1]])
        with pytest.raises(CollectionError, match=r"2 keys without a shard URL"):
            create_app(p0, shards=[u1, u2], shard_api_key=tokens)
        with open_shards([p0.path], [u1, u2], api_key={u1: tokens[0], u2: tokens[1]}) as sc:
            assert len(sc.search_vector(q, "image", 36)) == 36
        # the command line: --api-key repeated, or $XMODAL_API_KEY with both
        run = CliRunner(env={"XMODAL_API_KEY": None}).invoke
        r = run(app, ["search", "-c", str(p0.path), "--shard", u1, "--shard", u2, "--api-key", pairs[0],
                      "--api-key", pairs[1], "--label", "x", "x"])
        assert r.exit_code == 2 and "no image item has the label 'x'" in r.output, r.output  # both asked
        r = CliRunner(env={"XMODAL_API_KEY": " ".join(pairs)}).invoke(
            app, ["stats", "-c", str(p0.path), "--shard", u1, "--shard", u2, "--json"])
        assert r.exit_code == 0 and json.loads(r.output)["one_space"], r.output
        r = run(app, ["stats", "--shard", u1, "--api-key", f"http://127.0.0.1:1={tokens[0]}"])
        assert r.exit_code == 2 and "--api-key: http://127.0.0.1:1=... names no shard" in r.output, r.output
    for c in served:
        c.close()


def test_one_collection_given_twice_as_shards_is_refused(parts, tmp_path):
    """`xmodal serve -c a.xmc --shard http://host:8001` where 8001 serves a.xmc too (or two
    servers of one folder) merged every hit twice."""
    import shutil

    from xmodal.service import create_app

    p0, p1 = parts["parts"][:2]
    with serving(create_app(Collection.open(p1.path))) as u1, serving(create_app(Collection.open(p1.path))) as u1b:
        with pytest.raises(CollectionError) as exc:
            create_app(p0, shards=[u1, u1b])
        msg = str(exc.value)
        assert u1 in msg and u1b in msg and "twice" in msg, msg
        with pytest.raises(CollectionError, match="twice"):
            ShardedCollection([p1, RemoteShard(u1)])
        with pytest.raises(CollectionError, match="twice"):
            create_app(Collection.open(p1.path), shards=[u1])
    # a copy that has grown apart (a snapshot made into a new shard) is a shard of its own
    shutil.copytree(p1.path, tmp_path / "copy.xmc")
    copy = Collection.open(tmp_path / "copy.xmc")
    copy.add_vectors("image", ["copy/new.jpg"], _vectors(50, 1))
    with ShardedCollection([p1, copy]) as sc:
        assert len(sc.search_vector(_vectors(3, 1)[0], "image", 30)) == 25
    copy.close()


def test_a_routing_server_that_cannot_start_closes_what_it_opened(parts, monkeypatch):
    """create_app(path, shards=[a shard that is down]) raised with the collection it had just
    opened left open (a library caller retrying in a loop piled up SQLite handles)."""
    from conftest import free_port
    from xmodal.service import create_app

    opened: list[Collection] = []
    real_open = Collection.open.__func__

    def spy(cls, *a, **kw):
        opened.append(real_open(cls, *a, **kw))
        return opened[-1]

    monkeypatch.setattr(Collection, "open", classmethod(spy))
    with pytest.raises(CollectionError, match="unreachable"):
        create_app(parts["parts"][0].path, shards=[f"http://127.0.0.1:{free_port()}"], shard_timeout=2)
    assert len(opened) == 1
    with pytest.raises(sqlite3.ProgrammingError):
        opened[0].store.conn.execute("SELECT 1")
    # a Collection passed in stays the caller's
    with pytest.raises(CollectionError, match="unreachable"):
        create_app(parts["parts"][0], shards=[f"http://127.0.0.1:{free_port()}"], shard_timeout=2)
    assert parts["parts"][0].count() == 12


@pytest.mark.parametrize("url, why", [
    ("http://router:s3cret@127.0.0.1:8001", "user name or password"),
    ("http://127.0.0.1:8001/?key=abc", "query"),
    ("http://127.0.0.1:8001/#top", "fragment"),
    ("http://127.0.0.1:notaport", "port"),
    ("http://[::1", "not a URL"),  # these two raised ValueError / UnicodeError (a traceback)
    ("http://a..b:8001", "host name"),
    ("http://\x01host:8001", "host name"),
])
def test_a_shard_url_with_credentials_or_a_query_is_refused(url, why):
    """A password in a shard URL was echoed in every hit's `shard` and `thumbnail`, in
    /api/info and in error messages, to anyone who may search; a query string or fragment
    was glued before /api/info; a bad port failed as "did not answer JSON"."""
    with pytest.raises(CollectionError) as exc:
        RemoteShard(url)
    assert why in str(exc.value), str(exc.value)
    assert "s3cret" not in str(exc.value)


def test_an_unknown_shard_number_is_answered_with_the_shards_there_are(tmp_path):
    """A routing server with one remote shard answered /api/shards/1/... with "no shard 1: this
    server routes to 1", which reads as if shard 1 were the one there is. The 404 now lists
    the numbers there are with their URLs, and a server routing nowhere says so."""
    from fastapi.testclient import TestClient

    from xmodal.service import create_app

    made = []
    for name in ("a", "b"):
        c = Collection.create(tmp_path / f"{name}.xmc", dim=4)
        c.add_vectors("image", [f"{name}.jpg"], np.eye(1, 4, dtype=np.float32))
        made.append(c)
    try:
        with serving(create_app(made[1])) as url:
            router = TestClient(create_app(made[0], shards=[url]))
            for bad in (1, 7):
                r = router.get(f"/api/shards/{bad}/items/1/thumbnail")
                assert r.status_code == 404, r.text
                assert r.json()["detail"] == (f"no shard {bad}: this server's remote shards are numbered "
                                              f"from 0 in --shard order: 0 = {url}"), r.text
        alone = TestClient(create_app(made[0]))
        r = alone.get("/api/shards/0/items/1/thumbnail")
        assert r.status_code == 404
        assert r.json()["detail"] == "no shard 0: this server routes to no remote shards (started without --shard)"
    finally:
        for c in made:
            c.close()
