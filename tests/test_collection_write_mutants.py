"""The collection write path (collection_writes.py, collection_add.py) pinned by properties,
from mutation testing: a refused add stores nothing and leaves the store, the indexes and the
files as they were; an unchanged item sent again is stored once; a relabel keeps the id; a
replaced image gets a new id and its captions follow it; a deleted image takes its captions
out of every index; ids are never reused; the generation moves on every committed write and
never on a refused or empty one."""

import os
from pathlib import Path

import numpy as np
import pytest

from conftest import fake_image_files
from xmodal.data import DataError
from xmodal.index import Collection, ImageItem
from xmodal.index._layout import DB_NAME
from xmodal.index.collection import TextItem

TABLES = ("meta", "items", "item_labels", "vectors", "file_stats", "audit", "deleted")


def snapshot(c) -> tuple:
    """Everything a write could touch: every row of the store's tables, the ids each in-memory
    index holds, and the bytes of every file in the collection's folder but the database's."""
    rows = tuple(tuple(c.store.query(f"SELECT * FROM {t} ORDER BY rowid")) for t in TABLES)
    seq = tuple(c.store.query("SELECT name, seq FROM sqlite_sequence ORDER BY name"))
    idx = tuple(sorted((k, tuple(sorted(v.ids().tolist()))) for k, v in c.indexes.items()))
    files = tuple(sorted((str(p.relative_to(c.path)), p.read_bytes()) for p in c.path.rglob("*")
                         if p.is_file() and not p.name.startswith((DB_NAME, "write.lock"))))
    return rows, seq, idx, files


def every_id(c) -> set[int]:
    return {int(i) for v in c.indexes.values() for i in v.ids()}


def labels_of(c, item_id: int) -> list[str]:
    return sorted(r[0] for r in c.store.query("SELECT label FROM item_labels WHERE item_id = ?", (item_id,)))


@pytest.fixture
def coll(tmp_path):
    """Two images (labelled) with two captions each, in a collection with an exact and an
    approximate index."""
    c = Collection.create(tmp_path / "c", dim=4, index="HNSW16")
    paths = fake_image_files(tmp_path, 2)
    rng = np.random.default_rng(0)
    c.add_items([ImageItem("a.jpg", paths[0], ["beach"]), ImageItem("b.jpg", paths[1], ["forest"])],
                [TextItem(f"{k}{j}", f"caption {j} of {k}", f"{k}.jpg") for k in "ab" for j in range(2)],
                image_features=rng.normal(size=(2, 4)), text_features=rng.normal(size=(4, 4)))
    yield c
    c.close()


def test_every_refused_add_leaves_store_indexes_and_files_as_they_were(coll, tmp_path):
    before = snapshot(coll)
    v = np.ones((1, 4), np.float32)
    refused = [
        # more paths / labels / hashes than keys: never silently dropped
        lambda: coll.add_vectors("image", ["n.jpg"], v, paths=["x", "y"]),
        lambda: coll.add_vectors("image", ["n.jpg"], v, labels=[["a"], ["b"]]),
        lambda: coll.add_vectors("text", ["n"], v, texts=["x", "y"]),
        lambda: coll.add_vectors("text", ["n"], v, pair_keys=["a.jpg", "b.jpg"]),
        lambda: coll.add_vectors("image", ["n.jpg"], v, hashes=["h1", "h2"]),
        lambda: coll.add_vectors("image", ["n.jpg", "m.jpg"], v),          # 2 keys, 1 vector
        lambda: coll.add_vectors("image", ["n.jpg", "n.jpg"], np.ones((2, 4))),
        lambda: coll.add_vectors("video", ["n"], v),
        lambda: coll.add_vectors("image", ["n.jpg"], np.ones((1, 3))),
        # a text key that is an image's, an image key that is a text's
        lambda: coll.add_vectors("text", ["a.jpg"], v, texts=["x"]),
        lambda: coll.add_vectors("image", ["a0"], v),
        # replacing a stored caption while pairing it with an image not stored: the delete of
        # the old row must roll back with the refused insert
        lambda: coll.add_vectors("text", ["a0"], v, texts=["new"], pair_keys=["nope.jpg"]),
        lambda: coll.add_vectors("image", ["a.jpg", "n.jpg"], np.ones((2, 4)), labels=[["ok"], [2.5]]),
        lambda: coll.add_items([], [TextItem("t9", "x", None), TextItem("t9", "y", None)],
                               text_features=np.ones((2, 4))),
        lambda: coll.add_items([ImageItem("a.jpg", "", [])], image_features=np.ones((1, 4))),
        lambda: coll.add_items([ImageItem("x.jpg", None, [])], image_features=np.ones((1, 4))),
        lambda: coll.add_items([ImageItem("x.jpg", 7, [])], image_features=np.ones((1, 4))),
        lambda: coll.add_items([], [TextItem("t9", "x", None)], text_features=np.ones((2, 4))),
    ]
    for r, add in enumerate(refused):
        with pytest.raises((DataError, ValueError)):
            add()
        assert snapshot(coll) == before, f"refused add #{r} changed the collection"
    # and the collection still takes a good add afterwards
    gen = coll.store.generation()
    rep = coll.add_vectors("image", ["n.jpg"], v)
    assert rep.added == 1 and coll.store.generation() == gen + 1


