"""Properties of searching several collections as one (xmodal.index.shards), pinned by
mutation testing: the merge is exactly the top k of the union with deterministic ties, a
failing or slow shard is named while the others answer, labels count on any shard, shards of
another space or the same collection twice are refused, keys go to the shard they name.

Vectors-only collections stand in for indexed ones, and a RemoteShard whose ``_call``
answers from a local collection stands in for an ``xmodal serve`` (no sockets, so fast)."""

from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pytest

from xmodal.index import Collection, CollectionError, RemoteShard, ShardedCollection
from xmodal.index.shards import MAX_REMOTE_K, UnknownLabelError, check_labels, open_shards, shard_keys

DIM = 6


def _coll(path, n_img, n_txt, seed, image_labels=None, text_labels=None, texts=None, dim=DIM, vecs=None):
    rng = np.random.default_rng(seed)
    c = Collection.create(path, dim=dim)
    iv = rng.standard_normal((n_img, dim)).astype(np.float32) if vecs is None else vecs
    c.add_vectors("image", [f"{path.stem}/i{j}.jpg" for j in range(len(iv))], iv, labels=image_labels)
    tv = rng.standard_normal((n_txt, dim)).astype(np.float32) if vecs is None else vecs
    c.add_vectors("text", [f"{path.stem}/t{j}" for j in range(len(tv))], tv,
                  texts=texts or [f"{path.stem} caption {j}" for j in range(len(tv))], labels=text_labels)
    return c


class FakeRemote(RemoteShard):
    """A remote shard answering from a local collection, as `xmodal serve` would."""

    def __init__(self, coll, url, *, fail=None, delay=0.0, timeout=30.0, info=None, words=None, edit=None):
        super().__init__(url, timeout=timeout)
        self.coll, self.fail, self.delay, self.info, self.words = coll, fail, delay, info, words or {}
        self.edit = edit  # changes the answer's hits (as dicts), as a broken server would
        self.bodies, self.info_calls, self.closed = [], 0, 0

    def close(self):
        self.closed += 1
        super().close()

    def _call(self, path, body=None):
        if path == "/api/info":
            self.info_calls += 1
            if self.fail == "info":
                raise CollectionError(f"shard {self.url}: unreachable (test)")
            st = json.loads(json.dumps(self.coll.stats(), default=str))
            return {**st, **(self.info or {})}
        assert path == "/api/search"
        self.bodies.append(body)
        time.sleep(self.delay)
        if self.fail == "search":
            raise CollectionError(f"shard {self.url}: answered HTTP 500: boom")
        q = np.asarray(self.words[body["text"]] if "text" in body else body["vector"], dtype=np.float32)
        hits = self.coll.search_vector(q, body["target"], body["k"], labels=body["labels"] or None,
                                       exact=body["exact"], distinct=body["distinct"], check_labels=False)
        results = [h.to_dict() for h in hits]
        return {"results": self.edit(results) if self.edit else results}


def _oracle(shards, names, q, target, k, distinct=False):
    """Top k of the union: every shard's own top k ranked by score, ties by shard order then
    the shard's own rank (a shard's order among its equal scores is its own business)."""
    union = []
    for order, s in enumerate(shards):
        c = s.coll if isinstance(s, FakeRemote) else s
        for rank, h in enumerate(c.search_vector(q, target, k, exact=True)):
            union.append((-h.score, order, rank, names[order], h))
    union.sort(key=lambda t: t[:3])
    out, seen = [], set()
    for *_, name, h in union:
        if distinct and h.text in seen:
            continue
        seen.add(h.text)
        out.append((name, h.key))
    return out[:k]


def _got(hits):
    return [(h.shard, h.key) for h in hits]


@pytest.fixture
def three(tmp_path):
    cs = [_coll(tmp_path / f"s{i}.xmc", 5 + i, 4 + i, seed=i) for i in range(3)]
    yield cs
    for c in cs:
        c.close()


