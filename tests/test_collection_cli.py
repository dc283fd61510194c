"""The search-engine commands: xmodal index / search / keys (serve is covered by the service
and browser tests, which run the same app)."""

import json
from pathlib import Path

import pytest
from threadpoolctl import threadpool_limits
from typer.testing import CliRunner

from conftest import a_file, clean_exit, labelled_photos, ucm_caption_folder
from xmodal.cli import app
from xmodal.index import Collection
from PIL import Image
import numpy as np


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    _, out, _, mp = ucm_caption_folder(tmp_path_factory, "cli", 300)  # 7 images
    with threadpool_limits(1):  # see test_collection.py
        yield out
    mp.undo()


def run(*args, env=None):
    return CliRunner().invoke(app, [str(a) for a in args], env=env)


def test_index_search_keys(folder, tmp_path):
    coll = tmp_path / "coll"
    r = run("index", folder, "--collection", coll, "--text-encoder", "tfidf", "--quiet")
    assert r.exit_code == 0, r.output
    assert "7 images, 35 texts, method cca" in r.output
    r = run("search", "--collection", coll, "an airplane on the runway", "-k", "3")
    assert r.exit_code == 0, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 3
    scores = []
    for ln in lines:
        score, item_id, path = ln.split("\t")
        scores.append(float(score))
        assert int(item_id) > 0 and Path(path).parent == folder.resolve()
    assert scores == sorted(scores, reverse=True)
    img = sorted(folder.glob("*.jpg"))[0]
    r = run("search", "-c", coll, "--image", img, "-k", "5", "--json")
    hits = json.loads(r.output)
    assert len(hits) == 5 and all(h["modality"] == "text" for h in hits)
    assert hits[0]["text"] in (folder / (img.stem + ".txt")).read_text()
    r = run("search", "-c", coll, "--item", hits[0]["pair_id"], "-k", "2", "--target", "text")
    assert r.exit_code == 0 and len(r.output.strip().splitlines()) == 2
    # Several queries: one numbered result list each, the same as one at a time.
    qfile = tmp_path / "queries.txt"
    qfile.write_text("\ufeffan airplane on the runway\n\n  green trees  \n", encoding="utf-8")
    r = run("search", "-c", coll, "--queries", qfile, "-k", "3", "--json")
    assert r.exit_code == 0, r.output
    rows = [json.loads(ln) for ln in r.output.strip().splitlines()]
    assert [(x["query"], x["text"]) for x in rows] == [(0, "an airplane on the runway"), (1, "green trees")]
    one = json.loads(run("search", "-c", coll, "green trees", "-k", "3", "--json").output)
    assert [h["id"] for h in rows[1]["hits"]] == [h["id"] for h in one]
    assert [h["score"] for h in rows[1]["hits"]] == pytest.approx([h["score"] for h in one], abs=1e-5)
    imgs = sorted(folder.glob("*.jpg"))[:3]
    r = run("search", "-c", coll, *[a for p in imgs for a in ("--image", p)], "-k", "2")
    lines = [ln.split("\t") for ln in r.output.strip().splitlines()]
    assert r.exit_code == 0 and [ln[0] for ln in lines] == ["0", "0", "1", "1", "2", "2"]
    one = json.loads(run("search", "-c", coll, "--image", imgs[2], "-k", "1", "--json").output)[0]
    assert float(lines[4][1]) == pytest.approx(one["score"], abs=1e-4)  # ties: UCM repeats captions
    blank = tmp_path / "blank.txt"
    blank.write_text("\n  \n")
    r = run("search", "-c", coll, "--queries", blank)
    assert r.exit_code == 2 and "no queries" in r.output
    r = run("search", "-c", coll, "--image", imgs[0], "--image", tmp_path / "nope.jpg")
    assert r.exit_code == 2 and "nope.jpg: no such file" in r.output
    (tmp_path / "bad.jpg").write_text("not an image")
    r = run("search", "-c", coll, "--image", imgs[0], "--image", tmp_path / "bad.jpg")
    assert r.exit_code == 2 and "bad.jpg" in r.output and "could not read" in r.output
    # Re-indexing an unchanged folder is a no-op.
    r = run("index", folder, "-c", coll, "-q")
    assert r.exit_code == 0 and "7 images, 35 texts" in r.output
    # Keys: created (token printed once), listed without secrets, revoked; access setting.
    r = run("keys", "add", "-c", coll, "--role", "write", "--name", "ci")
    token = r.output.strip()
    assert r.exit_code == 0 and token.startswith("xmk_")
    r = run("keys", "list", "-c", coll)
    key_id = token[4:].split("_")[0]
    assert key_id in r.output and "write" in r.output and token.split("_", 2)[2] not in r.output
    assert run("keys", "revoke", key_id, "-c", coll).exit_code == 0
    assert "revoked" in run("keys", "list", "-c", coll).output
    assert "public_read = False" in run("keys", "public-read", "false", "-c", coll).output
    # Remove: an unknown id removes nothing; an image goes with its captions; keys work too.
    before = json.loads(run("stats", "-c", coll, "--json").output)["collections"][0]
    r = run("remove", hits[0]["pair_id"], 999999, "-c", coll)
    assert r.exit_code == 2 and "no item 999999; nothing removed" in r.output
    r = run("remove", hits[0]["pair_id"], "-c", coll, "--json")
    assert r.exit_code == 0, r.output
    gone = json.loads(r.output)["removed"]
    assert hits[0]["pair_id"] in gone and hits[0]["id"] in gone and len(gone) == 6
    r = run("remove", "-c", coll, "--key", f"{img.name}#0")
    assert r.exit_code == 2 and "nothing removed" in r.output  # went with its image
    after = json.loads(run("stats", "-c", coll, "--json").output)["collections"][0]
    assert (after["images"], after["texts"]) == (before["images"] - 1, before["texts"] - 5)
    r = run("search", "-c", coll, "--image", img, "-k", "40", "--json")
    assert not set(gone) & {h["id"] for h in json.loads(r.output)}


