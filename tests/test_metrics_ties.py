"""Tie handling, one shared ranking per query chunk, non-finite scores, and the conventions for
queries without ground truth (the metrics review of session 10)."""

import numpy as np
import pytest

from xmodal import methods
from xmodal.data import PairedDataset, one_hot
from xmodal.evaluation import evaluate
from xmodal.evaluation.protocol import _direction
from xmodal.metrics import (average_precision, first_hit_rank, hamming_pr_curve, ndcg_at_k, pr_curve,
                            precision_at_k, precision_within_radius, recall_at_k)


def _reference(keys, R, G, perm=None, map_k=(5, 40), pk=(1, 10, 40), ndcg_k=10, levels=11):
    """Per-query loop: rank by ``keys`` ascending (stable) after putting the database in the
    order ``perm`` (None: database order), then each metric by its textbook formula."""
    n_q, n_db = R.shape
    perm = np.arange(n_db) if perm is None else perm
    out = {"ap": [], "first": [], "ndcg": [], "pr": [], **{f"ap@{k}": [] for k in map_k},
           **{f"p@{k}": [] for k in pk}}
    for i in range(n_q):
        order = perm[np.argsort(keys[i][perm], kind="stable")]
        rel = R[i][order]
        pos = np.flatnonzero(rel) + 1.0
        out["ap"].append(np.mean(np.arange(1, len(pos) + 1) / pos) if len(pos) else 0.0)
        for k in map_k:
            p = pos[pos <= k]
            out[f"ap@{k}"].append(np.mean(np.arange(1, len(p) + 1) / p) if len(p) else 0.0)
        for k in pk:
            out[f"p@{k}"].append(rel[:k].mean())
        out["first"].append(pos[0] - 1 if len(pos) else np.inf)
        g = G[i][order][:ndcg_k]
        ideal = np.sort(G[i])[::-1][:ndcg_k]
        disc = 1 / np.log2(np.arange(2, len(g) + 2))
        idcg = ((2 ** ideal - 1) * disc).sum()
        out["ndcg"].append(((2 ** g - 1) * disc).sum() / idcg if idcg > 0 else 0.0)
        if len(pos):
            prec = np.arange(1, len(pos) + 1) / pos
            rec = np.arange(1, len(pos) + 1) / len(pos)
            out["pr"].append([max([1.0 * (lv <= 1e-12 and rel[0])] + [p for p, r in zip(prec, rec) if r >= lv - 1e-12])
                              for lv in np.linspace(0, 1, levels)])
    return {k: np.array(v, dtype=float) for k, v in out.items()}


def _check_all(keys, R, G, perm, **kw):
    ref = _reference(keys, R, G, perm)
    arg = {"distances": keys} if np.issubdtype(keys.dtype, np.integer) else {"scores": -keys}
    np.testing.assert_allclose(average_precision(relevant=R, **arg, **kw), ref["ap"], rtol=0, atol=1e-12)
    for k in (5, 40):
        np.testing.assert_allclose(average_precision(relevant=R, k=k, **arg, **kw), ref[f"ap@{k}"], rtol=0, atol=1e-12)
    for k in (1, 10, 40):
        assert precision_at_k(relevant=R, k=k, **arg, **kw) == pytest.approx(ref[f"p@{k}"].mean(), abs=1e-12)
    np.testing.assert_array_equal(first_hit_rank(relevant=R, **arg, **kw), ref["first"])
    assert ndcg_at_k(gains=G, k=10, **arg, **kw) == pytest.approx(ref["ndcg"].mean(), abs=1e-12)
    np.testing.assert_allclose(pr_curve(relevant=R, **arg, **kw)["precision"], ref["pr"].mean(0), rtol=0, atol=1e-12)


def test_untied_rankings_give_the_textbook_values_whatever_the_tie_seed():
    rng = np.random.default_rng(0)
    S = rng.normal(size=(37, 300))
    R = rng.random((37, 300)) < 0.1
    R[3] = False
    G = rng.integers(0, 3, size=(37, 300)).astype(float)
    for kw in ({}, {"tie_seed": None}, {"tie_seed": 7}):
        _check_all(-S, R, G, None, **kw)


