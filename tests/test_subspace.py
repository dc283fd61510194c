"""The CCA family on the classic Wikipedia protocol, plus the estimator contract."""

import numpy as np
import pytest

from scipy import linalg
from sklearn.cross_decomposition import PLSCanonical
from sklearn.metrics.pairwise import rbf_kernel

from xmodal import methods
from xmodal.data import DataError, PairedDataset
from xmodal.evaluation import evaluate
from xmodal.methods._solvers import center_kernel_train
from sklearn.cross_decomposition import CCA as SklearnCCA
from sklearn.kernel_approximation import Nystroem

SUBSPACE = ["cca", "kcca", "pls", "mlcca", "sm", "scm", "cfa"]


@pytest.fixture(scope="module")
def wiki_split(wikipedia):
    return wikipedia.subset("train"), wikipedia.subset("test")


class _Fitted(dict):
    """Fit each method on first use; exact KCCA on an 800-pair subset keeps the suite fast."""

    def __init__(self, train):
        super().__init__()
        self.train = train

    def __missing__(self, name):
        self[name] = methods.create(name).fit(_train_for(name, self.train))
        return self[name]


def _train_for(name, train):
    return train.subset(np.arange(800)) if name == "kcca" else train


@pytest.fixture(scope="module")
def fitted(wiki_split):
    return _Fitted(wiki_split[0])


def test_registry_lists_the_family():
    names = methods.available()
    assert set(SUBSPACE) <= set(names)
    with pytest.raises(KeyError, match="unknown method 'nope'"):
        methods.create("nope")


def test_published_wikipedia_figures(fitted, wiki_split):
    _, test = wiki_split
    cca = evaluate(fitted["cca"], test, rk=())
    # Rasiwasia et al. 2010 on exactly these features: 0.249 / 0.196
    assert cca["i2t"]["map"] == pytest.approx(0.249, abs=0.01)
    assert cca["t2i"]["map"] == pytest.approx(0.196, abs=0.01)
    scm = evaluate(fitted["scm"], test, rk=())
    assert scm["i2t"]["map"] >= 0.27 and scm["t2i"]["map"] >= 0.22
    # the paper's two hypotheses: semantic abstraction (SM) beats correlation alone (CCA),
    # and the two together (SCM) beat SM on text queries
    sm = evaluate(fitted["sm"], test, rk=())
    assert sm["i2t"]["map"] > cca["i2t"]["map"] + 0.02 and sm["t2i"]["map"] > cca["t2i"]["map"]
    assert scm["t2i"]["map"] > sm["t2i"]["map"]


@pytest.mark.parametrize("name", SUBSPACE)
def test_every_method_beats_random(fitted, wiki_split, name):
    _, test = wiki_split
    res = evaluate(fitted[name], test, rk=())
    # random ranking gives about 0.118 (Rasiwasia et al. 2010); kcca sees 800 pairs here
    assert res["i2t"]["map"] > 0.19 and res["t2i"]["map"] > 0.15


@pytest.mark.parametrize("name", SUBSPACE)
def test_contract_shapes_determinism_save_load(fitted, wiki_split, name, tmp_path):
    train, test = wiki_split
    m = fitted[name]
    zi, zt = m.encode_images(test.image_features), m.encode_texts(test.text_features)
    assert zi.shape[0] == 693 and zt.shape[0] == 693 and zi.shape[1] == zt.shape[1]
    again = methods.create(name).fit(_train_for(name, train))
    np.testing.assert_allclose(again.encode_images(test.image_features[:20]), zi[:20], rtol=1e-6, atol=1e-9)
    path = m.save(tmp_path / f"{name}.xmodal")
    loaded = methods.load(str(path))
    assert type(loaded) is type(m) and loaded.get_params() == m.get_params()
    np.testing.assert_allclose(loaded.encode_texts(test.text_features), zt, rtol=1e-6, atol=1e-9)


def test_kcca_nystroem_path(wiki_split):
    train, test = wiki_split
    m = methods.create("kcca", exact_max_samples=500, n_landmarks=300).fit(train)
    assert not m.exact_
    res = evaluate(m, test, rk=())
    assert res["i2t"]["map"] > 0.2 and res["t2i"]["map"] > 0.17


