"""Shards: collections that share one common space (``--like``) searched as one, locally and
through `xmodal serve` on 127.0.0.1; the merge must equal one collection holding every item."""

from __future__ import annotations

import json
import shutil
import threading

import numpy as np
import pytest
from threadpoolctl import threadpool_limits
from typer.testing import CliRunner

from conftest import free_port, serving, ucm_caption_folder
from xmodal.cli import app
from xmodal.index import (Collection, CollectionError, RemoteShard, ShardedCollection,
                          build_collection)

QUERIES = ["an airplane on the runway", "many buildings and green trees", "a river next to a road"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root, folder, _, mp = ucm_caption_folder(tmp_path_factory, "shards", 150)  # 14 images
    files = sorted(folder.glob("*.jpg"))
    halves = [root / "a", root / "b"]
    for h, part in zip(halves, (files[::2], files[1::2])):
        h.mkdir()
        for f in part:
            shutil.copy(f, h / f.name)
            shutil.copy(f.with_suffix(".txt"), h / f.with_suffix(".txt").name)
    with threadpool_limits(1):  # see test_collection.py
        # tfidf is a fitted encoder: a shard must reuse its vocabulary, not refit it
        a = build_collection(halves[0], root / "a.xmc", image_encoder="efficientnet-lite0",
                             text_encoder="tfidf", quiet=True)
        b = build_collection(halves[1], root / "b.xmc", like=root / "a.xmc", quiet=True)
        whole = build_collection(folder, root / "all.xmc", like=root / "a.xmc", quiet=True)
        yield {"root": root, "a": a, "b": b, "all": whole, "halves": halves}
    for c in (a, b, whole):
        c.close()
    mp.undo()


def _same(hits, ref):
    assert [(h.modality, h.key) for h in hits] == [(h.modality, h.key) for h in ref]
    np.testing.assert_allclose([h.score for h in hits], [h.score for h in ref], atol=1e-5)


def test_like_shares_the_space_and_the_merge_is_exact(shards):
    a, b, whole = shards["a"], shards["b"], shards["all"]
    assert a.space == b.space == whole.space
    assert a.count("image") + b.count("image") == whole.count("image") == 14
    with ShardedCollection([a, b]) as sc:
        assert sc.stats()["images"] == 14 and len(sc.stats()["shards"]) == 2
        for q in QUERIES:
            for target in ("image", "text"):
                hits = sc.search_text(q, 6, target)
                _same(hits, whole.search_text(q, 6, target))
                assert {h.shard for h in hits} <= {str(a.path), str(b.path)}
        img = sorted(shards["halves"][1].glob("*.jpg"))[0]
        hits = sc.search_image(img, 5)
        _same(hits, whole.search_image(img, 5))
        # batches of queries: the same lists as one query at a time
        for got, ref in zip(sc.search_texts(QUERIES, 6), whole.search_texts(QUERIES, 6)):
            _same(got, ref)
        for q, ref in zip(QUERIES, whole.search_texts(QUERIES, 6)):
            _same(whole.search_text(q, 6), ref)
        imgs = sorted(shards["halves"][0].glob("*.jpg"))[:2] + [img]
        for p, got in zip(imgs, sc.search_images(imgs, 4)):
            _same(got, whole.search_image(p, 4))
        # repeated captions appear once across shards too
        texts = [h.text for h in sc.search_text(QUERIES[0], 8, "text", distinct=True)]
        assert len(texts) == len(set(texts)) == 8


def test_a_shard_of_another_space_is_refused(shards, tmp_path):
    other = build_collection(shards["halves"][1], tmp_path / "other.xmc", image_encoder="efficientnet-lite0",
                             text_encoder="tfidf", quiet=True)  # its own fit: another space
    assert other.space != shards["a"].space
    with pytest.raises(CollectionError, match=r"does not share the common space .*--like "):
        ShardedCollection([shards["a"], other])
    # growing an existing collection of another space with --like is refused too
    with pytest.raises(CollectionError, match="already exists with another common space"):
        build_collection(shards["halves"][1], tmp_path / "other.xmc", like=shards["root"] / "a.xmc", quiet=True)
    other.close()


@pytest.fixture(scope="module")
def server(shards):
    from xmodal.service import create_app

    with serving(create_app(Collection.open(shards["root"] / "b.xmc"))) as url:
        yield url


def test_remote_shard_over_http(shards, server):
    a, whole = shards["a"], shards["all"]
    remote = RemoteShard(server)
    assert remote.space == a.space
    seen = set()
    with ShardedCollection([a, remote]) as sc:
        for q in QUERIES:
            hits = sc.search_text(q, 6, "image")
            _same(hits, whole.search_text(q, 6, "image"))
            seen |= {h.shard for h in hits}
    assert seen == {server, str(a.path)}  # both shards answered
    # only remote shards: the text goes as text, each server encodes it
    with ShardedCollection([remote]) as sc:
        hits = sc.search_text(QUERIES[0], 3, "text")
        ref = shards["b"].search_text(QUERIES[0], 3, "text")
        assert [h.key for h in hits] == [h.key for h in ref]
        with pytest.raises(CollectionError, match="an image query needs a local shard"):
            sc.search_image(sorted(shards["halves"][0].glob("*.jpg"))[0], 3)


def test_remote_errors_are_clear():
    with pytest.raises(CollectionError, match="expected an http"):
        RemoteShard("localhost:8000")
    dead = RemoteShard(f"http://127.0.0.1:{free_port()}", timeout=2)
    with pytest.raises(CollectionError, match=r"shard http://127.0.0.1:\d+: unreachable"):
        dead.stats()


def test_cli_searches_shards(shards, server):
    root = shards["root"]
    r = CliRunner().invoke(app, ["search", "-c", str(root / "a.xmc"), "--shard", server,
                                 QUERIES[0], "-k", "4", "--json"])
    assert r.exit_code == 0, r.output
    hits = json.loads(r.output)
    ref = shards["all"].search_text(QUERIES[0], 4, "image")
    assert [h["key"] for h in hits] == [h.key for h in ref] and all("shard" in h for h in hits)
    r = CliRunner().invoke(app, ["search", "-c", str(root / "a.xmc"), "-c", str(root / "b.xmc"),
                                 QUERIES[1], "-k", "3"])
    assert r.exit_code == 0 and all(len(ln.split("\t")) == 4 for ln in r.output.strip().splitlines())
    r = CliRunner().invoke(app, ["search", "-c", str(root / "a.xmc"), "-c", str(root / "b.xmc"),
                                 "--item", "1"])
    assert r.exit_code == 2 and "item ids are per shard" in r.output


def test_serve_routes_searches_to_remote_shards(shards, server):
    """`xmodal serve -c a.xmc --shard URL`: the HTTP answer covers both collections."""
    from fastapi.testclient import TestClient

    from xmodal.service import create_app

    a = Collection.open(shards["root"] / "a.xmc")
    client = TestClient(create_app(a, shards=[server]))
    assert client.get("/api/info").json()["shards"] == [server]
    # k large enough that both halves are in the answer (the top 6 all came from one)
    body = client.post("/api/search", json={"text": QUERIES[0], "k": 12, "target": "image"}).json()
    ref = shards["all"].search_text(QUERIES[0], 12, "image")
    assert [r["key"] for r in body["results"]] == [h.key for h in ref]
    assert body["failed_shards"] == []
    remote = [r for r in body["results"] if r.get("shard") == server]
    assert remote and all(r["thumbnail"].startswith(server + "/api/items/") for r in remote)
    assert all(r["thumbnail"].startswith("/api/items/") for r in body["results"] if "shard" not in r)
    # a remote thumbnail URL really is that server's image
    import urllib.request

    with urllib.request.urlopen(remote[0]["thumbnail"]) as resp:
        assert resp.headers["content-type"].startswith("image/")
    # more like this, from a local item: the item itself is left out, shards searched too
    item = next(r for r in body["results"] if "shard" not in r)
    more = client.post("/api/search", json={"item_id": item["id"], "k": 5, "target": "image"}).json()
    assert item["id"] not in [r["id"] for r in more["results"] if "shard" not in r]
    assert len(more["results"]) == 5


def test_a_failing_shard_is_named_and_skipped(shards, server):
    from fastapi.testclient import TestClient

    from xmodal.service import create_app

    a = Collection.open(shards["root"] / "a.xmc")
    remote = RemoteShard(server)
    client = TestClient(create_app(a, shards=[remote]))
    remote.url = f"http://127.0.0.1:{free_port()}"  # the shard goes away after the start
    body = client.post("/api/search", json={"text": QUERIES[0], "k": 4}).json()
    assert len(body["results"]) == 4 and all("shard" not in r for r in body["results"])
    assert body["failed_shards"][0]["shard"] == server and "unreachable" in body["failed_shards"][0]["error"]
    # a shard that is down stops the start
    with pytest.raises(CollectionError, match="unreachable"):
        create_app(a, shards=[f"http://127.0.0.1:{free_port()}"])


def test_cli_stats_tells_whether_collections_share_a_space(shards, server, tmp_path):
    root = shards["root"]
    r = CliRunner().invoke(app, ["stats", "-c", str(root / "a.xmc"), "--shard", server, "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["one_space"] is True and [c["images"] for c in out["collections"]] == [7, 7]
    assert out["collections"][0]["space"] == shards["a"].space
    other = build_collection(shards["halves"][1], tmp_path / "other.xmc", image_encoder="efficientnet-lite0",
                             text_encoder="tfidf", quiet=True)
    other.close()
    r = CliRunner().invoke(app, ["stats", "-c", str(root / "a.xmc"), "-c", str(tmp_path / "other.xmc")])
    assert r.exit_code == 1 and "different common spaces" in r.output and "7 images, 35 texts" in r.output
    r = CliRunner().invoke(app, ["stats", "-c", str(tmp_path / "nothing.xmc")])
    assert r.exit_code == 2 and "no collection here" in r.output


def test_a_remote_shard_rebuilt_into_another_space_is_left_out(shards, tmp_path):
    """A shard server that follows `xmodal index --rebuild` into another space after the
    router started must not have its scores merged with the others' (they mean other things)."""
    from fastapi.testclient import TestClient

    from xmodal.service import create_app

    path = tmp_path / "b.xmc"
    shutil.copytree(shards["root"] / "b.xmc", path)
    served = Collection.open(path)
    with serving(create_app(served)) as url:
        a = Collection.open(shards["root"] / "a.xmc")
        sc = ShardedCollection([a, RemoteShard(url)])
        client = TestClient(create_app(a, shards=[url]))
        assert {h.shard for h in sc.search_text(QUERIES[0], 14, "image")} == {str(a.path), url}
        # rebuilt beside the running server: its own fit, the same vector shape
        build_collection(shards["halves"][1], path, image_encoder="efficientnet-lite0",
                         text_encoder="tfidf", overwrite=True, quiet=True).close()
        assert client.get("/api/info").json()["space"] == a.space
        # the served collection follows the rebuild and reports its new space
        assert TestClient(create_app(served)).get("/api/info").json()["space"] == Collection.open(path).space
        assert served.space != a.space
        with pytest.raises(CollectionError, match="common space"):
            sc.search_text(QUERIES[0], 5, "image")
        hits = sc.search_text(QUERIES[0], 5, "image", on_error="skip")
        assert {h.shard for h in hits} == {str(a.path)} and "common space" in hits.failed[0][1]
        body = client.post("/api/search", json={"text": QUERIES[0], "k": 5}).json()
        assert all("shard" not in r for r in body["results"])
        assert body["failed_shards"][0]["shard"] == url and "common space" in body["failed_shards"][0]["error"]
        sc.close()


def test_k_over_the_http_limit_still_reaches_remote_shards(shards, server):
    """The command line takes k up to 10000 and "more like this" asks for k + 1, but a server
    answers at most 1000 hits a query: remote shards are asked for at most that many."""
    from fastapi.testclient import TestClient

    from xmodal.service import create_app

    a = Collection.open(shards["root"] / "a.xmc")
    with ShardedCollection([a, RemoteShard(server)]) as sc:
        hits = sc.search_text(QUERIES[0], 1500, "text")
        assert len(hits) == a.count("text") + shards["b"].count("text") and not hits.failed
    client = TestClient(create_app(a, shards=[server]))
    item = a.list_items("image", 0, 1)[0]
    body = client.post("/api/search", json={"item_id": item.id, "k": 1000, "target": "image"}).json()
    assert body["failed_shards"] == [] and len(body["results"]) == 13


def test_a_routing_server_shows_remote_images_with_their_captions(shards, server):
    """The web page labels an image result by its caption; a remote shard's answer has it."""
    from fastapi.testclient import TestClient

    from xmodal.service import create_app

    client = TestClient(create_app(Collection.open(shards["root"] / "a.xmc"), shards=[server]))
    body = client.post("/api/search", json={"text": QUERIES[1], "k": 14, "target": "image"}).json()
    remote = [r for r in body["results"] if r.get("shard") == server]
    assert remote
    b = TestClient(create_app(shards["b"]))
    for r in remote:
        assert r["caption"] and r["caption"] == b.get(f"/api/items/{r['id']}").json()["caption"]


def test_cli_refuses_a_label_no_shard_has(shards, server):
    """As with one collection: a typo in --label is an error, not an empty answer."""
    root = shards["root"]
    for where in (["-c", str(root / "b.xmc")], ["--shard", server]):
        r = CliRunner().invoke(app, ["search", "-c", str(root / "a.xmc"), *where, QUERIES[0],
                                     "--label", "airprot"])
        assert r.exit_code == 2 and "no image item has the label 'airprot'" in r.output, r.output


def test_a_hung_shard_does_not_hold_up_the_others(shards, server):
    """A remote shard that accepts connections but never answers costs each query at most its
    timeout: concurrent queries must not queue their local searches behind the hung calls."""
    import socket
    import threading

    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(64)  # accepts (the kernel does), never answers
    a = Collection.open(shards["root"] / "a.xmc")
    remote = RemoteShard(server, timeout=1.0)
    with ShardedCollection([a, remote]) as sc:
        remote.url = f"http://127.0.0.1:{hung.getsockname()[1]}"
        q, _ = a.encode_query_text(QUERIES[0])
        answers = []

        def one():
            answers.append(sc.search_vector(q, "image", 3, on_error="skip"))

        threads = [threading.Thread(target=one) for _ in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    # the command line and a routing server take the timeout too
    url = f"http://127.0.0.1:{hung.getsockname()[1]}"
    r = CliRunner().invoke(app, ["search", "-c", str(a.path), "--shard", url, "--shard-timeout", "1", "x"])
    assert r.exit_code == 2 and "timed out" in r.output, r.output
    from xmodal.service import create_app

    with pytest.raises(CollectionError, match="timed out"):
        create_app(a, shards=[url], shard_timeout=1)
    hung.close()
    assert len(answers) == 12
    assert all(len(h) == 3 and h.failed and "timed out" in h.failed[0][1] for h in answers)


def test_a_trickling_shard_is_cut_off_at_its_timeout():
    """A server that answers a byte at a time keeps every socket read alive: the timeout must
    bound the whole answer, or the call (and its worker) waits as long as the server likes."""
    import socket
    import threading
    import time

    body = b'{"status": "' + b"x" * 30 + b'"}'
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)

    def trickle():
        conn, _ = srv.accept()
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body))
        try:
            for b in body:  # about 7 s in all, a byte every 0.2 s
                conn.sendall(bytes([b]))
                time.sleep(0.2)
        except OSError:
            pass  # the client gave up
        conn.close()

    t = threading.Thread(target=trickle, daemon=True)
    t.start()
    shard = RemoteShard(f"http://127.0.0.1:{srv.getsockname()[1]}", timeout=1.0)
    with pytest.raises(CollectionError, match=r"timed out \(no complete answer within 1 s\)"):
        shard._call("/api/info")
    srv.close()


def test_a_routing_server_closes_its_shard_pools_when_it_stops(shards, server):
    from fastapi.testclient import TestClient

    from xmodal.service import create_app

    app = create_app(Collection.open(shards["root"] / "a.xmc"), shards=[server])
    with TestClient(app) as client:
        assert client.get("/api/search", params={"q": QUERIES[0], "k": 3}).status_code == 200
    sc = app.state.shards
    assert sc._pool._shutdown and all(p._shutdown for p in sc._remote_pools.values())


def test_a_routing_server_refuses_a_label_no_shard_has(shards, tmp_path):
    """Over HTTP too, a label no shard has answers 422 naming it (the command line's check);
    a label only a remote shard has is searched there, and that shard, which a router asks
    with a label its own items lack, is not left out for it."""
    import urllib.error
    import urllib.request

    from fastapi.testclient import TestClient

    from xmodal.index import TextItem
    from xmodal.service import create_app

    colls = {}
    for name, label in (("a", "harbour"), ("b", "quay")):  # copies: the module's shards stay as they are
        shutil.copytree(shards["root"] / f"{name}.xmc", tmp_path / f"{name}.xmc")
        colls[name] = Collection.open(tmp_path / f"{name}.xmc")
        colls[name].add_items(texts=[TextItem(key=f"lab/{name}", text=f"boats at the {label}", labels=[label])])
    a, b = colls["a"], colls["b"]
    with serving(create_app(b)) as url:
        client = TestClient(create_app(a, shards=[url]))
        for _ in range(2):  # the second time from what the router remembers of the shard
            r = client.post("/api/search", json={"text": "boats", "k": 5, "labels": ["quay"], "target": "text"})
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["failed_shards"] == [] and [(h["shard"], h["key"]) for h in body["results"]] == [(url, "lab/b")]
        # (labels on texts only: a text search's; an image search refuses them, tested below)
        r = client.get("/api/search", params={"q": "boats", "labels": "quay,airprot", "target": "text"})
        assert r.status_code == 422 and "'airprot'" in r.json()["detail"] and "'quay'" not in r.json()["detail"]
        assert "harbour, quay" in r.json()["detail"], r.text
        # the shard server itself, asked by anyone else, refuses a label it lacks
        req = urllib.request.Request(url + "/api/search", method="POST", headers={"Content-Type": "application/json"},
                                     data=json.dumps({"text": "boats", "labels": ["harbour"]}).encode())
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req, timeout=30)
        assert err.value.code == 422
        from xmodal.index.shards import UnknownLabelError

        with ShardedCollection([a, RemoteShard(url)]) as sc:
            sc.check_labels(["quay", "harbour"])
            with pytest.raises(UnknownLabelError, match="'airprot'") as exc:
                sc.check_labels(["quay", "airprot"])
            assert exc.value.unknown == ["airprot"] and exc.value.known == ["harbour", "quay"]
    a.close()
    b.close()


