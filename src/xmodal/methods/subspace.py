"""Subspace methods: CCA and its kernel, multi-label, semantic and PLS relatives, and cross-modal
factor analysis. Each is a short class over the shared solvers in :mod:`._solvers`.
Embeddings are compared by cosine similarity of centred projections (normalised correlation,
the measure Rasiwasia et al. 2010 found best)."""

from __future__ import annotations

import copy
from typing import Any, ClassVar

import numpy as np
from scipy import linalg
from scipy.special import expit
from sklearn.cross_decomposition import PLSCanonical
from sklearn.kernel_approximation import Nystroem
from sklearn.linear_model import LogisticRegression
from sklearn.metrics.pairwise import rbf_kernel

from ..data.dataset import DataError
from . import register
from ._solvers import (cca_from_covariances, center_kernel_test, center_kernel_train, correlated_pairs,
                       numerical_rank, ridge)
from .base import CrossModalMethod, ParameterError, interval, one_of

_N_COMP = interval(1, None, integer=True)
_REG = interval(0, None)


def _no_pairs(method: CrossModalMethod) -> DataError:
    return DataError(f"{type(method).__name__}: the training image and text features have no "
                     "correlated direction (is one side constant?)")


def _labels_that_differ(method: object, L: np.ndarray, same: np.ndarray) -> None:
    """Refuse training labels that carry no semantics: none at all, or the same for every pair
    (``same`` compares each row with the first). Label-weighted correspondence is then equal
    for every pair (ml-CCA's weighted Cxy is 0) and class posteriors cannot depend on the
    features; scikit-learn's one-class error, or a space set by rounding, named no method."""
    if not L.any():
        raise DataError(f"{type(method).__name__}: no training pair has a label (all {L.shape[1]} "
                        "label columns are 0)")
    if same.all():
        raise DataError(f"{type(method).__name__}: every labelled training pair has the same labels "
                        f"(columns {np.flatnonzero(L[L.any(axis=1)][0]).tolist()}): they say nothing about which "
                        "items belong together")


def _existing(method: CrossModalMethod, keep: np.ndarray) -> np.ndarray:
    """``keep`` (from :func:`._solvers.correlated_pairs`), refusing a space with no pair."""
    if not keep.any():
        raise _no_pairs(method)
    return keep


class _LinearProjection(CrossModalMethod):
    """Shared encode: centre, project, optionally weight by correlations^power."""

    def _weights(self) -> np.ndarray:
        p = getattr(self, "scale_power", 0.0) or 0.0
        return np.power(np.maximum(self.correlations_, 1e-12), p)

    def _encode_images(self, X: np.ndarray) -> np.ndarray:
        return ((X - self.image_mean_) @ self.image_weights_) * self._weights()

    def _encode_texts(self, Y: np.ndarray) -> np.ndarray:
        return ((Y - self.text_mean_) @ self.text_weights_) * self._weights()