def test_cli_errors(folder, tmp_path):
    r = run("search", "-c", tmp_path / "none", "x")
    assert r.exit_code == 2 and "no collection" in r.output
    r = run("index", tmp_path / "missing.jsonl", "-c", tmp_path / "c", "-q")
    assert r.exit_code == 2 and "missing.jsonl" in r.output
    r = run("index", folder, "-c", tmp_path / "c2", "--index", "NoSuch", "--text-encoder", "tfidf", "-q")
    assert r.exit_code == 2 and "NoSuch" in r.output
    r = run("keys", "add", "-c", tmp_path / "none", "--role", "read")
    assert r.exit_code == 2


def test_like_refuses_a_method_or_encoder_it_would_ignore(folder, tmp_path):
    """A shard (--like A) takes A's fitted method and encoders; a --method or encoder typed
    beside it was silently dropped, the user believing the shard used it."""
    base = tmp_path / "a.xmc"
    assert run("index", folder, "-c", base, "--text-encoder", "tfidf", "-q").exit_code == 0
    for extra in (["--method", "pls"], ["--text-encoder", "minilm"], ["--image-encoder", "colorhist"]):
        r = run("index", folder, "-c", tmp_path / "b.xmc", "--like", base, *extra, "-q")
        assert r.exit_code == 2 and "--like" in r.output and extra[0] in r.output, (extra, r.output)
        assert not (tmp_path / "b.xmc").exists()
    r = run("index", folder, "-c", tmp_path / "b.xmc", "--like", base, "--index", "HNSW16", "-q")
    assert r.exit_code == 0 and "index HNSW16" in r.output, r.output  # each shard picks its index