def test_a_shard_that_wants_a_key_names_the_option_that_sends_one(shards, tmp_path):
    """A private shard answering 401/403 was reported as a generic failure; the message must
    name the shard and the option (--shard-api-key / $XMODAL_SHARD_API_KEY) that sends a key."""
    from fastapi.testclient import TestClient

    from xmodal.service import create_app
    from xmodal.service.auth import create_key, revoke_key

    path = tmp_path / "private.xmc"
    shutil.copytree(shards["root"] / "b.xmc", path)
    served = Collection.open(path)
    served.set_setting("public_read", False)
    key = create_key(served, "read", "router")
    a = Collection.open(shards["root"] / "a.xmc")
    with serving(create_app(served)) as url:
        with pytest.raises(CollectionError) as exc:
            create_app(a, shards=[url])
        msg = str(exc.value)
        assert url in msg and "401" in msg and "--shard-api-key" in msg and "$XMODAL_SHARD_API_KEY" in msg, msg
        with pytest.raises(CollectionError, match=r"refused.*--shard-api-key"):
            create_app(a, shards=[url], shard_api_key=create_key(a, "read"))  # another collection's key
        client = TestClient(create_app(a, shards=[url], shard_api_key=key))
        body = client.post("/api/search", json={"text": QUERIES[0], "k": 14}).json()
        assert body["failed_shards"] == [] and any(r.get("shard") == url for r in body["results"])
        revoke_key(served, key[4:].split("_")[0])
        body = client.post("/api/search", json={"text": QUERIES[0], "k": 4}).json()
        failed = body["failed_shards"]
        assert failed[0]["shard"] == url and len(body["results"]) == 4
        assert "401" in failed[0]["error"] and "--shard-api-key" in failed[0]["error"], failed
        # the command line names its own option
        r = CliRunner(env={"XMODAL_API_KEY": None}).invoke(
            app, ["search", "-c", str(a.path), "--shard", url, QUERIES[0]])
        assert r.exit_code == 2 and url in r.output and "--api-key" in r.output, r.output
    served.close()


