"""Gaps a mutation run over src/xmodal/cli/collection.py (`xmodal search`, `stats`, `remove`,
`export`, `snapshot`, `serve`, `keys`) found untested: refusals exit 2 naming the option or
file and write nothing, ``--json`` output is complete, and the human lines say what was done.
Small vectors-only collections: the encoders are not the point here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import a_file, beach_images_plain_texts, clean_exit
from xmodal.cli import app
from xmodal.index import Collection


def run(*args, env=None):
    return CliRunner().invoke(app, [str(a) for a in args], env=env)


@pytest.fixture
def coll(tmp_path) -> Path:
    """Two labelled images (beach, forest) and two captions, 4-d vectors."""
    path = tmp_path / "c"
    beach_images_plain_texts(path).close()
    return path


# ---------------------------------------------------------------------------------- search
def test_search_refuses_a_query_given_none_or_twice(coll, tmp_path):
    for args in ([], ["sand", "--item", 1], ["--item", 1, "--queries", tmp_path / "q.txt"]):
        r = run("search", "-c", coll, *args)
        clean_exit(r)
        assert "give exactly one of: a text query, --image FILE, --item ID, --queries FILE" in r.output


def test_search_refuses_an_unknown_target_naming_the_option(coll):
    r = run("search", "-c", coll, "--item", 1, "--target", "audio")
    clean_exit(r)
    assert "--target must be image or text, got 'audio'" in r.output


def test_search_without_a_collection_or_shard_exits_2(coll):
    r = run("search", "sand")
    clean_exit(r)
    assert "give a collection (-c DIR) or a shard (--shard URL)" in r.output


def test_search_item_over_several_collections_is_refused(coll, tmp_path):
    other = tmp_path / "d"
    beach_images_plain_texts(other).close()
    r = run("search", "-c", coll, "-c", other, "--item", 1)
    clean_exit(r)
    assert "--item needs a single collection" in r.output


def test_search_queries_file_missing_or_a_folder_is_named(coll, tmp_path):
    for bad, why in ((tmp_path / "nope.txt", "file not found"), (tmp_path, "Is a directory")):
        r = run("search", "-c", coll, "--queries", bad)
        clean_exit(r)
        assert f"{bad}: {why}" in r.output


def test_search_api_key_naming_no_shard_is_refused_for_one_collection(coll):
    """A URL=KEY --api-key naming a shard not given is an error (the key would go nowhere),
    with one local collection too."""
    r = run("search", "-c", coll, "--item", 1, "--api-key", "http://127.0.0.1:9/=k")
    clean_exit(r)
    assert "--api-key" in r.output and "names no shard given" in r.output


def test_search_shows_identical_texts_unless_distinct(tmp_path):
    path = tmp_path / "c"
    with Collection.create(path, dim=4) as c:
        c.add_vectors("image", ["b.jpg"], np.eye(1, 4, dtype=np.float32))
        c.add_vectors("text", ["t1", "t2", "t3"], np.eye(3, 4, dtype=np.float32), texts=["sand", "sand", "sea"])
        img = c.id_of("b.jpg")
    r = run("search", "-c", path, "--item", img, "--target", "text", "-k", 5)
    assert r.exit_code == 0, r.output
    assert [ln.split("\t")[2] for ln in r.output.splitlines()].count("sand") == 2
    r = run("search", "-c", path, "--item", img, "--target", "text", "-k", 5, "--distinct")
    assert [ln.split("\t")[2] for ln in r.output.splitlines()].count("sand") == 1


def test_search_gives_ten_results_by_default(tmp_path):
    path = tmp_path / "c"
    with Collection.create(path, dim=4) as c:
        c.add_vectors("text", [f"t{i}" for i in range(12)], np.random.default_rng(0).normal(size=(12, 4)),
                      texts=[f"caption {i}" for i in range(12)])
        first = c.id_of("t0")
    r = run("search", "-c", path, "--item", first)
    assert r.exit_code == 0 and len(r.output.splitlines()) == 10, r.output


def test_a_label_no_shard_has_is_named_for_the_shards(coll, tmp_path):
    other = tmp_path / "d"
    beach_images_plain_texts(other).close()
    r = run("search", "-c", coll, "-c", other, "sand", "--label", "desert")
    clean_exit(r)
    assert "the shards" in r.output and "desert" in r.output
    r = run("search", "-c", coll, "sand", "--label", "desert")
    clean_exit(r)
    assert f"{coll}: " in r.output and "the shards" not in r.output


def test_search_of_one_shard_alone_names_it_when_unreachable():
    r = run("search", "--shard", "http://127.0.0.1:9", "sand")
    clean_exit(r)
    assert "shard http://127.0.0.1:9: unreachable" in r.output


def test_a_shard_timeout_of_zero_is_refused_naming_the_option(coll):
    for args in (["search", "-c", coll, "sand"], ["stats", "-c", coll], ["serve", "-c", coll]):
        r = run(*args, "--shard-timeout", 0)
        clean_exit(r)
        assert "--shard-timeout" in r.output, args


# ---------------------------------------------------------------------------------- stats
def test_stats_line_of_a_vectors_only_collection_says_no_encoders(coll):
    r = run("stats", "-c", coll)
    assert r.exit_code == 0, r.output
    assert r.output.startswith(f"{coll}: 2 images, 2 texts, method None, real 4-d, index Flat, encoders none")
    assert len(r.output.splitlines()) == 1  # one collection: no line about shards


def test_stats_without_a_collection_exits_2():
    r = run("stats")
    clean_exit(r)
    assert "give a collection (-c DIR) or a shard (--shard URL)" in r.output


def test_a_collection_given_twice_names_its_other_spelling(coll):
    r = run("stats", "-c", coll, "-c", f"{coll}/../c")
    clean_exit(r)
    assert f"{coll}/../c: collection given twice (as {coll}); give each collection once" in r.output
    r = run("stats", "-c", coll, "-c", coll)
    clean_exit(r)
    assert "collection given twice;" in r.output and "(as " not in r.output


# ---------------------------------------------------------------------------------- remove
def test_remove_with_nothing_to_remove_exits_2(coll):
    r = run("remove", "-c", coll)
    clean_exit(r)
    assert "give item ids or --key KEY" in r.output


def test_remove_refuses_a_key_typed_as_an_id_and_keeps_everything(coll):
    r = run("remove", "-c", coll, "1", "b.jpg")
    clean_exit(r)
    assert "'b.jpg' is not an item id" in r.output and "--key b.jpg" in r.output
    with Collection.open(coll, read_only=True) as c:
        assert c.count() == 4


def test_remove_json_lists_the_removed_ids_and_the_line_says_them(coll):
    with Collection.open(coll, read_only=True) as c:
        t1, t2 = c.id_of("t1"), c.id_of("t2")
    r = run("remove", "-c", coll, "--key", "t1", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output) == {"removed": [t1]}
    r = run("remove", "-c", coll, t2)
    assert r.exit_code == 0, r.output
    assert r.output.strip() == f"{coll}: removed 1 item(s): {t2}"


# ---------------------------------------------------------------------------------- export
def test_export_refuses_a_folder_an_existing_file_and_a_bad_name(coll, tmp_path):
    r = run("export", tmp_path, "-c", coll)
    clean_exit(r)
    assert f"{tmp_path}: is a folder" in r.output
    old = tmp_path / "old.npz"
    old.write_bytes(b"keep")
    r = run("export", old, "-c", coll)
    clean_exit(r)
    assert "already exists; add --force" in r.output and old.read_bytes() == b"keep"
    r = run("export", tmp_path / "x.txt", "-c", coll)  # the collection's own refusal
    clean_exit(r)
    assert "x.txt" in r.output and ".npz" in r.output and not (tmp_path / "x.txt").exists()
    r = run("export", tmp_path / "y.npz", "-c", coll, "--modality", "audio")
    clean_exit(r)
    assert "--modality must be image or text, got 'audio'" in r.output
    r = run("export", a_file(tmp_path) / "z.npz", "-c", coll)
    clean_exit(r)
    assert "afile is a file" in r.output


def test_export_json_and_lines_say_what_was_written(coll, tmp_path):
    dest = tmp_path / "out" / "v.npz"
    r = run("export", dest, "-c", coll, "--modality", "image", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output) == {"file": str(dest), "collection": str(coll), "images": 2, "texts": 0,
                                    "output": "real", "dim": 4}
    assert len(np.load(dest)["ids"]) == 2
    r = run("export", dest, "-c", coll, "--force")
    assert r.exit_code == 0, r.output
    assert r.output.strip() == f"{dest}: 2 images, 2 texts, real 4-d"


# ---------------------------------------------------------------------------------- snapshot
def test_snapshot_lines_and_refusals(coll, tmp_path):
    dest = tmp_path / "snap"
    r = run("snapshot", dest, "-c", coll)
    assert r.exit_code == 0, r.output
    with Collection.open(coll, read_only=True) as c:
        space = c.stats()["space"]
    assert r.output.strip() == f"{dest}: 2 images, 2 texts, space {space}"
    r = run("snapshot", dest, "-c", coll)  # not an empty folder now
    clean_exit(r)
    assert f"{dest}: exists and is not an empty folder" in r.output
    r = run("snapshot", coll / "inner", "-c", coll)
    clean_exit(r)
    assert "is inside the collection" in r.output and not (coll / "inner").exists()


# ---------------------------------------------------------------------------------- keys
def test_keys_alone_lists_its_commands():
    r = run("keys")
    assert "revoke" in r.output and "public-read" in r.output and "Missing command" not in r.output


def test_keys_commands_on_a_read_only_collection_exit_2(coll, monkeypatch):
    key_id = json.loads(run("keys", "add", "-c", coll, "--role", "read", "--name", "bot", "--json").output)["key_id"]
    r = run("keys", "list", "-c", coll)
    assert r.exit_code == 0 and r.output.splitlines() == [f"{key_id}\tread\tactive\tbot"], r.output
    # a folder this process cannot write (root ignores modes): opened read-only
    monkeypatch.setattr("xmodal.index.collection.store_writable", lambda folder, db: False)
    for args in (["add", "-c", coll, "--role", "read"], ["revoke", key_id, "-c", coll],
                 ["public-read", "false", "-c", coll]):
        r = run("keys", *args)
        clean_exit(r)
        assert "read-only" in r.output, args
    monkeypatch.undo()
    with Collection.open(coll, read_only=True) as c:
        assert c.public_read is True and c.count() == 4
    r = run("keys", "public-read", "false", "-c", coll)
    assert r.exit_code == 0 and r.output.strip() == "public_read = False", r.output
    with Collection.open(coll, read_only=True) as c:
        assert c.public_read is False


# ---------------------------------------------------------------------------------- serve
def test_serve_read_only_says_so_and_refuses_a_bad_host_or_key(coll, monkeypatch):
    import uvicorn

    served, threads = [], []
    monkeypatch.setattr(uvicorn, "run", lambda app_, **kw: served.append(kw))
    monkeypatch.setattr("faiss.omp_set_num_threads", threads.append)
    made = []
    import xmodal.service

    real_create = xmodal.service.create_app
    monkeypatch.setattr(xmodal.service, "create_app", lambda c, **kw: made.append(kw) or real_create(c, **kw))
    r = run("serve", "-c", coll, "--port", 0, "--faiss-threads", 3, "--max-upload-mb", 0.5)
    assert r.exit_code == 0 and threads == [3], r.output
    assert made[0]["max_upload_bytes"] == 512 * 1024
    served.clear()
    r = run("serve", "-c", coll, "--read-only", "--port", 0)
    assert r.exit_code == 0, r.output
    assert f"{coll}: serving read-only (writes answer 403)" in r.output and len(served) == 1
    r = run("serve", "-c", coll, "--port", 0)  # a writable folder: served for writes too
    assert r.exit_code == 0 and "read-only" not in r.output and len(served) == 2, r.output
    r = run("serve", "-c", coll, "--host", "no-such-host.invalid", "--port", 0)
    clean_exit(r)
    assert "--host no-such-host.invalid: cannot listen there" in r.output
    r = run("serve", "-c", coll, "--port", 0, "--shard-api-key", "http://127.0.0.1:9/=k")
    clean_exit(r)
    assert "--shard-api-key" in r.output
    import socket

    with socket.socket() as busy:  # a port another server holds
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = run("serve", "-c", coll, "--port", port)
    clean_exit(r)
    assert f"127.0.0.1:{port}: the port is in use" in r.output
    r = run("serve", "-c", coll, "--host", "192.0.2.1", "--port", 0)  # TEST-NET: not this machine's
    clean_exit(r)
    assert "192.0.2.1:0: cannot listen there" in r.output and len(served) == 2
    r = run("serve", "-c", coll, "--host", "2001:db8::1", "--port", 0)  # IPv6: bracketed
    clean_exit(r)
    assert "[2001:db8::1]:0: cannot listen there" in r.output or "--host 2001:db8::1" in r.output


# ---------------------------------------------------------------------------------- index
def _one_image_source(tmp_path: Path) -> Path:
    from PIL import Image

    src = tmp_path / "src"
    src.mkdir()
    Image.new("RGB", (8, 8), (9, 99, 199)).save(src / "a.png")
    (src / "a.txt").write_text("a caption")
    return src


def test_index_typed_option_on_a_damaged_collection_gets_the_builds_refusal(tmp_path):
    """--index on a collection whose database is damaged: the binary-spec note read the
    collection unguarded and UnreadableDatabaseError escaped (exit 1, a traceback)."""
    src = _one_image_source(tmp_path)
    damaged = tmp_path / "d"
    damaged.mkdir()
    (damaged / "collection.db").write_bytes(b"not a database at all" * 10)
    r = run("index", src, "-c", damaged, "--index", "HNSW32", "-q")
    clean_exit(r)
    assert "--rebuild" in r.output


def test_index_unknown_method_with_an_index_spec_is_the_builds_refusal(tmp_path):
    src = _one_image_source(tmp_path)
    r = run("index", src, "-c", tmp_path / "new", "--method", "no-such-method", "--index", "HNSW32", "-q")
    clean_exit(r)
    assert "no-such-method" in r.output and not (tmp_path / "new").exists()
    assert not r.output.startswith("error: '")  # the KeyError's message, not its repr


def test_ctrl_c_during_index_exits_130_saying_what_is_held(coll, tmp_path, monkeypatch):
    import xmodal.index

    def interrupted(source, collection, **kw):  # one caption stored, then Ctrl-C
        if Collection.exists(collection):
            with Collection.open(collection) as c:
                c.add_vectors("text", ["t9"], np.eye(1, 4, dtype=np.float32), texts=["late"])
        raise KeyboardInterrupt

    monkeypatch.setattr(xmodal.index, "build_collection", interrupted)
    src = _one_image_source(tmp_path)
    r = run("index", src, "-c", coll, "-q")
    clean_exit(r, 130)
    assert (f"interrupted: {coll} keeps every batch stored so far and holds 2 images and 3 texts "
            "(2 images and 2 texts before this run)") in r.output
    r = run("index", src, "-c", tmp_path / "new", "-q")
    clean_exit(r, 130)
    assert f"interrupted before anything was stored: {tmp_path / 'new'} was not created" in r.output


def test_rebuild_notes_the_binary_index_a_hashing_method_gets(coll, tmp_path):
    r = run("index", _one_image_source(tmp_path), "-c", coll, "--rebuild", "--method", "lsh", "--index", "Flat",
            "--dry-run")  # one image: the dry run refuses to fit, after the note
    clean_exit(r)
    assert "note: --index Flat: method lsh is binary (hashing), so the index is the binary BFlat" in r.output
    with Collection.open(coll, read_only=True) as c:
        assert c.count() == 4  # a dry run


def test_index_set_on_an_existing_collection_is_refused_before_the_source_is_read(coll, tmp_path):
    r = run("index", tmp_path / "no-source", "-c", coll, "--set", "bits=64")
    clean_exit(r)
    assert "--set bits=64 (it has no fitted method)" in r.output


def test_dry_run_of_an_unknown_method_names_it_plainly(tmp_path):
    r = run("index", _one_image_source(tmp_path), "-c", tmp_path / "new", "--method", "no-such-method", "--dry-run")
    clean_exit(r)
    assert "no-such-method" in r.output and not r.output.startswith("error: '")  # not a KeyError's repr
    assert not (tmp_path / "new").exists()


def test_dry_run_summary_names_like_params_unreadable_and_pruned_items():
    from xmodal.cli.collection import _plan_text

    plan = {"collection": "c", "action": "create", "like": "base", "params": {"bits": 64, "kernel": "rbf"},
            "images": 3, "texts": 4, "source": "src"}
    assert _plan_text(plan) == ("c: dry run, nothing written\nwould create the collection with base's "
                                "method and encoders (bits=64, kernel=rbf): 3 images, 4 texts from src")
    plan = {"collection": "c", "action": "create", "method": "cca", "images": 1, "texts": 2, "source": "s"}
    assert _plan_text(plan).endswith("fitting cca: 1 images, 2 texts from s")
    r = {"new": [f"n{i}" for i in range(7)], "changed": [], "unchanged": 2, "unreadable": ["bad.jpg", "x.jpg"]}
    t = {"new": [], "changed": ["t"], "unchanged": 0, "unreadable": []}
    gone = [{"modality": "image", "id": i, "key": f"k{i}"} for i in range(12)]
    lines = _plan_text({"collection": "c", "action": "update", "image": r, "text": t,
                        "removed": gone}).splitlines()
    assert lines[1] == ("images: 7 new, 0 changed (re-encoded), 2 unchanged, 2 skipped as unreadable "
                        "(e.g. bad.jpg)")
    assert lines[2:8] == ["  + n0", "  + n1", "  + n2", "  + n3", "  + n4", "  ... 2 more"]
    assert lines[8] == "texts: 0 new, 1 changed (re-encoded), 0 unchanged"
    assert lines[9] == "removed by --prune: 12 item(s)"
    assert lines[10:20] == [f"  - image {i} k{i}" for i in range(10)] and lines[20:] == ["  ... 2 more"]
    r["new"], gone[10:] = r["new"][:5], []  # five new, ten removed: all listed, no "more" line
    lines = _plan_text({"collection": "c", "action": "update", "image": r, "text": t,
                        "removed": gone}).splitlines()
    assert "more" not in " ".join(lines) and len(lines) == 1 + 1 + 5 + 1 + 1 + 10
    t.update(moved=["m1"], relabelled=["r1", "r2"])
    assert _plan_text({"collection": "c", "action": "update", "image": r, "text": t}).splitlines()[-1] == (
        "texts: 0 new, 1 changed (re-encoded), 1 moved (path updated, not re-encoded), 2 relabelled "
        "(labels updated, not re-encoded), 0 unchanged")


def test_a_name_too_long_for_the_file_system_is_named_with_exit_2(coll, tmp_path):
    """A path the file system refuses (ENAMETOOLONG) raised OSError out of the commands'
    own checks (export's DEST, search's --image, opening -c DIR, index's collection notes):
    exit 1 and a traceback instead of exit 2 naming the path."""
    long = tmp_path / ("x" * 300)
    src = _one_image_source(tmp_path)
    for args in (["export", f"{long}.npz", "-c", coll], ["search", "-c", coll, "--image", f"{long}.jpg"],
                 ["stats", "-c", long], ["search", "-c", long, "sand"], ["keys", "list", "-c", long],
                 ["remove", "-c", long, "1"], ["index", src, "-c", long, "--index", "HNSW32", "-q"],
                 ["index", src, "-c", long, "-q"]):
        r = run(*args)
        clean_exit(r)
        assert "x" * 300 in r.output and "too long" in r.output, args