@register("cca")
class CCA(_LinearProjection):
    """Regularised canonical correlation analysis, closed form (Hotelling 1936; used for
    cross-modal retrieval as "correlation matching" by Rasiwasia et al., ACM MM 2010).

    ``reg`` adds that fraction of the mean eigenvalue to each covariance (ridge CCA);
    ``scale_power`` weights dimension i by rho_i^power before cosine scoring (Gong, Ke, Isard
    & Lazebnik, IJCV 2014, weigh by their generalised eigenvalue 1 + rho to the power 4). At most
    min(rank X, rank Y) pairs exist (:func:`._solvers.numerical_rank`; 9 on Wikipedia, whose 10
    topic proportions sum to one): pairs past that, or with zero correlation, are dropped, so
    the embedding may have fewer than ``n_components`` dimensions.
    """

    _parameter_rules: ClassVar[dict[str, Any]] = {
        "n_components": _N_COMP, "reg": _REG, "scale_power": interval(0, 4)}

    def __init__(self, n_components: int = 10, reg: float = 1e-3, scale_power: float = 0.0):
        self.n_components = n_components
        self.reg = reg
        self.scale_power = scale_power

    def _fit(self, X, Y, L, *, train, val) -> None:
        self.image_mean_, self.text_mean_ = X.mean(axis=0), Y.mean(axis=0)
        Xc, Yc = X - self.image_mean_, Y - self.text_mean_
        n = len(X) - 1
        Cxx, Cyy = Xc.T @ Xc / n, Yc.T @ Yc / n
        self._solve(Cxx, Cyy, Xc.T @ Yc / n)

    def _solve(self, Cxx: np.ndarray, Cyy: np.ndarray, Cxy: np.ndarray) -> None:
        """The ridge CCA of these covariances (centred on ``image_mean_`` / ``text_mean_``),
        keeping only the canonical pairs that exist (:func:`._solvers.correlated_pairs`)."""
        A, B, rho = cca_from_covariances(ridge(Cxx, self.reg), ridge(Cyy, self.reg), Cxy, self.n_components)
        keep = _existing(self, correlated_pairs(rho, min(numerical_rank(Cxx, self.image_mean_),
                                                         numerical_rank(Cyy, self.text_mean_))))
        self.image_weights_, self.text_weights_, self.correlations_ = A[:, keep], B[:, keep], rho[keep]

    def truncated(self, n_components: int) -> "CCA":
        """A copy of this fitted space cut to its leading ``n_components`` canonical pairs:
        what a fit with that ``n_components`` gives, since the leading pairs do not depend on
        how many follow. Parameter search scores several sizes with one fit this way."""
        self._check_fitted()
        if not _N_COMP(n_components):  # int(2.7) would have cut it to 2 in silence
            raise ParameterError(f"{type(self).__name__}.truncated: n_components={n_components!r} "
                                 f"must be {_N_COMP.__doc__}")
        out = copy.copy(self)
        out.n_components = n_components
        out.image_weights_ = self.image_weights_[:, :n_components]
        out.text_weights_ = self.text_weights_[:, :n_components]
        out.correlations_ = self.correlations_[:n_components]
        return out


@register("mlcca")
class MultiLabelCCA(CCA):
    """Multi-label CCA (Ranjan, Rasiwasia & Jawahar, "Multi-Label Cross-modal Retrieval",
    ICCV 2015): correspondence between any image i and text j is weighted by their label
    similarity s_ij (cosine of label vectors), so items that share semantics are pulled
    together even when they are not paired:
    Cxy = sum_ij s_ij x_i y_j',  Cxx = sum_ij s_ij x_i x_i',  Cyy = sum_ij s_ij y_j y_j'.
    S = Ln Ln' (row-normalised labels) is never formed: every sum costs O(n d c).
    Pairs with zero correlation (past the rank of Cxy, c - 1 for c single-label classes, or of
    either view) are dropped, so the embedding may have fewer than ``n_components`` dimensions.
    A pair without labels has s_ij = 0 with every other and weighs nothing.

    Each direction has unit Euclidean norm, as the eigenvectors of the authors' Fast ml-CCA
    MATLAB code (whose sums are these), not unit weighted variance as in :class:`CCA`; the
    two weigh the dimensions differently under cosine scoring, and unit norm was better on
    three 80/20 splits of the Wikipedia training pairs (validation MAP +0.019 to +0.028 image
    to text, +0.011 to +0.015 text to image). One detail differs from that code: the views
    are centred on the s-weighted means (so Cxy is a covariance; the code subtracts the plain
    means, within 0.002 MAP of this on Wikipedia).
    """

    supervised = True

    def _fit(self, X, Y, L, *, train, val) -> None:
        L = np.asarray(L, dtype=np.float64)  # fit() hands labels over as float32
        Ln = L / np.maximum(np.linalg.norm(L, axis=1, keepdims=True), 1e-12)
        # a pair without labels has s_ij = 0 with every other: it weighs nothing
        labelled = Ln.any(axis=1)
        _labels_that_differ(self, L, ~labelled | (np.abs(Ln - Ln[labelled.argmax()]).max(axis=1) <= 1e-12))
        w = Ln @ Ln.sum(axis=0)  # row sums of S (= column sums, S is symmetric)
        wn = w / w.sum()
        self.image_mean_, self.text_mean_ = wn @ X, wn @ Y
        Xc, Yc = X - self.image_mean_, Y - self.text_mean_
        total = w.sum()
        Cxy = (Xc.T @ Ln) @ (Ln.T @ Yc) / total
        Cxx = (Xc * w[:, None]).T @ Xc / total
        Cyy = (Yc * w[:, None]).T @ Yc / total
        # Cxy has rank at most (distinct label patterns - 1): on single-label data with c classes,
        # pairs past c - 1 have zero correlation and a direction set by rounding: _solve drops them
        self._solve(Cxx, Cyy, Cxy)
        self.image_weights_ = self.image_weights_ / np.linalg.norm(self.image_weights_, axis=0)
        self.text_weights_ = self.text_weights_ / np.linalg.norm(self.text_weights_, axis=0)


