"""A batch of queries (``Collection.search_texts`` / ``search_images``, ``xmodal search
--queries``) is one FAISS search, with the same hit lists as the queries one at a time."""

from __future__ import annotations

import numpy as np
import pytest

from xmodal.index import Collection
from xmodal.index.vector import VectorIndex
from conftest import DATA, need


@pytest.fixture(params=["Flat", "HNSW16"])
def coll(request, tmp_path):
    rng = np.random.default_rng(0)
    c = Collection.create(tmp_path / "c.xmc", dim=8, index=request.param)
    n = 300
    c.add_vectors("text", [f"t{i}" for i in range(n)], rng.normal(size=(n, 8)).astype(np.float32),
                  texts=[f"text {i}" for i in range(n)], labels=[["odd" if i % 2 else "even"] for i in range(n)])
    Q = rng.normal(size=(25, 8)).astype(np.float32)
    Q /= np.linalg.norm(Q, axis=1, keepdims=True)
    # the queries' "encoding" is the rows themselves: the batch path is what is tested here
    c.encode_query_texts = lambda texts: (Q[:len(texts)], None)
    yield c, Q
    c.close()


def _calls(monkeypatch) -> list[int]:
    seen: list[int] = []
    search = VectorIndex.search

    def counted(self, queries, k, *a, **kw):
        seen.append(len(np.atleast_2d(queries)))
        return search(self, queries, k, *a, **kw)

    monkeypatch.setattr(VectorIndex, "search", counted)
    return seen


@pytest.mark.parametrize("options", [{}, {"labels": ["odd"]}, {"exact": True}])
def test_a_batch_is_one_search_with_the_single_query_answers(coll, monkeypatch, options):
    c, Q = coll
    single = [c.search_vector(q, "text", 7, **options) for q in Q]
    seen = _calls(monkeypatch)
    batch = c.search_texts(["q"] * len(Q), k=7, target="text", **options)
    assert seen == [len(Q)]  # one search for the whole batch
    assert len(batch) == len(Q)
    for got, ref in zip(batch, single):
        assert [h.key for h in got] == [h.key for h in ref]
        np.testing.assert_allclose([h.score for h in got], [h.score for h in ref], atol=1e-5)
    if options.get("labels"):
        assert all(h.labels == ["odd"] for hits in batch for h in hits)


def test_per_query_options_still_answer_one_query_at_a_time(coll, monkeypatch):
    c, Q = coll
    seen = _calls(monkeypatch)
    batch = c.search_texts(["q"] * 3, k=5, target="text", distinct=True)
    assert len(batch) == 3 and len(seen) == 3
    ref = c.search_vector(Q[1], "text", 5, exclude=[batch[1][0].id])
    assert [h.key for h in c.search_texts(["q"] * 3, k=5, target="text", exclude=[batch[1][0].id])[1]] \
        == [h.key for h in ref]
    with pytest.raises(TypeError):  # a misspelt option is not silently ignored by the batch path
        c.search_texts(["q"] * 3, k=5, target="text", lables=["odd"])


def test_ids_to_exclude_may_be_an_array(coll):
    """``exclude`` is a sequence of ids, a NumPy array too: the batch path tested its truth value,
    a ValueError for two ids or more."""
    c, Q = coll
    first = [hits[0].id for hits in c.search_texts(["q"] * 3, k=5, target="text")]
    for ids in (np.array(first[:2]), np.array(first[:1]), np.array([], dtype=np.int64)):
        batch = c.search_texts(["q"] * 3, k=5, target="text", exclude=ids)
        for r in range(3):
            ref = c.search_vector(Q[r], "text", 5, exclude=list(ids))
            assert [h.key for h in batch[r]] == [h.key for h in ref]
            assert not {h.id for h in batch[r]} & set(ids.tolist())
    # relevance feedback's ids too (Rocchio tested their truth value: a ValueError for two)
    ids = np.array(first[:2])
    batch = c.search_texts(["q"] * 3, k=5, target="text", relevant=ids, nonrelevant=ids[1:])
    for r in range(3):
        ref = c.search_vector(Q[r], "text", 5, relevant=list(ids), nonrelevant=list(ids[1:]))
        assert [h.key for h in batch[r]] == [h.key for h in ref]


def test_a_binary_batch_reranks_each_query_as_alone(tmp_path, monkeypatch):
    from xmodal import methods
    from xmodal.index.collection import _float_projection
    from xmodal.methods.checks import toy_dataset

    ds = toy_dataset(n_images=150)
    m = methods.create("cca_itq", bits=16).fit(ds.subset("train"))
    c = Collection.create(tmp_path / "b.xmc", method=m, index="BHNSW16", rerank=True)
    T = ds.text_features
    c.add_vectors("text", [f"t{i}" for i in range(len(T))], m.encode_texts(T),
                  texts=[f"text {i}" for i in range(len(T))], fvecs=_float_projection(m, "text", T))
    X = ds.image_features[:12]
    Q, FQ = m.encode_images(X), _float_projection(m, "image", X)
    c.encode_query_texts = lambda texts: (Q, FQ)
    single = [c.search_vector(Q[r], "text", 5, fq=FQ[r:r + 1], rerank=4) for r in range(len(Q))]
    seen = _calls(monkeypatch)
    batch = c.search_texts(["q"] * len(Q), k=5, target="text")
    assert seen[0] == len(Q)  # the Hamming shortlist of every query in one search
    for got, ref in zip(batch, single):
        assert [h.key for h in got] == [h.key for h in ref]
        np.testing.assert_allclose([h.score for h in got], [h.score for h in ref], atol=1e-5)
    c.close()


