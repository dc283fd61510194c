"""RemoteShard's HTTP transport (xmodal.index.shards, up to the merge), pinned by mutation
testing: what a shard that refuses a key, answers another server's page, answers JSON that is
not an `xmodal serve`'s, or redirects is told apart by URL in words that say why; what every
request carries (its own key only, no compression, a JSON body with k cut to a server's limit);
a shard's /api/info fetched once for its space. Stand-in servers on 127.0.0.1 (conftest's
canned_server), so fast."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from contextlib import contextmanager

import pytest

from conftest import canned_server
from xmodal import __version__
from xmodal.index import CollectionError, RemoteShard
from xmodal.index.shards import _ERROR_BYTES, MAX_JSON_ANSWER, MAX_REMOTE_K, ShardHTTPError, _error_words

INFO = {"images": 0, "texts": 0, "labels": ["cat"], "space": "s1"}
JSON = {"Content-Type": "application/json"}
# what `xmodal serve` answers a read without a key on a private collection
NEEDS_KEY = ("this route needs an API key with role 'read': send it as the X-API-Key header (or "
             "Authorization: Bearer); the collection's owner makes one with `xmodal keys add -c "
             "COLLECTION --role read`")


def _answer(code: int, detail: str) -> tuple[int, dict, bytes]:
    return code, JSON, json.dumps({"detail": detail}).encode()


@pytest.mark.parametrize("code, key, why", [
    (401, None, "it is private (public_read off) and no API key was sent"),
    (401, "xmk_abc_secret", "it refused the API key sent (unknown or revoked there"),
    (403, "xmk_abc_secret", "the API key sent lacks the role this needs"),
])
def test_each_key_refusal_says_why_and_which_option_sends_a_key(code, key, why):
    """A 401 without a key, a 401 for a key of another collection and a 403 for a key of a
    lesser role need three different cures; the server's own cure (a header, for curl users)
    is dropped for the option this program takes, and the key itself is never shown."""
    with canned_server({"/api/info": _answer(code, NEEDS_KEY), "/api/search": _answer(code, NEEDS_KEY)}) as url:
        with pytest.raises(ShardHTTPError) as exc:
            RemoteShard(url, api_key=key, timeout=5).stats()
        msg = str(exc.value)
        assert exc.value.code == code
        assert msg.startswith(f"shard {url}: /api/info answered HTTP {code}: {why}"), msg
        assert "(this route needs an API key with role 'read');" in msg, msg
        assert "send it as" not in msg and "Authorization: Bearer" not in msg and "secret" not in msg, msg
        assert msg.endswith(f"with {RemoteShard.KEY_HINT}"), msg
        # a router names its own option (xmodal serve --shard-api-key)
        with pytest.raises(ShardHTTPError) as exc:
            RemoteShard(url, api_key=key, timeout=5, key_hint="--shard-api-key").search({"vector": [0.0], "k": 1})
        assert str(exc.value).endswith("with --shard-api-key") and "/api/search" in str(exc.value)


def test_another_servers_error_page_is_named_short_and_an_xmodal_one_by_its_detail():
    """An nginx 502 page came back whole (HTML, line breaks and all) in a failed_shards entry;
    an `xmodal serve` error is its detail alone."""
    page = "<html>\n<head><title>502 Bad Gateway</title></head>\n<body>" + "x" * 300 + "</body></html>"
    routes = {"/api/info": (502, {"Content-Type": "text/html"}, page.encode()),
              ("POST", "/api/search"): _answer(422, "k: must be at most 1000")}
    with canned_server(routes) as url:
        shard = RemoteShard(url, timeout=5)
        with pytest.raises(ShardHTTPError) as exc:
            shard.stats()
        msg = str(exc.value)
        assert exc.value.code == 502
        assert msg.startswith(f"shard {url}: /api/info answered HTTP 502: not an xmodal answer; is it an "
                              "`xmodal serve`? (got '<html> <head><title>502 Bad Gateway</title>"), msg
        assert "\n" not in msg and msg.endswith("...')") and msg.count("x") < 200, msg
        with pytest.raises(ShardHTTPError) as exc:
            shard.search({"vector": [0.0], "k": 3})
        assert exc.value.code == 422
        assert str(exc.value) == f"shard {url}: /api/search answered HTTP 422: k: must be at most 1000"


@pytest.mark.parametrize("body, words", [
    ('{"detail": "no such item"}', "no such item"),
    # FastAPI's validation errors: a list, not words
    ('{"detail": [{"loc": ["body", "k"]}]}', "not an xmodal answer"),
    ('["detail"]', "not an xmodal answer"),  # JSON, not an object
    ("", "(got '')"),
    ("a" * 200, "(got '" + "a" * 200 + "')"),  # 200 characters: whole, no ellipsis
    ("a" * 201, "(got '" + "a" * 200 + "...')"),
    ("  two\n\twords  ", "(got 'two words')"),
])
def test_error_words(body, words):
    out = _error_words(body)
    assert out.endswith(words) if words.startswith("(got") else words in out, out
    if words.startswith("(got"):
        assert out.startswith("not an xmodal answer; is it an `xmodal serve`?"), out


def test_a_long_error_page_is_cut_not_refused_and_a_short_limit_is_for_json_only(monkeypatch):
    """An error answer is read up to 16 KiB and named by its status: a big 404 page is no
    "answered over N bytes", and the JSON size limit does not apply to it."""
    from xmodal.index import shards as shards_mod

    monkeypatch.setattr(shards_mod, "MAX_JSON_ANSWER", 100)
    page = ("<html>" + "y" * 100_000 + "</html>").encode()
    with canned_server({"/api/info": (404, {"Content-Type": "text/html"}, page),
                        ("POST", "/api/search"): (200, JSON, b'{"results": []}')}) as url:
        shard = RemoteShard(url, timeout=5)
        with pytest.raises(ShardHTTPError) as exc:
            shard.stats()
        assert exc.value.code == 404 and "answered HTTP 404: not an xmodal answer" in str(exc.value)
        assert len(str(exc.value)) < 400
        assert shard.search({"vector": [0.0], "k": 1}) == []  # 15 bytes: under the limit
    data, ctype = None, None
    with canned_server({"/x": (200, {"Content-Type": "image/png"}, b"\x89PNG" + b"z" * 500)}) as url:
        data, ctype = RemoteShard(url, timeout=5).fetch("/x")  # no max_bytes: read whole
    assert len(data) == 504 and ctype == "image/png"
    with canned_server({"/x": (200, {}, b"z" * 501)}) as url:
        with pytest.raises(CollectionError, match=rf"shard {url}: /x answered over 500 bytes"):
            RemoteShard(url, timeout=5).fetch("/x", max_bytes=500)
        assert RemoteShard(url, timeout=5).fetch("/x", max_bytes=501)[0] == b"z" * 501


@pytest.mark.parametrize("body, why", [
    (b"[1, 2]", "/api/info answered list, not a JSON object; is it an `xmodal serve`?"),
    (b'"ok"', "/api/info answered str, not a JSON object"),
    (b"<!doctype html><title>Welcome to nginx!</title>", "/api/info did not answer JSON; is it an `xmodal serve`? "
                                                         "(got b'<!doctype html><title>Welcome to nginx!</title>')"),
])
def test_a_200_that_is_not_an_xmodal_answer_is_named(body, why):
    with canned_server({"/api/info": (200, {}, body)}) as url:
        with pytest.raises(CollectionError) as exc:
            RemoteShard(url, timeout=5).stats()
    assert str(exc.value) == f"shard {url}: {why}" or str(exc.value).startswith(f"shard {url}: {why}"), exc.value


def test_a_redirect_without_a_location_is_named_too():
    with canned_server({"/api/info": (301, {}, b"")}) as url:
        with pytest.raises(ShardHTTPError) as exc:
            RemoteShard(url, api_key="xmk_k", timeout=5).stats()
    assert exc.value.code == 301
    assert str(exc.value).startswith(f"shard {url}: /api/info answered HTTP 301, a redirect to (no Location)")


def test_what_each_request_carries():
    """A GET carries no body type; a POST its JSON, k cut to a server's limit and the rest of
    the query as given; no key header where the shard has no key (an empty one included); the
    answer is asked uncompressed (its size limit is the size kept) and the client names itself."""
    seen: list = []
    bodies: list = []
    import http.server

    class Handler(http.server.BaseHTTPRequestHandler):
        def _go(self):
            seen.append({"method": self.command, **{k.lower(): v for k, v in self.headers.items()}})
            n = int(self.headers.get("Content-Length") or 0)
            bodies.append(self.rfile.read(n) if n else None)
            out = json.dumps(INFO if self.path == "/api/info" else {"results": []}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        do_GET = do_POST = _go

        def log_message(self, *a):
            pass

    import threading

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{srv.server_address[1]}/"  # a trailing slash is dropped
    try:
        for key in (None, ""):
            shard = RemoteShard(url, api_key=key, timeout=5)
            assert shard.url == url.rstrip("/") and repr(shard) == f"RemoteShard({url.rstrip('/')!r})"
            assert shard.stats() == INFO
            q = {"vector": [0.5, 1.0], "k": MAX_REMOTE_K + 5, "target": "image", "labels": ["cat"]}
            assert shard.search(q) == []
            assert shard.search({**q, "k": "7"}) == []
            shard.close()
        shard = RemoteShard(url, api_key="xmk_only_this", timeout=5)
        shard.search({"vector": [0.0], "k": 3})
    finally:
        srv.shutdown()
        srv.server_close()
    assert len(seen) == 7
    for h in seen:
        assert h["user-agent"] == f"xmodal/{__version__}" and h["accept-encoding"] == "identity", h
    assert all("x-api-key" not in h for h in seen[:6]) and seen[6]["x-api-key"] == "xmk_only_this"
    assert [h["method"] for h in seen[:3]] == ["GET", "POST", "POST"]
    assert "content-type" not in seen[0] and bodies[0] is None
    assert seen[1]["content-type"] == "application/json"
    assert json.loads(bodies[1]) == {"vector": [0.5, 1.0], "k": MAX_REMOTE_K, "target": "image", "labels": ["cat"]}
    assert json.loads(bodies[2])["k"] == 7


def test_the_space_is_fetched_once_and_labels_gather_per_target():
    """A shard's space is fixed for its life: /api/info is asked once for it. Labels seen
    gather over stats() calls, per modality where the server says which; ``fresh`` gives the
    last answer's alone."""
    seen: list = []
    first = {**INFO, "labels": ["cat", "dog"], "labels_by_target": {"image": ["cat"], "text": ["dog"]}}
    with canned_server({"/api/info": (200, JSON, json.dumps(first).encode())}, seen) as url:
        shard = RemoteShard(url, timeout=5)
        assert shard.space == "s1" and shard.space == "s1" and len(seen) == 1
        assert shard.labels_seen("image") == {"cat"} and shard.labels_seen("text") == {"dog"}
        assert shard.labels_seen() == {"cat", "dog"}
    second = {**INFO, "labels": ["owl"], "labels_by_target": {"image": [], "text": ["owl"]}}
    with canned_server({"/api/info": (200, JSON, json.dumps(second).encode())}) as url2:
        shard.url = url2  # the same shard, its labels changed
        shard.close()
        shard.stats()
    assert shard.labels_seen("text") == {"dog", "owl"} and shard.labels_seen("image") == {"cat"}
    assert shard.labels_seen("text", fresh=True) == {"owl"} and shard.labels_seen("image", fresh=True) == set()
    assert shard.labels_seen(fresh=True) == {"owl"} and shard.labels_seen() == {"cat", "dog", "owl"}
    # an older server (labels only): they count for either modality
    with canned_server({"/api/info": (200, JSON, json.dumps(INFO).encode())}) as url3:
        old = RemoteShard(url3, timeout=5)
        old.stats()
    assert old.labels_seen("image") == old.labels_seen("text") == {"cat"}
    assert old.labels_seen("image", fresh=True) == {"cat"}
    assert RemoteShard(url3).labels_seen("image", fresh=True) == set()  # never asked