@register("cfa")
class CrossModalFactorAnalysis(_LinearProjection):
    """Cross-modal factor analysis (Li, Dimitrova, Li & Sethi, "Multimedia content processing
    through cross-modal association", ACM MM 2003): orthonormal A, B minimising
    ||X A - Y B||_F, solved by the SVD of X'Y (A = U, B = V) on centred features. Each modality
    is also divided by its RMS row norm; that global scale leaves U and V unchanged and only sets
    the embeddings' scale (cosine scoring ignores it)."""

    _parameter_rules: ClassVar[dict[str, Any]] = {"n_components": _N_COMP}

    def __init__(self, n_components: int = 10):
        self.n_components = n_components

    def _fit(self, X, Y, L, *, train, val) -> None:
        self.image_mean_, self.text_mean_ = X.mean(axis=0), Y.mean(axis=0)
        sx = np.sqrt(((X - self.image_mean_) ** 2).sum() / len(X)) + 1e-12
        sy = np.sqrt(((Y - self.text_mean_) ** 2).sum() / len(Y)) + 1e-12
        Xc, Yc = (X - self.image_mean_) / sx, (Y - self.text_mean_) / sy
        U, s, Vt = linalg.svd(Xc.T @ Yc, full_matrices=False)
        k = min(self.n_components, len(s))
        # singular values past the rank of X'Y are 0 with directions set by rounding (the rank of covariances, not X'X)
        rank = min(numerical_rank(Xc.T @ Xc / len(X), self.image_mean_ / sx),
                   numerical_rank(Yc.T @ Yc / len(Y), self.text_mean_ / sy))
        keep = _existing(self, correlated_pairs(s[:k], rank))
        self.image_weights_, self.text_weights_ = U[:, :k][:, keep] / sx, Vt[:k].T[:, keep] / sy
        self.correlations_ = s[:k][keep] / s[0]