def test_the_merge_is_the_top_k_of_the_union_local_and_remote(three, tmp_path):
    rng = np.random.default_rng(7)
    remote_coll = _coll(tmp_path / "r.xmc", 6, 5, seed=9)
    remote = FakeRemote(remote_coll, "http://shard.test:1/")
    shards = [*three, remote]
    with ShardedCollection(shards) as sc:
        names = [str(c.path) for c in three] + ["http://shard.test:1"]
        assert sc.names == names and sc.local is three[0]
        total = {t: sum((c.coll if isinstance(c, FakeRemote) else c).count(t) for c in shards)
                 for t in ("image", "text")}
        for _ in range(4):
            q = rng.standard_normal(DIM).astype(np.float32)
            for target in ("image", "text"):
                for k in (1, 3, 7, total[target], total[target] + 5):
                    hits = sc.search_vector(q, target, k)
                    assert _got(hits) == _oracle(shards, names, q, target, k)
                    assert hits.failed == []
                    scores = [h.score for h in hits]
                    assert scores == sorted(scores, reverse=True)
                # k over the union: every item once
                assert len(sc.search_vector(q, target, total[target] + 5)) == total[target]
        # the remote shard was asked for the vector, k and target, its own collection only
        body = remote.bodies[-1]
        assert body["target"] == "text" and body["k"] == total["text"] + 5
        assert body["local_only"] is True and body["check_labels"] is False
        assert body["space"] == three[0].space and len(body["vector"]) == DIM
        st = sc.stats()
        assert st["images"] == total["image"] and st["texts"] == total["text"]
        assert [s["name"] for s in st["shards"]] == names and st["dim"] == DIM
        assert [s["images"] for s in st["shards"]] == [5, 6, 7, 6]
    remote_coll.close()


def test_k_over_a_servers_limit_is_cut_for_it_only(three, tmp_path):
    remote_coll = _coll(tmp_path / "r.xmc", 3, 3, seed=4)
    remote = FakeRemote(remote_coll, "http://shard.test:2")
    with ShardedCollection([three[0], remote]) as sc:
        hits = sc.search_vector(np.ones(DIM, np.float32), "image", MAX_REMOTE_K + 5)
        assert remote.bodies[-1]["k"] == MAX_REMOTE_K
        assert len(hits) == 5 + 3
    remote_coll.close()


def test_ties_go_by_shard_order_then_rank_and_distinct_keeps_the_first(tmp_path):
    vecs = np.eye(3, DIM, dtype=np.float32)[[0, 0, 1]]  # two equal vectors per shard
    texts = ["same words", "same words", "other words"]
    cs = [_coll(tmp_path / f"t{i}.xmc", 0, 0, seed=0, vecs=vecs, texts=texts) for i in range(3)]
    q = np.eye(1, DIM, dtype=np.float32)[0]
    for order in ([0, 1, 2], [2, 0, 1]):
        shards = [cs[i] for i in order]
        names = [f"n{i}" for i in order]
        with ShardedCollection(shards, names=names) as sc:
            for k in (1, 2, 4, 6, 9, 20):
                hits = sc.search_vector(q, "text", k)
                assert _got(hits) == _oracle(shards, names, q, "text", k)
                assert len(hits) == min(k, 9)
            # the six equal top scores: shard by shard in the order given, rank within each
            assert [h.shard for h in sc.search_vector(q, "image", 6)] == [n for n in names for _ in (0, 1)]
            d = sc.search_vector(q, "text", 5, distinct=True)
            assert [(h.shard, h.text) for h in d] == [(names[0], "same words"), (names[0], "other words")]
            assert _got(d) == _oracle(shards, names, q, "text", 5, distinct=True)
            assert [h.text for h in sc.search_vector(q, "text", 1, distinct=True)] == ["same words"]
            # distinct is about captions: images are never collapsed
            assert len(sc.search_vector(q, "image", 9, distinct=True)) == 9
    # a shard named "" (a routing server's own collection) leaves its hits' shard unset
    with ShardedCollection(cs[:2], names=["", "other"]) as sc:
        assert [h.shard for h in sc.search_vector(q, "image", 4)] == [None, None, "other", "other"]
    for c in cs:
        c.close()


