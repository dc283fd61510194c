"""Checks added by the session-13 re-read of its own change (behaviour kept, work moved)."""

import numpy as np
import pytest

from xmodal.index import Collection
from xmodal.index.build import _held_twice
from xmodal.index.collection import ImageItem


def _unit(rng, n, d=4):
    X = rng.standard_normal((n, d)).astype(np.float32)
    return X / np.linalg.norm(X, axis=1, keepdims=True)


def test_held_twice_names_each_new_image_stored_before_under_another_key(tmp_path):
    # over 900 new images (two chunks of SQLite parameters); the earliest older twin is named
    rng = np.random.default_rng(0)
    files = tmp_path / "files"
    files.mkdir()

    def item(key, content):
        (files / key).write_bytes(content)
        return ImageItem(key, str(files / key))

    coll = Collection.create(tmp_path / "c", dim=4)
    old = [item(f"old{i}.jpg", b"old %d" % i) for i in range(20)] + [item("old_again.jpg", b"old 3")]
    coll.add_items(old, image_features=_unit(rng, len(old)))
    new = [item(f"new{i:04d}.jpg", b"new %d" % i) for i in range(950)]
    new[5] = item("new0005.jpg", b"old 3")      # twice before: old3 (the earlier) and old_again
    new[930] = item("new0930.jpg", b"old 11")   # in the second chunk
    new += [item("dup_a.jpg", b"fresh"), item("dup_b.jpg", b"fresh")]  # twins among the new only
    rep = coll.add_items(new, image_features=_unit(rng, len(new)))
    assert len(rep.ids) == len(new)
    assert _held_twice(coll, rep.ids) == [("new0005.jpg", "old3.jpg"), ("new0930.jpg", "old11.jpg")]
    assert _held_twice(coll, []) == []
    coll.close()


def test_relabelling_finds_items_stored_without_labels_and_with_other_ones(tmp_path):
    from xmodal.index.collection import TextItem

    rng = np.random.default_rng(1)
    coll = Collection.create(tmp_path / "c", dim=4)
    texts = [TextItem("bare", "a caption"), TextItem("cat", "another", labels=["cat"])]
    coll.add_items((), texts, text_features=_unit(rng, 2))
    again = [TextItem("bare", "a caption", labels=["dog", "cat"]), TextItem("cat", "another", labels=["cat"])]
    plan = coll.plan((), again)["text"]
    assert plan["relabelled"] == ["bare"] and plan["unchanged"] == 1
    rep = coll.add_items((), again)
    assert (rep.relabelled, rep.unchanged, rep.added) == (1, 1, 0)
    assert sorted(coll.get_item(coll.id_of("bare")).labels) == ["cat", "dog"]
    # given no labels: the stored ones stay; the same labels again: unchanged
    rep = coll.add_items((), [TextItem("bare", "a caption"), TextItem("cat", "another", labels=["cat"])])
    assert (rep.relabelled, rep.unchanged) == (0, 2)
    assert sorted(coll.get_item(coll.id_of("bare")).labels) == ["cat", "dog"]
    coll.close()


def test_http_errors_without_a_body_get_none_and_details_are_scrubbed(tmp_path):
    # the service's HTTPException handler (it scrubs the collection's path from details) kept
    # FastAPI's rule for bodies: 205 (Reset Content) has none, as 204 and 304
    from fastapi import HTTPException
    from fastapi.testclient import TestClient

    from xmodal.service import create_app

    Collection.create(tmp_path / "c", dim=4).close()
    app = create_app(tmp_path / "c")

    @app.get("/probe/{code}")
    def probe(code: int):
        raise HTTPException(code, f"{tmp_path / 'c'}: a detail", headers={"X-Probe": "1"})

    client = TestClient(app)
    for code in (204, 205, 304):
        r = client.get(f"/probe/{code}")
        assert r.status_code == code and r.content == b"" and r.headers["x-probe"] == "1"
    r = client.get("/probe/409")
    assert r.status_code == 409 and r.json() == {"detail": "a detail"} and r.headers["x-probe"] == "1"


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


def test_min_tag_count_is_refused_beside_mat_files_in_a_subfolder_too(tmp_path):
    from scipy.io import savemat

    from xmodal.data import DataError
    from xmodal.data.mirflickr import load_mirflickr25k

    rng = np.random.default_rng(0)
    (tmp_path / "mirflickr").mkdir()  # a folder of images, not the release (no meta/tags)
    blocks = {f"{v}_{p}": rng.standard_normal((6, 3)) if v != "L" else (rng.random((6, 2)) > .5) * 1.0
              for v in "ITL" for p in ("tr", "te")}
    savemat(tmp_path / "mirflickr" / "mir_cnn.mat", blocks)
    with pytest.raises(DataError, match=r"min_tag_count applies to the full release .*the \.mat files in"):
        load_mirflickr25k(str(tmp_path), min_tag_count=20)


def test_xmodal_remove_a_digit_that_is_no_number_says_so(tmp_path):
    # '²'.isdigit() is true, but int('²') raises: the check let it through to a traceback
    from typer.testing import CliRunner

    from xmodal.cli import app

    Collection.create(tmp_path / "c", dim=4).close()
    res = CliRunner().invoke(app, ["remove", "²", "-c", str(tmp_path / "c")])
    assert res.exit_code == 2, res.exception
    assert "'²' is not an item id" in res.output and "--key ²" in res.output