@register("pls")
class PLS(_LinearProjection):
    """Partial least squares (Wold's PLS-mode A, symmetric deflation), as used for cross-modal
    matching by Sharma & Jacobs ("Bypassing synthesis: PLS for face recognition with pose,
    low-resolution and sketch", CVPR 2011). Solved by scikit-learn's ``PLSCanonical``. At most
    min(rank X, rank Y) components exist (both blocks are deflated); more are not asked for."""

    _parameter_rules: ClassVar[dict[str, Any]] = {"n_components": _N_COMP, "scale": one_of(True, False)}

    def __init__(self, n_components: int = 10, scale: bool = True):
        self.n_components = n_components
        self.scale = scale

    def _fit(self, X, Y, L, *, train, val) -> None:
        self.image_mean_, self.text_mean_ = X.mean(axis=0), Y.mean(axis=0)
        Xc, Yc = X - self.image_mean_, Y - self.text_mean_
        # past the rank of either block the deflated residual is rounding: its weights, and so
        # one side's scores, are noise (Wikipedia's topic proportions sum to one: rank 9 of 10)
        k = min(self.n_components, numerical_rank(Xc.T @ Xc / len(X), self.image_mean_),
                numerical_rank(Yc.T @ Yc / len(Y), self.text_mean_))
        if k < 1:
            raise _no_pairs(self)
        pls = PLSCanonical(n_components=k, scale=self.scale, max_iter=1000).fit(X, Y)
        # transform() is affine; read its linear part off the public API (unit steps from the
        # mean) rather than sklearn's private scaling attributes.
        dx, dy = X.shape[1], Y.shape[1]
        Xs = self.image_mean_ + np.vstack([np.zeros(dx), np.eye(dx)])
        Ys = self.text_mean_ + np.vstack([np.zeros(dy), np.eye(dy)])
        zx = pls.transform(Xs)
        zy = pls.transform(np.repeat(Xs[:1], dy + 1, axis=0), Ys)[1]
        self.image_weights_, self.text_weights_ = zx[1:] - zx[:1], zy[1:] - zy[:1]
        self.correlations_ = np.ones(k)


