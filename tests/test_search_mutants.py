"""Properties of the search engine's query path (``xmodal.index.collection_search``) that
mutation testing found unpinned: Rocchio's update term by term (Rocchio 1971; Manning, Raghavan
& Schuetze, *Introduction to Information Retrieval*, ch. 9), label filters, distinct texts,
exact vs approximate indexes, float re-ranking of a Hamming shortlist, ranking order and k.
Every expected answer is computed here by brute force from the stored vectors."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from xmodal.index import Collection


def unit(v: np.ndarray) -> np.ndarray:
    v = np.atleast_2d(np.asarray(v, dtype=np.float64))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def brute(V: np.ndarray, q: np.ndarray, pool: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(ids 1-based as added, cosine scores) of every row of ``V`` (or of ``pool``), best first."""
    s = (unit(V) @ unit(q)[0])
    idx = np.arange(len(V)) if pool is None else np.asarray(pool)
    order = idx[np.argsort(-s[idx], kind="stable")]
    return order, s[order]


@pytest.fixture
def real(tmp_path):
    """40 texts and 40 images in an 8-d real space; labels a/b/c/d by i % 4 (texts only 'a'..'c'
    and 'd' on images only); the texts repeat 10 captions."""
    rng = np.random.default_rng(7)
    T = rng.normal(size=(40, 8)).astype(np.float32)
    X = rng.normal(size=(40, 8)).astype(np.float32)
    c = Collection.create(tmp_path / "r.xmc", dim=8, index="HNSW16")
    c.add_vectors("text", [f"t{i}" for i in range(40)], T, texts=[f"caption {i % 10}" for i in range(40)],
                  labels=[["abc"[i % 3]] for i in range(40)])
    c.add_vectors("image", [f"i{i}" for i in range(40)], X, labels=[["abcd"[i % 4]] for i in range(40)])
    yield c, T, X, _ids(c, "t", 40), _ids(c, "i", 40)
    c.close()


def _ids(c: Collection, prefix: str, n: int) -> np.ndarray:
    return np.array([c.id_of(f"{prefix}{i}") for i in range(n)])


# ------------------------------------------------------------------ Rocchio
def test_rocchio_defaults_are_the_search_feedback_defaults():
    from xmodal.index.collection_search import SearchMixin

    r = inspect.signature(SearchMixin.rocchio).parameters
    fb = inspect.signature(SearchMixin.search_vector).parameters["feedback"].default
    assert (r["a"].default, r["b"].default, r["c"].default) == fb == (1.0, 0.75, 0.25)


@pytest.mark.parametrize("a,b,c,rel,non", [
    (0.9, 0.6, 0.3, [1, 2], [3, 4]),   # every term
    (0.7, 0.5, 0.2, [5, 6, 7], []),    # relevant only: no nonrelevant term
    (0.8, 0.4, 0.6, [], [8, 9]),       # nonrelevant only
    (0.0, 1.0, 0.0, [10, 11], [12]),   # alpha 0: the query itself drops out
])
def test_real_rocchio_is_alpha_q_plus_beta_mean_relevant_minus_gamma_mean_nonrelevant(real, a, b, c, rel, non):
    coll, T, _, tids, _ = real
    rng = np.random.default_rng(1)
    q = rng.normal(size=8).astype(np.float32) * 3  # not unit: Rocchio starts from the unit query
    R, N = [tids[i] for i in rel], [tids[i] for i in non]
    new_q, new_fq = coll.rocchio(q[None], R, N, a, b, c)
    want = a * unit(q)[0]
    if rel:
        want = want + b * unit(T[rel]).mean(axis=0)
    if non:
        want = want - c * unit(T[non]).mean(axis=0)
    np.testing.assert_allclose(new_q[0], unit(want)[0], atol=1e-5)
    assert new_fq is None  # a real collection has no float projections
    # the search itself uses the updated query
    hits = coll.search_vector(q, "text", 5, exact=True, relevant=R, nonrelevant=N, feedback=(a, b, c))
    assert [h.id for h in hits] == list(tids[brute(T, want)[0][:5]])


def test_rocchio_without_feedback_returns_the_query_unchanged(real):
    coll, *_ = real
    q = np.arange(8, dtype=np.float32)[None] + 1
    assert coll.rocchio(q, [], [])[0] is q
    assert coll.rocchio(q, None, None)[0] is q