def test_the_same_items_twice_are_stored_once_and_answered_unchanged(coll, tmp_path):
    gen, before = coll.store.generation(), snapshot(coll)
    items = [ImageItem(r[1], r[2], labels_of(coll, r[0])) for r in
             coll.store.query("SELECT id, key, path FROM items WHERE modality = 'image' ORDER BY id")]
    texts = [TextItem(k, t, pk, []) for k, t, pk in coll.store.query(
        "SELECT t.key, t.text, i.key FROM items t JOIN items i ON i.id = t.pair_id ORDER BY t.id")]
    rep = coll.add_items(items, texts, image_features=np.zeros((2, 4)), text_features=np.zeros((4, 4)))
    assert (rep.added, rep.replaced, rep.relabelled, rep.moved, rep.unchanged) == (0, 0, 0, 0, 6)
    assert rep.ids == [] and coll.store.generation() == gen
    assert snapshot(coll) == before  # no audit entry, no row, no index change
    # the same new vector item twice: the second time replaces, never a second row per key
    coll.add_vectors("image", ["z.jpg"], np.ones((1, 4)))
    coll.add_vectors("image", ["z.jpg"], np.ones((1, 4)))
    assert [r[0] for r in coll.store.query("SELECT count(*) FROM items WHERE key = 'z.jpg'")] == [1]


def test_relabelling_keeps_the_id_and_is_one_generation(coll, tmp_path):
    a = coll.id_of("a.jpg")
    path = coll.get_item(a).path
    ids_before, gen = every_id(coll), coll.store.generation()
    rep = coll.add_items([ImageItem("a.jpg", path, ["sea", "beach", "sea"])], image_features=np.zeros((1, 4)))
    assert (rep.relabelled, rep.added, rep.replaced, rep.unchanged) == (1, 0, 0, 0)
    assert coll.id_of("a.jpg") == a and labels_of(coll, a) == ["beach", "sea"]
    assert every_id(coll) == ids_before and coll.store.generation() == gen + 1
    assert coll.audit_log(1)[0]["action"] == "relabel"
    # the other image's labels are untouched; no labels given keeps the stored ones
    assert labels_of(coll, coll.id_of("b.jpg")) == ["forest"]
    rep = coll.add_items([ImageItem("a.jpg", path, [])], image_features=np.zeros((1, 4)))
    assert rep.unchanged == 1 and labels_of(coll, a) == ["beach", "sea"] and coll.store.generation() == gen + 1
    # a text relabelled too (labels live in the store only)
    t = coll.id_of("a0")
    rep = coll.add_items([], [TextItem("a0", "caption 0 of a", "a.jpg", ["x"])], text_features=np.zeros((1, 4)))
    assert rep.relabelled == 1 and coll.id_of("a0") == t and labels_of(coll, t) == ["x"]