def test_a_failing_or_slow_shard_is_named_and_the_others_still_answer(three, tmp_path):
    rc = [_coll(tmp_path / f"r{i}.xmc", 4, 4, seed=20 + i) for i in range(2)]
    bad = FakeRemote(rc[0], "http://bad.test:1")
    slow = FakeRemote(rc[1], "http://slow.test:1", timeout=0.5)
    q = np.arange(DIM, dtype=np.float32)
    with ShardedCollection([three[0], bad, three[1], slow]) as sc:
        names = sc.names
        healthy = [three[0], three[1]]
        bad.fail, slow.delay = "search", 4.0
        t0 = time.monotonic()
        hits = sc.search_vector(q, "image", 6, on_error="skip")
        # the slow one (4 s) is cut at its timeout (0.5 s), not waited for; a wide margin for a
        # loaded machine
        assert time.monotonic() - t0 < 3.0
        assert _got(hits) == _oracle(healthy, [names[0], names[2]], q, "image", 6)
        assert [n for n, _ in hits.failed] == ["http://bad.test:1", "http://slow.test:1"]
        assert "boom" in hits.failed[0][1]
        assert "timed out after 0.5 s" in hits.failed[1][1] and "http://slow.test:1" in hits.failed[1][1]
        with pytest.raises(CollectionError, match="boom"):
            sc.search_vector(q, "image", 6)  # on_error="raise", the default
        with pytest.raises(ValueError, match="on_error"):
            sc.search_vector(q, "image", 6, on_error="ignore")
        bad.fail, slow.delay = None, 0.0
        hits = sc.search_vector(q, "image", 6, on_error="skip")
        assert hits.failed == [] and _got(hits) == _oracle(sc.shards, names, q, "image", 6)
    for c in rc:
        c.close()


def test_a_local_shard_rebuilt_into_another_space_is_left_out(three, tmp_path):
    with ShardedCollection(three[:2]) as sc:
        sc.shards[1]._space = "rebuilt"  # as if rebuilt by another process meanwhile
        sc.shards[1].refresh = lambda: None
        q = np.ones(DIM, np.float32)
        hits = sc.search_vector(q, "image", 3, on_error="skip")
        assert [n for n, _ in hits.failed] == [str(three[1].path)]
        assert "its common space is now rebuilt" in hits.failed[0][1]
        assert {h.shard for h in hits} == {str(three[0].path)}
    three[1]._space = None
    del three[1].refresh


def test_only_remote_shards_send_the_text_and_no_image_query(tmp_path):
    rc = [_coll(tmp_path / f"r{i}.xmc", 4, 5, seed=30 + i) for i in range(2)]
    words = {"a query": np.arange(DIM, dtype=np.float32)}
    rs = [FakeRemote(c, f"http://r{i}.test:1", words=words) for i, c in enumerate(rc)]
    with ShardedCollection(rs) as sc:
        assert sc.local is None and sc.space == rc[0].space
        for target in ("image", "text"):
            hits = sc.search_text("a query", 4, target)
            assert _got(hits) == _oracle(rs, sc.names, words["a query"], target, 4)
            assert rs[1].bodies[-1]["text"] == "a query" and "vector" not in rs[1].bodies[-1]
        got = sc.search_texts(["a query", "a query"], 3, "text", distinct=True)
        assert [_got(g) for g in got] == [_oracle(rs, sc.names, words["a query"], "text", 3, True)] * 2
        assert rs[0].bodies[-1]["distinct"] is True
        with pytest.raises(CollectionError, match="image query needs a local shard"):
            sc.search_image(tmp_path / "x.jpg")
        # labels are checked across the shards for a batch as for one query
        rc[1].add_vectors("text", ["lab"], np.ones((1, DIM), np.float32), texts=["labelled"], labels=[["pier"]])
        assert [h.key for h in sc.search_texts(["a query"], 3, "text", labels=["pier"])[0]] == ["lab"]
        with pytest.raises(UnknownLabelError, match="no text item has the label 'nowhere'"):
            sc.search_texts(["a query"], 3, "text", labels=["nowhere"])
        with pytest.raises(UnknownLabelError, match="no image item has the label 'pier'"):
            sc.search_text("a query", 3, labels=["pier"])
    for c in rc:
        c.close()
    # the same caption on two shards: once with distinct, twice without; images never collapse
    rc = [_coll(tmp_path / f"d{i}.xmc", 3, 3, seed=60 + i, texts=["same"] * 3) for i in range(2)]
    rs = [FakeRemote(c, f"http://d{i}.test:1", words=words) for i, c in enumerate(rc)]
    with ShardedCollection(rs) as sc:
        assert [h.text for h in sc.search_text("a query", 4, "text")] == ["same"] * 4
        assert [h.text for h in sc.search_text("a query", 4, "text", distinct=True)] == ["same"]
        assert len(sc.search_text("a query", 4, "image", distinct=True)) == 4
        assert len(sc.search_text("a query", 4, "image")) == 4
    for c in rc:
        c.close()


