"""Unsupervised shallow cross-modal hashing: the LSH and CCA-ITQ baselines, CVH, IMH, CMFH and
LSSH. Each learns from the training pairs alone (no labels) and hashes by the sign of a linear
map of (optionally RBF-mapped, always centred) features."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from scipy import linalg, optimize
from sklearn.neighbors import NearestNeighbors

from .. import register
from .._solvers import cca_from_covariances, ridge
from ..base import HashingMethod, ParameterError, interval
from ._common import ShallowHashing, itq_rotation, ridge_hash, subsample

_POS = interval(0, None, closed="neither")
_NONNEG = interval(0, None)
_POS_INT = interval(1, None, integer=True)
_MAX_TRAIN = [None, interval(10, None, integer=True)]


def lasso_fista(X: np.ndarray, D: np.ndarray, alpha: float, init: np.ndarray | None = None,
                max_iter: int = 200, tol: float = 1e-4) -> np.ndarray:
    """Rows s of S minimising ||x - s D||^2 + alpha |s|_1 for every row x of X at once: FISTA
    (Beck & Teboulle 2009) on the Gram matrix D D', with a warm start ``init``. The same lasso
    as sklearn's per-sample coordinate descent, but one matrix product per step for all rows.
    Stops when no coefficient moves by more than ``tol`` times the largest one."""
    G, XD = D @ D.T, X @ D.T
    step = 1.0 / (2 * float(linalg.eigvalsh(G, subset_by_index=[len(G) - 1, len(G) - 1])[0]) + 1e-12)
    thr = alpha * step
    S = np.zeros((len(X), len(D))) if init is None else init.copy()
    Z, t = S, 1.0
    for _ in range(max_iter):
        V = Z - step * 2 * (Z @ G - XD)
        S_new = np.sign(V) * np.maximum(np.abs(V) - thr, 0)
        t_new = (1 + np.sqrt(1 + 4 * t * t)) / 2
        Z = S_new + ((t - 1) / t_new) * (S_new - S)
        delta = np.abs(S_new - S).max()
        S, t = S_new, t_new
        if delta <= tol * (np.abs(S).max() + 1e-12):
            break
    return S


def unit_norm_lstsq(T: np.ndarray, S: np.ndarray, max_iter: int = 200) -> np.ndarray:
    """B minimising ||T - S B||^2 subject to every row of B having norm <= 1: the basis update
    of LSSH (and of sparse coding), solved exactly through its Lagrange dual (Lee, Battle,
    Raina & Ng, "Efficient sparse coding algorithms", NIPS 2006): B = (S'S + diag(l))^{-1} S'T
    for the dual variables l >= 0 maximising tr(T'T) - tr(T'S (S'S + diag(l))^{-1} S'T) - sum(l),
    whose gradient is ||b_j||^2 - 1 (L-BFGS-B with the bound l >= 0)."""
    G, C = S.T @ S, S.T @ T
    k = len(G)
    jitter = 1e-10 * (np.trace(G) / k + 1e-12) * np.eye(k)  # rows of S that are all zero (unused atoms)

    def neg_dual(lam):
        Bt = linalg.solve(G + np.diag(lam) + jitter, C, assume_a="pos")
        return float(np.sum(C * Bt) + lam.sum()), 1.0 - np.einsum("ij,ij->i", Bt, Bt)

    # start from the unconstrained fit: l = 0 wherever its rows already lie in the ball
    res = optimize.minimize(neg_dual, np.zeros(k), jac=True, method="L-BFGS-B", bounds=[(0, None)] * k,
                            options={"maxiter": max_iter, "gtol": 1e-9, "ftol": 1e-14})
    B = linalg.solve(G + np.diag(res.x) + jitter, C, assume_a="pos")
    # the dual is solved to a tolerance: put rows that end a hair outside back on the sphere
    return B / np.maximum(np.linalg.norm(B, axis=1, keepdims=True), 1.0)


def _unit_scale(F: np.ndarray) -> float:
    """Root mean squared row norm: dividing by it puts both modalities on one scale."""
    return float(np.sqrt((F * F).sum(axis=1).mean())) + 1e-12


@register("lsh")
class LSH(HashingMethod):
    """Random-projection locality-sensitive hashing (Charikar, "Similarity estimation
    techniques from rounding algorithms", STOC 2002), one independent set of Gaussian
    hyperplanes per modality through the training mean.

    Nothing ties the two modalities' hyperplanes together, so cross-modal retrieval is at
    chance level: this is the floor every learned method must clear.
    """

    _parameter_rules: ClassVar[dict[str, Any]] = {"random_state": interval(0, None, integer=True)}

    def __init__(self, bits: int = 32, random_state: int = 0):
        self.bits = bits
        self.random_state = random_state

    def _fit(self, X, Y, L, *, train, val) -> None:
        rng = np.random.default_rng(self.random_state)
        self.image_mean_, self.text_mean_ = X.mean(axis=0), Y.mean(axis=0)
        self.image_proj_ = rng.standard_normal((X.shape[1], self.bits))
        self.text_proj_ = rng.standard_normal((Y.shape[1], self.bits))

    def _encode_images(self, X):
        return (X - self.image_mean_) @ self.image_proj_

    def _encode_texts(self, Y):
        return (Y - self.text_mean_) @ self.text_proj_


class _CCABits(ShallowHashing):
    """CCA on the mapped features: top-``bits`` canonical directions per modality."""

    def _cca(self, X, Y):
        rng = np.random.default_rng(self.random_state)
        Fx, Fy = self._fit_map(X, "image", rng), self._fit_map(Y, "text", rng)
        self._check_rank(Fx, Fy)
        n = len(Fx) - 1
        A, B, rho = cca_from_covariances(ridge(Fx.T @ Fx / n, self.reg), ridge(Fy.T @ Fy / n, self.reg),
                                         Fx.T @ Fy / n, self.bits)
        return Fx, Fy, A, B, rho, rng


@register("cca_itq")
class CCAITQ(_CCABits):
    """CCA-ITQ (Gong & Lazebnik, "Iterative quantization: a Procrustean approach to learning
    binary codes", CVPR 2011; cross-modal form in Gong, Lazebnik, Gordo & Perronnin, TPAMI 2013):
    CCA projections of both modalities, each direction scaled by its canonical correlation to
    the power ``scale_power`` (the paper's eigenvalue weighting), then one orthogonal rotation
    learned by ITQ on the stacked image and text projections and applied to both.
    """

    _parameter_rules: ClassVar[dict[str, Any]] = {
        "reg": _NONNEG, "scale_power": interval(0, 8), "itq_iter": _POS_INT}

    def __init__(self, bits: int = 32, kernel: str = "auto", n_anchors: int = 500, reg: float = 1e-2,
                 scale_power: float = 4.0, itq_iter: int = 50, random_state: int = 0):
        self.bits = bits
        self.kernel = kernel
        self.n_anchors = n_anchors
        self.reg = reg
        self.scale_power = scale_power
        self.itq_iter = itq_iter
        self.random_state = random_state

    def _fit(self, X, Y, L, *, train, val) -> None:
        Fx, Fy, A, B, rho, rng = self._cca(X, Y)
        w = np.power(np.maximum(rho, 1e-12), self.scale_power)
        A, B = A * w, B * w
        V = np.vstack([Fx @ A, Fy @ B])
        R = itq_rotation(V / _unit_scale(V), self.itq_iter, rng)
        self.image_proj_, self.text_proj_ = A @ R, B @ R
        self.image_bias_ = self.text_bias_ = np.zeros(self.bits)
        self.correlations_ = rho


@register("cvh")
class CVH(_CCABits):
    """Cross-view hashing (Kumar & Udupa, "Learning hash functions for cross-view similarity
    search", IJCAI 2011). CVH minimises the similarity-weighted Hamming distance between the
    views' codes under uncorrelated-bit constraints, a generalised eigenproblem. With two views
    and paired training objects (W = I) its solutions are the canonical directions, scaled so
    that a'Cxx a + b'Cyy b = 1; the scaling does not change a sign, so the codes are the signs
    of the top-``bits`` CCA projections (the paper notes this reduction to CCA). The MATLAB
    ``CVHtrainCCA`` in BMC-SDNU/Cross-Modal-Hashing-Retrieval (CVH's authors released none)
    takes eigs(Cxy Cyy Cxy', Cxx), without the inverse of Cyy that CCA and the paper's
    eigenproblem have, on uncentred features; xmodal follows the paper. Bits beyond the few
    directions the modalities share carry no cross-modal signal: on a fifth of Wikipedia's
    training pairs held out, image and text bits agree on 0.58 of the pairs in bits 1-8 and on
    0.50-0.52 from bit 9 on (LSH: 0.49-0.51 everywhere), so MAP falls with code length.
    """

    _parameter_rules: ClassVar[dict[str, Any]] = {"reg": _NONNEG}

    def __init__(self, bits: int = 32, kernel: str = "auto", n_anchors: int = 500, reg: float = 1e-2,
                 random_state: int = 0):
        self.bits = bits
        self.kernel = kernel
        self.n_anchors = n_anchors
        self.reg = reg
        self.random_state = random_state

    def _fit(self, X, Y, L, *, train, val) -> None:
        _, _, A, B, rho, _ = self._cca(X, Y)
        self.image_proj_, self.text_proj_ = A, B
        self.image_bias_ = self.text_bias_ = np.zeros(self.bits)
        self.correlations_ = rho


def knn_laplacian(Z: np.ndarray, k: int) -> np.ndarray:
    """Dense graph Laplacian D - W of a symmetrised kNN graph with heat-kernel weights."""
    n = len(Z)
    nn = NearestNeighbors(n_neighbors=min(k + 1, n)).fit(Z)
    dist, idx = nn.kneighbors(Z)
    dist, idx = dist[:, 1:], idx[:, 1:]
    t = np.mean(dist ** 2) + 1e-12
    W = np.zeros((n, n))
    W[np.repeat(np.arange(n), idx.shape[1]), idx.ravel()] = np.exp(-(dist ** 2) / t).ravel()
    W = np.maximum(W, W.T)
    return np.diag(W.sum(axis=1)) - W


@register("imh")
class IMH(ShallowHashing):
    """Inter-media hashing (Song, Yang, Yang, Huang & Shen, "Inter-media hashing for large-scale
    retrieval from heterogeneous data sources", SIGMOD 2013).

    Codes Y of the training pairs minimise intra-media smoothness on each modality's kNN graph
    (tr Y'L_g Y) plus ``beta`` times the linear hash functions' fit error, whose minimum over
    W_g is tr Y'(I - F_g (F_g'F_g + lam I)^{-1} F_g') Y; under Y'Y = I this is the bottom
    eigenvectors of the sum. The hash functions are then W_g = (F_g'F_g + lam I)^{-1} F_g'Y.
    With every training item paired the inter-media consistency term forces one shared Y.
    The dense n x n eigenproblem is solved on at most ``max_train`` sampled pairs. Bits are
    the signs of projections of centred features; the MATLAB ``IMH_learn`` /
    ``IMH_compress`` (BMC-SDNU/Cross-Modal-Hashing-Retrieval) threshold the training codes at
    the training median and every encoded batch at that batch's own median (transductive).
    The training median instead of zero changed MAP by at most 0.006 on a Wikipedia training
    hold-out (16-128 bits, lower in 6 of 8 cells), so the inductive zero threshold stays.
    """

    _parameter_rules: ClassVar[dict[str, Any]] = {
        "beta": _POS, "lam": _POS, "n_neighbors": _POS_INT, "max_train": _MAX_TRAIN}

    def __init__(self, bits: int = 32, kernel: str = "auto", n_anchors: int = 500, beta: float = 1.0,
                 lam: float = 1e-2, n_neighbors: int = 10, max_train: int | None = 3000,
                 random_state: int = 0):
        self.bits = bits
        self.kernel = kernel
        self.n_anchors = n_anchors
        self.beta = beta
        self.lam = lam
        self.n_neighbors = n_neighbors
        self.max_train = max_train
        self.random_state = random_state

    def _fit(self, X, Y, L, *, train, val) -> None:
        rng = np.random.default_rng(self.random_state)
        rows = subsample(len(X), self.max_train, rng)
        if len(rows) <= self.bits:
            # the codes are eigenvectors of an n x n matrix: n pairs give at most n - 1 bits
            raise ParameterError(f"IMH: bits={self.bits} needs more than {self.bits} training pairs "
                                 f"(the codes are eigenvectors over them); got {len(rows)} training pairs"
                                 + (f" (max_train={self.max_train})" if len(rows) < len(X) else ""))
        X, Y = X[rows], Y[rows]
        Fx, Fy = self._fit_map(X, "image", rng), self._fit_map(Y, "text", rng)
        M = knn_laplacian(X, self.n_neighbors) + knn_laplacian(Y, self.n_neighbors)
        M /= np.abs(np.diag(M)).mean()  # the graphs and fit terms on one scale
        for F in (Fx, Fy):
            G = F.T @ F
            lam = self.lam * np.trace(G) / G.shape[0]
            P = F @ linalg.solve(G + lam * np.eye(G.shape[0]), F.T, assume_a="pos")
            M += self.beta * (np.eye(len(F)) - P)
        _, Yc = linalg.eigh((M + M.T) / 2, subset_by_index=[0, self.bits - 1])
        self.image_proj_ = ridge_hash(Fx, Yc, self.lam)
        self.text_proj_ = ridge_hash(Fy, Yc, self.lam)
        self.image_bias_ = self.text_bias_ = np.zeros(self.bits)


def cmfh_factors(Fx: np.ndarray, Fy: np.ndarray, c: int, lam: float, mu: float, g: float, n_iter: int,
                 rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """CMFH's alternating closed-form updates (rows are samples) from a random V: returns
    (V, U1, U2, P1, P2) after ``n_iter`` sweeps of U1, U2, P1, P2 (given V), then V."""
    Ix, Iy, Ic = np.eye(Fx.shape[1]), np.eye(Fy.shape[1]), np.eye(c)
    Gx, Gy = Fx.T @ Fx, Fy.T @ Fy
    # P updates use fixed Gram matrices: factor them once
    Px_solve = linalg.cho_factor(Gx + (g / mu) * Ix)
    Py_solve = linalg.cho_factor(Gy + (g / mu) * Iy)
    V = rng.standard_normal((len(Fx), c)) / np.sqrt(c)
    for _ in range(n_iter):
        VtV = V.T @ V
        # X'V feeds both U1 and P1 and the V step needs X (lam U1' + mu P1): two n x d x c
        # products per modality and sweep instead of five
        VtFx, VtFy = V.T @ Fx, V.T @ Fy
        U1 = linalg.solve(VtV + (g / lam) * Ic, VtFx, assume_a="pos")
        U2 = linalg.solve(VtV + (g / (1 - lam)) * Ic, VtFy, assume_a="pos")
        P1 = linalg.cho_solve(Px_solve, VtFx.T)
        P2 = linalg.cho_solve(Py_solve, VtFy.T)
        A = lam * U1 @ U1.T + (1 - lam) * U2 @ U2.T + (2 * mu + g) * Ic
        rhs = Fx @ (lam * U1.T + mu * P1) + Fy @ ((1 - lam) * U2.T + mu * P2)
        V = linalg.solve(A, rhs.T, assume_a="pos").T
    return V, U1, U2, P1, P2


@register("cmfh")
class CMFH(ShallowHashing):
    """Collective matrix factorization hashing (Ding, Guo & Zhou, "Collective matrix
    factorization hashing for multimodal data", CVPR 2014).

    min  lam ||X - V U1||^2 + (1-lam) ||Y - V U2||^2 + mu (||V - X P1||^2 + ||V - Y P2||^2)
         + gamma (||U1||^2 + ||U2||^2 + ||P1||^2 + ||P2||^2 + ||V||^2)
    by alternating closed-form updates (rows are samples here); a query hashes to
    sign(x P). Features are scaled to unit mean squared norm per modality first. Defaults are
    the authors' settings (λ = 0.5, μ = 100, γ = 0.01); against μ = 1 they win on a Wikipedia
    train hold-out (32 bits, t2i 0.27 vs 0.19; i2t even) and are mixed on UCM val (i2t 0.70 vs
    0.74, t2i 0.95 vs 0.92). The objective is the paper's; the authors' ``CMFH_learn`` also
    multiplies each view's μ and γ terms by that view's weight (μ/2 per view at λ = 0.5),
    which on the same hold-out is no better (μ = 50 here: t2i 0.249 vs 0.265 at 32 bits,
    0.299 vs 0.310 at 128; i2t within 0.004).
    """

    _parameter_rules: ClassVar[dict[str, Any]] = {
        "lam": interval(0, 1, closed="neither"), "mu": _POS, "gamma": _POS, "n_iter": _POS_INT}

    def __init__(self, bits: int = 32, kernel: str = "auto", n_anchors: int = 500, lam: float = 0.5,
                 mu: float = 100.0, gamma: float = 1e-2, n_iter: int = 50, random_state: int = 0):
        self.bits = bits
        self.kernel = kernel
        self.n_anchors = n_anchors
        self.lam = lam
        self.mu = mu
        self.gamma = gamma
        self.n_iter = n_iter
        self.random_state = random_state

    def _fit(self, X, Y, L, *, train, val) -> None:
        rng = np.random.default_rng(self.random_state)
        Fx, Fy = self._fit_map(X, "image", rng), self._fit_map(Y, "text", rng)
        sx, sy = _unit_scale(Fx), _unit_scale(Fy)
        Fx, Fy = Fx / sx, Fy / sy
        _, _, _, P1, P2 = cmfh_factors(Fx, Fy, self.bits, self.lam, self.mu, self.gamma, self.n_iter, rng)
        self.image_proj_, self.text_proj_ = P1 / sx, P2 / sy
        self.image_bias_ = self.text_bias_ = np.zeros(self.bits)


@register("lssh")
class LSSH(ShallowHashing):
    """Latent semantic sparse hashing (Zhou, Ding & Guo, "Latent semantic sparse hashing for
    cross-modal similarity search", SIGIR 2014).

    Images: sparse codes S over a learned dictionary B (||X - S B||^2 + alpha |S|_1); texts:
    matrix factorisation Y ~ A U; the two latent spaces are tied by A ~ S R:
    min ||X - S B||^2 + alpha|S|_1 + lam ||Y - A U||^2 + mu ||A - S R||^2
    s.t. every atom of B, every basis vector of U and every row of R has norm <= 1 (the paper's
    constraints; the authors' code solves the same objective). Alternating updates: lasso for
    S, the constrained least squares for B, U and R exactly through their Lagrange duals
    (:func:`unit_norm_lstsq`), a closed form for A. An image hashes to sign(s R - m), s its
    sparse code; a text to sign(a - m), a = argmin lam||y - a U||^2 + mu||a||^2 (the A step
    with the unknown s R at zero, as in the authors' code); m is the training mean (the
    authors threshold at zero). ``gamma`` adds a ridge gamma||A||^2 that is not in the paper
    (0 by default). Atoms no image uses are restarted on random samples. Features are scaled to
    unit mean squared norm per modality (the authors normalise each sample and reduce images to
    ``bits`` PCA dimensions first). At most ``max_train`` sampled pairs are used.
    """

    _parameter_rules: ClassVar[dict[str, Any]] = {
        "n_atoms": _POS_INT, "alpha": _POS, "lam": _POS, "mu": _POS, "gamma": _NONNEG,
        "n_iter": _POS_INT, "max_train": _MAX_TRAIN}

    def __init__(self, bits: int = 32, kernel: str = "auto", n_anchors: int = 500, n_atoms: int = 256,
                 alpha: float = 0.02, lam: float = 1.0, mu: float = 1.0, gamma: float = 0.0,
                 n_iter: int = 10, max_train: int | None = 2000, random_state: int = 0):
        self.bits = bits
        self.kernel = kernel
        self.n_anchors = n_anchors
        self.n_atoms = n_atoms
        self.alpha = alpha
        self.lam = lam
        self.mu = mu
        self.gamma = gamma
        self.n_iter = n_iter
        self.max_train = max_train
        self.random_state = random_state

    def _sparse(self, Fx: np.ndarray, A: np.ndarray | None = None, init: np.ndarray | None = None) -> np.ndarray:
        if A is None:
            data, dico = Fx, self.dictionary_
        else:
            r = np.sqrt(self.mu)
            data, dico = np.hstack([Fx, r * A]), np.hstack([self.dictionary_, r * self.latent_map_])
        return lasso_fista(data, dico, self.alpha, init=init)

    def _fit(self, X, Y, L, *, train, val) -> None:
        rng = np.random.default_rng(self.random_state)
        rows = subsample(len(X), self.max_train, rng)
        Fx, Fy = self._fit_map(X[rows], "image", rng), self._fit_map(Y[rows], "text", rng)
        self.image_scale_, self.text_scale_ = _unit_scale(Fx), _unit_scale(Fy)
        Fx, Fy = Fx / self.image_scale_, Fy / self.text_scale_
        n, c, k = len(Fx), self.bits, self.n_atoms
        D = Fx[rng.choice(n, min(k, n), replace=False)]
        self.dictionary_ = D / np.maximum(np.linalg.norm(D, axis=1, keepdims=True), 1e-12)
        k = len(self.dictionary_)
        self.latent_map_ = np.zeros((k, c))
        S = self._sparse(Fx)
        A = rng.standard_normal((n, c)) * 0.1
        Ic = np.eye(c)
        for it in range(self.n_iter):
            U = unit_norm_lstsq(Fy, A)
            self.latent_map_ = unit_norm_lstsq(A, S)
            A = linalg.solve(self.lam * U @ U.T + (self.mu + self.gamma) * Ic,
                             (self.lam * Fy @ U.T + self.mu * S @ self.latent_map_).T, assume_a="pos").T
            Bd = unit_norm_lstsq(Fx, S)
            unused = np.linalg.norm(Bd, axis=1) < 1e-8  # dead atoms: restart on random samples
            if unused.any():
                Bd[unused] = Fx[rng.choice(n, int(unused.sum()))]
                Bd[unused] /= np.maximum(np.linalg.norm(Bd[unused], axis=1, keepdims=True), 1e-12)
            self.dictionary_ = Bd
            S = self._sparse(Fx, A, init=S)  # warm start: S moves little per sweep
        self.text_factor_ = U
        self.image_center_ = (self._sparse(Fx) @ self.latent_map_).mean(axis=0)
        self.text_center_ = self._text_latent(Fy).mean(axis=0)

    def _text_latent(self, Fy: np.ndarray) -> np.ndarray:
        U = self.text_factor_
        return linalg.solve(self.lam * U @ U.T + (self.mu + self.gamma) * np.eye(U.shape[0]),
                            self.lam * U @ Fy.T, assume_a="pos").T

    def _encode_images(self, X):
        F = self._map(X, "image") / self.image_scale_
        return self._sparse(F) @ self.latent_map_ - self.image_center_

    def _encode_texts(self, Y):
        return self._text_latent(self._map(Y, "text") / self.text_scale_) - self.text_center_