def _per_row(c: Collection, S: np.ndarray, I: np.ndarray) -> list[list]:
    """The hit lists as the per-row code read them: one ``get_items`` per row."""
    out = []
    for s_row, i_row in zip(S, I):
        ok = i_row >= 0
        items = c.get_items(i_row[ok].tolist())
        hits = []
        for s, i in zip(s_row[ok], i_row[ok]):
            h = items.get(int(i))
            if h is not None:
                h.score = float(s)
                hits.append(h)
        out.append(hits)
    return out


def _item_selects(c: Collection) -> list[str]:
    seen: list[str] = []
    c.store.conn.set_trace_callback(seen.append)
    return seen


@pytest.fixture(scope="module")
def wiki_collection(tmp_path_factory):
    """2,866 Wikipedia texts in CCA's common space, with their category labels."""
    need("wikipedia")
    from xmodal import methods
    from xmodal.data import load_dataset

    ds = load_dataset("wikipedia", data_dir=str(DATA), with_texts=False)
    m = methods.create("cca").fit(ds.subset("train"))
    c = Collection.create(tmp_path_factory.mktemp("wiki") / "w.xmc", method=m, index="Flat")
    T = ds.text_features
    names = [ds.label_names[int(j)] for j in np.argmax(ds.text_labels, axis=1)]
    c.add_vectors("text", [f"t{i}" for i in range(len(T))], m.encode_texts(T),
                  texts=[f"text {i}" for i in range(len(T))], labels=[[n] for n in names])
    test = ds.subset("test")
    Q = m.encode_images(test.image_features[:60])
    yield c, Q, sorted(set(names))
    c.close()


@pytest.mark.parametrize("options", [{}, {"labels": "rare"}, {"exact": True}])
def test_a_batch_reads_its_items_in_one_statement_with_the_same_hits(wiki_collection, options):
    c, Q, names = wiki_collection
    if options.get("labels"):  # one category: a query asking for 10 of only so many gets -1 rows
        options = {"labels": [names[0]]}
    c.encode_query_texts = lambda texts: (Q[:len(texts)], None)
    single = [c.search_vector(q, "text", 10, **options) for q in Q]
    seen = _item_selects(c)
    try:
        batch = c.search_texts(["q"] * len(Q), k=10, target="text", **options)
    finally:
        c.store.conn.set_trace_callback(None)
    items = [s for s in seen if "FROM items WHERE id IN" in s]
    assert len(items) == 1, f"{len(items)} item lookups for {len(Q)} queries"
    assert len(batch) == len(Q)
    for got, ref in zip(batch, single):
        assert [h.to_dict() for h in got] == [h.to_dict() for h in ref]
    # the same items answer several queries: each query has its own Hit with its own score
    ids = [h.id for hits in batch for h in hits]
    assert len(set(ids)) < len(ids)
    assert len({id(h) for hits in batch for h in hits}) == len(ids)


def test_hit_rows_keep_every_edge_case_of_the_row_by_row_reading(wiki_collection):
    c, Q, _ = wiki_collection
    S, I = c.search_vectors(Q[:6], "text", 8, check_labels=False)
    S, I = S.copy(), I.copy()
    I[0, 5:] = -1                      # a short FAISS answer
    I[1, :] = -1                       # nothing at all
    I[2, 3] = 10 ** 9                  # an item deleted since the index was loaded
    I[3, :4] = I[4, :4]                # the same items in two rows, other scores
    I[5, 2] = I[5, 0]                  # the same item twice in one row (the last score wins)
    rows = c._hit_rows(S, I)
    ref = _per_row(c, S, I)
    assert [[h.to_dict() for h in r] for r in rows] == [[h.to_dict() for h in r] for r in ref]
    assert [len(r) for r in rows] == [5, 0, 7, 8, 8, 8]
    assert rows[5][0] is rows[5][2] and rows[3][0] is not rows[4][0]
    assert rows[3][0].score == pytest.approx(float(S[3, 0])) and rows[4][0].score == pytest.approx(float(S[4, 0]))
    # many rows at once: the ids go in chunks within SQLite's variable limit, still few statements
    big_S, big_I = np.repeat(S, 400, axis=0), np.repeat(I, 400, axis=0)
    big_I[::7] = np.arange(big_I[::7].size).reshape(big_I[::7].shape) % 2866 + 1
    seen = _item_selects(c)
    try:
        got = c._hit_rows(big_S, big_I)
    finally:
        c.store.conn.set_trace_callback(None)
    assert sum("FROM items WHERE id IN" in s for s in seen) <= 4
    assert [[h.to_dict() for h in r] for r in got] == [[h.to_dict() for h in r] for r in _per_row(c, big_S, big_I)]
    # one row, as search_vector asks
    assert [h.to_dict() for h in c._hit_rows(S[:1], I[:1])[0]] == [h.to_dict() for h in ref[0]]