def test_a_changed_file_is_replaced_under_a_new_id_and_its_captions_follow(coll, tmp_path):
    old = coll.id_of("a.jpg")
    caps = sorted(coll.id_of(k) for k in ("a0", "a1"))
    path = coll.get_item(old).path
    top = max(r[0] for r in coll.store.query("SELECT id FROM items"))
    with open(path, "ab") as f:
        f.write(b" changed")
    gen = coll.store.generation()
    rep = coll.add_items([ImageItem("a.jpg", path, ["beach"])], image_features=np.ones((1, 4)))
    new = coll.id_of("a.jpg")
    assert (rep.replaced, rep.added, rep.ids) == (1, 0, [new]) and new > top
    assert coll.store.generation() == gen + 1
    assert old not in every_id(coll) and new in every_id(coll)
    for (mod, _), idx in coll.indexes.items():
        assert old not in idx.ids().tolist()
        if mod == "image":
            assert new in idx.ids().tolist() and idx.ntotal == 2
    # captions, not re-sent, now belong to the new id; deleting it takes them along
    assert sorted(r[0] for r in coll.store.query("SELECT id FROM items WHERE pair_id = ?", (new,))) == caps
    assert labels_of(coll, new) == ["beach"]
    hits = coll.search_vector(np.ones(4), target="image", k=10)
    assert old not in [h.id for h in hits] and new in [h.id for h in hits]


def test_removing_an_image_removes_its_captions_from_every_index_and_ids_are_never_reused(coll):
    a, b = coll.id_of("a.jpg"), coll.id_of("b.jpg")
    caps = {coll.id_of(k) for k in ("a0", "a1")}
    top = max(r[0] for r in coll.store.query("SELECT id FROM items"))
    gen = coll.store.generation()
    gone = coll.delete(ids=[a])
    assert set(gone) == {a} | caps and coll.store.generation() == gen + 1
    assert not (set(gone) & every_id(coll)) and b in every_id(coll)
    assert coll.count("image") == 1 and coll.count("text") == 2
    for target in ("image", "text"):
        assert not set(gone) & {h.id for h in coll.search_vector(np.ones(4), target=target, k=10)}
    assert coll.get_items(gone) == {}
    # a delete that finds nothing: no generation, no audit entry
    before = snapshot(coll)
    assert coll.delete(ids=[a, 10**6]) == [] and coll.delete(keys=["a.jpg", "nothing"]) == []
    assert snapshot(coll) == before
    # a new item never gets an id that was given before, deleted or not
    rep = coll.add_vectors("image", ["a.jpg"], np.ones((1, 4)))
    assert rep.ids[0] > top and rep.added == 1


def test_a_text_deleted_alone_leaves_its_image_and_an_image_key_deletes_by_key(coll):
    b, b0, b1 = coll.id_of("b.jpg"), coll.id_of("b0"), coll.id_of("b1")
    assert coll.delete(keys=["b0"]) == [b0]
    assert b in every_id(coll) and b1 in every_id(coll) and b0 not in every_id(coll)
    assert sorted(coll.delete(keys=["b.jpg"])) == sorted([b, b1])
    assert coll.count() == 3


def test_a_path_object_is_stored_as_its_string(coll, tmp_path):
    f = tmp_path / "p.jpg"
    f.write_bytes(b"p")
    rep = coll.add_vectors("image", ["p.jpg"], np.ones((1, 4)), paths=[f])
    assert coll.get_item(rep.ids[0]).path == str(f)
    assert coll.store.query("SELECT typeof(path) FROM items WHERE id = ?", (rep.ids[0],))[0][0] == "text"