def test_a_label_on_any_shard_counts_and_one_on_none_is_refused(tmp_path):
    a = _coll(tmp_path / "a.xmc", 2, 2, 1, image_labels=[["beach"], ["forest"]], text_labels=[["sea"], []])
    b = _coll(tmp_path / "b.xmc", 2, 2, 2, image_labels=[["quay"], []], text_labels=[["beach"], ["dock"]])
    r = _coll(tmp_path / "r.xmc", 2, 2, 3, image_labels=[["harbour"], []], text_labels=[["pier"], []])
    remote = FakeRemote(r, "http://r.test:1")
    q = np.ones(DIM, np.float32)
    with ShardedCollection([a, b, remote]) as sc:
        for target, ok in (("image", ["beach", "forest", "quay", "harbour"]), ("text", ["sea", "beach", "dock", "pier"])):
            for lab in ok:
                sc.check_labels([lab], target=target)
                hits = sc.search_vector(q, target, 10, labels=[lab])
                assert hits and all(lab in h.labels for h in hits)
            sc.check_labels(ok, target=target)  # all at once too
        sc.check_labels(["forest", "pier"])  # no target: any modality
        with pytest.raises(UnknownLabelError) as e:
            sc.search_vector(q, "image", 5, labels=["beach", "pier", "nowhere"])
        err = e.value
        assert err.unknown == ["pier", "nowhere"] and err.elsewhere == ["pier"]
        assert err.known == ["beach", "forest", "harbour", "quay"] and err.target == "image"
        assert "the shards: no image item has the label 'pier', 'nowhere'" in str(err)
        assert "'pier': on text items only" in str(err)
        with pytest.raises(UnknownLabelError, match=r"\(image items do\); text labels here: beach, dock, pier, sea"):
            sc.search_text("x", 5, "text", labels=["forest"])
        with pytest.raises(UnknownLabelError) as e:
            sc.check_labels(["nowhere"])
        assert e.value.known == ["beach", "dock", "forest", "harbour", "pier", "quay", "sea"]
        assert str(e.value).endswith("labels here: beach, dock, forest, harbour, pier, quay, sea")
        with pytest.raises(UnknownLabelError, match=r"labels here: beach, dock, \.\.\. \(7 in all\)$"):
            sc.check_labels(["nowhere"], show=2)
        with pytest.raises(UnknownLabelError, match=r"labels here: beach, dock, forest, harbour, pier, quay, sea$"):
            sc.check_labels(["nowhere"], show=7)  # all shown: no "in all"
        with pytest.raises(ValueError, match="target"):
            sc.check_labels(["beach"], target="audio")
        sc.search_vector(q, "image", 5, labels=["nowhere"], check_labels=False)  # not checked: no error
        assert sc.stats()["labels_by_target"] == {"image": ["beach", "forest", "harbour", "quay"],
                                                  "text": ["beach", "dock", "pier", "sea"]}
        assert sc.stats()["labels"] == ["beach", "dock", "forest", "harbour", "pier", "quay", "sea"]
    # one collection alone: named by its path
    with pytest.raises(UnknownLabelError, match=f"{a.path}: no text item has the label 'forest'"):
        check_labels(a, ["forest"], target="text")
    check_labels(a, ["forest"], target="image")
    # an error names the labels a remote shard has now, not ones it had when first seen
    moving = FakeRemote(r, "http://moving.test:1", info={"labels_by_target": {"image": ["gone"], "text": []}})
    moving.stats()
    moving.info = {"labels_by_target": {"image": ["now"], "text": []}, "labels": ["now"]}
    with pytest.raises(UnknownLabelError) as e:
        ShardedCollection.check_labels_of([moving], ["nowhere"], "x", target="image")
    assert e.value.known == ["now"]
    with pytest.raises(UnknownLabelError) as e:
        ShardedCollection.check_labels_of([moving], ["nowhere"], "x")
    assert e.value.known == ["now"]
    with pytest.raises(UnknownLabelError) as e:  # nor on its texts any more
        ShardedCollection.check_labels_of([moving], ["pier"], "x", target="image")
    assert e.value.unknown == ["pier"] and e.value.elsewhere == []
    # an older server's labels count for either modality in the shards' stats too
    with ShardedCollection([a, FakeRemote(r, "http://old.test:2", info={"labels_by_target": None})]) as sc:
        by = sc.stats()["labels_by_target"]
        assert {"harbour", "pier"} <= set(by["image"]) and {"harbour", "pier"} <= set(by["text"])
    # a remote shard that cannot be asked may hold the label: no error here
    down = FakeRemote(r, "http://down.test:1")
    down.fail = "info"
    ShardedCollection.check_labels_of([a, down], ["harbour"], "x", target="image")
    # an older server without labels_by_target: its labels count for either modality
    old = FakeRemote(r, "http://old.test:1", info={"labels_by_target": None})
    ShardedCollection.check_labels_of([a, old], ["pier"], "x", target="image")
    # a malformed labels_by_target (one modality not a list) is read as an older server's
    odd = FakeRemote(r, "http://odd.test:1", info={"labels_by_target": {"image": [], "text": "pier"}})
    odd.stats()
    ShardedCollection.check_labels_of([odd], ["pier"], "x", target="image")
    with pytest.raises(UnknownLabelError, match="no image item has the label 'nowhere'"):
        ShardedCollection.check_labels_of([a, old], ["nowhere"], "x", target="image")
    for c in (a, b, r):
        c.close()