def test_ties_follow_one_fixed_permutation_of_the_database_shared_by_every_metric():
    rng = np.random.default_rng(1)
    D = rng.integers(0, 5, size=(300, 400))  # 4-bit-like distances: heavy ties
    R = rng.random((300, 400)) < 0.2
    G = rng.integers(0, 3, size=(300, 400)).astype(float)
    _check_all(D, R, G, np.random.default_rng(0).permutation(400))
    _check_all(D, R, G, np.random.default_rng(3).permutation(400), tie_seed=3)
    _check_all(D, R, G, None, tie_seed=None)  # database order, as FAISS's IndexBinaryFlat


def test_a_database_sorted_by_class_does_not_inflate_tied_rankings():
    # every query is of class 0 and the database is sorted by class, so in database order the
    # relevant items lead every tie group
    rng = np.random.default_rng(2)
    n_db = 600
    db_class = np.sort(rng.integers(0, 4, n_db))
    D = rng.integers(0, 3, size=(200, n_db))
    D[:, db_class == 0] = np.maximum(D[:, db_class == 0] - (rng.random((200, (db_class == 0).sum())) < 0.3), 0)
    R = np.broadcast_to(db_class == 0, D.shape)
    orders = [np.random.default_rng(100 + s).permutation(n_db) for s in range(40)]
    rand = np.array([average_precision(distances=D[:, p], relevant=R[:, p], tie_seed=None).mean() for p in orders])
    stable = average_precision(distances=D, relevant=R, tie_seed=None).mean()
    ours = average_precision(distances=D, relevant=R).mean()
    assert abs(stable - rand.mean()) > 20 * rand.std()
    assert abs(ours - rand.mean()) < 4 * rand.std()
    for k in (1, 10):
        rp = np.mean([precision_at_k(distances=D[:, p], relevant=R[:, p], k=k, tie_seed=None) for p in orders])
        assert precision_at_k(distances=D, relevant=R, k=k) == pytest.approx(rp, abs=0.05)
        assert precision_at_k(distances=D, relevant=R, k=k, tie_seed=None) == 1.0


def test_direction_matches_the_per_query_reference_with_and_without_ties():
    rng = np.random.default_rng(3)
    bits = 8
    D = rng.integers(0, bits + 1, size=(300, 500)).astype(np.int32)
    R = rng.random((300, 500)) < 0.15
    R[:4] = False
    G = R * rng.integers(1, 3, size=R.shape).astype(np.float32)
    perm = np.random.default_rng(0).permutation(500)
    ref = _reference(D, R, G, perm, map_k=(50, 100), pk=(1, 5, 10, 50, 100))
    out = _direction(None, -D.astype(np.float64), D, R, G, None, bits, (50, 100), (1, 5, 10, 50, 100), (),
                     per_query=True)
    assert out["map"] == pytest.approx(ref["ap"].mean(), abs=1e-12)
    np.testing.assert_allclose(out["per_query"]["ap"], ref["ap"], rtol=0, atol=1e-12)
    for k in (50, 100):
        assert out[f"map@{k}"] == pytest.approx(ref[f"ap@{k}"].mean(), abs=1e-12)
    for k in (1, 5, 10, 50, 100):
        assert out[f"p@{k}"] == pytest.approx(ref[f"p@{k}"].mean(), abs=1e-12)
    assert out["ndcg@10"] == pytest.approx(ref["ndcg"].mean(), abs=1e-12)
    np.testing.assert_allclose(out["pr_curve"]["precision"], ref["pr"].mean(0), rtol=0, atol=1e-12)
    keep = R.any(1)
    for r in range(bits + 1):
        ret = D[keep] <= r
        hits = (ret & R[keep]).sum(1)
        assert out["hamming_pr_curve"]["precision"][r] == pytest.approx(
            np.where(ret.sum(1) > 0, hits / np.maximum(ret.sum(1), 1), 0).mean(), abs=1e-12)
        assert out["hamming_pr_curve"]["recall"][r] == pytest.approx((hits / R[keep].sum(1)).mean(), abs=1e-12)
    within = D <= 2
    assert out["p@r2"] == pytest.approx(np.where(within.sum(1) > 0, (within & R).sum(1) / np.maximum(within.sum(1), 1), 0).mean())
    # the same numbers from scores alone (a method with its own score(): one float sort)
    again = _direction(None, -D.astype(np.float64), None, R, G, None, bits, (50, 100), (1, 5, 10, 50, 100), ())
    for key in ("map", "map@50", "p@10", "ndcg@10"):
        assert again[key] == pytest.approx(out[key], abs=1e-12)


