import numpy as np
import pytest
from sklearn.metrics import average_precision_score, ndcg_score

from xmodal.metrics import distance
from xmodal.metrics import (average_precision, first_hit_rank, hamming_distance, hamming_pr_curve,
                            mean_average_precision, ndcg_at_k, pr_curve, precision_at_k,
                            precision_within_radius, recall_at_k, relevance)
from xmodal.data import PairedDataset, one_hot
from xmodal.evaluation import evaluate
from xmodal.methods.base import CrossModalMethod


def test_ap_hand_computed():
    # ranking: rel, non, rel, non -> AP = (1/1 + 2/3) / 2
    scores = np.array([[0.9, 0.8, 0.7, 0.6]])
    rel = np.array([[1, 0, 1, 0]], bool)
    assert average_precision(scores, rel)[0] == pytest.approx((1 + 2 / 3) / 2)
    # @2: only the first relevant is retrieved -> precision 1 over 1 retrieved relevant
    assert average_precision(scores, rel, k=2)[0] == pytest.approx(1.0)
    assert precision_at_k(scores, rel, 2) == pytest.approx(0.5)


def test_ap_matches_sklearn():
    rng = np.random.default_rng(0)
    S = rng.normal(size=(40, 300))
    R = rng.random((40, 300)) < 0.2
    ours = average_precision(S, R)
    ref = [average_precision_score(R[i], S[i]) for i in range(40)]
    np.testing.assert_allclose(ours, ref, rtol=1e-10)


def test_no_relevant_counts_zero_and_no_n_plus_10_bug():
    S = np.array([[0.3, 0.2, 0.1], [0.3, 0.2, 0.1]])
    R = np.array([[0, 0, 0], [1, 1, 1]], bool)
    assert mean_average_precision(S, R) == pytest.approx(0.5)


def test_distances_rank_ascending():
    D = np.array([[3, 0, 1]])
    R = np.array([[0, 1, 0]], bool)
    assert average_precision(distances=D, relevant=R)[0] == 1.0


def test_relevance_single_and_multi_label():
    q = np.array([[1, 0, 0], [0, 1, 1]])
    d = np.array([[1, 0, 0], [0, 0, 1], [0, 1, 0]])
    np.testing.assert_array_equal(relevance(q, d), [[1, 0, 0], [0, 1, 1]])
    np.testing.assert_array_equal(relevance(np.array([0, 2]), np.array([2, 0, 0])), [[0, 1, 1], [1, 0, 0]])
    # numpy's own matmul error would also be a ValueError: the message is the check
    with pytest.raises(ValueError, match=r"label matrices must agree in columns, got \(2, 3\) and \(2, 4\)"):
        relevance(q, np.ones((2, 4)))
    # class indices on one side and a label matrix on the other: refused, never broadcast
    from xmodal.metrics import graded_relevance
    for f in (relevance, graded_relevance):
        with pytest.raises(ValueError, match="agree in columns"):
            f(np.array([0, 2]), d)
        with pytest.raises(ValueError, match="agree in columns"):
            f(q, np.array([2, 0, 0]))


def test_recall_one_to_many():
    # query 0's relevant items are 1 and 2; the first of them is ranked 2nd
    S = np.array([[0.9, 0.8, 0.1], [0.1, 0.2, 0.9]])
    R = np.array([[0, 1, 1], [1, 0, 0]], bool)
    rec = recall_at_k(S, R, ks=(1, 2, 3))
    assert rec == {1: 0.0, 2: 0.5, 3: 1.0}


def test_ndcg_matches_sklearn_binary_gain():
    rng = np.random.default_rng(1)
    S = rng.normal(size=(10, 50))
    G = rng.integers(0, 2, size=(10, 50)).astype(float)  # 2^g - 1 == g for 0/1 gains
    for k in (10, 49, 50):  # 49: the partial selection of the ideal ranking's top k at its edge
        assert ndcg_at_k(S, G, k) == pytest.approx(np.mean([ndcg_score(G[i:i + 1], S[i:i + 1], k=k) for i in range(10)]))