def test_a_moved_file_keeps_its_id_and_is_not_read_again(coll, tmp_path, monkeypatch):
    from xmodal.index import collection as cmod

    a = coll.id_of("a.jpg")
    old = coll.get_item(a).path
    (tmp_path / "moved").mkdir()
    new = str(tmp_path / "moved" / "a.jpg")
    (tmp_path / "moved" / "a.jpg").write_bytes(open(old, "rb").read())
    gen, ids = coll.store.generation(), every_id(coll)
    rep = coll.add_items([ImageItem("a.jpg", new, ["beach"])], image_features=np.zeros((1, 4)))
    assert (rep.moved, rep.added, rep.replaced, rep.unchanged, rep.relabelled) == (1, 0, 0, 0, 0)
    assert coll.id_of("a.jpg") == a and coll.get_item(a).path == new and every_id(coll) == ids
    assert coll.store.generation() == gen + 1 and coll.audit_log(1)[0]["action"] == "move"
    assert coll.get_item(coll.id_of("b.jpg")).path != new  # only the moved item's path changed
    # its size and mtime were recorded: the next run trusts them and reads nothing
    reads = []
    real = cmod.sha256_file
    monkeypatch.setattr(cmod, "sha256_file", lambda p: reads.append(p) or real(p))
    rep = coll.add_items([ImageItem("a.jpg", new, ["beach"])], image_features=np.zeros((1, 4)))
    assert rep.unchanged == 1 and reads == [] and coll.store.generation() == gen + 1


def test_an_unreadable_new_image_is_skipped_with_its_captions_and_nothing_else_is(coll, tmp_path):
    gen = coll.store.generation()
    good = tmp_path / "g.jpg"
    good.write_bytes(b"good")
    rep = coll.add_items([ImageItem("gone.jpg", str(tmp_path / "gone.jpg"), []), ImageItem("g.jpg", str(good), [])],
                         [TextItem("gone0", "x", "gone.jpg"), TextItem("g0", "y", "g.jpg")],
                         image_features=np.ones((2, 4)), text_features=np.ones((2, 4)))
    assert rep.skipped == [str(tmp_path / "gone.jpg")] and rep.added == 2
    assert coll.id_of("gone.jpg") is None and coll.id_of("gone0") is None
    g = coll.id_of("g.jpg")
    assert coll.store.query("SELECT pair_id FROM items WHERE key = 'g0'")[0][0] == g
    assert set(rep.ids) == {g, coll.id_of("g0")} and coll.store.generation() > gen


def test_a_long_add_commits_batch_by_batch_each_item_once(coll, tmp_path):
    paths = [tmp_path / f"n{j}.jpg" for j in range(5)]
    for j, p in enumerate(paths):
        p.write_bytes(b"new %d" % j)
    gen = coll.store.generation()
    items = [ImageItem(p.name, str(p), ["l"]) for p in paths]
    rep = coll.add_items(items, image_features=np.eye(5, 4), batch_size=2)
    assert rep.added == 5 and len(set(rep.ids)) == 5 and coll.count("image") == 7
    assert coll.store.generation() == gen + 3  # three committed batches
    assert all(labels_of(coll, i) == ["l"] for i in rep.ids)
    rep = coll.add_items(items, image_features=np.eye(5, 4), batch_size=2)
    assert rep.unchanged == 5 and rep.added == 0 and coll.store.generation() == gen + 3


def _thumbs_of(c, item_id: int) -> list:
    from xmodal.index.items import THUMB_SIZES, THUMB_SUFFIXES, thumb_file

    return [thumb_file(c.path / "thumbs", f"id{item_id}", s, x) for s in THUMB_SIZES for x in THUMB_SUFFIXES]


def _upload(c, name: bytes) -> str:
    d = Path(c._uploads_dir)
    d.mkdir(parents=True, exist_ok=True)
    f = d / (name.decode() + ".jpg")
    f.write_bytes(name)
    return str(f)