def test_mlcca_and_scm_on_multilabel_data():
    rng = np.random.default_rng(0)
    n, c = 600, 6
    L = (rng.random((n, c)) < 0.3).astype(np.uint8)
    L[L.sum(1) == 0, 0] = 1
    Z = L @ rng.normal(size=(c, 8))
    X = Z @ rng.normal(size=(8, 30)) + 0.5 * rng.normal(size=(n, 30))
    Y = Z @ rng.normal(size=(8, 20)) + 0.5 * rng.normal(size=(n, 20))
    ds = PairedDataset("synthetic", text_to_image=np.arange(n), n_images=n, image_features=X,
                       text_features=Y, labels=L, splits={"train": np.arange(400), "test": np.arange(400, n)})
    for name in ("mlcca", "scm"):
        m = methods.create(name, n_components=6).fit(ds.subset("train"))
        res = evaluate(m, ds.subset("test"), rk=())
        base = evaluate(methods.create("cfa", n_components=1).fit(ds.subset("train")), ds.subset("test"), rk=())
        assert res["i2t"]["map"] > 0.6, name
        assert res["i2t"]["map"] > base["i2t"]["map"]


def test_parameter_validation_in_fit(wiki_split):
    train, _ = wiki_split
    with pytest.raises(methods.ParameterError, match="n_components=0"):
        methods.create("cca", n_components=0).fit(train)
    with pytest.raises(methods.ParameterError, match="reg=-1"):
        methods.create("kcca", reg=-1).fit(train)
    with pytest.raises(methods.ParameterError, match="has no parameter"):
        methods.create("cca").set_params(bogus=1)


def test_errors_for_unfitted_wrong_shape_and_missing_labels(fitted, wiki_split):
    with pytest.raises(methods.NotFittedError):
        methods.create("cca").encode_images(np.zeros((1, 128)))
    with pytest.raises(DataError, match="expected images features with 128 columns"):
        fitted["cca"].encode_images(np.zeros((2, 5)))
    train, _ = wiki_split
    unlabeled = PairedDataset("nolabels", text_to_image=np.arange(10), n_images=10,
                              image_features=train.image_features[:10], text_features=train.text_features[:10])
    with pytest.raises(DataError, match="supervised"):
        methods.create("scm").fit(unlabeled)


def _nonlinear_pairs(n=120, seed=0):
    rng = np.random.default_rng(seed)
    Z = rng.normal(size=(n, 3))
    X = np.tanh(Z @ rng.normal(size=(3, 6))) + 0.3 * rng.normal(size=(n, 6))
    Y = (Z @ rng.normal(size=(3, 4))) ** 2 + 0.3 * rng.normal(size=(n, 4))
    return X, Y, PairedDataset("nonlinear", text_to_image=np.arange(n), n_images=n,
                               image_features=X, text_features=Y)


@pytest.mark.parametrize("reg", [0.1, 1.0])
def test_kcca_solves_hardoons_regularised_eigenproblem(reg):
    # Hardoon et al. 2004: (Kx + kI)^{-1} Ky (Ky + kI)^{-1} Kx a = rho^2 a, k = reg * mean eigenvalue
    X, Y, ds = _nonlinear_pairs()
    m = methods.create("kcca", n_components=3, reg=reg).fit(ds)
    assert m.exact_
    Kx = center_kernel_train(rbf_kernel(X, gamma=m.gx_))[0]
    Ky = center_kernel_train(rbf_kernel(Y, gamma=m.gy_))[0]
    n = len(X)
    kx, ky = reg * np.trace(Kx) / n, reg * np.trace(Ky) / n
    I = np.eye(n)
    M = linalg.solve(Kx + kx * I, Ky @ linalg.solve(Ky + ky * I, Kx))
    a, rho = m.alpha_, m.correlations_
    np.testing.assert_allclose(M @ a, a * rho ** 2, atol=1e-8 * np.abs(a).max())
    # and the constraint a'(Kx^2 + k Kx) a = 1 with the correlation as objective
    np.testing.assert_allclose(np.diag(a.T @ (Kx @ Kx + kx * Kx) @ a), 1, rtol=1e-6)
    b = m.beta_
    np.testing.assert_allclose(np.diag(a.T @ Kx @ Ky @ b), rho, rtol=1e-6)