def test_pr_curve_perfect_and_monotone():
    S = np.array([[4.0, 3, 2, 1]])
    R = np.array([[1, 1, 0, 0]], bool)
    curve = pr_curve(S, R, n_points=5)
    assert curve["precision"] == pytest.approx([1, 1, 1, 1, 1])
    rng = np.random.default_rng(2)
    c = pr_curve(rng.normal(size=(20, 100)), rng.random((20, 100)) < 0.3)
    assert all(a >= b - 1e-12 for a, b in zip(c["precision"], c["precision"][1:]))


def test_hamming_distance_and_radius_precision(monkeypatch):
    rng = np.random.default_rng(3)
    Q = rng.integers(0, 256, (7, 8), dtype=np.uint8)
    D = rng.integers(0, 256, (9, 8), dtype=np.uint8)
    ref = np.array([[bin(int.from_bytes((q ^ d).tobytes(), "big")).count("1") for d in D] for q in Q])
    np.testing.assert_array_equal(hamming_distance(Q, D), ref)
    odd = hamming_distance(Q[:, :3], D[:, :3])  # non-multiple-of-8 bytes path
    assert odd.max() <= 24
    np.testing.assert_array_equal(odd, ref_odd := np.array(
        [[bin(int.from_bytes((q ^ d).tobytes(), "big")).count("1") for d in D[:, :3]] for q in Q[:, :3]]))
    # the NumPy fallback (no FAISS) gives the same matrices
    monkeypatch.setattr(distance, "_faiss", None)
    np.testing.assert_array_equal(hamming_distance(Q, D), ref)
    np.testing.assert_array_equal(hamming_distance(Q[:, :3], D[:, :3]), ref_odd)
    dist = np.array([[0, 1, 2, 5], [3, 4, 5, 6]])
    rel = np.array([[1, 0, 1, 1], [1, 1, 1, 1]], bool)
    # query 0: 3 within radius 2, 2 relevant; query 1: none retrieved -> 0
    assert precision_within_radius(dist, rel, 2) == pytest.approx((2 / 3) / 2)
    curve = hamming_pr_curve(dist, rel, bits=6)
    assert curve["recall"][-1] == pytest.approx(1.0)
    assert curve["precision"][2] == pytest.approx((2 / 3) / 2)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match=r"scores \(2, 3\) and relevance \(2, 4\) differ in shape"):
        average_precision(np.zeros((2, 3)), np.zeros((2, 4), bool))


def _calc_map_k_reference(dist, gnd_all, k=None):
    """Per-query loop of DCMH's calc_map (k=None) and DeepHash-pytorch's CalcTopMap (k), with a
    stable sort (MATLAB's)."""
    aps = []
    for d, gnd in zip(dist, gnd_all):
        order = np.argsort(d, kind="stable")
        g = gnd[order][: len(d) if k is None else min(k, len(d))]
        tsum = int(g.sum())
        if tsum == 0:
            aps.append(0.0)
            continue
        count = np.arange(1, tsum + 1)
        tindex = np.flatnonzero(g) + 1.0
        aps.append(float(np.mean(count / tindex)))
    return np.array(aps)


def test_map_and_map_at_k_match_the_hashing_reference_loop_with_ties():
    rng = np.random.default_rng(4)
    dist = rng.integers(0, 9, size=(30, 80))  # Hamming distances: many ties
    R = rng.random((30, 80)) < 0.15
    R[0] = False  # a query with no relevant item scores 0 and counts in the mean
    np.testing.assert_allclose(average_precision(distances=dist, relevant=R, tie_seed=None),
                               _calc_map_k_reference(dist, R))
    for k in (1, 5, 50, 80, 500):  # k beyond the database is the full ranking
        np.testing.assert_allclose(average_precision(distances=dist, relevant=R, k=k, tie_seed=None),
                                   _calc_map_k_reference(dist, R, k))
    # by default ties follow one fixed permutation of the database: the loop on permuted columns
    perm = np.random.default_rng(0).permutation(80)
    for k in (None, 5, 50):
        np.testing.assert_allclose(average_precision(distances=dist, relevant=R, k=k),
                                   _calc_map_k_reference(dist[:, perm], R[:, perm], k))