def test_serve_read_only_beside_a_live_writer(tmp_path, monkeypatch):
    """`xmodal serve --read-only` (a public front) next to a writer on the same collection
    refused to start while the writer's journal held commits ("open the collection once
    with write access"), though the writer was running."""
    import numpy as np
    import uvicorn
    from fastapi.testclient import TestClient

    from xmodal.index import Collection

    rng = np.random.default_rng(0)
    path = tmp_path / "c"
    served = {}
    monkeypatch.setattr(uvicorn, "run", lambda app_, **kw: served.setdefault("app", app_))
    with Collection.create(path, dim=8) as writer:
        writer.add_vectors("image", [f"i{j}" for j in range(10)], rng.standard_normal((10, 8)))
        assert (path / "collection.db-wal").stat().st_size > 0  # the writer's commits, not merged
        r = run("serve", "-c", path, "--read-only", "--port", 0)  # any free port: 8000 may be taken
        assert r.exit_code == 0, r.output
        client = TestClient(served["app"])
        assert client.get("/api/info").json()["images"] == 10
        writer.add_vectors("image", ["late"], rng.standard_normal((1, 8)))
        v = writer.item_vectors([writer.id_of("late")])[0][0].tolist()
        assert client.get("/api/info").json()["images"] == 11
        top = client.post("/api/search", json={"vector": v, "target": "image", "k": 1}).json()
        assert top["results"][0]["key"] == "late"
        assert client.delete("/api/items/1", headers={"X-API-Key": "xmk_x_y"}).status_code in (401, 403)


# ------------------------------------------- an existing collection's options: one refusal
def _one_image_source(tmp_path):

    src = tmp_path / "src"
    src.mkdir()
    Image.new("RGB", (8, 8), (9, 99, 199)).save(src / "a.png")
    return src


def test_index_refuses_other_options_before_the_scan_in_option_names(tmp_path):
    # The CLI's early check had its own rules beside build_collection's: a fitted method file
    # or an encoder the collection lacks went past it, to be refused (in argument names,
    # "method ... index ...") only after the source was scanned.
    from xmodal.index import Collection

    Collection.create(tmp_path / "c.xmc", dim=4).close()
    (tmp_path / "other.zip").write_bytes(b"PK\x05\x06" + b"\0" * 18)  # an empty zip
    src = tmp_path / "empty"
    src.mkdir()  # scanning it fails: a refusal after the scan would say "no images found"
    res = run("index", src, "-c", tmp_path / "c.xmc", "--method", tmp_path / "other.zip",
              "--image-encoder", "efficientnet-lite0", "--index", "HNSW32")
    assert res.exit_code == 2, res.output
    out = " ".join(res.output.split())
    assert "no images found" not in out
    assert f"--method {tmp_path / 'other.zip'} (it has no fitted method)" in out, out
    assert "--image-encoder efficientnet-lite0 (it has none)" in out
    assert "--index HNSW32 (it has Flat)" in out and "--rebuild" in out
    res = run("index", src, "-c", tmp_path / "c.xmc", "--method", tmp_path / "missing.zip")
    assert res.exit_code == 2 and "missing.zip: no such fitted method file" in " ".join(res.output.split())


def test_build_refusal_carries_the_facts_and_the_cli_words_them(tmp_path, monkeypatch):
    import xmodal.cli.collection as cli_collection
    from xmodal.index import Collection, build_collection
    from xmodal.index.build import OtherOption, OtherOptionsError

    Collection.create(tmp_path / "c.xmc", dim=4).close()
    src = _one_image_source(tmp_path)
    with pytest.raises(OtherOptionsError) as err:
        build_collection(src, tmp_path / "c.xmc", index="HNSW32", rerank=True, quiet=True)
    assert err.value.options == [
        OtherOption("index", "HNSW32", "Flat"),
        OtherOption("rerank", True, False, "it keeps no float projections to re-rank with")]
    msg = str(err.value)
    assert "index HNSW32 (it has Flat)" in msg and "rerank (it keeps no float projections" in msg
    assert "overwrite=True" in msg
    # a refusal that comes from build_collection itself (a collection made by another process
    # after the CLI's early check) is worded in option names too
    monkeypatch.setattr(cli_collection, "_refuse_ignored_options", lambda *a, **kw: None)
    for extra in ([], ["--dry-run"]):
        res = run("index", src, "-c", tmp_path / "c.xmc", "--index", "HNSW32", *extra)
        assert res.exit_code == 2, res.output
        out = " ".join(res.output.split())
        assert "--index HNSW32 (it has Flat)" in out and "--rebuild" in out, out
    assert Collection.open(tmp_path / "c.xmc").stats()["index"] == "Flat"