def test_kcca_nystroem_with_every_landmark_equals_exact():
    # the primal (Nystroem) path solves the same problem with the same k: with every training
    # point a landmark, F F' is the kernel itself and both paths must agree
    X, _, ds = _nonlinear_pairs()
    exact = methods.create("kcca", n_components=3, reg=0.3).fit(ds)
    ny = methods.create("kcca", n_components=3, reg=0.3, exact_max_samples=0, n_landmarks=len(X)).fit(ds)
    assert exact.exact_ and not ny.exact_
    np.testing.assert_allclose(ny.correlations_, exact.correlations_, rtol=1e-7)
    a, b = exact.encode_images(X[:30] + 0.05), ny.encode_images(X[:30] + 0.05)
    np.testing.assert_allclose(np.abs(a), np.abs(b), atol=1e-7 * np.abs(a).max())  # up to sign
    Y = ds.text_features
    a, b = exact.encode_texts(Y[:30] + 0.05), ny.encode_texts(Y[:30] + 0.05)
    np.testing.assert_allclose(np.abs(a), np.abs(b), atol=1e-7 * np.abs(a).max())


def test_pls_matches_sklearn_transform():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(100, 8)) * rng.uniform(0.1, 10, 8) + 3
    Y = X[:, :3] @ rng.normal(size=(3, 5)) + rng.normal(size=(100, 5))
    ds = PairedDataset("s", text_to_image=np.arange(100), n_images=100, image_features=X, text_features=Y)
    for scale, k in ((True, 3), (False, 3), (True, 1)):
        ref = PLSCanonical(n_components=k, scale=scale, max_iter=1000).fit(X, Y)
        m = methods.create("pls", n_components=k, scale=scale).fit(ds)
        xs, ys = ref.transform(X, Y)
        np.testing.assert_allclose(m.encode_images(X), xs, atol=1e-10)
        np.testing.assert_allclose(m.encode_texts(Y), ys, atol=1e-10)


def test_mlcca_covariances_are_label_similarity_weighted_sums():
    # Ranjan et al. 2015: Cxy = sum_ij s_ij x_i y_j', Cxx = sum_ij s_ij x_i x_i',
    # Cyy = sum_ij s_ij y_j y_j', s_ij = cosine of label vectors; brute force over all pairs
    rng = np.random.default_rng(1)
    n = 40
    L = (rng.random((n, 4)) < 0.4).astype(float)
    L[L.sum(1) == 0, 0] = 1
    X, Y = rng.normal(size=(n, 5)), rng.normal(size=(n, 3))
    ds = PairedDataset("s", text_to_image=np.arange(n), n_images=n, image_features=X, text_features=Y, labels=L)
    m = methods.create("mlcca", n_components=3, reg=0.0).fit(ds)
    Ln = L / np.linalg.norm(L, axis=1, keepdims=True)
    S = Ln @ Ln.T
    W = S.sum()
    mx, my = S.sum(1) @ X / W, S.sum(0) @ Y / W
    Cxy = sum(S[i, j] * np.outer(X[i] - mx, Y[j] - my) for i in range(n) for j in range(n)) / W
    Cxx = sum(S[i, j] * np.outer(X[i] - mx, X[i] - mx) for i in range(n) for j in range(n)) / W
    Cyy = sum(S[i, j] * np.outer(Y[j] - my, Y[j] - my) for i in range(n) for j in range(n)) / W
    A, B, rho = m.image_weights_, m.text_weights_, m.correlations_
    # unit-norm directions (the authors' code), each still a weighted canonical pair
    np.testing.assert_allclose(np.linalg.norm(A, axis=0), 1, atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(B, axis=0), 1, atol=1e-12)
    va, vb = np.diag(A.T @ Cxx @ A), np.diag(B.T @ Cyy @ B)
    np.testing.assert_allclose(A.T @ Cxx @ A, np.diag(va), atol=1e-8)
    np.testing.assert_allclose(B.T @ Cyy @ B, np.diag(vb), atol=1e-8)
    np.testing.assert_allclose(A.T @ Cxy @ B, np.diag(rho * np.sqrt(va * vb)), atol=1e-8)
    # the leading weighted canonical correlations, from the generalised eigenproblem
    ev = linalg.eigh(Cxy @ linalg.solve(Cyy, Cxy.T), Cxx, eigvals_only=True)[::-1]
    np.testing.assert_allclose(rho ** 2, ev[:3], rtol=1e-6)