@pytest.mark.parametrize("answer", ["trickle", b"SSH-2.0-OpenSSH_9.6\r\n", b"big"])
def test_a_proxied_shard_thumbnail_has_one_deadline_and_names_a_bad_shard(answer):
    """The router's thumbnail proxy goes through RemoteShard.fetch: a shard trickling bytes is
    cut off at its timeout (the proxy read with per-read timeouts only), one that does not
    speak HTTP is a 502 (was a 500), and an answer over the size limit is refused."""
    import socket
    import time

    from fastapi import HTTPException

    from xmodal.service.app import MAX_PROXIED_THUMBNAIL, fetch_shard_thumbnail

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)

    def talk():
        conn, _ = srv.accept()
        conn.recv(65536)
        try:
            if answer == "trickle":
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: 40\r\n\r\n")
                for _ in range(40):
                    conn.sendall(b"x")
                    time.sleep(0.2)
            elif answer == b"big":
                n = MAX_PROXIED_THUMBNAIL + 10
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % n)
                conn.sendall(b"\xff" * n)
            else:
                conn.sendall(answer)
        except OSError:
            pass  # the client gave up
        conn.close()

    threading.Thread(target=talk, daemon=True).start()
    shard = RemoteShard(f"http://127.0.0.1:{srv.getsockname()[1]}", timeout=1.0)
    t0 = time.monotonic()
    with pytest.raises(HTTPException) as err:
        fetch_shard_thumbnail(shard, 1, 128)
    assert err.value.status_code == 502 and time.monotonic() - t0 < 4
    assert {"trickle": "timed out", b"big": "over", }.get(answer, "did not answer HTTP") in err.value.detail
    srv.close()