def test_commands_close_their_collection_so_a_read_only_open_follows(tmp_path):
    # a command left its collection open until garbage collection; its connection then kept
    # the write-ahead log unmerged, and a read-only open right after refused the collection
    import gc

    import numpy as np

    from xmodal.index import Collection

    path = tmp_path / "c"
    with Collection.create(path, dim=4) as c:
        c.add_vectors("image", ["a", "b"], np.eye(2, 4, dtype=np.float32))
    gc.disable()  # the bug hid whenever a collection happened to be collected in time
    try:
        r = run("export", tmp_path / "v.npz", "-c", path)
        assert r.exit_code == 0, r.output
        r = run("remove", "-c", path, "1")
        assert r.exit_code == 0, r.output
        ro = Collection.open(path, read_only=True)
        assert ro.stats()["images"] == 1
        ro.close()
    finally:
        gc.enable()


def test_serve_refuses_an_infinite_upload_limit_as_a_usage_error(tmp_path, monkeypatch):
    # --max-upload-mb inf passed the "> 0" check and died in a traceback (OverflowError:
    # cannot convert float infinity to integer), exit 1.
    import uvicorn

    from xmodal.index import Collection

    monkeypatch.setattr(uvicorn, "run", lambda *a, **kw: None)  # never a server, whatever happens
    Collection.create(tmp_path / "c", dim=4).close()
    for bad in ("inf", "nan", "0"):
        r = run("serve", "-c", tmp_path / "c", "--max-upload-mb", bad, "--port", 0)
        assert r.exit_code == 2 and "--max-upload-mb" in r.output, (bad, r.output)
        assert not isinstance(r.exception, OverflowError)
    assert run("serve", "-c", tmp_path / "c", "--max-upload-mb", "0.5", "--port", 0).exit_code == 0


def test_serve_rate_limit_option_reaches_the_app(tmp_path, monkeypatch):
    # create_app(rate_limit=N) existed with no way to set it from `xmodal serve`.
    import uvicorn
    from fastapi.testclient import TestClient

    from xmodal.index import Collection

    served = {}
    monkeypatch.setattr(uvicorn, "run", lambda app_, **kw: served.setdefault("app", app_))
    Collection.create(tmp_path / "c", dim=4).close()
    assert run("serve", "-c", tmp_path / "c", "--rate-limit", "0", "--port", 0).exit_code == 2
    r = run("serve", "-c", tmp_path / "c", "--rate-limit", "2", "--port", 0)
    assert r.exit_code == 0, r.output
    client = TestClient(served["app"])
    codes = [client.get("/api/info").status_code for _ in range(3)]
    assert codes[:2] == [200, 200] and codes[2] == 429, codes
    assert client.get("/health").status_code == 200  # not counted


def test_xmodal_remove_a_digit_that_is_no_number_says_so(tmp_path):
    # '²'.isdigit() is true, but int('²') raises: the check let it through to a traceback
    from typer.testing import CliRunner

    from xmodal.cli import app

    Collection.create(tmp_path / "c", dim=4).close()
    res = CliRunner().invoke(app, ["remove", "²", "-c", str(tmp_path / "c")])
    assert res.exit_code == 2, res.exception
    assert "'²' is not an item id" in res.output and "--key ²" in res.output


# ---------------------------------------------------------------- 1, 2: encoders
@pytest.mark.parametrize("dry", [False, True])
@pytest.mark.parametrize("opt, spec, says", [
    ("--image-encoder", "nosuch", "unknown encoder 'nosuch'"),
    ("--text-encoder", "nosuch", "unknown encoder 'nosuch'"),
    ("--image-encoder", "efficientnet-lite0:bogus", "unknown view set 'bogus'"),
    ("--image-encoder", "minilm", "'minilm' is a text encoder, but an image encoder is needed here"),
    ("--text-encoder", "efficientnet-lite0", "'efficientnet-lite0' is an image encoder, but a text "
                                             "encoder is needed here"),
])
def test_index_refuses_unknown_and_wrong_kind_encoders(tmp_path, opt, spec, says, dry):
    src = labelled_photos(tmp_path)
    res = run("index", src, "-c", tmp_path / "e.xmc", opt, spec, "-q", *(["--dry-run"] if dry else []))
    assert res.exit_code == 2, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)
    assert says in " ".join(res.output.split())
    assert not (tmp_path / "e.xmc").exists()