def test_cfa_is_the_svd_of_the_cross_product():
    # Li et al. 2003: orthonormal A, B from the SVD of X'Y (centred features)
    rng = np.random.default_rng(2)
    X, Y = rng.normal(size=(60, 7)), rng.normal(size=(60, 5))
    Y[:, :2] += X[:, :2]
    ds = PairedDataset("s", text_to_image=np.arange(60), n_images=60, image_features=X, text_features=Y)
    m = methods.create("cfa", n_components=3).fit(ds)
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    U, s, Vt = linalg.svd(Xc.T @ Yc)
    zi, zt = m.encode_images(X), m.encode_texts(Y)
    assert zi.shape[1] == zt.shape[1] == 3
    np.testing.assert_allclose(m.correlations_, s[:3] / s[0], rtol=1e-10)
    for j in range(3):  # same directions up to sign and the embedding's global scale
        for z, ref in ((zi[:, j], Xc @ U[:, j]), (zt[:, j], Yc @ Vt[j])):
            assert abs(np.corrcoef(z, ref)[0, 1]) == pytest.approx(1, abs=1e-10)


def test_mlcca_drops_zero_correlation_pairs_past_the_rank_of_cxy():
    # single-label data with 4 classes: the label-weighted Cxy has rank 3, so a 4th pair would
    # have correlation 0 and a direction decided by rounding
    rng = np.random.default_rng(3)
    n, c = 200, 4
    y = rng.integers(0, c, n)
    L = np.eye(c)[y]
    X = L @ rng.normal(size=(c, 8)) + rng.normal(size=(n, 8))
    Y = L @ rng.normal(size=(c, 6)) + rng.normal(size=(n, 6))
    ds = PairedDataset("s", text_to_image=np.arange(n), n_images=n, image_features=X, text_features=Y, labels=L)
    m = methods.create("mlcca", n_components=6).fit(ds)
    assert m.encode_images(X).shape[1] == m.encode_texts(Y).shape[1] == c - 1
    assert (m.correlations_ > 1e-3).all()


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
    for flat in (ds.with_features(text_features=np.ones_like(Y)), ds.with_features(image_features=np.ones_like(X))):
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


def _pairs(n=300, seed=0, labels=None):
    rng = np.random.default_rng(seed)
    Z = rng.normal(size=(n, 3))
    X = Z @ rng.normal(size=(3, 6)) + rng.normal(size=(n, 6))
    Y = Z @ rng.normal(size=(3, 4)) + rng.normal(size=(n, 4))
    return X, Y, PairedDataset("s", text_to_image=np.arange(n), n_images=n, image_features=X,
                               text_features=Y, labels=labels)


def test_unregularised_cca_agrees_with_sklearn_cca():
    # scikit-learn's CCA (NIPALS mode B with deflation) converges to the same canonical pairs
    # as the closed form: same correlations, same directions up to sign and scale
    X, Y, ds = _pairs()
    m = methods.create("cca", n_components=3, reg=0.0).fit(ds)
    ref = SklearnCCA(n_components=3, scale=False, max_iter=5000, tol=1e-12).fit(X, Y)
    xs, ys = ref.transform(X, Y)
    np.testing.assert_allclose(m.correlations_, [np.corrcoef(xs[:, j], ys[:, j])[0, 1] for j in range(3)],
                               rtol=1e-8)
    zi, zt = m.encode_images(X), m.encode_texts(Y)
    for j in range(3):
        assert abs(np.corrcoef(zi[:, j], xs[:, j])[0, 1]) == pytest.approx(1, abs=1e-9)
        assert abs(np.corrcoef(zt[:, j], ys[:, j])[0, 1]) == pytest.approx(1, abs=1e-9)


def test_kcca_feature_map_is_sklearns_nystroem_transform():
    # the saved arrays reproduce scikit-learn's Nystroem.transform exactly (a change there
    # would show here rather than as a silently different space)
    X, Y, ds = _pairs(n=120)
    m = methods.create("kcca", exact_max_samples=0, n_landmarks=40, random_state=3).fit(ds)
    for Z, side, gamma in ((X, "x", m.gx_), (Y, "y", m.gy_)):
        ref = Nystroem(gamma=gamma, n_components=40, random_state=3).fit(Z)
        np.testing.assert_allclose(m._nystroem(Z[:30] + 0.1, side), ref.transform(Z[:30] + 0.1), atol=1e-12)