def test_a_remote_shard_seen_with_a_label_is_not_asked_again(tmp_path):
    r = _coll(tmp_path / "r.xmc", 2, 2, 3, image_labels=[["harbour"], []], text_labels=[["pier"], []])
    remote = FakeRemote(r, "http://r.test:1")
    remote.stats()
    assert remote.labels_seen("image") == {"harbour"} and remote.labels_seen("text") == {"pier"}
    assert remote.labels_seen() == {"harbour", "pier"}
    remote.fail = "info"  # seen labels answer without a call
    calls = remote.info_calls
    ShardedCollection.check_labels_of([remote], ["harbour"], "x", target="image")
    ShardedCollection.check_labels_of([remote], ["pier"], "x", target="text")
    assert remote.info_calls == calls
    local = _coll(tmp_path / "l.xmc", 1, 1, 4, image_labels=[["beach"]])
    calls = remote.info_calls
    ShardedCollection.check_labels_of([local, remote], ["beach"], "x", target="image")
    assert remote.info_calls == calls  # found on the local shard: the remote one is not asked
    local.close()
    ShardedCollection.check_labels_of([remote], ["harbour"], "x", target="image")
    ShardedCollection.check_labels_of([remote], ["pier"], "x", target="text")
    r.close()


def test_shards_of_another_space_or_the_same_collection_twice_are_refused(three, tmp_path):
    other = _coll(tmp_path / "o.xmc", 2, 2, 5, dim=DIM + 2)
    with pytest.raises(CollectionError, match=rf"shard {other.path} does not share the common space of "
                                              rf"shard {three[0].path} \(dim {DIM + 2} vs {DIM}\)"):
        ShardedCollection([three[0], other])
    with pytest.raises(CollectionError, match="does not share the common space"):
        ShardedCollection([three[0], three[1], FakeRemote(other, "http://o.test:1")])
    with pytest.raises(CollectionError, match="does not share the common space"):
        ShardedCollection([three[0], FakeRemote(three[1], "http://x.test:1", info={"space": None})])
    with pytest.raises(CollectionError, match=rf"shards {three[1].path} and {three[1].path} are one collection"):
        ShardedCollection([three[0], three[1], three[1]])
    shutil.copytree(three[2].path, tmp_path / "copy.xmc")
    copy = Collection.open(tmp_path / "copy.xmc")
    with pytest.raises(CollectionError, match=rf"shards {three[2].path} and {copy.path} are one collection"):
        ShardedCollection([three[0], three[2], copy])
    with pytest.raises(CollectionError, match="this server's own collection and x are one collection"):
        ShardedCollection([three[2], copy], names=["", "x"])
    # the copy written to is another collection from then on
    copy.add_vectors("image", ["extra"], np.ones((1, DIM), np.float32))
    with ShardedCollection([three[2], copy]) as sc:
        assert len(sc.shards) == 2
    # shards that do not tell their identity (older servers) are not called the same
    with ShardedCollection([three[0], FakeRemote(three[1], "http://a.test:1", info={"db_id": None}),
                            FakeRemote(three[1], "http://b.test:1", info={"db_id": None})]) as sc:
        assert len(sc.search_vector(np.ones(DIM, np.float32), "image", 100)) == 5 + 6 + 6
    # a refused set of shards closes the remote shards' connections it was given
    r1 = FakeRemote(other, "http://o.test:2")
    with pytest.raises(CollectionError, match="does not share the common space"):
        ShardedCollection([three[0], r1])
    assert r1.closed == 1
    with pytest.raises(CollectionError, match="no shards"):
        ShardedCollection([])
    with pytest.raises(CollectionError, match="one name per shard"):
        ShardedCollection(three, names=["a", "b"])
    copy.close()
    other.close()