# ---------------------------------------------------------------- 6: a source that is not there
@pytest.mark.parametrize("name", ["nodir", "./nodir", "sub/nodir", "pairs.jsonl"])
def test_index_of_a_missing_source_says_no_such_file_or_folder(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    for extra in ([], ["--dry-run"]):
        res = run("index", name, "-c", "e1.xmc", *extra)
        assert res.exit_code == 2, res.output
        out = " ".join(res.output.split())
        assert f"{name}: no such file or folder" in out and "unknown dataset" not in out, out
    assert not (tmp_path / "e1.xmc").exists()


def test_index_cli_gives_faiss_parse_error_for_a_bogus_spec(tmp_path):
    src = labelled_photos(tmp_path)
    res = run("index", src, "-c", tmp_path / "i.xmc", "--index", "Bogus42", "--dry-run")
    assert res.exit_code == 2
    out = " ".join(res.output.split())
    assert "could not parse index string Bogus42" in out and "is binary" not in out, out


def _coll(tmp_path, name="c.xmc"):
    coll = Collection.create(tmp_path / name, dim=4)
    coll.add_vectors("text", ["a", "b"], np.eye(2, 4, dtype=np.float32), texts=["a", "b"])
    coll.close()
    return tmp_path / name


def test_index_into_a_path_under_a_file_is_refused_before_any_work(tmp_path, monkeypatch):
    import xmodal.index.build as build

    def scanned(*a, **k):
        raise AssertionError("scanned the source before checking the collection path")

    monkeypatch.setattr(build, "scan_source", scanned)
    afile = a_file(tmp_path)
    res = run("index", tmp_path, "-c", afile / "x.xmc", "--quiet")
    clean_exit(res)
    assert f"{afile / 'x.xmc'}" in res.output and "not a folder" in res.output


def test_index_writing_error_is_a_clean_error(tmp_path, monkeypatch):
    import xmodal.index as index_pkg

    def denied(*a, **k):
        raise PermissionError(13, "Permission denied", str(tmp_path / "c.xmc"))

    monkeypatch.setattr(index_pkg, "build_collection", denied)
    res = run("index", tmp_path, "-c", tmp_path / "c.xmc")
    clean_exit(res)
    assert "Permission denied" in res.output and str(tmp_path / "c.xmc") in res.output


def test_snapshot_under_a_file_names_the_path(tmp_path):
    coll = _coll(tmp_path)
    afile = a_file(tmp_path)
    res = run("snapshot", afile / "sub.xmc", "-c", coll)
    clean_exit(res)
    assert str(afile / "sub.xmc") in res.output


def test_number_options_out_of_range_are_usage_errors(tmp_path, monkeypatch):
    import uvicorn

    def served(*a, **k):
        raise AssertionError("served despite a bad option")

    monkeypatch.setattr(uvicorn, "run", served)
    coll = _coll(tmp_path)
    for args in (["serve", "-c", coll, "--port", 99999], ["serve", "-c", coll, "--port", -1],
                 ["serve", "-c", coll, "--max-upload-mb", 0],
                 ["serve", "-c", coll, "--faiss-threads", 0],
                 ["compare", tmp_path / "r.json", "a", "b", "--resamples", 0]):
        res = run(*args)
        clean_exit(res)
        assert "Invalid value" in res.output, res.output


def test_bad_plugin_in_the_environment_is_a_clean_error(tmp_path, monkeypatch):
    import xmodal.methods as methods

    bad = tmp_path / "bad.py"
    bad.write_text("raise RuntimeError('broken plugin')\n")
    flag = run("--plugin", bad, "methods")
    clean_exit(flag)
    monkeypatch.setattr(methods, "_plugins_loaded", False)
    env = run("methods", env={"XMODAL_PLUGINS": str(bad)})
    clean_exit(env)
    assert "broken plugin" in env.output and "XMODAL_PLUGINS" in env.output


def test_index_progress_is_automatic_unless_quiet(tmp_path, monkeypatch):
    """Not quiet means bars only on a terminal (None), never forced into a log file."""
    import xmodal.index.build as build
    from xmodal.encoders import get_encoder
    from xmodal.index.collection import TextItem

    enc = get_encoder("bow", "text").fit(["a river", "two planes"], progress=False)
    Collection.create(tmp_path / "c.xmc", dim=4, text_encoder=enc).close()
    monkeypatch.setattr(build, "scan_source", lambda *a, **k: ([], [TextItem("t#0", "a river")]))
    seen = []

    def add_items(self, *a, progress=False, **k):
        seen.append(progress)
        raise KeyboardInterrupt

    monkeypatch.setattr(Collection, "add_items", add_items)
    src = tmp_path / "src"
    src.mkdir()
    assert run("index", src, "-c", tmp_path / "c.xmc").exit_code == 130
    assert run("index", src, "-c", tmp_path / "c.xmc", "--quiet").exit_code == 130
    assert seen == [None, False]


def test_add_items_bar_follows_show_progress(tmp_path, monkeypatch):
    """progress=None: a bar on a terminal only (as the encoders do)."""
    import io
    import sys

    from xmodal.encoders import get_encoder
    from xmodal.index.collection import TextItem

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    enc = get_encoder("bow", "text").fit(["a river", "two planes"], progress=False)
    coll = Collection.create(tmp_path / "c.xmc", dim=enc.dim, text_encoder=enc)
    err = Terminal()
    monkeypatch.setattr(sys, "stderr", err)
    coll.add_items(texts=[TextItem("t#0", "a river")], progress=None)
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # not a terminal: no bar
    coll.add_items(texts=[TextItem("t#1", "two planes")], progress=None)
    assert "adding texts" in err.getvalue() and "adding texts" not in sys.stderr.getvalue()
    coll.close()


def test_index_help_shows_defaults_in_brackets():
    res = CliRunner().invoke(app, ["index", "--help"], env={"COLUMNS": "200", "TERM": "dumb"})
    text = " ".join(res.output.replace("\u2502", " ").split())  # rich box edges
    assert "default: cca; an existing collection: its own" in text
    assert "default: Flat; an existing collection: its own" in text


def test_search_target_help_says_what_item_searches():
    res = CliRunner().invoke(app, ["search", "--help"], env={"COLUMNS": "200", "TERM": "dumb"})
    text = " ".join(res.output.replace("\u2502", " ").split())  # rich box edges
    # (was `"the other modality" not in text or ...`: a help without the default passed)
    assert ("--target <str> image or text (default: the other modality of a text or image query; "
            "with --item, the item's own)") in text


def test_search_refuses_a_collection_given_twice(tmp_path):
    coll = _coll(tmp_path)
    other = tmp_path / "." / "c.xmc"
    for cmd in (["search", "-c", coll, "-c", other, "a"], ["stats", "-c", coll, "-c", coll]):
        res = run(*cmd)
        clean_exit(res)
        assert "given twice" in res.output and str(coll) in res.output.replace(str(other), str(coll))


def test_stats_of_one_collection_is_one_space(tmp_path):
    coll = _coll(tmp_path)
    res = run("stats", "-c", coll, "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["one_space"] is True


def test_export_onto_an_existing_file_needs_force(tmp_path):
    c = _coll(tmp_path)
    dest = tmp_path / "v.npz"
    dest.write_bytes(b"keep me")
    res = run("export", dest, "-c", c)
    clean_exit(res)
    assert str(dest) in res.output and "--force" in res.output
    assert dest.read_bytes() == b"keep me"
    res = run("export", dest, "-c", c, "--force")
    assert res.exit_code == 0, res.output
    assert len(np.load(dest)["ids"]) == 2


def test_export_under_a_file_names_the_file(tmp_path):
    c = _coll(tmp_path)
    afile = a_file(tmp_path)
    res = run("export", afile / "sub" / "v.npz", "-c", c)
    clean_exit(res)
    assert f"{afile} is a file" in res.output and "File exists" not in res.output


def test_export_creates_missing_folders_and_says_so_in_help(tmp_path):
    c = _coll(tmp_path)
    res = run("export", tmp_path / "new" / "v.npz", "-c", c)
    assert res.exit_code == 0, res.output
    assert (tmp_path / "new" / "v.npz").is_file()
    assert "missing folders" in " ".join(run("export", "--help").output.lower().split())


def test_snapshot_inside_the_collection_is_refused(tmp_path):
    c = _coll(tmp_path)
    res = run("snapshot", c / "snap", "-c", c)
    clean_exit(res)
    assert str(c / "snap") in res.output and str(c) in res.output and "inside" in res.output
    assert not (c / "snap").exists()


def test_index_real_spec_with_a_binary_method_says_it_becomes_binary(tmp_path):
    src = tmp_path / "src"
    src.mkdir()

    for name in ("a", "b"):  # a method is fitted on at least two captioned images
        Image.new("RGB", (8, 8)).save(src / f"{name}.png")
        (src / f"{name}.txt").write_text(f"a cat {name}")
    res = run("index", src, "-c", tmp_path / "c.xmc", "--method", "lsh", "--index", "Flat", "--dry-run")
    assert res.exit_code == 0, res.output
    out = " ".join(res.output.split())
    assert "--index Flat" in out and "BFlat" in out and "lsh" in out, out
    # a binary spec typed as such: nothing to say
    res = run("index", src, "-c", tmp_path / "c.xmc", "--method", "lsh", "--index", "BFlat", "--dry-run")
    assert res.exit_code == 0 and "BFlat" not in res.output, res.output


def test_a_shard_url_that_is_not_xmodal_is_named_without_its_whole_page(tmp_path):
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    page = "<!DOCTYPE html><html><head><title>404 Not Found</title></head><body>" + "x" * 5000 + "</body></html>"

    class NotFound(BaseHTTPRequestHandler):
        def do_GET(self):
            body = page.encode()
            self.send_response(404)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{srv.server_address[1]}"
    try:
        res = run("stats", "--shard", url)
    finally:
        srv.shutdown()
        srv.server_close()
    clean_exit(res)
    out = " ".join(res.output.split())
    assert url in out and "404" in out and "xmodal serve" in out, out
    assert "x" * 300 not in out and len(res.output) < 600, res.output


def test_serve_on_a_port_in_use_fails_before_starting(tmp_path, monkeypatch):
    import socket

    import uvicorn

    def started(*a, **k):
        raise AssertionError("uvicorn started on a port in use")

    monkeypatch.setattr(uvicorn, "run", started)
    c = _coll(tmp_path)
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        res = run("serve", "-c", c, "--port", port)
    finally:
        taken.close()
    clean_exit(res)
    assert f"127.0.0.1:{port}" in res.output and "in use" in res.output, res.output


def test_the_skipped_file_line_names_the_file_alike_on_a_first_run_and_a_rerun(tmp_path):
    """A first run said "skipping 1 unreadable image(s), e.g. beach/empty.jpg" (the key), a
    rerun "skipped 1 unreadable image(s), e.g. /.../photos/beach/empty.jpg" (the path): the
    same file, named two ways. Both name its path now, as the encoder's own `skipping PATH:
    reason` warning does."""
    src = labelled_photos(tmp_path, 4)
    (src / "beach" / "empty.jpg").write_bytes(b"")
    lines = []
    for _ in range(2):
        r = run("index", src, "-c", tmp_path / "c.xmc", "--text-encoder", "tfidf")
        assert r.exit_code == 0, r.output
        said = [ln for ln in r.output.splitlines() if "unreadable image(s)" in ln]
        assert len(said) == 1, r.output
        lines.append(said[0])
    assert lines[0] == lines[1] == f"skipping 1 unreadable image(s), e.g. {src / 'beach' / 'empty.jpg'}"