@pytest.mark.parametrize("exact_max_samples", [3000, 0])
def test_kcca_default_gamma_is_scale_free(exact_max_samples):
    # gamma=None is scikit-learn's "scale", 1 / (d var): features in other units give the same
    # kernel. An absolute 1e-12 added to d var changed it by 15% for features ~1e-6 (the
    # correlations moved by 0.007)
    X, Y, ds = _pairs(n=80)
    small = ds.with_features(image_features=X * 1e-6, text_features=Y * 1e3)
    kw = dict(exact_max_samples=exact_max_samples, n_landmarks=40)
    a, b = methods.create("kcca", **kw).fit(ds), methods.create("kcca", **kw).fit(small)
    assert b.gx_ == pytest.approx(a.gx_ * 1e12, rel=1e-9)
    np.testing.assert_allclose(b.correlations_, a.correlations_, rtol=1e-7)


def test_kcca_default_gamma_of_a_constant_side_is_finite():
    # as scikit-learn's gamma="scale": 1 where the features do not vary (no division by zero)
    X, Y, ds = _pairs(n=40)
    with pytest.raises(DataError, match="KernelCCA.*no correlated direction"):
        methods.create("kcca").fit(ds.with_features(text_features=np.zeros_like(Y)))


def _labelled_as(L):
    X, Y, _ = _pairs(n=len(L))
    return PairedDataset("s", text_to_image=np.arange(len(L)), n_images=len(L), image_features=X,
                         text_features=Y, labels=L)


@pytest.mark.parametrize("name", ["mlcca", "sm", "scm"])
@pytest.mark.parametrize("labels", ["one class", "no labels"])
def test_labels_that_never_differ_are_refused_naming_the_method(name, labels):
    # every training pair in one class (or none labelled): the label similarity is the same for
    # every pair, so ml-CCA's weighted Cxy is 0 (it kept a "pair" of correlation 1e-32 set by
    # rounding, or divided by zero), and SM/SCM's posteriors cannot depend on the features
    # (scikit-learn's LogisticRegression raised a ValueError naming no method)
    L = np.zeros((60, 3))
    if labels == "one class":
        L[:, 1] = 1
    cls = type(methods.create(name)).__name__
    with pytest.raises(DataError, match=f"^{cls}: .*label"):
        methods.create(name).fit(_labelled_as(L))


def test_mlcca_refuses_one_class_among_unlabelled_pairs_naming_that_class():
    # pairs without labels weigh nothing in ml-CCA: the labelled ones alone all share class 2
    L = np.zeros((60, 3))
    L[20:, 2] = 1
    with pytest.raises(DataError, match=r"^MultiLabelCCA: every labelled training pair has the same "
                                        r"labels \(columns \[2\]\)"):
        methods.create("mlcca").fit(_labelled_as(L))


def test_mlcca_ignores_unlabelled_pairs_but_keeps_the_labelled_ones():
    # some pairs without any label (an untagged NUS-WIDE image): s_ij = 0 for them, so they
    # weigh nothing, and the space is the one fitted on the labelled pairs alone
    rng = np.random.default_rng(7)
    L = np.eye(3)[rng.integers(0, 3, 90)]
    L[:10] = 0
    ds = _labelled_as(L)
    a = methods.create("mlcca", n_components=2).fit(ds)
    b = methods.create("mlcca", n_components=2).fit(ds.subset(np.arange(10, 90)))
    np.testing.assert_allclose(a.correlations_, b.correlations_, rtol=1e-9)


def test_kcca_nystroem_uses_the_same_landmark_pairs_on_both_sides():
    # the two Nystroem maps share their landmark rows, so landmark i is one training pair
    X, Y, ds = _pairs(n=120)
    m = methods.create("kcca", exact_max_samples=0, n_landmarks=25, random_state=5).fit(ds)
    rows = [int(np.flatnonzero((X == c).all(axis=1))[0]) for c in m.train_images_]
    np.testing.assert_array_equal(m.train_texts_, Y[rows])


def test_kernel_centring_is_sklearns_kernel_centerer():
    from sklearn.metrics.pairwise import rbf_kernel
    from sklearn.preprocessing import KernelCenterer

    from xmodal.methods._solvers import center_kernel_test, center_kernel_train

    X, _, _ = _pairs(n=50)
    K, Q = rbf_kernel(X, gamma=0.1), rbf_kernel(X[:7] + 0.2, X, gamma=0.1)
    ref = KernelCenterer().fit(K)
    Kc, col, grand = center_kernel_train(K)
    np.testing.assert_allclose(Kc, ref.transform(K), atol=1e-12)
    np.testing.assert_allclose(center_kernel_test(Q, col, grand), ref.transform(Q), atol=1e-12)