@pytest.mark.parametrize("url, why", [
    ("ftp://127.0.0.1:8001", "expected an http(s)://host:port URL"),
    ("http:///api", "expected an http(s)://host:port URL"),
    ("http://127.0.0.1:8001?", None),  # an empty query is none
    ("http://user@127.0.0.1:8001", "user name or password"),
    ("http://:pw@127.0.0.1:8001", "user name or password"),
    ("http://127.0.0.1:8001/#", None),
])
def test_shard_urls_told_apart(url, why):
    if why is None:  # accepted
        assert RemoteShard(url).url.startswith("http://127.0.0.1:8001")
        return
    with pytest.raises(CollectionError) as exc:
        RemoteShard(url)
    assert why in str(exc.value) and "pw" not in str(exc.value), str(exc.value)


def test_a_key_is_checked_only_where_one_is_given():
    assert RemoteShard("http://127.0.0.1:8001", api_key="").api_key == ""
    with pytest.raises(CollectionError, match="an X-API-Key header cannot carry") as exc:
        RemoteShard("http://127.0.0.1:8001", api_key="xmk_tab\tkey", key_hint="--shard-api-key")
    assert "(a key is xmk_...; --shard-api-key)" in str(exc.value) and "tab" not in str(exc.value)


@contextmanager
def _keep_alive(answer: bytes, head: bytes | None = None, stall: float = 0.0):
    """A bare HTTP/1.1 server answering every request on a connection with ``answer`` (or
    ``head`` then a stall); yields (url, an Event set when a connection is closed by the client)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    closed = threading.Event()

    def talk(conn):
        try:
            while conn.recv(65536):
                if head is not None:
                    conn.sendall(head)
                    time.sleep(stall)
                    return
                conn.sendall(answer)
            closed.set()  # EOF: the client closed it
        except OSError:
            pass
        finally:
            conn.close()

    def loop():
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            threading.Thread(target=talk, args=(conn,), daemon=True).start()

    threading.Thread(target=loop, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{srv.getsockname()[1]}", closed
    finally:
        srv.close()


def _ok(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body


def test_close_ends_the_kept_connection_and_so_does_dropping_the_shard():
    body = json.dumps(INFO).encode()
    with _keep_alive(_ok(body)) as (url, closed):
        shard = RemoteShard(url, timeout=5)
        shard.stats()
        assert not closed.wait(0.2)  # kept between calls
        shard.close()
        assert closed.wait(5), "close() left the connection open"
    with _keep_alive(_ok(body)) as (url, closed):
        shard = RemoteShard(url, timeout=5)
        shard.stats()
        del shard
        assert closed.wait(5), "a dropped shard left its connection open"


def test_an_answer_said_too_long_is_refused_at_once_not_at_the_timeout():
    """A Content-Length over the limit is refused on the headers, not read (nor waited for)."""
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 999999999999\r\n\r\n{"
    with _keep_alive(b"", head=head, stall=30) as (url, _):
        with pytest.raises(CollectionError) as exc:
            RemoteShard(url, timeout=20).stats()
    assert str(exc.value) == f"shard {url}: /api/info answered over {MAX_JSON_ANSWER} bytes"


def test_answers_over_the_error_size_are_read_and_an_error_detail_up_to_it_whole(monkeypatch):
    """The 16 KiB cut is for error answers: /api/info with many labels (over 16 KiB) is read;
    an xmodal JSON error up to 16 KiB is shown by its detail, even over a lower JSON limit."""
    from xmodal.index import shards as shards_mod

    labels = [f"label{i:05d}" for i in range(3000)]  # about 40 KB
    big = json.dumps({**INFO, "labels": labels}).encode()
    pad = _ERROR_BYTES - len(json.dumps({"detail": ""}).encode())
    exact = json.dumps({"detail": "d" * pad}).encode()
    assert len(exact) == _ERROR_BYTES
    with canned_server({"/api/info": (200, JSON, big), ("POST", "/api/search"): (409, JSON, exact)}) as url:
        shard = RemoteShard(url, timeout=5)
        assert len(shard.stats()["labels"]) == 3000
        monkeypatch.setattr(shards_mod, "MAX_JSON_ANSWER", 100)
        with pytest.raises(ShardHTTPError) as exc:
            shard.search({"vector": [0.0], "k": 1})
    assert str(exc.value) == f"shard {url}: /api/search answered HTTP 409: {'d' * pad}"


def test_a_short_timeout_still_lets_a_prompt_shard_answer():
    with canned_server({"/api/info": (200, JSON, json.dumps(INFO).encode())}) as url:
        assert RemoteShard(url, timeout=0.9).stats() == INFO
        assert RemoteShard(url).timeout == 30.0  # the documented default
        assert RemoteShard(url).stats() == INFO


def test_a_tls_failure_names_openssls_reason():
    """https:// to a plain-HTTP port: the reason (WRONG_VERSION_NUMBER or the like), not the
    whole SSLError text with its file and line of _ssl.c."""
    with canned_server({"/api/info": (200, JSON, json.dumps(INFO).encode())}) as url:
        tls = url.replace("http://", "https://")
        with pytest.raises(CollectionError) as exc:
            RemoteShard(tls, timeout=5).stats()
    assert re.match(rf"shard {re.escape(tls)}: no TLS connection \([A-Z0-9_]+\); ", str(exc.value)), str(exc.value)


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """A vectors-only collection (4-d, 3 images) and a canned /api/info of another collection
    in its space (no db_id: as an older server answers)."""
    import numpy as np

    from xmodal.index import Collection

    c = Collection.create(tmp_path_factory.mktemp("transport") / "home.xmc", dim=4)
    c.add_vectors("image", [f"h{i}.jpg" for i in range(3)], np.eye(3, 4, dtype=np.float32))
    st = c.stats()
    st.pop("path")
    st.pop("db_id")
    yield c, st
    c.close()


DEEP = b"[" * 20_000  # nested past Python's recursion limit: json.loads raises RecursionError


@pytest.mark.parametrize("answer, why", [
    ((200, JSON, b'{"results": [{"id": 1, "modality": "image", "key": "k", "score": 1' + b"0" * 400 + b"}]}"),
     "results[0].score: not a finite number"),  # an integer no float holds: a TypeError in numpy
    ((200, JSON, DEEP), "/api/search did not answer JSON"),
    ((500, {}, DEEP), "/api/search answered HTTP 500: not an xmodal answer"),
])
def test_garbage_search_answers_fail_their_shard_by_name_never_the_search(home, answer, why):
    """A shard's answer that Python's json or numpy chokes on (a TypeError or RecursionError,
    not a CollectionError) took the whole routing search down, on_error="skip" or not."""
    import numpy as np

    from xmodal.index import ShardedCollection

    local, st = home
    with canned_server({"/api/info": (200, JSON, json.dumps(st).encode()), ("POST", "/api/search"): answer}) as url:
        with ShardedCollection([local, RemoteShard(url, timeout=5)]) as sc:
            q = np.ones(4, np.float32)
            hits = sc.search_vector(q, "image", 2, on_error="skip")
            assert [h.key for h in hits] and all(h.shard == str(local.path) for h in hits)
            (name, error), = hits.failed
            assert name == url and error.startswith(f"shard {url}: ") and why in error, error
            assert len(error) < 400, error  # a garbage value is shown cut, not whole
            with pytest.raises(CollectionError, match=re.escape(why)):
                sc.search_vector(q, "image", 2)


@pytest.mark.parametrize("info, why", [
    ({"labels": 5}, "/api/info labels: not a list of strings"),
    ({"labels": [{"a": 1}]}, "/api/info labels: not a list of strings"),
    (DEEP, "/api/info did not answer JSON"),
    ({"images": "many"}, "/api/info images: not a count of items"),
    ({"texts": None}, "/api/info texts: not a count of items"),
    ({"images": -3}, "/api/info images: not a count of items"),
])
def test_a_garbage_info_answer_is_named_not_a_crash(home, info, why):
    """/api/info labels of the wrong type raised TypeError in stats(): a traceback where a
    router starts, a 500 where it checks a label filter; item counts that are no counts
    raised TypeError in the router's stats (`xmodal stats --shard`, /api/info of a routing
    server)."""
    from xmodal.index import ShardedCollection

    local, st = home
    body = info if isinstance(info, bytes) else json.dumps({**st, **info}).encode()
    with canned_server({"/api/info": (200, JSON, body)}) as url:
        with pytest.raises(CollectionError) as exc:
            RemoteShard(url, timeout=5).stats()
        assert str(exc.value).startswith(f"shard {url}: {why}"), exc.value
        with pytest.raises(CollectionError, match=re.escape(f"shard {url}: {why}")):
            ShardedCollection([local, RemoteShard(url, timeout=5)])


@pytest.mark.parametrize("timeout", [float("nan"), float("inf"), 0, -1.0, "5", None, True])
def test_a_timeout_that_is_no_positive_number_of_seconds_is_refused(timeout):
    """`--shard-timeout inf` passes the options' min=0.1 and failed at the first call with a
    bare OverflowError (nan, through the library: ValueError): a traceback where a router
    starts. Said when the shard is made, naming it."""
    with pytest.raises(CollectionError) as exc:
        RemoteShard("http://127.0.0.1:8001", timeout=timeout)
    assert str(exc.value).startswith("shard http://127.0.0.1:8001: the timeout must be a number of seconds "
                                     "over 0"), exc.value
    assert RemoteShard("http://127.0.0.1:8001", timeout=2).timeout == 2


def test_the_command_line_names_an_infinite_shard_timeout():
    from typer.testing import CliRunner

    from xmodal.cli import app

    r = CliRunner().invoke(app, ["stats", "--shard", "http://127.0.0.1:8001", "--shard-timeout", "inf"])
    assert r.exit_code == 2 and "the timeout must be a number of seconds over 0 (and finite), got inf" in r.output, \
        r.output


@pytest.mark.parametrize("by", [{"image": [{}], "text": []}, {"image": "beach"}, ["beach"]])
def test_a_router_reads_a_malformed_labels_by_target_as_an_older_servers(home, by):
    """A labels_by_target that is not lists of labels per modality counts the shard's labels
    for either modality, in the router's stats too (it raised TypeError there: unhashable
    items, or a string read as its characters)."""
    from xmodal.index import ShardedCollection

    local, st = home
    body = json.dumps({**st, "labels": ["pier"], "labels_by_target": by}).encode()
    with canned_server({"/api/info": (200, JSON, body)}) as url:
        with ShardedCollection([local, RemoteShard(url, timeout=5)]) as sc:
            got = sc.stats()["labels_by_target"]
    assert "pier" in got["image"] and "pier" in got["text"], got
    assert all(isinstance(x, str) and len(x) > 1 for m in got.values() for x in m), got