def _modal_shard(path, image_labels, text_labels):
    """A vectors-only shard: two images and two captions with the labels given (per item)."""
    c = Collection.create(path, dim=4)
    c.add_vectors("image", [f"{path.stem}/i{j}.jpg" for j in range(2)], np.eye(2, 4, dtype=np.float32),
                  labels=image_labels)
    c.add_vectors("text", [f"{path.stem}/t{j}" for j in range(2)], np.eye(2, 4, dtype=np.float32),
                  texts=[f"{path.stem} caption {j}" for j in range(2)], labels=text_labels)
    return c


def test_a_label_only_the_other_modality_has_is_refused_per_target_over_shards_and_http(tmp_path):
    """A label filter was checked against every item: one only the other modality has passed
    and the search answered nothing. Now counted on the target's items, over any shard: a
    label on one shard's images and another's texts is no error for either target."""
    from fastapi.testclient import TestClient

    from xmodal.index.shards import UnknownLabelError
    from xmodal.service import create_app

    a = _modal_shard(tmp_path / "a.xmc", [["beach"], ["forest"]], None)  # captions unlabelled
    b = _modal_shard(tmp_path / "b.xmc", None, [["beach"], ["quay"]])    # images unlabelled
    q = np.eye(1, 4, dtype=np.float32)[0]
    # one local collection over HTTP: 422 naming the modality, for every kind of query
    client = TestClient(create_app(a))
    assert a.id_of("a/t0") is not None and a.id_of("a/i0.jpg") is not None
    for body in ({"vector": q.tolist(), "target": "text"}, {"item_id": a.id_of("a/t0")},
                 {"item_id": a.id_of("a/i0.jpg"), "target": "text"}, {"text": "sand", "target": "text"}):
        r = client.post("/api/search", json={**body, "labels": ["beach"]})
        assert r.status_code == 422, (body, r.text)
        assert "no text item has the label 'beach' (image items do)" in r.json()["detail"], r.text
    r = client.post("/api/search", json={"vector": q.tolist(), "labels": ["beach"]})  # default target image
    assert r.status_code == 200 and [h["key"] for h in r.json()["results"]] == ["a/i0.jpg"], r.text
    r = client.post("/api/search", json={"vector": q.tolist(), "target": "text", "labels": ["beach"],
                                         "check_labels": False})
    assert r.status_code == 200 and r.json()["results"] == []
    hb = TestClient(create_app(b))
    r = hb.get("/api/search", params={"q": "sand", "labels": "quay"})  # text -> image by default
    assert r.status_code == 422 and "no image item has the label 'quay' (text items do)" in r.json()["detail"]
    r = hb.post("/api/search/batch", json={"texts": ["sand"], "labels": ["quay"]})
    assert r.status_code == 422 and "no image item has the label 'quay'" in r.json()["detail"]
    assert hb.get("/api/info").json()["labels_by_target"] == {"image": [], "text": ["beach", "quay"]}
    # shards, local: beach is on a's images and b's texts, so neither target refuses it
    with ShardedCollection([a, b]) as sc:
        assert [h.key for h in sc.search_vector(q, "text", 5, labels=["beach"])] == ["b/t0"]
        assert [h.key for h in sc.search_vector(q, "image", 5, labels=["beach"])] == ["a/i0.jpg"]
        with pytest.raises(UnknownLabelError, match=r"no image item has the label 'quay' \(text items do\)"):
            sc.search_vector(q, "image", 5, labels=["quay"])
        with pytest.raises(UnknownLabelError, match="no text item has the label 'forest'"):
            sc.check_labels(["forest"], target="text")
        assert sc.stats()["labels_by_target"] == {"image": ["beach", "forest"], "text": ["beach", "quay"]}
    # shards, remote: the shard's /api/info tells its labels per modality
    with serving(create_app(b)) as url:
        with ShardedCollection([a, RemoteShard(url)]) as sc:
            sc.check_labels(["beach"], target="text")
            sc.check_labels(["quay"], target="text")
            with pytest.raises(UnknownLabelError, match="no image item has the label 'quay'"):
                sc.check_labels(["quay"], target="image")
            router = TestClient(create_app(a, shards=[url]))
            r = router.post("/api/search", json={"vector": q.tolist(), "target": "text", "labels": ["beach"]})
            assert r.status_code == 200 and [(h["shard"], h["key"]) for h in r.json()["results"]] == [(url, "b/t0")]
            r = router.post("/api/search", json={"vector": q.tolist(), "labels": ["quay"]})
            assert r.status_code == 422 and "no image item has the label 'quay'" in r.json()["detail"], r.text
        # an older server's /api/info has labels only: a label there counts for either target
        old = RemoteShard(url)
        old._info, old._labels, old._labels_by_target = {"labels": ["quay"]}, {"quay"}, None
        ShardedCollection.check_labels_of([old], ["quay"], "old", target="image")
    a.close()
    b.close()
