"""Hostile and unlucky input to collections, `xmodal index` reruns and the HTTP API: unreadable
files on a rerun, a symlink loop, an edited image, two indexing runs creating one collection,
a corrupt store, ids past SQLite's range, a shard URL that is not an xmodal server. Each case
must end in a clear error (4xx over HTTP) and never lose what is stored."""

import http.server
import io
import os
import threading
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from xmodal.index import Collection, CollectionError, build_collection
from xmodal.index.build import scan_folder
from xmodal.index.shards import RemoteShard
from xmodal.service import create_app
from xmodal.service.auth import create_key

WORDS = ["red", "green", "blue", "plane", "runway", "forest", "river", "beach", "house", "road"]


def make_folder(folder: Path, names, seed: int = 0) -> Path:
    """Small random JPEGs, each with a three-line sidecar caption file."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        a = (rng.random((40, 40, 3)) * 255).astype(np.uint8)
        a[..., i % 3] = 220
        Image.fromarray(a).save(folder / f"{name}.jpg")
        (folder / f"{name}.txt").write_text("\n".join(" ".join(rng.choice(WORDS, 4)) for _ in range(3)))
    return folder


def build(src: Path, dest: Path) -> Collection:
    return build_collection(src, dest, image_encoder="efficientnet-lite0", text_encoder="tfidf", quiet=True)


def test_rerun_skips_unreadable_images_and_their_captions(tmp_path, env):
    src = make_folder(tmp_path / "imgs", [f"img{i}" for i in range(8)])
    os.symlink("nowhere.jpg", src / "dangling.jpg")
    (src / "broken.jpg").write_text("not pixels at all")
    (src / "broken.txt").write_text("a caption of an unreadable file")
    coll = build(src, tmp_path / "c")
    assert (coll.count("image"), coll.count("text")) == (8, 24)
    coll.close()
    # The rerun used to stop: the dangling link failed hashing, the broken image's caption
    # had no image to pair with. Now both are skipped again and new files are added.
    make_folder(src, ["late"], seed=1)
    (src / "broken2.jpg").write_bytes(b"")
    (src / "broken2.txt").write_text("caption of an empty file")
    coll = build(src, tmp_path / "c")
    assert (coll.count("image"), coll.count("text")) == (9, 27)
    assert coll.id_of("late.jpg") is not None and coll.id_of("broken2.jpg#0") is None
    rep = coll.add_items(*scan_folder(src))
    assert rep.added == 0 and sorted(Path(p).name for p in rep.skipped) == [
        "broken.jpg", "broken2.jpg", "nowhere.jpg"]
    coll.close()


def test_symlink_loop_is_an_unreadable_image_not_a_crash(tmp_path):
    make_folder(tmp_path, ["a"])
    os.symlink("loop.jpg", tmp_path / "loop.jpg")
    images, texts = scan_folder(tmp_path)
    assert sorted(i.key for i in images) == ["a.jpg", "loop.jpg"] and len(texts) == 3


def test_edited_image_keeps_its_captions(tmp_path):
    coll = Collection.create(tmp_path / "c", dim=4)
    coll.add_vectors("image", ["a.jpg"], np.eye(4)[:1], paths=["/x/a.jpg"])
    coll.add_vectors("text", ["a.jpg#0", "a.jpg#1"], np.eye(4)[1:3], texts=["one", "two"],
                     pair_keys=["a.jpg", "a.jpg"])
    # The file changed: its item is replaced (new id); the unchanged captions are not re-added.
    new = coll.add_vectors("image", ["a.jpg"], np.eye(4)[3:], paths=["/x/a.jpg"]).ids[0]
    caps = [coll.get_item(coll.id_of(k)) for k in ("a.jpg#0", "a.jpg#1")]
    assert [c.pair_id for c in caps] == [new, new]
    assert coll.search_item(new, 2, target="text")[0].pair_id == new
    assert sorted(coll.delete(ids=[new])) == sorted([new] + [c.id for c in caps])  # captions go too
    assert coll.count() == 0
    coll.close()


def test_two_first_runs_on_one_collection_keep_both(tmp_path, env, monkeypatch):
    a = make_folder(tmp_path / "a", [f"a{i}" for i in range(6)])
    b = make_folder(tmp_path / "b", [f"b{i}" for i in range(6)], seed=3)
    dest = tmp_path / "c"
    build(a, dest).close()
    # Run b started at the same time: it saw no collection, fitted, and only then creates it.
    # It used to delete run a's collection; now it adds to it.
    monkeypatch.setattr(Collection, "exists", staticmethod(lambda path: False))
    coll = build(b, dest)
    keys = {h.key for h in coll.list_items("image")}
    assert keys == {f"a{i}.jpg" for i in range(6)} | {f"b{i}.jpg" for i in range(6)}
    assert coll.count("text") == 36
    coll.close()


def test_collection_paths_that_are_not_collections(tmp_path):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "collection.db").write_bytes(os.urandom(4096))
    with pytest.raises(CollectionError, match="collection.db: not a readable collection database"):
        Collection.open(tmp_path / "bad")
    with pytest.raises(CollectionError, match="not a readable collection database"):
        Collection.exists(tmp_path / "bad")
    (tmp_path / "file").write_text("x")
    make_folder(tmp_path / "imgs", ["a"])
    with pytest.raises(CollectionError, match="file: exists and is not a folder"):
        build_collection(tmp_path / "imgs", tmp_path / "file", quiet=True)  # refused before encoding
    with pytest.raises(CollectionError, match="not a folder"):
        Collection.create(tmp_path / "file", dim=4)


@pytest.fixture()
def served(tmp_path):
    coll = Collection.create(tmp_path / "c", dim=4)
    coll.add_vectors("image", ["a.jpg"], np.eye(4)[:1], paths=[str(tmp_path / "a.jpg")])
    coll.add_vectors("text", ["a.jpg#0"], np.eye(4)[1:2], texts=["one"], pair_keys=["a.jpg"])
    client = TestClient(create_app(coll), raise_server_exceptions=False)
    yield coll, client, {"X-API-Key": create_key(coll, "write")}
    coll.close()


def test_ids_past_sqlite_range_are_not_found(served):
    coll, c, w = served
    big = 2**63
    assert coll.get_item(big) is None and coll.delete(ids=[big]) == [] and coll.list_items(offset=big) == []
    with pytest.raises(KeyError, match=str(big)):
        coll.search_item(big)
    with pytest.raises(KeyError, match=str(big)):
        coll.search_vector(np.ones(4), relevant=[big])
    for method, url, kw in (("GET", f"/api/items/{big}", {}), ("GET", f"/api/items/{big}/thumbnail", {}),
                            ("DELETE", f"/api/items/{big}", {"headers": w}),
                            ("POST", "/api/search", {"json": {"item_id": big}}),
                            ("POST", "/api/search", {"json": {"vector": [1, 0, 0, 0], "relevant": [big]}}),
                            ("POST", "/api/texts", {"json": {"text": "x", "pair_id": big}, "headers": w})):
        r = c.request(method, url, **kw)
        assert r.status_code == 404 and str(big) in r.json()["detail"], (url, r.status_code, r.text)
    r = c.get(f"/api/items?offset={big}")
    assert r.status_code == 200 and r.json()["items"] == []
    assert coll.count() == 2


def test_blank_and_unencodable_texts_are_4xx(served):
    coll, c, w = served
    r = c.post("/api/texts", json={"text": "  \n\t "}, headers=w)
    assert r.status_code == 422 and "empty" in r.json()["detail"]
    for url, body in (("/api/texts", b'{"text": "\\ud800abc"}'), ("/api/search", b'{"text": "\\ud800abc"}')):
        r = c.post(url, content=body, headers={"Content-Type": "application/json", **w})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "text"], r.text
    assert coll.count("text") == 1


def test_thumbnail_of_a_48_megapixel_photo(served, tmp_path):
    coll, c, _ = served
    Image.new("RGB", (8000, 6000), (90, 140, 200)).save(tmp_path / "a.jpg", quality=50)
    r = c.get(f"/api/items/{coll.id_of('a.jpg')}/thumbnail?size=128")
    assert r.status_code == 200, r.text
    with Image.open(io.BytesIO(r.content)) as im:
        assert max(im.size) == 128


class _NotXmodal(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"<html>some other service</html>" if "info" in self.path else b'{"hits": []}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.do_GET()

    def log_message(self, *args):
        pass


def test_shard_url_that_is_not_an_xmodal_server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotXmodal)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{srv.server_address[1]}"
    try:
        with pytest.raises(CollectionError, match=f"shard {url}: /api/info did not answer JSON"):
            RemoteShard(url).stats()
        with pytest.raises(CollectionError, match=f"shard {url}: /api/search answered no results"):
            RemoteShard(url).search({"vector": [1.0], "k": 1})
    finally:
        srv.shutdown()
        srv.server_close()


def test_prune_makes_a_rerun_mirror_the_source(tmp_path, env):
    from typer.testing import CliRunner
    from xmodal.cli import app

    src = make_folder(tmp_path / "imgs", [f"img{i}" for i in range(6)])
    coll = build(src, tmp_path / "c")
    assert (coll.count("image"), coll.count("text")) == (6, 18)
    (src / "img5.jpg").unlink()
    (src / "img5.txt").unlink()
    (src / "img1.jpg").rename(src / "img1b.jpg")
    (src / "img1.txt").rename(src / "img1b.txt")
    lines = (src / "img0.txt").read_text().splitlines()
    (src / "img0.txt").write_text("\n".join(lines[:2]))
    # without --prune a rerun only adds: the old items stay (the documented default)
    coll = build(src, tmp_path / "c")
    assert (coll.count("image"), coll.count("text")) == (7, 21)
    res = CliRunner().invoke(app, ["index", str(src), "-c", str(tmp_path / "c"), "--prune",
                                   "--image-encoder", "efficientnet-lite0", "--text-encoder", "tfidf"])
    assert res.exit_code == 0, res.output
    # img5 and img1 (renamed), each with its 3 captions, and img0's removed third line
    assert "pruned 9 item(s)" in res.output
    coll = Collection.open(tmp_path / "c")
    keys = {h.key for h in coll.list_items(limit=1000)}
    assert {"img5.jpg", "img1.jpg", "img0.jpg#2"}.isdisjoint(keys)
    assert {"img1b.jpg", "img1b.jpg#2", "img0.jpg#1"} <= keys
    assert (coll.count("image"), coll.count("text")) == (5, 14)
    hits = coll.search_text(lines[0], k=50)
    assert hits and all(h.key in keys for h in hits)
    assert coll.store.query("PRAGMA integrity_check")[0][0] == "ok"
    with pytest.raises(CollectionError, match="empty source"):
        coll.prune([])
    assert coll.count() == 19


def test_dry_run_says_what_a_rerun_would_do_and_writes_nothing(tmp_path, env):
    import json

    from typer.testing import CliRunner
    from xmodal.cli import app

    src = make_folder(tmp_path / "imgs", [f"img{i}" for i in range(5)])
    args = ["index", str(src), "-c", str(tmp_path / "c"), "--image-encoder", "efficientnet-lite0",
            "--text-encoder", "tfidf", "--dry-run", "--json"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    plan = json.loads(res.stdout)
    assert (plan["action"], plan["images"], plan["texts"]) == ("create", 5, 15)
    assert not (tmp_path / "c").exists()

    build(src, tmp_path / "c").close()
    db = tmp_path / "c" / "collection.db"
    before = (db.read_bytes(), sorted(p.name for p in (tmp_path / "c").iterdir()))
    (src / "img4.jpg").unlink()
    (src / "img4.txt").unlink()
    make_folder(src, ["img2"], seed=7)  # new pixels and captions under an old name
    make_folder(src, ["late"], seed=3)
    (src / "broken.jpg").write_text("not pixels")
    res = CliRunner().invoke(app, args + ["--prune"])
    assert res.exit_code == 0, res.output
    plan = json.loads(res.stdout)
    assert plan["action"] == "update"
    assert (plan["image"]["new"], plan["image"]["changed"]) == (["late.jpg"], ["img2.jpg"])
    assert plan["image"]["unchanged"] == 3 and plan["image"]["unreadable"] == ["broken.jpg"]
    assert sorted(plan["text"]["new"]) == ["late.jpg#0", "late.jpg#1", "late.jpg#2"]
    assert sorted(plan["text"]["changed"]) == ["img2.jpg#0", "img2.jpg#1", "img2.jpg#2"]
    assert plan["text"]["unchanged"] == 9
    assert sorted(r["key"] for r in plan["removed"]) == ["img4.jpg", "img4.jpg#0", "img4.jpg#1", "img4.jpg#2"]
    # nothing was written: same database bytes, no new files
    assert (db.read_bytes(), sorted(p.name for p in (tmp_path / "c").iterdir())) == before
    text = CliRunner().invoke(app, args[:-1] + ["--prune"])
    assert "images: 1 new, 1 changed (re-encoded), 3 unchanged, 1 skipped as unreadable" in text.stdout
    assert "removed by --prune: 4 item(s)" in text.stdout

    # the real run does what the plan said
    removed = {r["id"] for r in plan["removed"]}
    res = CliRunner().invoke(app, args[:-2] + ["--prune", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["images"] == 5  # img0-3 and late
    coll = Collection.open(tmp_path / "c")
    assert not removed & {h.id for h in coll.list_items(limit=100)}


@pytest.mark.parametrize("method", ["cca", "lsh"])
def test_export_writes_every_vector_and_item(tmp_path, env, method):
    import json

    from typer.testing import CliRunner
    from xmodal.cli import app

    src = make_folder(tmp_path / "imgs", [f"img{i}" for i in range(5)])
    coll = build_collection(src, tmp_path / "c", method=method, image_encoder="efficientnet-lite0",
                            text_encoder="tfidf", rerank=method == "lsh", quiet=True)
    coll.delete(ids=[coll.id_of("img3.jpg")])  # a gap in the ids
    res = CliRunner().invoke(app, ["export", str(tmp_path / "out" / "v.npz"), "-c", str(tmp_path / "c")])
    assert res.exit_code == 0, res.output
    assert "4 images, 12 texts" in res.output
    with np.load(tmp_path / "out" / "v.npz", allow_pickle=False) as z:
        ids = z["ids"]
        assert len(ids) == 16 and (np.diff(ids) > 0).all()
        codes, fv = coll.item_vectors(ids.tolist())
        np.testing.assert_array_equal(z["vectors"], codes)
        assert z["vectors"].dtype == (np.uint8 if method == "lsh" else np.float32)
        if method == "lsh":
            np.testing.assert_array_equal(z["fvecs"], fv)
        else:
            assert "fvecs" not in z.files
        info = json.loads(str(z["info"]))
        assert info["space"] == coll.space and info["method"] == method
        items = coll.get_items(ids.tolist())
        for r, i in enumerate(ids.tolist()):
            h = items[i]
            assert (z["modality"][r], z["keys"][r]) == (h.modality, h.key)
            assert z["pair_ids"][r] == (-1 if h.pair_id is None else h.pair_id)
            assert z["texts"][r] == (h.text or "") and z["paths"][r] == (h.path or "")
            assert json.loads(str(z["labels"][r])) == h.labels
    coll.close()
    # only one modality; a read-only collection exports too; a wrong suffix is refused
    ro = Collection.open(tmp_path / "c", read_only=True)
    assert ro.export(tmp_path / "t.npz", modality="text") == {"image": 0, "text": 12}
    ro.close()
    with np.load(tmp_path / "t.npz") as z:
        assert set(z["modality"]) == {"text"} and len(z["ids"]) == 12
    res = CliRunner().invoke(app, ["export", str(tmp_path / "v.csv"), "-c", str(tmp_path / "c")])
    assert res.exit_code == 2 and "must end in .npz" in res.output
    assert not (tmp_path / "v.csv").exists()


def test_an_open_collection_follows_a_rebuild_by_another_process(tmp_path, env):
    """A server keeps its Collection open; `xmodal index --rebuild` replaces the database under
    it. The open object must serve the new one, and write into it, not into the deleted file."""
    a = make_folder(tmp_path / "a", [f"a{i}" for i in range(6)], seed=1)
    b = make_folder(tmp_path / "b", [f"b{i}" for i in range(5)], seed=2)
    build(a, tmp_path / "c")
    served = Collection.open(tmp_path / "c")
    assert served.search_text("red plane", k=3)[0].key.startswith("a")
    build_collection(b, tmp_path / "c", image_encoder="efficientnet-lite0", text_encoder="tfidf",
                     overwrite=True, quiet=True)
    hits = served.search_text("red plane", k=50)  # a new tf-idf vocabulary, a new method
    assert {h.key.split("#")[0] for h in hits} <= {f"b{i}.jpg" for i in range(5)}
    assert (served.count("image"), served.count("text")) == (5, 15)
    from xmodal.index.collection import TextItem
    served.add_items(texts=[TextItem(key="new", text="green river road")])
    assert Collection.open(tmp_path / "c").count("text") == 16


def _tree_bytes(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_read_only_collection_searches_and_refuses_writes(tmp_path, env, monkeypatch):
    """A shipped snapshot or a read-only mount: search works, nothing is written, every write
    is a clear error (403 over HTTP), and a folder this process cannot write opens read-only."""
    from xmodal.index import ReadOnlyError
    from xmodal.index.collection import TextItem

    src = make_folder(tmp_path / "imgs", [f"img{i}" for i in range(6)])
    build(src, tmp_path / "c").close()
    with Collection.open(tmp_path / "c") as admin:
        token = create_key(admin, "admin", "ops")
    for f in (tmp_path / "c" / "indexes").glob("*"):
        f.unlink()  # stale index files: rebuilt in memory, not saved
    before = _tree_bytes(tmp_path / "c")
    coll = Collection.open(tmp_path / "c", read_only=True)
    assert coll.read_only and coll.stats()["read_only"]
    hits = coll.search_text("red plane", k=5)
    assert len(hits) == 5
    with pytest.raises(ReadOnlyError, match="open read-only"):
        coll.add_items(texts=[TextItem(key="x", text="green river")])
    with pytest.raises(ReadOnlyError):
        coll.delete(ids=[hits[0].id])
    with pytest.raises(ReadOnlyError):
        coll.set_setting("public_read", False)
    client = TestClient(create_app(coll))
    auth = {"Authorization": f"Bearer {token}"}
    assert client.get("/api/search", params={"q": "red plane", "k": 3}).status_code == 200
    r = client.post("/api/texts", json={"key": "t", "text": "blue beach"}, headers=auth)
    assert r.status_code == 403 and "read-only" in r.json()["detail"]
    assert client.delete(f"/api/items/{hits[0].id}", headers=auth).status_code == 403
    assert _tree_bytes(tmp_path / "c") == before
    # a folder this process may not write opens read-only by itself
    import xmodal.index.collection as mod
    monkeypatch.setattr(mod.os, "access", lambda p, mode: mode != os.W_OK)
    assert Collection.open(tmp_path / "c").read_only
    monkeypatch.undo()
    # writes a writer has not merged yet would be invisible to an immutable reader: refused
    writer = Collection.open(tmp_path / "c")
    writer.add_items(texts=[TextItem(key="late", text="a late caption")])
    assert (tmp_path / "c" / "collection.db-wal").stat().st_size > 0
    with pytest.raises(CollectionError, match="not yet merged"):
        Collection.open(tmp_path / "c", read_only=True)
    writer.close()
    assert Collection.open(tmp_path / "c", read_only=True).count("text") == 19


def test_snapshot_is_a_consistent_self_contained_copy(tmp_path, env):
    from typer.testing import CliRunner
    from xmodal.cli import app
    from xmodal.service.auth import list_keys

    src = make_folder(tmp_path / "imgs", [f"img{i}" for i in range(6)])
    coll = build(src, tmp_path / "c")
    create_key(coll, "admin", "ops")
    live = Collection.open(tmp_path / "c")  # an open writer: its journal is not merged yet
    from xmodal.index.collection import TextItem
    live.add_items(texts=[TextItem(key="late", text="green river road")])
    res = CliRunner().invoke(app, ["snapshot", str(tmp_path / "snap"), "-c", str(tmp_path / "c")])
    assert res.exit_code == 0, res.output
    assert "6 images, 19 texts" in res.output
    files = sorted(p.relative_to(tmp_path / "snap").as_posix() for p in (tmp_path / "snap").rglob("*")
                   if p.is_file())
    assert "collection.db" in files and "method.zip" in files and "encoders/text.enc" in files
    assert not any(f.endswith(("-wal", "-shm", ".tmp")) for f in files)
    assert any(f.startswith("indexes/") for f in files)
    snap = Collection.open(tmp_path / "snap", read_only=True)
    assert snap.space == live.space and snap.count("text") == 19
    a, b = live.search_text("green river", k=8), snap.search_text("green river", k=8)
    assert [(h.key, round(h.score, 5)) for h in a] == [(h.key, round(h.score, 5)) for h in b]
    assert list_keys(snap) == [] and snap.audit_log() == []  # keys stay behind by default
    live.snapshot(tmp_path / "snap2", keys=True)
    assert len(list_keys(Collection.open(tmp_path / "snap2", read_only=True))) == 1
    with pytest.raises(CollectionError, match="not an empty folder"):
        live.snapshot(tmp_path / "snap")
    snap.snapshot(tmp_path / "snap3")  # from a read-only copy too
    assert Collection.open(tmp_path / "snap3").search_text("green river", k=1)[0].key == a[0].key


def test_serve_refuses_a_collection_whose_plugin_method_is_not_loaded(tmp_path, env, monkeypatch):
    import uvicorn
    from typer.testing import CliRunner
    from xmodal import methods
    from xmodal.cli import app
    from xmodal.methods.subspace import CCA

    @methods.register("probe_cca")
    class ProbeCCA(CCA):
        """CCA under a plugin's name."""

    src = make_folder(tmp_path / "imgs", [f"img{i}" for i in range(6)])
    build_collection(src, tmp_path / "c", method="probe_cca", image_encoder="efficientnet-lite0",
                     text_encoder="tfidf", quiet=True).close()
    monkeypatch.delitem(methods._REGISTRY, "probe_cca")  # a fresh process without the plugin
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: pytest.fail("served without its method"))
    res = CliRunner().invoke(app, ["serve", "-c", str(tmp_path / "c")])
    assert res.exit_code == 2
    assert "unknown method 'probe_cca'" in res.output and "--plugin" in res.output
    assert "--rebuild" not in res.output  # nothing is damaged: refitting is the wrong cure
    res = CliRunner().invoke(app, ["search", "-c", str(tmp_path / "c"), "a red car"])
    assert res.exit_code == 2 and "load the method's plugin" in res.output and "--rebuild" not in res.output
    # the registry's plugin hint and the collection's were both printed, with every method's name
    assert res.output.count("XMODAL_PLUGINS") == 1 and "available:" not in res.output, res.output


