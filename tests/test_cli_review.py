"""Command-line review: bad input ends in ``error: PATH: reason`` and exit 2, never a traceback
(each test failed before its fix)."""

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from xmodal.cli import app
from xmodal.index import Collection


def run(*args, env=None):
    return CliRunner().invoke(app, [str(a) for a in args], env=env)


def _clean(res, code=2):
    assert res.exit_code == code, (res.output, res.exception)
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert "Traceback" not in res.output


def _coll(tmp_path, name="c.xmc"):
    coll = Collection.create(tmp_path / name, dim=4)
    coll.add_vectors("text", ["a", "b"], np.eye(2, 4, dtype=np.float32), texts=["a", "b"])
    coll.close()
    return tmp_path / name


def _afile(tmp_path):
    f = tmp_path / "afile"
    f.write_text("x")
    return f


def test_index_into_a_path_under_a_file_is_refused_before_any_work(tmp_path, monkeypatch):
    import xmodal.index.build as build

    def scanned(*a, **k):
        raise AssertionError("scanned the source before checking the collection path")

    monkeypatch.setattr(build, "scan_source", scanned)
    afile = _afile(tmp_path)
    res = run("index", tmp_path, "-c", afile / "x.xmc", "--quiet")
    _clean(res)
    assert f"{afile / 'x.xmc'}" in res.output and "not a folder" in res.output


def test_index_writing_error_is_a_clean_error(tmp_path, monkeypatch):
    import xmodal.index as index_pkg

    def denied(*a, **k):
        raise PermissionError(13, "Permission denied", str(tmp_path / "c.xmc"))

    monkeypatch.setattr(index_pkg, "build_collection", denied)
    res = run("index", tmp_path, "-c", tmp_path / "c.xmc")
    _clean(res)
    assert "Permission denied" in res.output and str(tmp_path / "c.xmc") in res.output


def test_snapshot_under_a_file_names_the_path(tmp_path):
    coll = _coll(tmp_path)
    afile = _afile(tmp_path)
    res = run("snapshot", afile / "sub.xmc", "-c", coll)
    _clean(res)
    assert str(afile / "sub.xmc") in res.output


def test_encode_out_is_checked_before_encoding(tmp_path, monkeypatch):
    import xmodal.data as data

    def loaded(*a, **k):
        raise AssertionError("loaded the dataset before checking --out")

    monkeypatch.setattr(data, "load_dataset", loaded)
    afile = _afile(tmp_path)
    for out, why in ((afile / "x.npz", "not a folder"), (tmp_path, "a folder"),
                     (tmp_path / "x.txt", ".npz")):
        res = run("encode", "--dataset", "wikipedia", "--text-encoder", "tfidf", "--out", out)
        _clean(res)
        assert str(out) in res.output and why in res.output, res.output


