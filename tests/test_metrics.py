import numpy as np
import pytest
from sklearn.metrics import average_precision_score, ndcg_score

from xmodal.metrics import distance
from xmodal.metrics import (average_precision, hamming_distance, hamming_pr_curve,
                            mean_average_precision, ndcg_at_k, pr_curve, precision_at_k,
                            precision_within_radius, recall_at_k, relevance)


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
    with pytest.raises(ValueError):
        relevance(q, np.ones((2, 4)))


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
    assert ndcg_at_k(S, G, 10) == pytest.approx(np.mean([ndcg_score(G[i:i + 1], S[i:i + 1], k=10) for i in range(10)]))


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
    with pytest.raises(ValueError):
        average_precision(np.zeros((2, 3)), np.zeros((2, 4), bool))
