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


def test_pls_matches_sklearn_transform():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(100, 8)) * rng.uniform(0.1, 10, 8) + 3
    Y = X[:, :3] @ rng.normal(size=(3, 5)) + rng.normal(size=(100, 5))
    ds = PairedDataset("s", text_to_image=np.arange(100), n_images=100, image_features=X, text_features=Y)
    for scale in (True, False):
        ref = PLSCanonical(n_components=3, scale=scale, max_iter=1000).fit(X, Y)
        m = methods.create("pls", n_components=3, scale=scale).fit(ds)
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