def test_both_pr_curves_leave_out_queries_without_a_relevant_item():
    rng = np.random.default_rng(4)
    D = rng.integers(0, 7, size=(30, 90))
    R = rng.random((30, 90)) < 0.2
    R[[2, 11]] = False
    keep = R.any(1)
    for a, b in ((hamming_pr_curve(D, R, 6), hamming_pr_curve(D[keep], R[keep], 6)),
                 (pr_curve(distances=D, relevant=R), pr_curve(distances=D[keep], relevant=R[keep]))):
        np.testing.assert_allclose(a["precision"], b["precision"], rtol=0, atol=1e-12)
        np.testing.assert_allclose(a.get("recall"), b.get("recall"), rtol=0, atol=1e-12)
    # MAP and P@r2 still count such queries as 0 (DCMH calc_map, SDH/KSH evaluate_macro)
    assert average_precision(distances=D, relevant=R)[2] == 0.0
    assert precision_within_radius(D, R, 6) < precision_within_radius(D[keep], R[keep], 6)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_scores_are_refused_naming_the_queries(bad):
    rng = np.random.default_rng(5)
    S = rng.normal(size=(600, 40))
    S[[1, 300, 599], 3] = bad
    R = rng.random((600, 40)) < 0.3
    for call in (lambda: average_precision(S, R), lambda: precision_at_k(S, R, 5), lambda: ndcg_at_k(S, R * 1.0, 5),
                 lambda: recall_at_k(S, R, (1,)), lambda: pr_curve(S, R), lambda: first_hit_rank(S, R)):
        with pytest.raises(ValueError, match="3 of 600 queries"):
            call()


class _Diverged(methods.CrossModalMethod):
    output = "real"

    def fit(self, data, val=None):
        return self

    def encode_images(self, X):
        return np.full((len(X), 4), np.nan)

    def encode_texts(self, X):
        return np.ones((len(X), 4))


def _captions(n_images=12, seed=0, drop=(3,)):
    rng = np.random.default_rng(seed)
    t2i = np.array([i for i in range(n_images) if i not in drop for _ in range(2)])
    z = rng.normal(size=(n_images, 6))
    return PairedDataset(name="toy", n_images=n_images, text_to_image=t2i,
                         image_features=z + 0.3 * rng.normal(size=z.shape),
                         text_features=z[t2i] + 0.3 * rng.normal(size=(len(t2i), 6)),
                         labels=one_hot(np.arange(n_images) % 3, 3),
                         splits={"train": np.arange(n_images), "test": np.arange(n_images)})


def test_a_diverged_method_is_refused_with_the_direction_and_count():
    ds = _captions()
    with pytest.raises(ValueError, match=r"i2t.*12 of 12 queries"):
        evaluate(_Diverged(), ds)


def test_images_without_a_caption_are_left_out_of_image_to_text_recall():
    S = np.array([[0.9, 0.1, 0.5], [0.2, 0.8, 0.1], [0.3, 0.2, 0.1]])
    inst = np.array([[1, 0, 0], [0, 0, 1], [0, 0, 0]], bool)  # image 2 has no caption
    assert recall_at_k(S, inst, (1, 3)) == {1: 0.5, 3: 1.0}
    assert first_hit_rank(S, inst)[2] == np.inf
    ds = _captions(drop=(3, 7))
    m = methods.create("cca", n_components=4).fit(ds)
    res = evaluate(m, ds, per_query=True)
    hits = res["i2t"]["per_query"]["r@1"]
    assert len(hits) == ds.n_images - 2  # one entry per image with a caption, in image order
    assert res["i2t"]["r@1"] == pytest.approx(100 * np.mean(hits))
    assert len(res["i2t"]["per_query"]["ap"]) == ds.n_images  # class relevance: every image


