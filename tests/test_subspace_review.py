"""Review of the CCA family against its papers: canonical pairs past the data's rank, integer
parameters given as floats, and a numerical cross-check of plain CCA on real features."""

import numpy as np
import pytest
from scipy import linalg

from xmodal import methods
from xmodal.data import DataError, PairedDataset

LINEAR = ["cca", "mlcca", "cfa", "pls"]


@pytest.fixture(scope="module")
def wiki_train(wikipedia):
    return wikipedia.subset("train")


def _labelled(n=60, seed=0):
    rng = np.random.default_rng(seed)
    L = np.eye(3)[rng.integers(0, 3, n)]
    X = L @ rng.normal(size=(3, 8)) + rng.normal(size=(n, 8))
    Y = L @ rng.normal(size=(3, 5)) + rng.normal(size=(n, 5))
    return X, Y, PairedDataset("s", text_to_image=np.arange(n), n_images=n, image_features=X,
                               text_features=Y, labels=L)


@pytest.mark.parametrize("name", LINEAR + ["scm"])
def test_wikipedia_text_topics_have_rank_nine_so_nine_pairs(wiki_train, name):
    # the release's 10 LDA topic proportions sum to one: the centred text features have rank 9,
    # and a 10th pair has correlation 0 with a direction set by float32 rounding (text side ~0,
    # image side unit-variance noise that only changes the image norms under cosine)
    X, Y, _ = wiki_train.pairs()
    m = methods.create(name).fit(wiki_train)
    space = m.cca_ if name == "scm" else m  # SCM's regressions read its CCA space
    zi, zt = space._encode_images(X.astype(np.float64)), space._encode_texts(Y.astype(np.float64))
    assert zi.shape[1] == zt.shape[1] == 9
    # every kept pair is a real one: both sides vary and they correlate on the training pairs
    assert (zt.std(0) > 1e-3 * zt.std(0).max()).all() and (zi.std(0) > 1e-3 * zi.std(0).max()).all()
    if name != "mlcca":  # whose pairs correlate label-weighted, not pair by pair
        corr = [np.corrcoef(zi[:, j], zt[:, j])[0, 1] for j in range(9)]
        assert min(corr) > 0.1


def test_cca_with_no_ridge_gives_the_exact_canonical_correlations_of_the_data(wiki_train):
    # cross-check against the textbook route (Bjorck & Golub 1973): cosines of the principal
    # angles between the column spaces of the centred views. Both views sum to one per row
    # (visual-word histograms, topic proportions), so the spans are 127-d and 9-d; the last
    # singular direction of each is float32 rounding, and fitting it would be fitting noise.
    X, Y, _ = wiki_train.pairs()
    Xc, Yc = X - X.mean(0, dtype=np.float64), Y - Y.mean(0, dtype=np.float64)
    Qx = linalg.svd(Xc, full_matrices=False)[0][:, :127]
    Qy = linalg.svd(Yc, full_matrices=False)[0][:, :9]
    ref = linalg.svdvals(Qx.T @ Qy)
    m = methods.create("cca", reg=0.0).fit(wiki_train)
    np.testing.assert_allclose(m.correlations_, ref, rtol=1e-6)
    zi, zt = m.encode_images(X), m.encode_texts(Y)
    np.testing.assert_allclose([np.corrcoef(zi[:, j], zt[:, j])[0, 1] for j in range(9)], ref, rtol=1e-6)


@pytest.mark.parametrize("name", LINEAR + ["kcca"])
def test_fewer_pairs_than_dimensions_keeps_only_correlated_pairs(name):
    # 4 pairs: centred data of rank 3, so at most 3 canonical pairs exist (PLS used to raise)
    X, Y, ds = _labelled()
    small = ds.subset(np.arange(4))
    m = methods.create(name, n_components=10).fit(small)
    zi, zt = m.encode_images(X[:4]), m.encode_texts(Y[:4])
    assert zi.shape[1] == zt.shape[1] <= 3
    assert (zt.std(0) > 1e-6).all() and (zi.std(0) > 1e-6).all()


@pytest.mark.parametrize("name, params, field", [
    ("cca", {"n_components": 3.0}, "n_components"), ("pls", {"n_components": 3.0}, "n_components"),
    ("kcca", {"n_landmarks": 30.0}, "n_landmarks"), ("kcca", {"random_state": 1.0}, "random_state"),
    ("dcca", {"dim": 64.0}, "dim"), ("cca", {"reg": float("nan")}, "reg"),
    ("acmr", {"lr": float("nan")}, "lr"),
])
def test_a_float_for_an_integer_or_a_nan_is_refused_naming_the_parameter(name, params, field):
    # as scikit-learn's Interval(Integral): 3.0 is not an integer (it crashed fit later in a
    # slice or a layer size); NaN compares False with every bound, so it passed the range check
    _, _, ds = _labelled()
    with pytest.raises(methods.ParameterError, match=rf"parameter {field}=nan|parameter {field}=\d+\.0"):
        methods.create(name, **params).fit(ds)