def test_ties_keep_database_order_with_tie_seed_none():
    # all three at distance 1: with tie_seed=None the ranking is database order, so the
    # relevant item is third (the default breaks ties by a fixed random permutation instead)
    dist = np.array([[1, 1, 1]])
    R = np.array([[0, 0, 1]], bool)
    assert average_precision(distances=dist, relevant=R, tie_seed=None)[0] == pytest.approx(1 / 3)
    assert precision_at_k(distances=dist, relevant=R, k=1, tie_seed=None) == 0.0
    assert recall_at_k(distances=dist, relevant=R, ks=(1, 3), tie_seed=None) == {1: 0.0, 3: 1.0}


def test_precision_at_k_beyond_the_database_divides_by_its_size():
    S = np.array([[0.9, 0.8, 0.1]])
    R = np.array([[1, 0, 1]], bool)
    assert precision_at_k(S, R, 3) == pytest.approx(2 / 3)
    assert precision_at_k(S, R, 100) == pytest.approx(2 / 3)  # min(k, n_db), as p_topK does


def test_radius_precision_and_recall_match_evaluate_macro():
    # Wei Liu's evaluate_macro (KSH / SDH code): Ret = dist <= r; a query retrieving nothing has
    # precision 0. The curve leaves out queries with no relevant item (as pr_curve does);
    # precision within the radius alone (P@r2) counts every query, as evaluate_macro
    rng = np.random.default_rng(5)
    bits = 16
    dist = rng.integers(0, bits + 1, size=(40, 60))
    R = rng.random((40, 60)) < 0.2
    R[3] = False
    curve = hamming_pr_curve(dist, R, bits)
    for r in (0, 2, 5, bits):
        ret = dist <= r
        hits = (ret & R).sum(1)
        prec = np.where(ret.sum(1) > 0, hits / np.maximum(ret.sum(1), 1), 0).mean()
        keep = R.sum(1) > 0
        assert curve["precision"][r] == pytest.approx(
            np.where(ret.sum(1) > 0, hits / np.maximum(ret.sum(1), 1), 0)[keep].mean())
        assert curve["recall"][r] == pytest.approx((hits / np.maximum(R.sum(1), 1))[keep].mean())
        assert precision_within_radius(dist, R, r) == pytest.approx(prec)


def test_recall_at_k_matches_vsepp_i2t_with_five_captions():
    # VSE++ i2t: an image's rank is the best rank of any of its 5 captions; R@K = ranks < K
    rng = np.random.default_rng(6)
    n_img = 20
    t2i = np.repeat(np.arange(n_img), 5)
    S = rng.normal(size=(n_img, 5 * n_img))
    ranks = []
    for i in range(n_img):
        order = np.argsort(-S[i], kind="stable")
        ranks.append(min(np.flatnonzero(order == j)[0] for j in np.flatnonzero(t2i == i)))
    ranks = np.array(ranks)
    rec = recall_at_k(S, np.arange(n_img)[:, None] == t2i[None, :], ks=(1, 5, 10))
    assert rec == {k: pytest.approx(float((ranks < k).mean())) for k in (1, 5, 10)}


