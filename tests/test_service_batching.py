"""`xmodal serve` under load: text queries that arrive together while the
encoder is busy are encoded as one batch (benchmarks/serve_load.py measured them queueing one
by one behind the encoder lock), with the same results as one at a time."""

import asyncio
import threading
import time

import httpx
import pytest

from xmodal.data.dataset import DataError
from xmodal.encoders import get_encoder
from xmodal.index import Collection
from xmodal.index.collection import TextItem
from xmodal.service import create_app

WORDS = ["river", "planes", "runway", "beach", "forest", "harbour", "tennis", "court", "road", "trees"]


@pytest.fixture()
def coll(tmp_path):
    texts = [f"{a} near the {b}" for a in WORDS for b in WORDS if a != b]
    enc = get_encoder("bow", "text").fit(texts, progress=False)
    c = Collection.create(tmp_path / "c.xmc", dim=enc.dim, text_encoder=enc)
    c.add_items(texts=[TextItem(f"t{i}", t) for i, t in enumerate(texts)])
    yield c
    c.close()


def _search_all(app, queries):
    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            rs = await asyncio.gather(*(client.get("/api/search", params={"q": q, "k": 5, "target": "text"})
                                        for q in queries))
        return rs
    return asyncio.run(go())


def test_concurrent_text_queries_are_encoded_together_with_the_same_hits(coll, monkeypatch):
    queries = [f"{w} and {v}" for w, v in zip(WORDS, WORDS[1:] + WORDS[:1])]
    alone = {q: [(h.id, round(h.score, 5)) for h in coll.search_text(q, 5, "text")] for q in queries}
    sizes, real = [], coll.encode_query_texts
    first = threading.Event()

    def slow_batch(texts):
        sizes.append(len(texts))
        if not first.is_set():  # the first query holds the encoder while the others arrive
            first.set()
            time.sleep(0.3)
        return real(texts)

    monkeypatch.setattr(coll, "encode_query_texts", slow_batch)
    monkeypatch.setattr(coll, "encode_query_text", lambda text: slow_batch([text]))
    rs = _search_all(create_app(coll), queries)
    assert [r.status_code for r in rs] == [200] * len(queries)
    for q, r in zip(queries, rs):
        assert [(h["id"], round(h["score"], 5)) for h in r.json()["results"]] == alone[q], q
    assert sum(sizes) == len(queries)  # every query encoded once
    assert len(sizes) < len(queries) and max(sizes) > 1, sizes  # the waiting ones together


def test_a_query_the_encoder_refuses_fails_alone(coll, monkeypatch):
    """One bad query in a batch fails with its own error (400, as alone); the others are answered."""
    real = coll.encode_query_texts
    first = threading.Event()

    def real_search(q):
        return coll.search_text(q, 5, "text")

    def picky(texts):
        if not first.is_set():
            first.set()
            time.sleep(0.3)
        if any("poison" in t for t in texts):
            raise DataError("query poison: the encoder cannot read it")
        return real(texts)

    monkeypatch.setattr(coll, "encode_query_texts", picky)
    monkeypatch.setattr(coll, "encode_query_text", lambda text: picky([text]))
    queries = ["river first", "planes", "poison", "beach", "forest"]
    rs = _search_all(create_app(coll), queries)
    codes = {q: r.status_code for q, r in zip(queries, rs)}
    assert codes["poison"] == 400 and "poison" in rs[2].json()["detail"]
    assert all(c == 200 for q, c in codes.items() if q != "poison"), codes
    got = {q: [h["id"] for h in r.json()["results"]] for q, r in zip(queries, rs) if q != "poison"}
    for q, ids in got.items():
        assert ids == [h.id for h in real_search(q)], q