@pytest.fixture
def binary(tmp_path):
    """A 16-bit binary collection of hand-made codes (no float projections)."""
    rng = np.random.default_rng(2)
    codes = rng.integers(0, 256, size=(30, 2), dtype=np.uint8)
    c = Collection.create(tmp_path / "b.xmc", output="binary", dim=16)
    c.add_vectors("image", [f"i{i}" for i in range(30)], codes)
    yield c, codes, _ids(c, "i", 30)
    c.close()


def pm(codes: np.ndarray) -> np.ndarray:
    return np.unpackbits(np.atleast_2d(codes).astype(np.uint8), axis=1).astype(float) * 2 - 1


def signs(v: np.ndarray, q: np.ndarray) -> np.ndarray:
    """The bits of sign(v), a zero keeping the query's bit."""
    return np.where(v == 0, pm(q) > 0, v > 0).astype(np.uint8)


@pytest.mark.parametrize("a,b,c,rel,non", [
    (1.0, 0.75, 0.25, [3], [4]),
    (0.5, 1.0, 0.0, [5, 6], []),   # two relevant outvote the query where they agree
    (0.5, 0.0, 1.0, [], [7]),      # the nonrelevant code, inverted, outvotes the query
    (1.0, 0.75, 0.6, [8, 9, 10], [11, 12]),
])
def test_binary_rocchio_is_the_sign_of_the_update_on_plus_minus_one_codes(binary, a, b, c, rel, non):
    coll, codes, ids = binary
    q = codes[0:1]
    new_q, _ = coll.rocchio(q, list(ids[rel]), list(ids[non]), a, b, c)
    v = a * pm(q)[0]
    if rel:
        v = v + b * pm(codes[rel]).mean(axis=0)
    if non:
        v = v - c * pm(codes[non]).mean(axis=0)
    assert new_q.dtype == np.uint8
    np.testing.assert_array_equal(np.unpackbits(new_q[0]), signs(v, q)[0])
    if (a, b, c) == (0.5, 0.0, 1.0):  # the opposite of the nonrelevant code, bit for bit
        np.testing.assert_array_equal(new_q[0], ~codes[7])



def test_binary_rocchio_does_not_depend_on_the_codes_polarity(binary, tmp_path):
    """Complementing every stored code and the query complements the updated query: a bit whose
    feedback exactly cancels the query (1 - 0.75 - 0.25 = 0 with the default weights) keeps
    the query's bit, whichever of 0 / 1 that is (sign(0) read as 0 turned every such 1 into 0)."""
    coll, codes, ids = binary
    q = np.array([[0b11110000, 0b10100101]], np.uint8)
    codes = codes.copy()
    codes[1], codes[2] = ~q[0], q[0]  # relevant: the opposite of the query; nonrelevant: the query
    with Collection.create(tmp_path / "t.xmc", output="binary", dim=16) as tie, \
            Collection.create(tmp_path / "n.xmc", output="binary", dim=16) as neg:
        tie.add_vectors("image", [f"i{i}" for i in range(30)], codes)
        neg.add_vectors("image", [f"i{i}" for i in range(30)], ~codes)
        t_ids, n_ids = _ids(tie, "i", 30), _ids(neg, "i", 30)
        for rel, non in [([1], [2]), ([1, 3], [2, 4]), ([5], [6, 7])]:
            new, _ = tie.rocchio(q, list(t_ids[rel]), list(t_ids[non]))
            new_neg, _ = neg.rocchio(~q, list(n_ids[rel]), list(n_ids[non]))
            np.testing.assert_array_equal(new_neg, ~new)
        new, _ = tie.rocchio(q, [t_ids[1]], [t_ids[2]])
        np.testing.assert_array_equal(new, q)  # every bit a tie: the query stays as it was

# ------------------------------------------------------------------ labels
@pytest.mark.parametrize("exact", [False, True])
def test_a_label_filter_returns_the_best_k_items_with_any_of_the_labels(real, exact):
    coll, T, X, tids, iids = real
    q = np.random.default_rng(3).normal(size=8)
    pool = [i for i in range(40) if "abcd"[i % 4] in ("b", "d")]
    hits = coll.search_vector(q, "image", 7, labels=["b", "d"], exact=exact)
    assert len(hits) == 7 and all(set(h.labels) & {"b", "d"} for h in hits)
    order, scores = brute(X, q, pool)
    assert [h.id for h in hits] == list(iids[order[:7]])
    np.testing.assert_allclose([h.score for h in hits], scores[:7], atol=1e-5)
    # more asked than carry the label: every one of them, none without it
    d = coll.search_vector(q, "image", 30, labels=["d"])
    assert sorted(h.id for h in d) == sorted(iids[[i for i in range(40) if i % 4 == 3]])