def test_ndcg_graded_gains_hand_computed():
    # ranking gains 1, 2, 0; ideal 2, 1, 0; gain 2^g - 1 and discount 1 / log2(rank + 1)
    S = np.array([[0.9, 0.8, 0.7]])
    G = np.array([[1.0, 2.0, 0.0]])
    dcg = 1 / np.log2(2) + 3 / np.log2(3)
    idcg = 3 / np.log2(2) + 1 / np.log2(3)
    assert ndcg_at_k(S, G, 3) == pytest.approx(dcg / idcg)
    assert ndcg_at_k(S, G, 50) == pytest.approx(dcg / idcg)  # k beyond the database
    assert ndcg_at_k(S, np.zeros((1, 3)), 3) == 0.0  # nothing relevant
    # one relevant item (ideal DCG exactly 1), ranked 2nd: 1 / log2(3)
    assert ndcg_at_k(S, np.array([[0.0, 1.0, 0.0]]), 3) == pytest.approx(1 / np.log2(3))
    # fractional gains (ideal DCG below 1): ranking 0.5, 0, 1 against ideal 1, 0.5, 0
    g = np.array([[0.5, 0.0, 1.0]])
    dcg = (2 ** 0.5 - 1) / np.log2(2) + 1 / np.log2(4)
    idcg = 1 / np.log2(2) + (2 ** 0.5 - 1) / np.log2(3)
    assert ndcg_at_k(S, g, 3) == pytest.approx(dcg / idcg)
    g = np.array([[0.0, 0.0, 0.5]])
    assert ndcg_at_k(S, g, 3) == pytest.approx(1 / np.log2(4))


def test_graded_relevance_accepts_class_arrays_like_relevance():
    from xmodal.metrics import graded_relevance
    np.testing.assert_array_equal(graded_relevance(np.array([0, 2]), np.array([2, 0, 0])),
                                  [[0, 1, 1], [1, 0, 0]])
    np.testing.assert_array_equal(graded_relevance(np.array([[1, 1, 0]]), np.array([[1, 1, 1], [0, 0, 1]])),
                                  [[2, 0]])
    with pytest.raises(ValueError, match="agree in columns"):
        graded_relevance(np.ones((2, 3)), np.ones((2, 4)))


def test_every_metric_rejects_mismatched_shapes_and_bad_k():
    S, R = np.zeros((2, 3)), np.zeros((2, 4), bool)
    for call in (lambda: precision_at_k(S, R, 1), lambda: ndcg_at_k(S, R.astype(float), 1),
                 lambda: pr_curve(S, R), lambda: recall_at_k(S, R, ks=(1,)),
                 lambda: hamming_pr_curve(S.astype(int), R, 8),
                 lambda: precision_within_radius(S.astype(int), R, 2)):
        with pytest.raises(ValueError, match="differ in shape"):
            call()
    S, R = np.zeros((2, 3)), np.zeros((2, 3), bool)
    for call, message in ((lambda: average_precision(S, R, k=0), "k must be a positive integer, got 0"),
                          (lambda: precision_at_k(S, R, 0), "k must be a positive integer, got 0"),
                          (lambda: ndcg_at_k(S, R.astype(float), 0), "k must be a positive integer, got 0"),
                          (lambda: recall_at_k(S, R, ks=(0, 1)), "each K must be a positive integer, got 0"),
                          (lambda: recall_at_k(S, R, ks=()), "ks must name at least one K")):
        with pytest.raises(ValueError, match=message):
            call()


def _toy(n_images=30, seed=0, classes=3):
    rng = np.random.default_rng(seed)
    t2i = np.repeat(np.arange(n_images), 2)
    z = rng.normal(size=(n_images, 16))
    return PairedDataset(name="toy", n_images=n_images, text_to_image=t2i,
                         image_features=z + 0.5 * rng.normal(size=z.shape),
                         text_features=z[t2i] + 0.5 * rng.normal(size=(len(t2i), 16)),
                         labels=one_hot(rng.integers(0, classes, n_images), classes))


class _Identity(CrossModalMethod):
    """The features themselves, compared by cosine."""

    def fit(self, ds):
        return self

    def encode_images(self, X):
        return np.asarray(X, dtype=np.float32)

    def encode_texts(self, X):
        return np.asarray(X, dtype=np.float32)


