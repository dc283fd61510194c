"""Metrics review of session 12: evaluate() agrees with the metric functions on k beyond the
database, scores binary methods that do not declare ``bits``, and bounds the memory of its
query blocks on large databases."""

import numpy as np
import pytest

from xmodal.data import PairedDataset, one_hot
from xmodal.evaluation import evaluate
from xmodal.metrics import (average_precision, hamming_distance, hamming_pr_curve, precision_at_k,
                            precision_within_radius, relevance)
from xmodal.methods.base import CrossModalMethod


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
    res = evaluate(m, ds, pk=(10, 100), map_k=(10, 30, 60, 500), curves=False, ndcg_k=())
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
