"""Second-look review of the CCA family (session 14): agreement with scikit-learn's CCA and
Nystroem, kernel CCA's default bandwidth in any units, and labels that carry no semantics."""

import numpy as np
import pytest
from sklearn.cross_decomposition import CCA as SklearnCCA
from sklearn.kernel_approximation import Nystroem

from xmodal import methods
from xmodal.data import DataError, PairedDataset


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


def _labelled(L):
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
        methods.create(name).fit(_labelled(L))


def test_mlcca_refuses_one_class_among_unlabelled_pairs_naming_that_class():
    # pairs without labels weigh nothing in ml-CCA: the labelled ones alone all share class 2
    L = np.zeros((60, 3))
    L[20:, 2] = 1
    with pytest.raises(DataError, match=r"^MultiLabelCCA: every labelled training pair has the same "
                                        r"labels \(columns \[2\]\)"):
        methods.create("mlcca").fit(_labelled(L))


def test_mlcca_ignores_unlabelled_pairs_but_keeps_the_labelled_ones():
    # some pairs without any label (an untagged NUS-WIDE image): s_ij = 0 for them, so they
    # weigh nothing, and the space is the one fitted on the labelled pairs alone
    rng = np.random.default_rng(7)
    L = np.eye(3)[rng.integers(0, 3, 90)]
    L[:10] = 0
    ds = _labelled(L)
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