class _SignCodes(CrossModalMethod):
    """Sign bits of the first 12 features, packed into 2 bytes; no ``bits`` attribute."""

    output = "binary"

    def fit(self, ds):
        return self

    def encode_images(self, X):
        return np.packbits(np.asarray(X)[:, :12] > 0, axis=1)

    def encode_texts(self, X):
        return np.packbits(np.asarray(X)[:, :12] > 0, axis=1)


def test_evaluate_reports_p_at_k_and_map_at_k_beyond_the_database_like_the_metric_functions():
    # the database has 30 images / 60 texts: P@100 and MAP@k for k >= n_db were silently
    # dropped by evaluate while precision_at_k / average_precision define them (p_topK's
    # total = min(k, n_db); CalcTopMap over the whole ranking is the full MAP)
    ds = _toy()
    m = _Identity()
    res = evaluate(m, ds, pk=(10, 100), map_k=(10, 30, 60, 500), ndcg_k=())
    from xmodal.metrics import cosine_similarity
    for d, Q, D, ql, dl in (("i2t", ds.image_features, ds.text_features, ds.labels, ds.text_labels),
                            ("t2i", ds.text_features, ds.image_features, ds.text_labels, ds.labels)):
        S = cosine_similarity(Q.astype(np.float32), D.astype(np.float32))
        R = relevance(ql, dl)
        for k in (10, 100):
            assert res[d][f"p@{k}"] == pytest.approx(precision_at_k(S, R, k), abs=1e-12), (d, k)
        for k in (10, 30, 60, 500):
            assert res[d][f"map@{k}"] == pytest.approx(average_precision(S, R, k=k).mean(), abs=1e-12), (d, k)
        assert res[d]["map@500"] == pytest.approx(res[d]["map"], abs=1e-12)
        curve = pr_curve(S, R)  # evaluate's curve: the same 11 recall levels and precisions
        assert res[d]["pr_curve"]["recall"] == pytest.approx(curve["recall"], abs=1e-15)
        assert res[d]["pr_curve"]["precision"] == pytest.approx(curve["precision"], abs=1e-12)
        assert res[d]["p@100"] == pytest.approx(R.sum(1).mean() / R.shape[1], abs=1e-12)


def test_evaluate_scores_a_binary_method_without_a_bits_attribute():
    # the Hamming PR curve needed method.bits (None + 1 raised TypeError); the packed code
    # width (8 bits per byte) bounds every distance, so it gives the radii instead
    ds = _toy(seed=1)
    m = _SignCodes()
    q, db = ds.subset(np.arange(10)), ds.subset(np.arange(10, 30))
    res = evaluate(m, q, db)
    D = hamming_distance(m.encode_images(q.image_features), m.encode_texts(db.text_features))
    R = relevance(q.labels, db.text_labels)
    curve = hamming_pr_curve(D, R, 16)
    assert res["i2t"]["hamming_pr_curve"]["radius"] == list(range(17))
    np.testing.assert_allclose(res["i2t"]["hamming_pr_curve"]["precision"], curve["precision"], atol=1e-12)
    assert res["i2t"]["p@r2"] == pytest.approx(precision_within_radius(D, R, 2))
    assert res["i2t"]["map"] == pytest.approx(average_precision(distances=D, relevant=R).mean())