# ------------------------------------------------------------------ distinct
def test_distinct_keeps_each_texts_best_scored_hit_in_ranking_order(tmp_path):
    """200 texts, 40 captions each five times, the repeats close together: the first k hits
    hold few distinct captions, so the search must fetch deeper."""
    rng = np.random.default_rng(4)
    centres = rng.normal(size=(40, 8))
    V = (np.repeat(centres, 5, axis=0) + 0.05 * rng.normal(size=(200, 8))).astype(np.float32)
    texts = [f"caption {i // 5}" for i in range(200)]
    with Collection.create(tmp_path / "d.xmc", dim=8) as c:
        c.add_vectors("text", [f"t{i}" for i in range(200)], V, texts=texts)
        ids = _ids(c, "t", 200)
        q = centres[3] + 0.3 * rng.normal(size=8)
        order, scores = brute(V, q)
        first, seen = [], set()
        for i in order:
            if texts[i] not in seen:
                seen.add(texts[i])
                first.append(i)
        for k in (3, 12, 40, 50):
            got = c.search_vector(q, "text", k, distinct=True)
            assert [h.id for h in got] == list(ids[first[:k]])
            assert len({h.text for h in got}) == len(got) == min(k, 40)
            assert [h.score for h in got] == sorted((h.score for h in got), reverse=True)
        # asked for more distinct texts than exist: all of them, best first
        assert [h.id for h in c.search_vector(q, "text", 1000, distinct=True)] == list(ids[first])
        # images are never collapsed: distinct only concerns texts
        c.add_vectors("image", [f"i{i}" for i in range(10)], V[:10])
        assert len(c.search_vector(q, "image", 10, distinct=True)) == 10


def test_distinct_stops_at_the_deepest_fetch_of_ten_thousand(tmp_path):
    """10,001 copies of one text and k=2: one distinct text exists; the search deepens its fetch
    up to 10,000 hits and stops there instead of asking for 10,000 again and again."""
    V = np.random.default_rng(9).normal(size=(10001, 4)).astype(np.float32)
    with Collection.create(tmp_path / "s.xmc", dim=4) as c:
        c.add_vectors("text", [f"t{i}" for i in range(len(V))], V, texts=["same"] * len(V))
        hits = c.search_vector(V[0], "text", 2, distinct=True)
        assert [h.key for h in hits] == ["t0"]


# ------------------------------------------------------------------ exact, approximate, k, order
def test_exact_and_approximate_agree_on_a_small_collection_sorted_by_cosine(real):
    coll, T, X, tids, iids = real
    q = np.random.default_rng(5).normal(size=8)
    exact = coll.search_vector(q, "text", 10, exact=True)
    approx = coll.search_vector(q, "text", 10)
    order, scores = brute(T, q)
    assert [h.id for h in exact] == [h.id for h in approx] == list(tids[order[:10]])
    np.testing.assert_allclose([h.score for h in approx], scores[:10], atol=1e-5)
    assert all(h.modality == "text" for h in approx)
    # k beyond the collection: all of the target modality, still best first
    every = coll.search_vector(q, "image", 500)
    assert [h.id for h in every] == list(iids[brute(X, q)[0]])
    S, I = coll.search_vectors(q[None].astype(np.float32), "image", 10000)
    assert (I[0] >= 0).sum() == 40


@pytest.mark.parametrize("k", [0, 10001])
def test_k_outside_one_to_ten_thousand_is_refused(real, k):
    coll, *_ = real
    with pytest.raises(ValueError, match="k must be in 1..10000"):
        coll.search_vectors(np.ones((1, 8), np.float32), "text", k)


def test_excluded_ids_leave_k_others_in_order(real):
    coll, T, X, tids, iids = real
    q = np.random.default_rng(6).normal(size=8)
    order = brute(X, q)[0]
    drop = list(iids[order[[0, 2, 5]]])
    for exact in (True, False):
        hits = coll.search_vector(q, "image", 8, exclude=drop, exact=exact)
        want = [i for i in iids[order] if i not in drop][:8]
        assert [h.id for h in hits] == want
    # more like this: the item's own vector, itself left out
    j = int(order[0])
    own = coll.search_item(int(iids[j]), k=5, exact=True)
    assert [h.id for h in own] == list(iids[[i for i in brute(X, X[j])[0] if i != j][:5]])