def test_keys_go_to_the_shard_they_name():
    urls = ["http://a:1", "http://b:2/", "https://c:3"]
    assert shard_keys(urls, None) == [None] * 3
    assert shard_keys(urls, ()) == [None] * 3
    assert shard_keys(urls, "xmk_key") == ["xmk_key"] * 3
    assert shard_keys(urls, ["http://b:2=kb"]) == [None, "kb", None]
    assert shard_keys(urls, ["http://b:2/=kb", "kp"]) == ["kp", "kb", "kp"]
    assert shard_keys(urls, {"http://a:1/": "ka", "https://c:3": "kc"}) == ["ka", None, "kc"]
    assert shard_keys(urls, ["kp", ""]) == ["kp"] * 3
    assert shard_keys(urls, "http://b:2=kb") == [None, "kb", None]  # an empty entry is no key
    # a key with '=' in it is a plain key unless what precedes is an http(s) URL
    assert shard_keys(urls, ["xmk_a=b"]) == ["xmk_a=b"] * 3
    with pytest.raises(CollectionError, match="api_key: 2 keys without a shard URL"):
        shard_keys(urls, ["k1", "k2"])
    with pytest.raises(CollectionError, match=r"opt: http://z:9=\.\.\. names no shard given \(shards: http://a:1, "):
        shard_keys(urls, ["http://z:9=kz"], option="opt")
    with pytest.raises(CollectionError, match=r"names no shard given \(shards: none\)"):
        shard_keys([], {"http://z:9": "kz"})


def test_open_shards_closes_what_it_opened(three, tmp_path, monkeypatch):
    paths = [c.path for c in three[:2]]
    with open_shards(paths) as sc:
        assert [str(p) for p in paths] == sc.names
        owned = list(sc._owned)
        assert len(owned) == 2 and all(c is not t for c, t in zip(owned, three))
    assert sc._owned == []
    for c in owned:  # closed with the shards
        with pytest.raises(Exception, match="closed"):
            c.count()
    opened = []
    real_open = Collection.open
    monkeypatch.setattr(Collection, "open", lambda p, *a, **kw: opened.append(real_open(p, *a, **kw)) or opened[-1])
    with pytest.raises(CollectionError, match="same generation"):
        open_shards([paths[0], paths[0]])
    assert len(opened) == 2
    for c in opened:  # refused: nothing left open
        with pytest.raises(Exception, match="closed"):
            c.count()


BAD_HITS = [
    ({"score": True}, "score"), ({"score": "0.5"}, "score"), ({"score": float("inf")}, "score"),
    ({"id": True}, "id"), ({"id": 1.0}, "id"), ({"modality": "audio"}, "modality"),
    ({"modality": "text"}, "modality"), ({"key": None}, "key"), ({"pair_id": True}, "pair_id"),
    ({"pair_id": "3"}, "pair_id"), ({"labels": "beach"}, "labels"), ({"labels": ["a", 3]}, "labels"),
    ({"path": 3}, "path"), ({"text": ["x"]}, "text"), ({"caption": 1}, "caption"),
]


def test_a_remote_hit_of_the_wrong_type_fails_its_shard_by_name(three, tmp_path):
    rc = _coll(tmp_path / "r.xmc", 3, 3, seed=40)
    remote = FakeRemote(rc, "http://odd.test:1")
    with ShardedCollection([three[0], remote]) as sc:
        for change, field in BAD_HITS:
            remote.edit = lambda hits: [hits[0], {**hits[1], **change}, *hits[2:]]  # noqa: B023
            hits = sc.search_vector(np.ones(DIM, np.float32), "image", 4, on_error="skip")
            assert [h.shard for h in hits] == [str(three[0].path)] * 4, change
            (name, why), = hits.failed
            assert name == "http://odd.test:1" and f"results[1].{field}:" in why, (change, why)
    rc.close()