@pytest.mark.parametrize("how", ["add_vectors", "add_items"])
def test_a_replaced_upload_leaves_no_unused_file_or_thumbnail(coll, tmp_path, how):
    """The old upload and the old id's thumbnails go when an image is replaced (nothing else
    uses them); another item's upload and thumbnails stay."""
    up = _upload(coll, b"u1")
    keep = _upload(coll, b"u2")
    rep = coll.add_vectors("image", ["u.jpg", "k.jpg"], np.ones((2, 4)), paths=[up, keep], hashes=["h1", "h2"])
    old, other = rep.ids
    for f in _thumbs_of(coll, old)[:1] + _thumbs_of(coll, other)[:1]:
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b"thumb")
    new_file = tmp_path / "u_new.jpg"
    new_file.write_bytes(b"new content")
    if how == "add_vectors":
        coll.add_vectors("image", ["u.jpg"], np.ones((1, 4)), paths=[str(new_file)], hashes=["h3"])
    else:
        rep = coll.add_items([ImageItem("u.jpg", str(new_file), [])], image_features=np.ones((1, 4)))
        assert rep.replaced == 1
    assert coll.id_of("u.jpg") != old
    assert not any(f.exists() for f in _thumbs_of(coll, old))
    assert not os.path.exists(up)
    assert os.path.exists(keep) and _thumbs_of(coll, other)[0].exists()
    # deleting the other removes its upload and thumbnail too
    coll.delete(keys=["k.jpg"])
    assert not os.path.exists(keep) and not _thumbs_of(coll, other)[0].exists()


def test_a_writers_own_writes_are_not_taken_for_another_process(coll):
    """After each of its own committed writes the handle knows where the store stands: the
    next refresh finds nothing new (no reload of what it just wrote)."""
    coll.add_vectors("image", ["z.jpg"], np.ones((1, 4)))
    assert coll.refresh() is False
    coll.delete(keys=["z.jpg"])
    assert coll.refresh() is False
    a = coll.id_of("a.jpg")
    coll.add_items([ImageItem("a.jpg", coll.get_item(a).path, ["new"])], image_features=np.zeros((1, 4)))
    assert coll.refresh() is False


def test_plan_writes_nothing_and_agrees_with_the_add_that_follows(coll, tmp_path):
    a, b = coll.id_of("a.jpg"), coll.id_of("b.jpg")
    pa, pb = coll.get_item(a).path, coll.get_item(b).path
    from PIL import Image

    # plan() skips what would not decode, as the encoder would: changed and new files are images
    Image.new("RGB", (8, 8), (200, 10, 10)).save(pb, format="PNG")  # b: changed
    moved = tmp_path / "elsewhere.jpg"
    moved.write_bytes(open(pa, "rb").read())                        # a: moved and relabelled
    new = tmp_path / "new.jpg"
    Image.new("RGB", (8, 8), (10, 200, 10)).save(new, format="PNG")
    images = [ImageItem("a.jpg", str(moved), ["sea"]), ImageItem("b.jpg", pb, ["forest"]),
              ImageItem("n.jpg", str(new), []), ImageItem("gone.jpg", str(tmp_path / "gone.jpg"), [])]
    texts = [TextItem("a0", "caption 0 of a", "a.jpg", []), TextItem("a1", "a new caption", "a.jpg", []),
             TextItem("g0", "of an unreadable image", "gone.jpg", []), TextItem("t", "new", None, [])]
    before = snapshot(coll)
    plan = coll.plan(images, texts, prune=True)
    assert snapshot(coll) == before
    assert plan["image"] == {"new": ["n.jpg"], "changed": ["b.jpg"], "moved": ["a.jpg"], "relabelled": ["a.jpg"],
                             "unchanged": 0, "unreadable": ["gone.jpg"]}
    assert plan["text"] == {"new": ["t"], "changed": ["a1"], "moved": [], "relabelled": [], "unchanged": 1,
                            "unreadable": ["g0"]}
    # pruning against these items removes the captions b0 and b1 (not sent), not b.jpg itself
    assert sorted(r["key"] for r in plan["removed"]) == ["b0", "b1"]
    rep = coll.add_items(images, texts, image_features=np.ones((4, 4)), text_features=np.ones((4, 4)))
    assert (rep.added, rep.replaced, rep.moved, rep.relabelled, rep.unchanged) == (2, 2, 1, 1, 1)
    assert rep.skipped == [str(tmp_path / "gone.jpg")] and coll.id_of("g0") is None
    # pruning an image takes its captions (and only those) along
    plan = coll.plan([images[0], images[2]], texts[:2], prune=True)
    assert sorted(r["key"] for r in plan["removed"]) == ["b.jpg", "b0", "b1", "t"]


