"""RemoteShard's HTTP client (httpx) against small stand-in servers on 127.0.0.1: connections
kept between calls, one deadline for a whole answer, size limits, TLS and key errors named."""

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