def test_evaluate_block_by_block_equals_the_full_matrices():
    # more queries than one block (CHUNK = 256): scores, relevance and gains are built per block
    ds = _captions(n_images=300, drop=(5,))
    for name, kw in (("cca", {"n_components": 4}), ("lsh", {"bits": 8, "random_state": 0})):
        m = methods.create(name, **kw).fit(ds)
        res = evaluate(m, ds, map_k=(50,), per_query=True)
        qi, qt = m.encode_images(ds.image_features), m.encode_texts(ds.text_features)
        from xmodal.evaluation.protocol import similarity
        from xmodal.metrics import graded_relevance, relevance
        for d, Q, D, ql, dl in (("i2t", qi, qt, ds.labels, ds.text_labels), ("t2i", qt, qi, ds.text_labels, ds.labels)):
            S, dist = similarity(m, Q, D)
            t2i, images = ds.text_to_image, np.arange(ds.n_images)
            inst = images[:, None] == t2i[None, :] if d == "i2t" else t2i[:, None] == images[None, :]
            full = _direction(m, S, dist, relevance(ql, dl), graded_relevance(ql, dl), inst, getattr(m, "bits", None),
                              (50,), (1, 5, 10, 50, 100), (1, 5, 10), per_query=True)
            assert set(full) == set(res[d])
            for key, v in full.items():
                if isinstance(v, float):
                    assert res[d][key] == pytest.approx(v, abs=1e-12), (name, d, key)
            assert res[d]["per_query"] == full["per_query"]
            assert res[d]["r@10"] == pytest.approx(100 * recall_at_k(S, inst, (10,))[10])


def test_evaluate_computes_only_what_it_is_asked_for():
    ds = _captions(n_images=40)
    m = methods.create("cca", n_components=4).fit(ds)
    full = evaluate(m, ds)
    lean = evaluate(m, ds, pk=(), ndcg_k=(), curves=False)
    for d in ("i2t", "t2i"):
        assert set(lean[d]) == {"map", "r@1", "r@5", "r@10"}
        for key in lean[d]:
            assert lean[d][key] == full[d][key]
    assert lean["mR"] == full["mR"]


@pytest.mark.parametrize("tie_seed", [0, None])
def test_top_k_ranking_without_a_full_sort_is_the_full_rankings_head(tie_seed):
    from xmodal.metrics.ranking import _rank
    rng = np.random.default_rng(6)
    for keys in (rng.integers(0, 6, size=(50, 1000)).astype(np.int16), rng.integers(0, 60, size=(50, 1000)),
                 rng.normal(size=(50, 1000)), np.round(rng.normal(size=(50, 1000)), 1)):
        full = _rank(keys, tie_seed)
        for k in (1, 7, 100, 249, 600):
            np.testing.assert_array_equal(_rank(keys, tie_seed, k), full[:, :k])


def test_an_empty_database_is_refused_clearly():
    # precision@k indexed the k-th column of an empty ranking (IndexError)
    import pytest

    from xmodal.metrics import precision_at_k, recall_at_k

    with pytest.raises(ValueError, match="database is empty"):
        precision_at_k(np.zeros((2, 0)), np.zeros((2, 0), dtype=bool), 5)
    with pytest.raises(ValueError, match="database is empty"):
        recall_at_k(np.zeros((2, 0)), np.zeros((2, 0), dtype=bool), (1,))


def test_direction_without_any_relevant_item_gives_zero_curves():
    # every query lacks a relevant item: both curves leave them all out and are 0, not NaN
    D = np.array([[0, 1, 2], [2, 1, 0]])
    R = np.zeros((2, 3), bool)
    out = _direction(None, -D.astype(np.float64), D, R, R * 1.0, None, 2, (), (1,), ())
    assert out["pr_curve"] == {"recall": pytest.approx(np.linspace(0, 1, 11).tolist()), "precision": [0.0] * 11}
    assert out["hamming_pr_curve"] == {"radius": [0, 1, 2], "precision": [0.0] * 3, "recall": [0.0] * 3}
    assert out["map"] == 0.0 and out["p@1"] == 0.0