def test_numerical_rank_is_scale_free_and_sees_sum_to_one_columns():
    from xmodal.methods._solvers import numerical_rank

    rng = np.random.default_rng(4)
    Z = rng.normal(size=(500, 6))
    Z[:, 2] *= 1e-5  # a column in other units is still a direction of the data
    Z[:, 4] = 7.0  # a constant column is not
    cov = lambda A: np.cov(A, rowvar=False)
    assert numerical_rank(cov(Z), Z.mean(0)) == 5
    P = rng.dirichlet(np.ones(10), 500).astype(np.float32).astype(np.float64)
    assert numerical_rank(cov(P), P.mean(0)) == 9  # proportions summing to one, up to float32 rounding


@pytest.mark.parametrize("name", LINEAR + ["scm"])
def test_a_constant_side_is_refused_naming_the_method(name):
    X, Y, ds = _labelled()
    flat = ds.with_features(text_features=np.ones_like(Y))
    with pytest.raises(DataError, match=f"^{type(methods.create(name)).__name__}.*no correlated direction"):
        methods.create(name).fit(flat)


@pytest.mark.parametrize("name", ["cca", "mlcca", "scm"])
def test_ridge_is_scale_free(wiki_train, name):
    # reg is a fraction of the mean eigenvalue: features in other units (x 1e-6, variances
    # ~1e-14) give the same space; an absolute 1e-12 in the ridge made CCA's leading
    # correlation 0.365 instead of 0.556 there
    small = wiki_train.with_features(image_features=wiki_train.image_features * 1e-6,
                                     text_features=wiki_train.text_features * 1e-6)
    a, b = methods.create(name).fit(wiki_train), methods.create(name).fit(small)
    a, b = (a.cca_, b.cca_) if name == "scm" else (a, b)
    np.testing.assert_allclose(b.correlations_, a.correlations_, rtol=1e-7)


def test_semantic_matching_standardisation_is_scale_free_and_ignores_constant_columns(wiki_train, wikipedia):
    # SM standardises each column: the same features in other units give the same posteriors
    # (an absolute 1e-12 added to every standard deviation did not), and a column constant in
    # training carries nothing at encode time however far a query's value lies from it
    test = wikipedia.subset("test")
    small = wiki_train.with_features(image_features=wiki_train.image_features * 1e-9,
                                     text_features=wiki_train.text_features * 1e-9)
    a, b = methods.create("sm").fit(wiki_train), methods.create("sm").fit(small)
    np.testing.assert_allclose(b.encode_images(test.image_features * 1e-9),
                               a.encode_images(test.image_features), atol=1e-5)  # lbfgs tolerance
    X = wiki_train.image_features.astype(np.float64)
    X[:, 5] = 0.1  # float64 0.1: its mean over the rows is not exactly 0.1
    assert X[:, 5].std() > 0
    m = methods.create("sm").fit(wiki_train.with_features(image_features=X))
    q = test.image_features[:20].astype(np.float64)
    far = q.copy()
    far[:, 5] = 5.0
    np.testing.assert_allclose(m.encode_images(far), m.encode_images(q), atol=1e-9)


def test_multilabel_posteriors_of_a_far_query_are_finite_without_overflow_warnings():
    import warnings

    rng = np.random.default_rng(5)
    n = 200
    L = (rng.random((n, 4)) < 0.4).astype(np.uint8)
    L[L.sum(1) == 0, 0] = 1
    X = L @ rng.normal(size=(4, 6)) + rng.normal(size=(n, 6))
    Y = L @ rng.normal(size=(4, 5)) + rng.normal(size=(n, 5))
    ds = PairedDataset("ml", text_to_image=np.arange(n), n_images=n, image_features=X, text_features=Y, labels=L)
    for name in ("sm", "scm"):
        m = methods.create(name).fit(ds)
        assert m.multilabel_
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            P = m.encode_images(np.vstack([X[:3], 1e4 * X[:3]]))
        assert np.isfinite(P).all() and ((P >= 0) & (P <= 1)).all()


def test_encode_takes_scipy_sparse_features_and_names_object_arrays():
    from scipy import sparse

    X, Y, ds = _labelled()
    m = methods.create("cca", n_components=3).fit(ds)
    np.testing.assert_allclose(m.encode_texts(sparse.csr_matrix(Y)), m.encode_texts(Y))
    with pytest.raises(DataError, match="encode_images: expected a numeric array.*str objects"):
        m.encode_images(np.array([["a"] * X.shape[1]], dtype=object))


def test_a_rule_for_a_parameter_init_lacks_is_a_parameter_error():
    from xmodal.methods.base import HashingMethod

    class NoBits(HashingMethod):  # a plugin author's first try: no bits parameter
        def __init__(self, random_state: int = 0) -> None:
            self.random_state = random_state

    _, _, ds = _labelled()
    with pytest.raises(methods.ParameterError, match="takes no bits.*HashingMethod needs bits"):
        NoBits().fit(ds)


def test_truncated_refuses_a_size_that_is_not_a_whole_number():
    _, _, ds = _labelled()
    m = methods.create("cca", n_components=4).fit(ds)
    assert m.truncated(np.int64(2)).encode_images(ds.image_features[:3]).shape == (3, 2)
    for bad in (2.7, 0, "2"):
        with pytest.raises(methods.ParameterError, match="truncated: n_components"):
            m.truncated(bad)