def test_a_rerun_reads_only_files_whose_stat_changed(tmp_path, env, monkeypatch):
    import xmodal.index.collection as mod

    src = make_folder(tmp_path / "imgs", [f"img{i}" for i in range(6)])
    reads: list[str] = []
    real = mod.sha256_file
    monkeypatch.setattr(mod, "sha256_file", lambda p: reads.append(Path(p).name) or real(p))
    build(src, tmp_path / "c").close()
    assert len(reads) == 6
    reads.clear()
    build(src, tmp_path / "c").close()
    assert reads == []  # unchanged path, size and mtime: not read again
    os.utime(src / "img2.jpg", ns=(1, 1))  # touched, content unchanged: read once, stat recorded
    build(src, tmp_path / "c").close()
    assert reads == ["img2.jpg"]
    reads.clear()
    Image.new("RGB", (50, 30), (9, 9, 9)).save(src / "img4.jpg")  # new content
    coll = build(src, tmp_path / "c")
    assert reads == ["img4.jpg"]
    row = coll.store.query("SELECT content_hash FROM items WHERE key = 'img4.jpg'")[0][0]
    assert row == real(src / "img4.jpg") and coll.count("image") == 6
    # a collection made before file stats were kept: every file is read once, then not again
    with coll.store.transaction() as c:
        c.execute("DELETE FROM file_stats")
    coll.close()
    reads.clear()
    build(src, tmp_path / "c").close()
    assert sorted(reads) == [f"img{i}.jpg" for i in range(6)]
    reads.clear()
    build(src, tmp_path / "c").close()
    assert reads == []