def test_prune_deletes_what_the_source_lost_and_refuses_an_empty_source(coll):
    from xmodal.index import CollectionError

    before = snapshot(coll)
    with pytest.raises(CollectionError, match="empty source"):
        coll.prune([])
    assert snapshot(coll) == before
    assert coll.prune(["a.jpg", "a0", "a1", "b.jpg", "b0", "b1"]) == [] and snapshot(coll) == before
    b, b0, b1 = coll.id_of("b.jpg"), coll.id_of("b0"), coll.id_of("b1")
    gen = coll.store.generation()
    # b.jpg is gone from the source: its captions go with it even though the source still has b1
    assert sorted(coll.prune(["a.jpg", "a0", "a1", "b1"])) == sorted([b, b0, b1])
    assert coll.store.generation() == gen + 1 and not {b, b0, b1} & every_id(coll)
    assert sorted(r[0] for r in coll.store.query("SELECT key FROM items")) == ["a.jpg", "a0", "a1"]


@pytest.mark.parametrize("bad", [TextItem("t", "x", "nope.jpg", []), TextItem("b.jpg", "a text keyed as an image", None, [])])
def test_an_add_refused_for_one_item_relabels_and_moves_nothing(coll, tmp_path, bad):
    """A small add is all or none: a caption paired with no image, or keyed as a stored image,
    refuses the whole add, the relabel and the move sent with it included."""
    a = coll.id_of("a.jpg")
    moved = tmp_path / "moved.jpg"
    moved.write_bytes(open(coll.get_item(a).path, "rb").read())
    new = tmp_path / "n.jpg"
    new.write_bytes(b"n")
    before = snapshot(coll)
    with pytest.raises(DataError, match="nope.jpg|b.jpg"):
        coll.add_items([ImageItem("a.jpg", str(moved), ["relabelled"]), ImageItem("n.jpg", str(new), [])], [bad],
                       image_features=np.ones((2, 4)), text_features=np.ones((1, 4)))
    assert snapshot(coll) == before


def test_a_file_that_cannot_be_removed_after_a_delete_is_logged_not_raised(coll, monkeypatch, caplog):
    up = _upload(coll, b"u9")
    rep = coll.add_vectors("image", ["u9.jpg"], np.ones((1, 4)), paths=[up])

    def refuse(self, missing_ok=False):
        raise PermissionError(13, "refused", str(self))

    monkeypatch.setattr(Path, "unlink", refuse)
    with caplog.at_level("WARNING", logger="xmodal.index"):
        assert coll.delete(ids=rep.ids) == rep.ids
    assert coll.get_items(rep.ids) == {} and os.path.exists(up)
    assert "could not remove an unused upload" in caplog.text


def test_thumbnails_named_by_content_go_with_the_last_image_that_has_that_content(coll, tmp_path):
    from xmodal.index.items import THUMB_SIZES, THUMB_SUFFIXES, thumb_file

    def by_hash(h):  # one size only, as a page that showed one size leaves
        return thumb_file(coll.path / "thumbs", h, THUMB_SIZES[-1], THUMB_SUFFIXES[0])

    rep = coll.add_vectors("image", ["x1.jpg", "x2.jpg"], np.ones((2, 4)), paths=["/nowhere/x1", "/nowhere/x2"],
                           hashes=["same", "same"])
    f = by_hash("same")
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_bytes(b"thumb")
    coll.delete(ids=rep.ids[:1])
    assert f.exists()  # x2 still shows those bytes
    coll.delete(ids=rep.ids[1:])
    assert not f.exists()


