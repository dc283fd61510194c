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