@register("kcca")
class KernelCCA(CrossModalMethod):
    """Kernel CCA with RBF kernels (Hardoon, Szedmak & Shawe-Taylor, "Canonical correlation
    analysis: an overview with application to learning methods", Neural Computation 2004).

    Hardoon et al.'s regularised problem, max a'Kx Ky b subject to a'(Kx^2 + k Kx)a = 1 (same for
    b), i.e. (Kx + kI)^{-1} Ky (Ky + kI)^{-1} Kx a = rho^2 a, solved exactly for up to
    ``exact_max_samples`` training pairs by whitening: with Sx = (Kx (Kx + kI)^{-1})^{1/2},
    Sx Sy = U S V' and a = (Kx (Kx + kI))^{-1/2} U (pseudo-inverse on the centred kernel's null
    space). Above that, a Nystroem approximation (Williams & Seeger 2001) with ``n_landmarks``
    landmarks maps each side to explicit features F (F F' ~ K) and the same problem is solved
    in primal form, ridge CCA with F'F + kI. ``reg`` sets k as a fraction of the mean eigenvalue
    of the centred training kernel (the paper leaves k free; 1.0 was chosen on a held-out part
    of the Wikipedia training set). ``gamma=None`` uses 1 / (d * var(X)), per modality
    (scikit-learn's ``gamma="scale"``).
    """

    _parameter_rules: ClassVar[dict[str, Any]] = {
        "n_components": _N_COMP, "reg": interval(0, None, closed="neither"),
        "gamma_image": [None, interval(0, None, closed="neither")],
        "gamma_text": [None, interval(0, None, closed="neither")],
        "exact_max_samples": interval(0, None, integer=True),
        "n_landmarks": interval(1, None, integer=True), "random_state": interval(0, None, integer=True)}

    def __init__(self, n_components: int = 10, reg: float = 1.0, gamma_image: float | None = None,
                 gamma_text: float | None = None, exact_max_samples: int = 3000,
                 n_landmarks: int = 1000, random_state: int = 0):
        self.n_components = n_components
        self.reg = reg
        self.gamma_image = gamma_image
        self.gamma_text = gamma_text
        self.exact_max_samples = exact_max_samples
        self.n_landmarks = n_landmarks
        self.random_state = random_state

    @staticmethod
    def _gamma(Z: np.ndarray, gamma: float | None) -> float:
        if gamma is not None:
            return float(gamma)
        # scikit-learn's gamma="scale", 1 where Z does not vary; no absolute floor on d var(Z),
        # which gave features in small units (var ~1e-12) another kernel
        spread = Z.shape[1] * Z.var()
        return 1.0 / spread if spread > 0 else 1.0

    def _fit(self, X, Y, L, *, train, val) -> None:
        self.gx_, self.gy_ = self._gamma(X, self.gamma_image), self._gamma(Y, self.gamma_text)
        self.exact_ = len(X) <= self.exact_max_samples
        if self.exact_:
            self._fit_exact(X, Y)
        else:
            self._fit_nystroem(X, Y)

    def _fit_exact(self, X, Y) -> None:
        n = len(X)
        Kx, self.kx_col_, self.kx_grand_ = center_kernel_train(rbf_kernel(X, gamma=self.gx_))
        Ky, self.ky_col_, self.ky_grand_ = center_kernel_train(rbf_kernel(Y, gamma=self.gy_))
        # One eigendecomposition per kernel gives the whitening S = (K (K + kI)^{-1})^{1/2} and
        # the map back to dual coefficients, (K (K + kI))^{-1/2}.
        (wx, Vx), (wy, Vy) = linalg.eigh(Kx), linalg.eigh(Ky)
        (sx, ix), (sy, iy) = _hardoon_factors(wx, self.reg), _hardoon_factors(wy, self.reg)
        T = (Vx * sx) @ (Vx.T @ Vy) @ (Vy * sy).T
        k = min(self.n_components, n)
        U, s, Vt = linalg.svd(T)
        # the centred kernels have rank n - 1 at most: pairs past it have correlation 0
        keep = _existing(self, correlated_pairs(s[:k]))
        U, s, Vt = U[:, :k][:, keep], s[:k][keep], Vt[:k][keep]
        self.alpha_ = (Vx * ix) @ (Vx.T @ U)
        self.beta_ = (Vy * iy) @ (Vy.T @ Vt.T)
        self.correlations_ = s
        self.train_images_, self.train_texts_ = X, Y

    def _fit_nystroem(self, X, Y) -> None:
        m, seed = min(self.n_landmarks, len(X)), self.random_state
        # Same landmark rows for both sides keeps the pairing inside the approximation.
        nx = Nystroem(gamma=self.gx_, n_components=m, random_state=seed).fit(X)
        ny = Nystroem(gamma=self.gy_, n_components=m, random_state=seed).fit(Y)
        self.train_images_, self.nx_norm_ = nx.components_, nx.normalization_
        self.train_texts_, self.ny_norm_ = ny.components_, ny.normalization_
        Fx, Fy = self._nystroem(X, "x"), self._nystroem(Y, "y")
        self.fx_mean_, self.fy_mean_ = Fx.mean(axis=0), Fy.mean(axis=0)
        Fx, Fy = Fx - self.fx_mean_, Fy - self.fy_mean_
        # F'F has the nonzero eigenvalues of the (approximate) centred kernel F F', so the same
        # k as the exact path is reg * trace(F'F) / n (the kernel's mean eigenvalue).
        Cxx, Cyy = Fx.T @ Fx, Fy.T @ Fy
        kx, ky = self.reg * np.trace(Cxx) / len(Fx), self.reg * np.trace(Cyy) / len(Fy)
        A, B, rho = cca_from_covariances(Cxx + kx * np.eye(len(Cxx)), Cyy + ky * np.eye(len(Cyy)),
                                         Fx.T @ Fy, self.n_components)
        keep = _existing(self, correlated_pairs(rho))
        self.alpha_, self.beta_, self.correlations_ = A[:, keep], B[:, keep], rho[keep]

    def _nystroem(self, Z: np.ndarray, side: str) -> np.ndarray:
        # sklearn's Nystroem transform, K(Z, landmarks) W^{-1/2}, from its stored arrays.
        if side == "x":
            return rbf_kernel(Z, self.train_images_, gamma=self.gx_) @ self.nx_norm_.T
        return rbf_kernel(Z, self.train_texts_, gamma=self.gy_) @ self.ny_norm_.T

    def _encode(self, Z, side: str) -> np.ndarray:
        train = self.train_images_ if side == "x" else self.train_texts_
        gamma = self.gx_ if side == "x" else self.gy_
        W = self.alpha_ if side == "x" else self.beta_
        if self.exact_:
            col, grand = (self.kx_col_, self.kx_grand_) if side == "x" else (self.ky_col_, self.ky_grand_)
            return center_kernel_test(rbf_kernel(Z, train, gamma=gamma), col, grand) @ W
        F = self._nystroem(Z, side) - (self.fx_mean_ if side == "x" else self.fy_mean_)
        return F @ W

    def _encode_images(self, X):
        return self._encode(X, "x")

    def _encode_texts(self, Y):
        return self._encode(Y, "y")