def test_the_audit_log_is_newest_first_with_its_row_ids_and_details(coll):
    from xmodal.index.store import Store

    b0 = coll.id_of("b0")
    coll.delete(keys=["b0"], actor="alice", remote="10.0.0.1")
    with coll._transaction() as c:
        Store.audit(c, "bob", "note", "a plain-text detail")
    log = coll.audit_log()
    assert [e["action"] for e in log[:3]] == ["note", "delete", "add"]
    assert [e["id"] for e in log] == sorted((e["id"] for e in log), reverse=True)
    assert all(isinstance(e["id"], int) for e in log) and len({e["id"] for e in log}) == len(log)
    assert log[0]["detail"] == "a plain-text detail" and log[0]["actor"] == "bob"
    assert log[1]["detail"] == {"ids": [b0]}
    assert log[2]["detail"] == {"modality": "text", "count": 4, "replaced": 0, "first_key": "a0"}
    assert (log[1]["actor"], log[1]["remote"]) == ("alice", "10.0.0.1")
    assert len(coll.audit_log(limit=2)) == 2 and coll.audit_log(limit=2) == log[:2]


def test_a_long_add_still_relabels_moves_and_records_touched_files(coll, tmp_path, monkeypatch):
    """batch_size below the add's size (batch by batch): the relabel, the move and the new file
    stats of a touched file are written all the same; the touched file is not read again."""
    from xmodal.index import collection as cmod

    a, b = coll.id_of("a.jpg"), coll.id_of("b.jpg")
    pa, pb = coll.get_item(a).path, coll.get_item(b).path
    os.utime(pa, ns=(1_000_000_000, 1_000_000_000))  # touched: same bytes, another mtime
    rep = coll.add_items([ImageItem("a.jpg", pa, ["beach"]), ImageItem("b.jpg", pb, ["woods"])],
                         image_features=np.zeros((2, 4)), batch_size=1)
    assert (rep.unchanged, rep.relabelled, rep.added) == (1, 1, 0) and labels_of(coll, b) == ["woods"]
    reads = []
    real = cmod.sha256_file
    monkeypatch.setattr(cmod, "sha256_file", lambda p: reads.append(p) or real(p))
    rep = coll.add_items([ImageItem("a.jpg", pa, []), ImageItem("b.jpg", pb, [])], image_features=np.zeros((2, 4)))
    assert rep.unchanged == 2 and reads == []  # the touched file's new stats were recorded
    moved = tmp_path / "moved_b.jpg"
    moved.write_bytes(open(pb, "rb").read())
    rep = coll.add_items([ImageItem("a.jpg", pa, []), ImageItem("b.jpg", str(moved), [])],
                         image_features=np.zeros((2, 4)), batch_size=1)
    assert (rep.unchanged, rep.moved) == (1, 1) and coll.get_item(b).path == str(moved)
    rep = coll.add_items([ImageItem("b.jpg", str(moved), [])], image_features=np.zeros((1, 4)))
    assert rep.unchanged == 1 and reads == [str(moved)]  # read once, when found moved


def test_up_to_256_items_commit_as_one_transaction_by_default(coll):
    gen = coll.store.generation()
    texts = [TextItem(f"t{j}", f"text {j}", None, []) for j in range(257)]
    rep = coll.add_items([], texts[:256], text_features=np.ones((256, 4)))
    assert rep.added == 256 and coll.store.generation() == gen + 1
    rep = coll.add_items([], texts, text_features=np.ones((257, 4)))
    assert rep.added == 1 and rep.unchanged == 256 and coll.store.generation() == gen + 2