def test_numerical_rank_threshold_is_d_eps32_squared_times_the_largest_correlation_eigenvalue():
    # correlation eigenvalues at or under d * eps32^2 * max are rounding: one just above that
    # (singular value ~ sqrt(d) eps32) is a direction, one just under is not. Correlation
    # matrices with those exact spectra (largest 2.5) through random_correlation, scaled per
    # column (the judgement is scale-free), with an all-zero column that is no direction either
    from scipy.stats import random_correlation

    from xmodal.methods._solvers import numerical_rank

    eps32, d = float(np.finfo(np.float32).eps), 4
    thr = d * eps32 ** 2 * 2.5
    scale = np.array([1e-4, 1.0, 3e3, 0.2, 0.0])
    for t, rank in ((2 * thr, 4), (0.5 * thr, 3)):
        R = random_correlation.rvs([2.5, 1.0, 0.5 - t, t], random_state=np.random.default_rng(0))
        C = np.zeros((d + 1, d + 1))
        C[:d, :d] = R
        C = C * np.outer(scale, scale)
        assert numerical_rank(C, np.r_[np.ones(d), 0.0]) == rank, t


def test_correlated_pairs_keeps_correlations_above_rounding_of_the_leading_one():
    from xmodal.methods._solvers import correlated_pairs

    rho = np.array([1e-3, 1e-11, 1e-13, 0.0])  # 1e-9 of the leading one is the cut, however small it is
    np.testing.assert_array_equal(correlated_pairs(rho), [True, True, False, False])
    np.testing.assert_array_equal(correlated_pairs(rho, rank=1), [True, False, False, False])
    np.testing.assert_array_equal(correlated_pairs(np.zeros(3)), [False] * 3)
    assert correlated_pairs(np.zeros(0)).shape == (0,)


def test_ridge_adds_a_fraction_of_the_mean_eigenvalue_and_reg_itself_to_a_zero_matrix():
    from xmodal.methods._solvers import ridge

    C = np.diag([4.0, 1.0, 1.0]) * 1e-8
    np.testing.assert_allclose(ridge(C, 0.5), C + 0.5 * 2e-8 * np.eye(3), rtol=1e-12)
    np.testing.assert_array_equal(ridge(np.zeros((2, 2)), 0.5), 0.5 * np.eye(2))


def test_cca_is_the_textbook_generalised_eigenproblem_with_unit_variance_directions():
    # Hotelling's problem on the sample covariances (ddof=1): Cxy Cyy^-1 Cyx a = rho^2 Cxx a,
    # directions of unit sample variance, uncorrelated across pairs, correlated by rho within
    X, Y, ds = _pairs(n=50, seed=8)
    m = methods.create("cca", n_components=3, reg=0.0).fit(ds)
    C = np.cov(np.hstack([X, Y]), rowvar=False)
    Cxx, Cyy, Cxy = C[:6, :6], C[6:, 6:], C[:6, 6:]
    ev = linalg.eigh(Cxy @ linalg.solve(Cyy, Cxy.T), Cxx, eigvals_only=True)[::-1]
    np.testing.assert_allclose(m.correlations_ ** 2, ev[:3], rtol=1e-9)
    A, B = m.image_weights_, m.text_weights_
    np.testing.assert_allclose(A.T @ Cxx @ A, np.eye(3), atol=1e-9)
    np.testing.assert_allclose(B.T @ Cyy @ B, np.eye(3), atol=1e-9)
    np.testing.assert_allclose(A.T @ Cxy @ B, np.diag(m.correlations_), atol=1e-9)


def test_truncated_is_the_fit_with_fewer_components():
    X, Y, ds = _pairs(n=80, seed=9)
    full = methods.create("cca", n_components=4).fit(ds)
    cut, ref = full.truncated(2), methods.create("cca", n_components=2).fit(ds)
    np.testing.assert_allclose(cut.correlations_, ref.correlations_, rtol=1e-12)
    np.testing.assert_allclose(cut.encode_images(X), ref.encode_images(X), atol=1e-10)
    np.testing.assert_allclose(cut.encode_texts(Y), ref.encode_texts(Y), atol=1e-10)