# ------------------------------------------------------------------ re-ranking
@pytest.fixture(scope="module")
def hashed(tmp_path_factory):
    """A 16-bit CCA-ITQ collection of toy texts with their float projections stored."""
    from xmodal import methods
    from xmodal.index.encoding import _float_projection
    from xmodal.methods.checks import toy_dataset

    ds = toy_dataset(n_images=120)
    m = methods.create("cca_itq", bits=16).fit(ds.subset("train"))
    c = Collection.create(tmp_path_factory.mktemp("h") / "h.xmc", method=m, rerank=True)
    T = ds.text_features
    F = _float_projection(m, "text", T)
    c.add_vectors("text", [f"t{i}" for i in range(len(T))], m.encode_texts(T),
                  texts=[f"text {i}" for i in range(len(T))], fvecs=F)
    X = ds.image_features[:6]
    yield c, m, T, F, _ids(c, "t", len(T)), m.encode_images(X), _float_projection(m, "image", X)
    c.close()


def test_float_rerank_reorders_the_hamming_shortlist_by_cosine(hashed):
    c, m, T, F, ids, Q, FQ = hashed
    for r in range(len(Q)):
        k, times = 5, 3
        _, short = c.search_vectors(Q[r:r + 1], "text", k * times, exact=True)  # Hamming shortlist
        rows = np.array([int(np.flatnonzero(ids == i)[0]) for i in short[0]])
        cos = unit(F[rows]) @ unit(FQ[r])[0]
        best = np.argsort(-cos, kind="stable")[:k]
        S, I = c.search_vectors(Q[r:r + 1], "text", k, exact=True, fq=FQ[r:r + 1], rerank=times)
        np.testing.assert_allclose(S[0], cos[best], atol=1e-5)
        assert list(I[0]) == list(short[0][best])
        assert list(S[0]) == sorted(S[0], reverse=True)
        # the hits of search_vector are the same, and without fq the Hamming order stays
        hits = c.search_vector(Q[r], "text", k, exact=True, fq=FQ[r:r + 1], rerank=times)
        assert [h.id for h in hits] == list(I[0])
        S0, I0 = c.search_vectors(Q[r:r + 1], "text", k, exact=True, rerank=times)
        assert list(I0[0]) == list(short[0][:k])
    # Rocchio on the float projections too, term by term (then re-ranked by cosine: scale is free)
    rel, non = [0, 1], [2, 3, 4]
    a, b, g = 0.9, 0.6, 0.35
    new_q, new_fq = c.rocchio(Q[:1], list(ids[rel]), list(ids[non]), a, b, g, fq=FQ[:1])
    want = a * unit(FQ[0]) + b * unit(F[rel]).mean(axis=0) - g * unit(F[non]).mean(axis=0)
    np.testing.assert_allclose(unit(new_fq), unit(want), atol=1e-5)
    v = a * pm(Q[:1]) + b * pm(m.encode_texts(T[rel])).mean(axis=0) - g * pm(m.encode_texts(T[non])).mean(axis=0)
    np.testing.assert_array_equal(np.unpackbits(new_q, axis=1), signs(v, Q[:1]))
    # only nonrelevant marks: the projection's update has no relevant term
    _, only_non = c.rocchio(Q[:1], [], list(ids[non]), a, b, g, fq=FQ[:1])
    np.testing.assert_allclose(unit(only_non), unit(a * unit(FQ[0]) - g * unit(F[non]).mean(axis=0)), atol=1e-5)
    # a query without a projection (a code given as it is) is updated alone, and searched by Hamming
    q2, fq2 = c.rocchio(Q[:1], list(ids[rel]), [], a, b, g)
    assert fq2 is None and q2.shape == Q[:1].shape