def _hardoon_factors(w: np.ndarray, reg: float) -> tuple[np.ndarray, np.ndarray]:
    """For eigenvalues w of a centred kernel and k = reg * mean(w): the whitening factors
    sqrt(w / (w + k)) and the dual factors (w (w + k))^{-1/2}, zero on the null space."""
    w = np.maximum(w, 0)
    k = reg * w.sum() / len(w)
    # eigenvalues at rounding level belong to the null space (the constant vector at least)
    live = w > len(w) * np.finfo(float).eps * max(w.max(), 1e-300)
    safe = np.where(live, w, 1.0)
    return np.where(live, np.sqrt(safe / (safe + k)), 0.0), np.where(live, 1 / np.sqrt(safe * (safe + k)), 0.0)


class _SemanticSpace:
    """Class posteriors as the common space (Rasiwasia et al. 2010): one multinomial logistic
    regression per modality (one binary regression per label on multi-label data), inverse
    L2 strength ``C``. Single-label data with unlabelled pairs (all-zero rows) keeps the
    paper's multinomial regression, fitted on the labelled pairs; the unlabelled ones still
    shape what is learnt without labels (the standardisation; SCM's CCA)."""

    C: float
    multilabel_: bool

    def _check_labels(self, L: np.ndarray) -> None:
        labelled = L[L.any(axis=1)] if L.any() else L
        _labels_that_differ(self, L, (labelled == labelled[0]).all(axis=1))
        self.multilabel_ = bool((L.sum(axis=1) > 1).any())

    def _regress(self, Z: np.ndarray, L: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if not self.multilabel_:
            rows = L.any(axis=1)  # an unlabelled pair is no example of class 0 (argmax of zeros)
            clf = LogisticRegression(C=self.C, max_iter=2000).fit(Z[rows], L[rows].argmax(axis=1))
            coef, icpt = np.zeros((L.shape[1], Z.shape[1])), np.full(L.shape[1], -1e9)
            coef[clf.classes_], icpt[clf.classes_] = clf.coef_, clf.intercept_
            return coef, icpt
        coef, icpt = np.zeros((L.shape[1], Z.shape[1])), np.zeros(L.shape[1])
        for c in range(L.shape[1]):
            y = L[:, c]
            if 0 < y.sum() < len(y):
                clf = LogisticRegression(C=self.C, max_iter=2000).fit(Z, y)
                coef[c], icpt[c] = clf.coef_[0], clf.intercept_[0]
            else:  # a label always on (or off) in training: constant posterior
                icpt[c] = 20.0 if y.sum() else -20.0
        return coef, icpt

    def _posterior(self, Z: np.ndarray, coef: np.ndarray, icpt: np.ndarray) -> np.ndarray:
        logits = Z @ coef.T + icpt
        if self.multilabel_:
            return expit(logits)  # 1 / (1 + e^-z) without overflow for a far query
        logits -= logits.max(axis=1, keepdims=True)
        P = np.exp(logits)
        return P / P.sum(axis=1, keepdims=True)


def _standardiser(Z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column means and standard deviations, 1 for a column constant in training (its spread no
    more than float32 rounding of its value) as in scikit-learn's ``StandardScaler``: dividing by
    its rounding would multiply a query's difference there by up to 1e16. No absolute floor, so
    features in any units standardise alike."""
    mean, sd = Z.mean(axis=0), Z.std(axis=0)
    return mean, np.where(sd > np.finfo(np.float32).eps * np.abs(mean), sd, 1.0)


@register("sm")
class SemanticMatching(_SemanticSpace, CrossModalMethod):
    """Semantic matching (Rasiwasia et al., "A New Approach to Cross-Modal Multimedia
    Retrieval", ACM MM 2010): each modality's own features, standardised, are mapped to class
    posteriors by logistic regression, and retrieval compares the posterior vectors. SCM
    (``scm``) is the same with CCA projections as the regressions' inputs.
    """

    supervised = True
    _parameter_rules: ClassVar[dict[str, Any]] = {"C": interval(0, None, closed="neither")}

    def __init__(self, C: float = 1.0):
        self.C = C

    def _fit(self, X, Y, L, *, train, val) -> None:
        self._check_labels(L)
        self.image_mean_, self.image_std_ = _standardiser(X)
        self.text_mean_, self.text_std_ = _standardiser(Y)
        self.image_coef_, self.image_intercept_ = self._regress(self._std(X, "image"), L)
        self.text_coef_, self.text_intercept_ = self._regress(self._std(Y, "text"), L)

    def _std(self, Z: np.ndarray, modality: str) -> np.ndarray:
        return (Z - getattr(self, f"{modality}_mean_")) / getattr(self, f"{modality}_std_")

    def _encode_images(self, X):
        return self._posterior(self._std(X, "image"), self.image_coef_, self.image_intercept_)

    def _encode_texts(self, Y):
        return self._posterior(self._std(Y, "text"), self.text_coef_, self.text_intercept_)


@register("scm")
class SemanticCorrelationMatching(_SemanticSpace, CrossModalMethod):
    """Semantic correlation matching (Rasiwasia et al., "A New Approach to Cross-Modal
    Multimedia Retrieval", ACM MM 2010): CCA finds a maximally correlated subspace, then a
    multinomial logistic regression per modality maps each projection to class posteriors;
    retrieval compares the posterior vectors (semantic space). Multi-label data uses one
    binary logistic regression per label. ``C`` is the inverse L2 strength of the regressions.
    """

    supervised = True
    _parameter_rules: ClassVar[dict[str, Any]] = {
        "n_components": _N_COMP, "reg": _REG, "C": interval(0, None, closed="neither")}

    def __init__(self, n_components: int = 10, reg: float = 1e-3, C: float = 1.0):
        self.n_components = n_components
        self.reg = reg
        self.C = C

    def _fit(self, X, Y, L, *, train, val) -> None:
        self._check_labels(L)
        self.cca_ = CCA(n_components=self.n_components, reg=self.reg)
        self.cca_._validate_params()
        try:
            self.cca_._fit(X, Y, L, train=train, val=val)
        except DataError as exc:
            raise DataError(f"{type(self).__name__}'s {exc}") from None
        self.image_coef_, self.image_intercept_ = self._regress(self.cca_._encode_images(X), L)
        self.text_coef_, self.text_intercept_ = self._regress(self.cca_._encode_texts(Y), L)

    def _encode_images(self, X):
        return self._posterior(self.cca_._encode_images(X), self.image_coef_, self.image_intercept_)

    def _encode_texts(self, Y):
        return self._posterior(self.cca_._encode_texts(Y), self.text_coef_, self.text_intercept_)

    def _get_state(self) -> dict[str, Any]:
        state = {k: v for k, v in super()._get_state().items() if k != "cca_"}
        state.update({f"cca__{k}": v for k, v in self.cca_._get_state().items()})
        return state

    def _set_state(self, state: dict[str, Any]) -> None:
        self.cca_ = CCA(n_components=self.n_components, reg=self.reg)
        self.cca_._set_state({k[5:]: v for k, v in state.items() if k.startswith("cca__")})
        super()._set_state({k: v for k, v in state.items() if not k.startswith("cca__")})