def test_query_blocks_shrink_with_the_database_and_give_the_same_scores(monkeypatch):
    from xmodal.metrics import ranking
    # 256 queries against 18k items is ~37 MB per float64 matrix, against 10M items 20 GB:
    # the block holds at most BLOCK_CELLS cells (at least one query)
    assert ranking.chunk_rows(1000) == ranking.CHUNK
    assert ranking.chunk_rows(10_000_000) * 10_000_000 <= max(ranking.BLOCK_CELLS, 10_000_000)
    assert ranking.chunk_rows(10_000_000) >= 1
    assert ranking.chunk_rows(10 ** 12) == 1
    ds = _toy(n_images=40, seed=2)
    for m in (_Identity(), _SignCodes()):
        big = evaluate(m, ds, map_k=(5,), per_query=True)
        monkeypatch.setattr(ranking, "BLOCK_CELLS", 7 * 80)  # 7 queries per block
        small = evaluate(m, ds, map_k=(5,), per_query=True)
        monkeypatch.undo()
        for d in ("i2t", "t2i"):
            assert set(small[d]) == set(big[d])
            for key, v in big[d].items():
                if isinstance(v, dict):  # curves: sums over blocks, in another order
                    for c in v:
                        np.testing.assert_allclose(small[d][key][c], v[c], rtol=0, atol=1e-12)
                else:
                    assert small[d][key] == v, (d, key)
        rng = np.random.default_rng(3)
        S, R = rng.normal(size=(50, 90)), rng.random((50, 90)) < 0.3
        whole = average_precision(S, R)
        monkeypatch.setattr(ranking, "BLOCK_CELLS", 90)  # one query per block
        np.testing.assert_array_equal(average_precision(S, R), whole)
        monkeypatch.undo()


def test_evaluate_names_both_datasets_when_their_label_sets_differ():
    # relevance() said only "label matrices must agree in columns, got (10, 3) and (40, 4)",
    # after encoding everything, without naming either dataset
    q = _toy(n_images=10, seed=4)
    db = _toy(n_images=20, seed=5, classes=4)
    db.name = "other"
    from xmodal.data.dataset import DataError
    with pytest.raises(DataError, match=r"'toy'.*3 classes.*'other'.*4"):
        evaluate(_Identity(), q, db)


def test_hamming_pr_curve_names_a_bad_code_length():
    from xmodal.metrics import hamming_pr_curve

    D = np.array([[0, 3, 8], [2, 1, 5]])
    R = np.array([[1, 0, 1], [0, 1, 0]], dtype=bool)
    assert len(hamming_pr_curve(D, R, 8)["radius"]) == 9
    for bad in (8.0, 0, True):
        with pytest.raises(ValueError, match="bits must be a positive integer"):
            hamming_pr_curve(D, R, bad)
    with pytest.raises(ValueError, match="beyond bits=4"):
        hamming_pr_curve(D, R, 4)
    with pytest.raises(ValueError, match="Hamming distances must be non-negative"):
        hamming_pr_curve(np.array([[0, 3, 8], [2, -1, 5]]), R, 8)


def test_whole_number_scores_and_distances_beyond_int16_rank_by_value():
    # whole-number keys are sorted as int16 when they fit: keys beyond +-32767 (integer inner
    # products, L1 distances) must not be cast (40000 would wrap to a negative int16)
    S = np.array([[40000.0, 1.0, 0.0, -50000.0]])
    R = np.array([[1, 0, 0, 0]], bool)
    assert average_precision(S, R)[0] == 1.0
    assert precision_at_k(S, R, 1) == 1.0
    D = np.array([[40000, 1, 0, 70000]])
    R = np.array([[0, 0, 1, 0]], bool)
    assert average_precision(distances=D, relevant=R)[0] == 1.0
    assert recall_at_k(distances=D, relevant=R, ks=(1,)) == {1: 1.0}
    D = np.array([[1, -40000, 0]])  # signed distances below int16's range
    R = np.array([[0, 1, 0]], bool)
    assert average_precision(distances=D, relevant=R)[0] == 1.0
    # fractional float distances are never truncated to whole numbers (0.7 and 0.3 would tie)
    D = np.array([[0.7, 0.3, 1.5]])
    R = np.array([[0, 1, 0]], bool)
    assert average_precision(distances=D, relevant=R, tie_seed=None)[0] == 1.0


