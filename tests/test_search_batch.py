"""A batch of queries (``Collection.search_texts`` / ``search_images``, ``xmodal search
--queries``) is one FAISS search, with the same hit lists as the queries one at a time."""

from __future__ import annotations

import numpy as np
import pytest

from xmodal.index import Collection
from xmodal.index.vector import VectorIndex


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