@pytest.mark.parametrize("name", LINEAR)
def test_a_column_constant_up_to_float32_rounding_is_no_direction_at_any_sample_size(name):
    # 1000 +- a few float32 ulps: its spread is under float32 rounding of its value, so the image
    # side has rank 2 and 2 pairs exist. CFA and PLS judged it on X'X (n times the covariance):
    # with 200 rows the rounding counted as a direction and a 3rd pair of noise was kept
    rng = np.random.default_rng(10)
    n = 200
    Z = rng.normal(size=(n, 2))
    X = np.c_[Z @ rng.normal(size=(2, 2)) + 0.3 * rng.normal(size=(n, 2)), 1000 + 4e-5 * rng.normal(size=n)]
    X = X.astype(np.float32).astype(np.float64)
    assert 1 < len(np.unique(X[:, 2])) and X[:, 2].std() < np.finfo(np.float32).eps * 1000
    Y = Z @ rng.normal(size=(2, 4)) + rng.normal(size=(n, 4))
    labels = np.eye(3)[rng.integers(0, 3, n)]
    ds = PairedDataset("s", text_to_image=np.arange(n), n_images=n, image_features=X, text_features=Y,
                       labels=labels)
    for unit in (1.0, 1e-6):  # the judgement is scale-free
        small = ds.with_features(image_features=X * unit, text_features=Y * unit)
        m = methods.create(name, n_components=4).fit(small)
        assert m.encode_images(X * unit).shape[1] == m.encode_texts(Y * unit).shape[1] == 2, unit


def test_defaults_are_the_ones_the_wikipedia_table_was_made_with():
    # docs/results.md's subspace rows are fitted with these; a changed default moves the table
    expected = {
        "cca": {"n_components": 10, "reg": 1e-3, "scale_power": 0.0},
        "mlcca": {"n_components": 10, "reg": 1e-3, "scale_power": 0.0},
        "kcca": {"n_components": 10, "reg": 1.0, "gamma_image": None, "gamma_text": None,
                 "exact_max_samples": 3000, "n_landmarks": 1000, "random_state": 0},
        "pls": {"n_components": 10, "scale": True}, "sm": {"C": 1.0},
        "scm": {"n_components": 10, "reg": 1e-3, "C": 1.0}, "cfa": {"n_components": 10}}
    for name, params in expected.items():
        assert methods.create(name).get_params() == params, name


def test_kcca_encodes_each_side_with_its_own_centred_kernel_and_dual_coefficients():
    # a query's code is its kernel row against that side's training set, centred as
    # scikit-learn's KernelCenterer does with the training kernel, times that side's coefficients;
    # and up to exact_max_samples pairs (inclusive) are solved exactly
    from sklearn.preprocessing import KernelCenterer

    X, Y, ds = _nonlinear_pairs(n=60, seed=2)
    m = methods.create("kcca", n_components=3, reg=0.5, exact_max_samples=60).fit(ds)
    assert m.exact_
    for Z, Q, gamma, W, enc in ((X, X[:9] + 0.1, m.gx_, m.alpha_, m.encode_images),
                                (Y, Y[:9] + 0.1, m.gy_, m.beta_, m.encode_texts)):
        ref = KernelCenterer().fit(rbf_kernel(Z, gamma=gamma))
        np.testing.assert_allclose(enc(Q), ref.transform(rbf_kernel(Q, Z, gamma=gamma)) @ W, atol=1e-10)


@pytest.mark.parametrize("name", ["sm", "scm"])
def test_semantic_posteriors_of_labels_never_or_once_seen_in_training(name):
    # single-label: a class absent from training has posterior 0, a far query stays finite;
    # multi-label: a label never on has posterior ~0, one on for a single pair is still regressed
    X, Y, ds = _labelled(n=90, seed=11)
    L = np.c_[ds.labels, np.zeros(90)]
    m = methods.create(name).fit(PairedDataset("s", text_to_image=np.arange(90), n_images=90, image_features=X,
                                               text_features=Y, labels=L))
    P = m.encode_images(np.vstack([X[:5], 1e6 * X[:5]]))
    assert np.isfinite(P).all() and (P[:, 3] < 1e-12).all()
    np.testing.assert_allclose(P.sum(1), 1, rtol=1e-9)
    M = L.copy()
    M[:, 3] = 0
    M[0, 3] = 1  # on for one pair only: a regression, not a constant
    M[:, 1] = np.maximum(M[:, 1], M[:, 0])  # overlapping labels make it multi-label
    ml = PairedDataset("s", text_to_image=np.arange(90), n_images=90, image_features=X, text_features=Y,
                       labels=np.c_[M, np.zeros(90)])
    m = methods.create(name).fit(ml)
    assert m.multilabel_ and (m.image_coef_[3] != 0).any() and (m.image_coef_[4] == 0).all()
    assert (m.encode_images(X[:5])[:, 4] < 1e-8).all()