def test_cosine_similarity_matches_scikit_learn_centred_or_not_and_zero_rows_score_zero():
    from sklearn.metrics.pairwise import cosine_similarity as sk_cosine

    from xmodal.metrics import cosine_similarity
    rng = np.random.default_rng(7)
    Q, D, c = rng.normal(size=(5, 6)), rng.normal(size=(8, 6)), rng.normal(size=6)
    np.testing.assert_allclose(cosine_similarity(Q, D), sk_cosine(Q, D), rtol=0, atol=1e-12)
    # centred on a common point: normalised correlation (Rasiwasia et al. 2010)
    np.testing.assert_allclose(cosine_similarity(Q, D, center=c), sk_cosine(Q - c, D - c), rtol=0, atol=1e-12)
    # a zero vector (e.g. an empty bag of words) scores 0 against everything, never NaN
    Q[1], D[2] = 0.0, 0.0
    S = cosine_similarity(Q, D)
    assert np.isfinite(S).all() and (S[1] == 0).all() and (S[:, 2] == 0).all()


def test_numpy_hamming_fallback_covers_more_queries_than_one_chunk(monkeypatch):
    rng = np.random.default_rng(8)
    Q = rng.integers(0, 256, (150, 16), dtype=np.uint8)  # > 2 chunks of 64 queries
    D = rng.integers(0, 256, (40, 16), dtype=np.uint8)
    ref = np.unpackbits(Q[:, None, :] ^ D[None, :, :], axis=2).sum(axis=2)
    monkeypatch.setattr(distance, "_faiss", None)
    np.testing.assert_array_equal(hamming_distance(Q, D), ref)
    for w in (5, 7, 9):  # bytes, not 64-bit words
        np.testing.assert_array_equal(hamming_distance(Q[:, :w], D[:, :w]),
                                      np.unpackbits(Q[:, None, :w] ^ D[None, :, :w], axis=2).sum(axis=2))
    with pytest.raises(ValueError, match=r"codes differ in length: \(150, 2\) and \(40, 3\)"):
        hamming_distance(Q[:, :2], D[:, :3])


def test_every_metric_breaks_ties_by_the_same_default_permutation_and_documented_defaults():
    # Recall@K read the ranking evaluate() uses (tie_seed=0) only if its own default agrees
    rng = np.random.default_rng(9)
    D = rng.integers(0, 3, size=(60, 50))  # heavy ties
    inst = rng.random((60, 50)) < 0.05
    inst[0] = False
    first = first_hit_rank(distances=D, relevant=inst, tie_seed=0)
    has = inst.any(1)
    assert recall_at_k(distances=D, relevant=inst, ks=(1, 3)) == {
        k: pytest.approx(float((first[has] < k).mean()), abs=1e-12) for k in (1, 3)}
    # the defaults the docstrings state: P@10, NDCG@10, Recall@(1, 5, 10), 11-point PR, radius 2
    S = -D + 0.01 * rng.normal(size=D.shape)
    R = rng.random((60, 50)) < 0.3
    assert precision_at_k(S, R) == precision_at_k(S, R, 10)
    assert ndcg_at_k(S, R * 1.0) == ndcg_at_k(S, R * 1.0, 10)
    assert recall_at_k(S, inst) == recall_at_k(S, inst, (1, 5, 10))
    assert pr_curve(S, R)["recall"] == pytest.approx(np.linspace(0, 1, 11).tolist())
    assert precision_within_radius(D, R) == precision_within_radius(D, R, 2)


def test_precision_recall_curves_of_queries_without_any_relevant_item_are_zero():
    S = np.array([[0.3, 0.2, 0.1], [0.1, 0.5, 0.2]])
    R = np.zeros((2, 3), bool)
    assert pr_curve(S, R, n_points=4) == {"recall": pytest.approx([0, 1 / 3, 2 / 3, 1]), "precision": [0.0] * 4}
    curve = hamming_pr_curve(np.array([[0, 1, 2], [2, 2, 0]]), R, bits=2)
    assert curve == {"radius": [0, 1, 2], "precision": [0.0] * 3, "recall": [0.0] * 3}