def test_queries_rerank_by_default_each_with_its_own_float_projection(hashed, monkeypatch):
    c, m, T, F, ids, Q, FQ = hashed

    def alone(r: int, k: int) -> list[int]:
        return [h.id for h in c.search_vector(Q[r], "text", k, fq=FQ[r:r + 1], rerank=4)]

    monkeypatch.setattr(c, "encode_query_text", lambda text: (Q[2:3], FQ[2:3]))
    hits = c.search_text("q", target="text")  # k defaults to 10
    assert [h.id for h in hits] == alone(2, 10)
    monkeypatch.setattr(c, "encode_query_texts", lambda texts: (Q[:len(texts)], FQ[:len(texts)]))
    # a per-query option answers query by query: each with its own row of projections
    rows = c.search_texts(["a", "b", "c"], k=5, target="text", distinct=True)
    assert [[h.id for h in hits] for hits in rows] == [alone(r, 5) for r in range(3)]
    assert [[h.id for h in hits] for hits in c.search_texts(["a", "b"], k=5, target="text")] == \
        [alone(r, 5) for r in range(2)]
    # more like this: the item's stored code and projection, re-ranked alike, itself left out
    j = int(ids[0])
    code, fv = c.item_vectors([j])
    want = c.search_vector(code[0], "text", 10, fq=fv, rerank=4, exclude=[j])
    assert [h.id for h in c.search_item(j)] == [h.id for h in want] and j not in {h.id for h in want}


def test_the_approximate_index_answers_unless_exact_or_a_label_filter(real, monkeypatch):
    from xmodal.index.vector import VectorIndex

    coll, *_ = real
    used: list[bool] = []
    search = VectorIndex.search

    def spy(self, *a, **kw):
        used.append(self is coll.indexes[("text", "approx")])
        return search(self, *a, **kw)

    monkeypatch.setattr(VectorIndex, "search", spy)
    q = np.ones((1, 8), np.float32)
    for kw, approx in [({}, True), ({"exact": True}, False), ({"labels": ["a"]}, False)]:
        used.clear()
        coll.search_vectors(q, "text", 5, **kw)
        assert used[0] is approx, kw
    monkeypatch.setattr(coll, "encode_query_texts", lambda texts: (np.ones((len(texts), 8), np.float32), None))
    used.clear()
    coll.search_texts(["a", "b"], k=3, target="text")  # one batch search, approximate too
    assert used == [True]


def test_a_hash_index_short_answer_is_topped_up_row_by_row(tmp_path):
    """A multi-hash index finds only codes sharing a sub-code: a batch with one query it answers
    fully and one it answers short gets k hits for both, the exact ones; a 1-d query too."""
    rng = np.random.default_rng(8)
    codes = rng.integers(0, 256, size=(60, 4), dtype=np.uint8)
    codes[:10, :2] = codes[7, :2]  # ten codes share a 16-bit sub-code with item 7
    with Collection.create(tmp_path / "h.xmc", output="binary", dim=32, index="BHash2x16") as c:
        c.add_vectors("image", [f"i{j}" for j in range(60)], codes)
        far = rng.integers(0, 256, size=4, dtype=np.uint8)
        Q = np.stack([codes[7], far])
        _, raw = c.indexes[("image", "approx")].search(Q, 6)
        assert (raw[0] >= 0).sum() == 6 and (raw[1] >= 0).sum() < 6  # the case under test
        S, I = c.search_vectors(Q, "image", 6)
        Se, Ie = c.search_vectors(Q, "image", 6, exact=True)
        assert (I >= 0).all() and I[0, 0] == c.id_of("i7")
        np.testing.assert_array_equal(S, Se)  # ties may come in another order: the scores agree
        S1, I1 = c.search_vectors(far, "image", 6)
        np.testing.assert_array_equal(S1[0], Se[1])


def test_an_unchecked_label_no_item_has_answers_nothing_rather_than_refusing(real, monkeypatch):
    """``check_labels=False`` (a sharded search: the label is on another shard) is honoured by
    the single, the batch and the per-query paths: no hits here, no error."""
    coll, *_ = real
    monkeypatch.setattr(coll, "encode_query_texts", lambda texts: (np.ones((len(texts), 8), np.float32), None))
    q = np.ones(8, np.float32)
    assert coll.search_vector(q, "text", 3, labels=["zzz"], check_labels=False) == []
    assert coll.search_texts(["a", "b"], k=3, target="text", labels=["zzz"], check_labels=False) == [[], []]
    assert coll.search_texts(["a", "b"], k=3, target="text", labels=["zzz"], check_labels=False,
                             distinct=True) == [[], []]
    from xmodal.index.shards import UnknownLabelError

    with pytest.raises(UnknownLabelError):
        coll.search_texts(["a", "b"], k=3, target="text", labels=["zzz"])