def test_semantic_matching_is_standard_scaling_then_logistic_regression_per_modality():
    # Rasiwasia et al.'s SM: each modality's standardised features -> multinomial logistic
    # regression -> class posteriors; SCM: the same on the CCA projections
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    X, Y, ds = _labelled(n=90, seed=2)
    y = ds.labels.argmax(1)
    Xq, Yq = X[:7] + 0.3, Y[:7] - 0.2
    for C in (1.0, 0.05):
        m = methods.create("sm", C=C).fit(ds)
        for Z, Q, enc in ((X, Xq, m.encode_images), (Y, Yq, m.encode_texts)):
            sc = StandardScaler().fit(Z)
            ref = LogisticRegression(C=C, max_iter=2000).fit(sc.transform(Z), y)
            np.testing.assert_allclose(enc(Q), ref.predict_proba(sc.transform(Q)), atol=1e-6)
        s = methods.create("scm", n_components=2, C=C).fit(ds)
        for Z, Q, enc, proj in ((X, Xq, s.encode_images, s.cca_._encode_images),
                                (Y, Yq, s.encode_texts, s.cca_._encode_texts)):
            ref = LogisticRegression(C=C, max_iter=2000).fit(proj(Z), y)
            np.testing.assert_allclose(enc(Q), ref.predict_proba(proj(Q)), atol=1e-6)


def test_semantic_matching_takes_an_all_zero_column():
    # a bag-of-words word never used in training: its standard deviation and mean are both 0,
    # so it is scaled by 1 (not 0/0 = NaN in training, x/0 = inf at encode time)
    X, Y, ds = _labelled(n=90, seed=3)
    X0 = np.c_[X, np.zeros(90)]
    m = methods.create("sm").fit(ds.with_features(image_features=X0))
    q = np.c_[X[:5], np.full(5, 3.0)]
    P = m.encode_images(q)
    assert np.isfinite(P).all()
    np.testing.assert_allclose(P, methods.create("sm").fit(ds).encode_images(X[:5]), atol=1e-6)


@pytest.mark.parametrize("name", ["sm", "scm"])
def test_multilabel_label_on_for_every_training_pair_has_posterior_one(name):
    X, Y, ds = _labelled(n=90, seed=4)
    L = np.c_[ds.labels, np.ones(90)]  # label 3 on everywhere: multi-label data
    m = methods.create(name).fit(PairedDataset("s", text_to_image=np.arange(90), n_images=90, image_features=X,
                                               text_features=Y, labels=L))
    assert m.multilabel_ and (m.image_coef_[3] == 0).all() and (m.text_coef_[3] == 0).all()
    P = m.encode_images(np.vstack([X[:5], 1e3 * X[:5]]))
    assert (P[:, 3] > 1 - 1e-8).all()
    assert (m.encode_texts(Y[:5])[:, 3] > 1 - 1e-8).all()


@pytest.mark.parametrize("name", ["sm", "scm"])
def test_single_label_data_with_unlabelled_pairs_keeps_the_multinomial_regression(name):
    # Rasiwasia et al.'s multinomial regression, fitted on the labelled pairs: an all-zero row
    # is no example of class 0 (its argmax), nor a reason to switch to one-vs-rest regressions
    from sklearn.linear_model import LogisticRegression

    X, Y, ds = _labelled(n=90, seed=5)
    L = ds.labels.copy()
    L[::3] = 0
    part = PairedDataset("s", text_to_image=np.arange(90), n_images=90, image_features=X,
                         text_features=Y, labels=L)
    m = methods.create(name).fit(part)
    assert not m.multilabel_
    P = m.encode_images(X[:6])
    np.testing.assert_allclose(P.sum(axis=1), 1, atol=1e-6)  # posteriors over the classes
    rows = L.any(axis=1)
    Z = m._std(X, "image") if name == "sm" else m.cca_._encode_images(X)
    ref = LogisticRegression(C=1.0, max_iter=2000).fit(Z[rows], L[rows].argmax(axis=1))
    np.testing.assert_allclose(m.image_coef_, ref.coef_, atol=1e-6)
    # labelled pairs of one class only (the others unlabelled) say nothing: refused, naming it
    one = np.zeros_like(L)
    one[::2, 1] = 1
    with pytest.raises(DataError, match="same labels"):
        methods.create(name).fit(PairedDataset("s", text_to_image=np.arange(90), n_images=90,
                                               image_features=X, text_features=Y, labels=one))
