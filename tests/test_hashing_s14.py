"""Shared pieces of the shallow hashing methods against scikit-learn's equivalents."""

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from xmodal.methods.hashing._common import FeatureMapMixin, logistic_hash, rbf_anchor_features


def _objective(F, B, W, b, lam):
    Z = (F @ W + b) * B
    return np.logaddexp(0, -Z).sum() + 0.5 * lam * (W * W).sum()


def test_logistic_hash_reaches_sklearns_per_bit_optimum():
    rng = np.random.default_rng(0)
    F = rng.standard_normal((300, 12))
    B = np.where(F @ rng.standard_normal((12, 6)) + rng.standard_normal((300, 6)) >= 0, 1.0, -1.0)
    reg = 1e-3
    W, b = logistic_hash(F, B, reg, max_iter=5000)
    W2, b2 = np.zeros_like(W), np.zeros_like(b)
    for j in range(B.shape[1]):
        clf = LogisticRegression(C=1 / (reg * len(F)), tol=1e-10, max_iter=10000).fit(F, B[:, j] > 0)
        W2[:, j], b2[j] = clf.coef_[0], clf.intercept_[0]
    lam = reg * len(F)
    assert _objective(F, B, W, b, lam) == pytest.approx(_objective(F, B, W2, b2, lam), rel=1e-7)
    np.testing.assert_allclose(W, W2, atol=1e-3)
    np.testing.assert_allclose(b, b2, atol=1e-3)


def test_rbf_anchor_features_are_the_rbf_kernel_of_float32_features():
    rng = np.random.default_rng(1)
    Z = (rng.standard_normal((50, 8)) * 100).astype(np.float32)
    A = Z[:7]
    sigma = 120.0
    d2 = ((Z.astype(np.float64)[:, None, :] - A.astype(np.float64)[None]) ** 2).sum(-1)
    want = np.exp(-d2 / (2 * sigma * sigma))
    np.testing.assert_allclose(rbf_anchor_features(Z, A, sigma), want, rtol=1e-5, atol=1e-6)
    # an anchor against itself is exactly 1 despite float32 rounding of the large norms
    assert np.all(rbf_anchor_features(Z[:7], A, sigma).diagonal() == 1.0)


def test_feature_map_sigma_is_the_mean_anchor_distance():
    class M(FeatureMapMixin):
        kernel, n_anchors = "rbf", 10

    rng = np.random.default_rng(2)
    Z = rng.standard_normal((40, 5))
    m = M()
    m._fit_map(Z, "image", np.random.default_rng(0))
    d = np.sqrt(((Z[:, None, :] - m.image_anchors_[None]) ** 2).sum(-1))
    assert m.image_sigma_ == pytest.approx(d.mean(), rel=1e-9)


def test_scm_orth_is_the_authors_eigenproblem_and_bits_past_the_label_rank_are_null():
    """SCM-orth against a transcription of the authors' trainSCM_orth/trainCCA (same ridge):
    eig(Cxy Cyy^-1 Cxy', Cxx), Cxy = 2 X'L (Y'L)' - X'1 (Y'1)', Wy = Cyy^-1 Cxy' Wx / sqrt(eig).
    Up to the rank of X'S̃Y (labels - 1 for single-label data) both give the same eigenvalues
    and the same bits; past it the eigenvalues are zero, so those bits are arbitrary in both."""
    from scipy import linalg

    from conftest import need
    from xmodal import methods
    from xmodal.data import load_dataset
    from xmodal.methods.hashing._common import normalized_labels

    ds = load_dataset("wikipedia", data_dir=str(need("wikipedia")))
    tr = ds.subset(np.arange(700), name="wiki-700")
    reg = 1e-2
    m = methods.create("scm_orth", bits=24, reg=reg, random_state=0).fit(tr)
    X, Y, L = (np.asarray(a, np.float64) for a in tr.pairs())
    Fx, Fy = m._map(X, "image"), m._map(Y, "text")
    Ln = normalized_labels((L > 0).astype(float))
    n_labels = int((L.sum(axis=0) > 0).sum())
    Cxy = 2 * (Fx.T @ Ln) @ (Fy.T @ Ln).T - np.outer(Fx.sum(0), Fy.sum(0))
    Gx, Gy = Fx.T @ Fx, Fy.T @ Fy
    # xmodal's scale-free ridge, written on the unnormalised Gram matrices as the authors' code
    Cxx = Gx + reg * np.trace(Gx) / len(Gx) * np.eye(len(Gx))
    Cyy = Gy + reg * np.trace(Gy) / len(Gy) * np.eye(len(Gy))
    A = Cxy @ linalg.solve(Cyy, Cxy.T, assume_a="pos")
    ev, V = linalg.eigh((A + A.T) / 2, Cxx)
    order = np.argsort(-ev)
    ev, V = ev[order], V[:, order]
    r = n_labels - 1
    assert np.all(ev[:r] > 1e-3 * ev[0]) and np.all(np.abs(ev[r:24]) < 1e-9 * ev[0]), ev[:r + 2] / ev[0]
    Wy = linalg.solve(Cyy, Cxy.T @ V[:, :r], assume_a="pos") / np.sqrt(ev[:r])
    for ours, theirs in ((Fx @ m.image_proj_[:, :r], Fx @ V[:, :r]), (Fy @ m.text_proj_[:, :r], Fy @ Wy)):
        corr = np.array([np.corrcoef(ours[:, j], theirs[:, j])[0, 1] for j in range(r)])
        np.testing.assert_allclose(np.abs(corr), 1.0, atol=1e-6)
    # the pair (x-bit, y-bit) of each direction has one sign in both: the same codes up to a flip
    sx = np.sign(np.sum(Fx @ m.image_proj_[:, :r] * (Fx @ V[:, :r]), axis=0))
    sy = np.sign(np.sum(Fy @ m.text_proj_[:, :r] * (Fy @ Wy), axis=0))
    np.testing.assert_array_equal(sx, sy)