def test_encode_save_error_is_clean(tmp_path, monkeypatch):
    import xmodal.data as data
    import xmodal.encoders as encoders

    class DS:
        pass

    monkeypatch.setattr(data, "load_dataset", lambda *a, **k: DS())
    monkeypatch.setattr(encoders, "encode_dataset", lambda ds, *a, **k: ds)

    def denied(ds, path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(data, "save_npz", denied)
    res = run("encode", "--dataset", "wikipedia", "--text-encoder", "tfidf", "--out", tmp_path / "x.npz")
    _clean(res)
    assert str(tmp_path / "x.npz") in res.output and "Permission denied" in res.output


def test_bench_json_not_writable_is_refused_up_front(tmp_path, monkeypatch):
    import xmodal.evaluation.bench as bench_mod

    def ran(*a, **k):
        raise AssertionError("ran the bench before checking --json")

    monkeypatch.setattr(bench_mod, "run_bench", ran)
    import os

    ro = Path("/proc")  # a folder no one, root included, can create a file in
    if not ro.is_dir() or os.name != "posix":
        pytest.skip("no /proc")
    res = run("bench", "-d", "wikipedia", "-m", "cca", "--json", ro / "r.json")
    _clean(res)
    assert str(ro / "r.json") in res.output and "cannot write" in res.output


def test_bench_json_write_failing_at_the_end_points_to_resume(tmp_path, monkeypatch):
    import xmodal.evaluation.bench as bench_mod

    rec = {"dataset": "x", "method": "cca", "bits": None, "seed": 0, "fit_seconds": 0.0,
           "i2t": {"map": 0.5}, "t2i": {"map": 0.5}}

    monkeypatch.setattr(bench_mod, "run_bench", lambda *a, **k: [rec])
    monkeypatch.setattr(bench_mod, "format_table", lambda *a, **k: "table")

    def denied(records, path):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(bench_mod, "write_json", denied)
    res = run("bench", "-d", "wikipedia", "-m", "cca", "--quiet", "--json", tmp_path / "r.json",
              "--resume", tmp_path / "r.jsonl")
    _clean(res)
    assert "No space left" in res.output and str(tmp_path / "r.jsonl") in res.output


@pytest.mark.parametrize("what", ["folder", "binary", "empty", "blank"])
def test_compare_names_a_file_that_is_no_records_file(tmp_path, what):
    path = tmp_path / "recs"
    if what == "folder":
        path.mkdir()
    elif what == "binary":
        path.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00\x00")
    elif what == "empty":
        path.write_bytes(b"")
    else:
        path.write_text("\n  \n")
    res = run("compare", path, "a", "b")
    _clean(res)
    assert str(path) in res.output
    if what in ("folder", "binary"):
        assert "not a records file" in res.output
    else:
        assert "holds no records" in res.output and "the file holds: \n" not in res.output


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
        _clean(res)
        assert "Invalid value" in res.output, res.output


def test_bad_plugin_in_the_environment_is_a_clean_error(tmp_path, monkeypatch):
    import xmodal.methods as methods

    bad = tmp_path / "bad.py"
    bad.write_text("raise RuntimeError('broken plugin')\n")
    flag = run("--plugin", bad, "methods")
    _clean(flag)
    monkeypatch.setattr(methods, "_plugins_loaded", False)
    env = run("methods", env={"XMODAL_PLUGINS": str(bad)})
    _clean(env)
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
        _clean(res)
        assert "given twice" in res.output and str(coll) in res.output.replace(str(other), str(coll))


def test_stats_of_one_collection_is_one_space(tmp_path):
    coll = _coll(tmp_path)
    res = run("stats", "-c", coll, "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["one_space"] is True


# --- export / snapshot / keys review ---------------------------------------------------------


def test_export_onto_an_existing_file_needs_force(tmp_path):
    c = _coll(tmp_path)
    dest = tmp_path / "v.npz"
    dest.write_bytes(b"keep me")
    res = run("export", dest, "-c", c)
    _clean(res)
    assert str(dest) in res.output and "--force" in res.output
    assert dest.read_bytes() == b"keep me"
    res = run("export", dest, "-c", c, "--force")
    assert res.exit_code == 0, res.output
    assert len(np.load(dest)["ids"]) == 2


def test_export_under_a_file_names_the_file(tmp_path):
    c = _coll(tmp_path)
    afile = _afile(tmp_path)
    res = run("export", afile / "sub" / "v.npz", "-c", c)
    _clean(res)
    assert f"{afile} is a file" in res.output and "File exists" not in res.output


def test_export_creates_missing_folders_and_says_so_in_help(tmp_path):
    c = _coll(tmp_path)
    res = run("export", tmp_path / "new" / "v.npz", "-c", c)
    assert res.exit_code == 0, res.output
    assert (tmp_path / "new" / "v.npz").is_file()
    assert "missing folders" in " ".join(run("export", "--help").output.lower().split())


def test_export_and_snapshot_json(tmp_path):
    c = _coll(tmp_path)
    res = run("export", tmp_path / "v.npz", "-c", c, "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["file"] == str(tmp_path / "v.npz") and out["images"] == 0 and out["texts"] == 2
    res = run("snapshot", tmp_path / "snap", "-c", c, "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["snapshot"] == str(tmp_path / "snap") and out["texts"] == 2 and "space" in out


def test_keys_json(tmp_path):
    c = _coll(tmp_path)
    res = run("keys", "add", "-c", c, "--role", "read", "--name", "bot", "--json")
    assert res.exit_code == 0, res.output
    added = json.loads(res.output)
    assert added["role"] == "read" and added["name"] == "bot" and added["token"] and added["key_id"]
    res = run("keys", "list", "-c", c, "--json")
    assert res.exit_code == 0, res.output
    rows = json.loads(res.output)
    assert [r["key_id"] for r in rows] == [added["key_id"]]
    assert rows[0]["role"] == "read" and rows[0]["revoked"] is False
    assert added["token"] not in res.output and not any("hash" in k or "token" in k for k in rows[0])


def test_snapshot_inside_the_collection_is_refused(tmp_path):
    c = _coll(tmp_path)
    res = run("snapshot", c / "snap", "-c", c)
    _clean(res)
    assert str(c / "snap") in res.output and str(c) in res.output and "inside" in res.output
    assert not (c / "snap").exists()


def test_index_real_spec_with_a_binary_method_says_it_becomes_binary(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    from PIL import Image

    Image.new("RGB", (8, 8)).save(src / "a.png")
    (src / "a.txt").write_text("a cat")
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
    _clean(res)
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
    _clean(res)
    assert f"127.0.0.1:{port}" in res.output and "in use" in res.output, res.output


def test_index_json_says_what_the_run_did(tmp_path):
    import shutil

    from conftest import need

    imgs = sorted((need("ucm_captions") / "imgs").glob("*.jpg"))[:3]
    src = tmp_path / "photos"
    src.mkdir()
    for i, p in enumerate(imgs):
        shutil.copy(p, src / p.name)
        # words, not digits: tf-idf drops "0"/"1"/"2", and identical texts leave CCA nothing to fit
        (src / f"{p.stem}.txt").write_text(f"{['harbour', 'forest', 'river'][i]} seen from the air\n")
    args = ["index", src, "-c", tmp_path / "c.xmc", "--method", "cca", "--image-encoder",
            "efficientnet-lite0", "--text-encoder", "tfidf", "--quiet", "--json"]
    res = run(*args)
    assert res.exit_code == 0, res.output
    first = json.loads(res.output)
    assert first["run"] == {"added": 6, "replaced": 0, "moved": 0, "relabelled": 0, "unchanged": 0, "skipped": 0,
                            "removed": 0}
    again = json.loads(run(*args[:4], "--quiet", "--json").output)  # the collection's own options
    assert again["run"]["added"] == 0 and again["run"]["unchanged"] == 6
    (src / imgs[0].name).unlink()
    pruned = json.loads(run(*args[:4], "--quiet", "--json", "--prune").output)
    assert pruned["run"]["removed"] == 2 and pruned["images"] == 2
    human = run(*args[:4], "--quiet").output
    assert "this run: added 0, replaced 0, moved 0, relabelled 0, unchanged 4, skipped 0, removed 0" in human