def test_remote_hits_are_checked_and_scores_made_floats(three, tmp_path):
    rc = _coll(tmp_path / "r.xmc", 3, 3, seed=41, image_labels=[["x"], [], []])
    edit = lambda hits: [{**h, "score": int(round(h["score"])), "pair_id": 5, "caption": "c"} for h in hits]  # noqa: E731
    remote = FakeRemote(rc, "http://ok.test:1", edit=edit)
    assert remote.space == rc.space  # asked of a shard not yet asked anything: fetched
    hits = remote.search({"vector": [1.0] * DIM, "target": "image", "k": 3, "labels": [], "exact": False,
                          "distinct": False})
    assert len(hits) == 3 and all(type(h.score) is float and h.pair_id == 5 and h.caption == "c" for h in hits)
    with pytest.raises(CollectionError, match="no results list"):
        FakeRemote(rc, "http://ok.test:1", edit=lambda hits: None).search(
            {"vector": [1.0] * DIM, "target": "image", "k": 3, "labels": [], "exact": False, "distinct": False})
    rc.close()


def test_the_space_is_the_local_encoders_one_and_close_does_not_wait_for_a_hung_shard(three, tmp_path):
    rc = _coll(tmp_path / "r.xmc", 3, 3, seed=50)
    remote = FakeRemote(rc, "http://r.test:1", timeout=0.3)
    with ShardedCollection([remote, three[0]]) as sc:
        assert sc.local is three[0]
        three[0]._space = "rebuilt"  # queries are encoded by the local shard: its space goes along
        three[0].refresh = lambda: None
        try:
            assert sc.space == "rebuilt"
            sc.search_vector(np.ones(DIM, np.float32), "image", 2, on_error="skip")
            assert remote.bodies[-1]["space"] == "rebuilt"
        finally:
            three[0]._space = None
            del three[0].refresh
    sc = ShardedCollection([three[0], remote])
    remote.delay = 3.0
    hits = sc.search_vector(np.ones(DIM, np.float32), "image", 2, on_error="skip")
    assert [n for n, _ in hits.failed] == ["http://r.test:1"]
    t0, closes = time.monotonic(), remote.closed
    sc.close()
    # the hung call (3 s) is left behind, not waited for; a wide margin for a loaded machine
    assert time.monotonic() - t0 < 2.5
    assert remote.closed == closes + 1
    rc.close()


def test_hung_remote_shards_cost_one_timeout_together_and_never_hold_up_local_ones(three, tmp_path):
    rc = _coll(tmp_path / "r.xmc", 3, 3, seed=70)
    hung = [FakeRemote(rc, f"http://h{i}.test:1", timeout=0.6, delay=3.0, info={"db_id": None}) for i in range(5)]
    sc = ShardedCollection([hung[0], three[0], *hung[1:]])
    q = np.ones(DIM, np.float32)
    t0 = time.monotonic()
    hits = sc.search_vector(q, "image", 3, on_error="skip")
    took = time.monotonic() - t0
    assert _got(hits) == _oracle([three[0]], [sc.names[1]], q, "image", 3)
    assert [n for n, _ in hits.failed] == [h.url for h in hung]
    # waited in parallel: about one timeout (0.6 s), not one per hung shard (3 s); the margin is
    # wide so that a loaded machine does not fail it
    assert took < 2.0, took
    sc.close()
    rc.close()


def test_labels_are_checked_once_before_a_batch_of_image_queries_is_encoded(three, tmp_path):
    with ShardedCollection(three[:2]) as sc:
        with pytest.raises(UnknownLabelError, match="no text item has the label 'nowhere'"):
            sc.search_images([tmp_path / "x.jpg"], labels=["nowhere"])
        with pytest.raises(CollectionError, match="no image encoder"):  # a label there is: then encoded
            sc.search_images([tmp_path / "x.jpg"], labels=[])
        # one image query too: the label was checked only after the image was encoded, so an
        # encoder's error came first
        with pytest.raises(UnknownLabelError, match="no text item has the label 'nowhere'"):
            sc.search_image(tmp_path / "x.jpg", labels=["nowhere"])