def test_pr_curve_counts_a_query_with_a_single_relevant_item():
    # query 0's only relevant item is 2nd: interpolated precision 1/2 at every recall level;
    # query 1 ranks both of its relevant items first: 1 everywhere
    S = np.array([[3.0, 2.0, 1.0], [3.0, 2.0, 1.0]])
    R = np.array([[0, 1, 0], [1, 1, 0]], bool)
    assert pr_curve(S, R, n_points=3)["precision"] == pytest.approx([0.75, 0.75, 0.75])


def test_hamming_pr_curve_of_a_query_with_a_single_relevant_item():
    # the only relevant item is at distance 1 (the one at distance 0 is not relevant): recall
    # 0, 1, 1 and precision 0, 1/2, 1/3 at radii 0, 1, 2
    curve = hamming_pr_curve(np.array([[0, 1, 2]]), np.array([[0, 1, 0]], bool), bits=2)
    assert curve["recall"] == pytest.approx([0.0, 1.0, 1.0])
    assert curve["precision"] == pytest.approx([0.0, 1 / 2, 1 / 3])


def test_mean_average_precision_and_first_hit_rank_follow_their_arguments():
    rng = np.random.default_rng(10)
    D = rng.integers(0, 3, size=(40, 30))  # heavy ties: the tie order shows
    R = rng.random((40, 30)) < 0.2
    assert mean_average_precision(distances=D, relevant=R) == pytest.approx(
        average_precision(distances=D, relevant=R, tie_seed=0).mean(), abs=1e-15)
    # first_hit_rank(k): a first hit at 0-based rank 2 is beyond k=2
    S = np.array([[0.9, 0.8, 0.7, 0.1]])
    hit3 = np.array([[0, 0, 1, 1]], bool)
    assert first_hit_rank(S, hit3).tolist() == [2]
    assert first_hit_rank(S, hit3, k=3).tolist() == [2]
    assert first_hit_rank(S, hit3, k=2).tolist() == [np.inf]


def test_relevance_given_as_counts_is_read_as_relevant_or_not():
    # a shared-label count matrix passed as `relevant` means relevant when > 0, never a weight
    S = np.array([[0.9, 0.8, 0.7, 0.6]])
    counts = np.array([[2, 0, 3, 0]])
    assert average_precision(S, counts)[0] == pytest.approx((1 + 2 / 3) / 2)
    assert precision_at_k(S, counts, 2) == pytest.approx(0.5)
    assert pr_curve(S, counts, n_points=2)["precision"] == pytest.approx([1.0, 2 / 3])


def test_zero_queries_give_empty_per_query_arrays():
    none, nothing = np.zeros((0, 3)), np.zeros((0, 3), bool)
    assert average_precision(none, nothing).shape == (0,)
    assert average_precision(none, nothing, k=2).shape == (0,)
    assert first_hit_rank(none, nothing).shape == (0,)
    assert np.isnan(recall_at_k(none, nothing, (1,))[1])
    assert precision_within_radius(np.zeros((0, 3), int), nothing, 2) == 0.0


class _TwelveBits(_SignCodes):
    bits = 12  # packed into 2 bytes: distances never pass 12


def test_evaluate_takes_the_code_length_from_bits_and_times_the_encoding():
    import time

    from xmodal.data.dataset import DataError
    ds = _toy(seed=3)
    q, db = ds.subset(np.arange(10)), ds.subset(np.arange(10, 30))
    t0 = time.perf_counter()
    res = evaluate(_TwelveBits(), q, db)
    wall = time.perf_counter() - t0
    assert res["i2t"]["hamming_pr_curve"]["radius"] == list(range(13))  # not the 16 bits of 2 bytes
    assert 0 <= res["encode_seconds"] <= wall
    with pytest.raises(DataError, match="'bare' lacks features"):
        evaluate(_TwelveBits(), q, PairedDataset(name="bare", n_images=20, text_to_image=db.text_to_image,
                                                 image_features=db.image_features, text_features=None,
                                                 labels=db.labels))
