"""Pieces shared by the shallow hashing methods: nonlinear feature maps, ITQ, label affinities
and out-of-sample hash functions (ridge or logistic regression from features to bits)."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from scipy import linalg, optimize
from sklearn.metrics.pairwise import euclidean_distances, rbf_kernel

from ..base import HashingMethod, ParameterError, interval, one_of

_POS_INT = interval(1, None, integer=True)


def rbf_anchor_features(Z: np.ndarray, anchors: np.ndarray, sigma: float) -> np.ndarray:
    """exp(-||z - a||^2 / (2 sigma^2)) against every anchor: the nonlinear embedding of SePH,
    KSH and most shallow cross-modal hashing code (so code length can exceed input dimension).
    scikit-learn's kernel, whose distances of float32 features are taken in float64."""
    return rbf_kernel(Z, anchors, gamma=1.0 / (2 * sigma * sigma))


class FeatureMapMixin:
    """Per-modality input map: ``kernel="rbf"`` maps to RBF similarities to ``n_anchors``
    training points (sigma = mean distance to the anchors), ``"linear"`` keeps the features,
    ``"auto"`` picks rbf for low-dimensional (< 256-d, hand-crafted) features and linear for
    the rest (deep encoder features are already close to linearly separable, and an RBF map
    of them only loses information). The output is centred on the training mean."""

    _map_rules: ClassVar[dict[str, Any]] = {"kernel": one_of("auto", "rbf", "linear"), "n_anchors": _POS_INT}

    def _fit_map(self, Z: np.ndarray, side: str, rng: np.random.Generator) -> np.ndarray:
        kind = self.kernel if self.kernel != "auto" else ("linear" if Z.shape[1] >= 256 else "rbf")
        if kind == "rbf":
            m = min(self.n_anchors, len(Z))
            anchors = Z[np.sort(rng.choice(len(Z), m, replace=False))]
            sigma = float(euclidean_distances(Z, anchors).mean()) + 1e-12
            F = rbf_anchor_features(Z, anchors, sigma)
        else:
            anchors, sigma, F = np.zeros((0, Z.shape[1])), 0.0, Z
        mean = F.mean(axis=0)
        setattr(self, f"{side}_anchors_", anchors)
        setattr(self, f"{side}_sigma_", sigma)
        setattr(self, f"{side}_fmean_", mean)
        return F - mean

    def _map(self, Z: np.ndarray, side: str) -> np.ndarray:
        anchors = getattr(self, f"{side}_anchors_")
        F = rbf_anchor_features(Z, anchors, getattr(self, f"{side}_sigma_")) if len(anchors) else Z
        return F - getattr(self, f"{side}_fmean_")


def itq_rotation(V: np.ndarray, n_iter: int = 50, rng: np.random.Generator | None = None) -> np.ndarray:
    """Iterative quantization (Gong & Lazebnik 2011): orthogonal R minimising ||sign(VR) - VR||."""
    rng = rng or np.random.default_rng(0)
    c = V.shape[1]
    R = linalg.qr(rng.standard_normal((c, c)))[0]
    for _ in range(n_iter):
        B = np.where(V @ R >= 0, 1.0, -1.0)
        U, _, Wt = linalg.svd(V.T @ B)
        R = U @ Wt
    return R


def normalized_labels(L: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, so L̂ L̂' is the cosine label similarity."""
    return L / np.maximum(np.linalg.norm(L, axis=1, keepdims=True), 1e-12)


def ridge_hash(F: np.ndarray, B: np.ndarray, reg: float) -> np.ndarray:
    """W = argmin ||F W - B||^2 + reg * tr(F'F)/d * ||W||^2 (scale-free ridge)."""
    G = F.T @ F
    lam = reg * (np.trace(G) / G.shape[0] + 1e-12)
    return linalg.solve(G + lam * np.eye(G.shape[0]), F.T @ B, assume_a="pos")


def logistic_hash(F: np.ndarray, B: np.ndarray, reg: float, max_iter: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """One L2-regularised logistic regression per bit (all bits solved jointly by L-BFGS; they
    are independent, so this equals separate fits). ``B`` is {-1,+1}; returns (W, bias).
    Not scikit-learn's ``LogisticRegression`` per bit, which converges to the same optimum
    (tested): one joint solve is one matrix product per step for all bits, and bit by bit
    took 2x as long at full convergence and 14x as long as the default ``max_iter`` (SePH,
    Wikipedia, 32 bits). ``max_iter=200`` stops before full convergence (objective 0.7% above
    the optimum there), the setting every hashing table and ``C_reg`` were chosen with."""
    n, d = F.shape
    c = B.shape[1]
    lam = reg * n

    def f(w):
        W, b = w[:d * c].reshape(d, c), w[d * c:]
        Z = (F @ W + b) * B
        loss = np.logaddexp(0, -Z).sum() + 0.5 * lam * (W * W).sum()
        G = -B / (1 + np.exp(np.clip(Z, -50, 50)))
        return loss, np.concatenate([(F.T @ G + lam * W).ravel(), G.sum(axis=0)])

    w0 = np.concatenate([ridge_hash(F, B, 1e-2).ravel(), np.zeros(c)])
    res = optimize.minimize(f, w0, jac=True, method="L-BFGS-B", options={"maxiter": max_iter})
    return res.x[:d * c].reshape(d, c), res.x[d * c:]


def signs(Z: np.ndarray) -> np.ndarray:
    """sign with 0 -> +1 (a bit must be one or the other)."""
    return np.where(Z >= 0, 1.0, -1.0)


def subsample(n: int, max_n: int | None, rng: np.random.Generator) -> np.ndarray:
    if max_n is None or n <= max_n:
        return np.arange(n)
    return np.sort(rng.choice(n, max_n, replace=False))


class ShallowHashing(FeatureMapMixin, HashingMethod):
    """Base for the closed-form/alternating shallow methods: ``bits``, ``random_state`` and the
    feature map; encoders are linear maps (plus bias) of the mapped features."""

    _parameter_rules: ClassVar[dict[str, Any]] = {
        **FeatureMapMixin._map_rules, "random_state": interval(0, None, integer=True)}

    def _encode_images(self, X):
        return self._map(X, "image") @ self.image_proj_ + self.image_bias_

    def _encode_texts(self, Y):
        return self._map(Y, "text") @ self.text_proj_ + self.text_bias_

    def _check_rank(self, Fx: np.ndarray, Fy: np.ndarray) -> None:
        r = min(Fx.shape[1], Fy.shape[1])
        if self.bits > r:
            what = f"{type(self).__name__}: bits={self.bits} exceeds the {r} dimensions of the mapped features"
            if len(Fx) <= r or len(Fx) < self.bits:
                # the RBF map has one dimension per training pair when there are fewer pairs
                # than anchors: more anchors cannot help, only more pairs or fewer bits
                raise ParameterError(f"{what}: there are only {len(Fx)} training pairs; train on more "
                                     f"than {self.bits} pairs or use fewer bits")
            raise ParameterError(f"{what}; use kernel='rbf' with n_anchors >= bits")