def test_images_the_encoder_cannot_read_are_skipped_with_their_captions(coll, tmp_path, monkeypatch):
    """Encoding (no features given): a file the encoder refuses is reported in ``skipped`` and
    never stored (nor as zeros); its captions go with it; the readable ones are stored."""
    from xmodal.index import collection as cmod

    files = []
    for name in ("ok.jpg", "bad.jpg", "ok2.jpg"):
        (tmp_path / name).write_bytes(name.encode())
        files.append(str(tmp_path / name))

    def encode(encoder, inputs):
        ok = np.array(["bad" not in str(x) for x in inputs])
        return np.ones((len(inputs), 4)) + np.arange(len(inputs))[:, None], ok

    coll._encoders["image"] = object()  # never called: encode_items is replaced
    monkeypatch.setattr(cmod, "encode_items", encode)
    rep = coll.add_items([ImageItem(os.path.basename(f), f, []) for f in files],
                         [TextItem("bad0", "caption of bad", "bad.jpg", []), TextItem("ok0", "caption of ok", "ok.jpg", [])],
                         text_features=np.ones((2, 4)))
    assert rep.skipped == [files[1]] and rep.added == 3 and coll.last_add is rep
    assert coll.id_of("bad.jpg") is None and coll.id_of("bad0") is None
    assert coll.id_of("ok.jpg") is not None and coll.id_of("ok2.jpg") is not None and coll.id_of("ok0") is not None


def test_an_image_named_in_another_encoding_is_skipped_with_its_captions(coll, tmp_path):
    odd = str(tmp_path) + "/caf\udce9.jpg"  # a Latin-1 file name as os.listdir gives it
    good = tmp_path / "fine.jpg"
    good.write_bytes(b"fine")
    rep = coll.add_items([ImageItem("caf\udce9.jpg", odd, []), ImageItem("fine.jpg", str(good), [])],
                         [TextItem("odd0", "its caption", "caf\udce9.jpg", []), TextItem("fine0", "ok", "fine.jpg", [])],
                         image_features=np.ones((2, 4)), text_features=np.ones((2, 4)))
    assert rep.skipped == [odd] and rep.added == 2
    assert coll.id_of("odd0") is None and coll.id_of("fine0") is not None


def test_a_reranking_collection_needs_float_projections_and_indexes_them(tmp_path):
    from xmodal import methods
    from xmodal.index.collection import _float_projection
    from xmodal.methods.checks import toy_dataset

    ds = toy_dataset(n_images=60)
    m = methods.create("cca_itq", bits=16).fit(ds.subset("train"))
    with Collection.create(tmp_path / "b", method=m, index="BHNSW16", rerank=True) as c:
        X = ds.image_features[:3]
        before = snapshot(c)
        with pytest.raises(DataError, match="fvecs"):
            c.add_vectors("image", ["i0", "i1", "i2"], m.encode_images(X))
        assert snapshot(c) == before
        F = _float_projection(m, "image", X)
        rep = c.add_vectors("image", ["i0", "i1", "i2"], m.encode_images(X), fvecs=F)
        got = c.indexes[("image", "rerank")].reconstruct(np.asarray(rep.ids))
        np.testing.assert_allclose(got, F / np.linalg.norm(F, axis=1, keepdims=True), atol=1e-5)
        assert {k[1] for k in c.indexes if k[0] == "image"} >= {"rerank"}


def test_a_handle_following_another_writer_holds_each_live_id_once(coll):
    """Two handles writing in turn (two processes, in effect): each catches up from where its
    own last write left it, so no index of either holds an id twice or misses one."""
    other = Collection.open(coll.path)
    try:
        for r in range(3):
            coll.add_vectors("image", [f"mine{r}.jpg"], np.ones((1, 4)) + r)
            other.add_vectors("image", [f"theirs{r}.jpg"], np.ones((1, 4)) - r)
            other.delete(keys=[f"mine{r}.jpg"])
            coll.add_vectors("image", [f"mine{r}.jpg"], np.ones((1, 4)) * 2)  # replaced in turn
            for c in (coll, other):
                c.refresh()
                live = sorted(r[0] for r in c.store.query("SELECT id FROM items"))
                for (mod, variant), idx in c.indexes.items():
                    ids = idx.ids().tolist()
                    assert len(ids) == len(set(ids)), (mod, variant)
                    want = sorted(r[0] for r in c.store.query("SELECT id FROM items WHERE modality = ?", (mod,)))
                    assert sorted(ids) == want and set(ids) <= set(live)
    finally:
        other.close()
