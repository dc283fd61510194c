"""Closed-form and objective properties of the shallow hashing methods, taken from their
papers, on small synthetic data: they pin what each fit computes (mutation testing found the
retrieval-level tests in test_hashing.py blind to several of these steps)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import ortho_group

from xmodal import methods
from xmodal.data.dataset import PairedDataset
from xmodal.methods.hashing._common import itq_rotation


def _quantization_loss(V, R):
    Z = V @ R
    return float(((np.where(Z >= 0, 1.0, -1.0) - Z) ** 2).sum())


def test_itq_never_raises_its_quantization_loss_and_keeps_r_orthogonal():
    """Gong & Lazebnik 2011: ITQ alternates B = sign(VR) and the Procrustes R = argmin
    ||B - VR|| over orthogonal R, so the loss ||sign(VR) - VR||^2 never rises from the random
    orthogonal start, and on points near the vertices of a rotated hypercube it falls far
    (ITQ is a local method: from this start it stops at 0.3 of the start's loss)."""
    rng = np.random.default_rng(0)
    n, c = 400, 8
    B0 = rng.choice([-1.0, 1.0], (n, c))
    V = B0 @ ortho_group.rvs(c, random_state=1).T + 0.05 * rng.standard_normal((n, c))
    losses = [_quantization_loss(V, itq_rotation(V, k, np.random.default_rng(3))) for k in range(0, 25)]
    assert all(b <= a * (1 + 1e-9) for a, b in zip(losses, losses[1:])), losses
    assert losses[-1] < 0.4 * losses[0], losses
    for k in (0, 1, 25):
        R = itq_rotation(V, k, np.random.default_rng(3))
        assert np.allclose(R.T @ R, np.eye(c), atol=1e-10)


def _planted_pairs(n=500, dx=12, dy=10, seed=0):
    """Paired features sharing three latent factors of decreasing strength."""
    rng = np.random.default_rng(seed)
    Z = rng.standard_normal((n, 3)) * [3.0, 2.0, 1.0]
    X = Z @ rng.standard_normal((3, dx)) + rng.standard_normal((n, dx)) + 5.0
    Y = Z @ rng.standard_normal((3, dy)) + rng.standard_normal((n, dy)) - 2.0
    return X, Y


def _pairs(X, Y, labels=None):
    n = len(X)
    return PairedDataset(name="synthetic", text_to_image=np.arange(n), n_images=n,
                         image_features=X, text_features=Y, labels=labels)


def test_cvh_bits_are_the_canonical_pairs_with_their_correlations():
    """Kumar & Udupa 2011 with paired views reduce to CCA: each bit's image and text
    projections of the training pairs correlate exactly by the stored canonical correlation,
    distinct bits are uncorrelated, and correlations come in descending order."""
    X, Y = _planted_pairs()
    m = methods.create("cvh", bits=8, kernel="linear", reg=0.0).fit(_pairs(X, Y))
    px, py = (X - X.mean(0)) @ m.image_proj_, (Y - Y.mean(0)) @ m.text_proj_
    C = np.corrcoef(px.T, py.T)
    c = m.bits
    assert np.allclose(np.diag(C[:c, c:]), m.correlations_, atol=1e-8)
    assert np.allclose(C[:c, :c], np.eye(c), atol=1e-8) and np.allclose(C[c:, c:], np.eye(c), atol=1e-8)
    assert np.all(np.diff(m.correlations_) <= 1e-12) and 0 < m.correlations_[-1] < m.correlations_[0] < 1
    assert m.correlations_[0] > 0.9  # the planted factors


def test_cca_itq_weights_directions_by_correlation_power_then_rotates_both_alike():
    """Gong et al. (TPAMI 2013): CCA directions scaled by rho^p, then one ITQ rotation shared
    by both modalities. So the image and text projections have the same covariance, R'
    diag(rho^2p) R, whose eigenvalues are the weighted correlations."""
    X, Y = _planted_pairs()
    for p in (1.0, 4.0):
        m = methods.create("cca_itq", bits=8, kernel="linear", reg=0.0, scale_power=p).fit(_pairs(X, Y))
        Cx = m.image_proj_.T @ np.cov(X.T) @ m.image_proj_
        Cy = m.text_proj_.T @ np.cov(Y.T) @ m.text_proj_
        assert np.allclose(Cx, Cy, atol=1e-8 * np.abs(Cx).max())
        assert np.allclose(np.linalg.eigvalsh(Cx)[::-1], m.correlations_ ** (2 * p), rtol=1e-6)


def _cmfh_objective(Fx, Fy, V, U1, U2, P1, P2, lam, mu, g):
    sq = lambda M: float((M * M).sum())  # noqa: E731
    return (lam * sq(Fx - V @ U1) + (1 - lam) * sq(Fy - V @ U2) + mu * (sq(V - Fx @ P1) + sq(V - Fy @ P2))
            + g * (sq(U1) + sq(U2) + sq(P1) + sq(P2) + sq(V)))


def test_cmfh_updates_are_exact_block_minimisers_of_the_papers_objective():
    """Ding, Guo & Zhou 2014: every CMFH update is the closed-form minimiser of the objective
    over one block, so the objective never rises across sweeps, the final V zeroes its
    gradient, and the U and P of sweep k+1 zero theirs at the V of sweep k."""
    from xmodal.methods.hashing.unsupervised import cmfh_factors

    X, Y = _planted_pairs(n=300)
    Fx, Fy = X - X.mean(0), Y - Y.mean(0)
    Fx, Fy = Fx / np.sqrt((Fx * Fx).sum(1).mean()), Fy / np.sqrt((Fy * Fy).sum(1).mean())
    c, lam, mu, g = 4, 0.3, 2.0, 0.05
    runs = [cmfh_factors(Fx, Fy, c, lam, mu, g, k, np.random.default_rng(0)) for k in range(1, 12)]
    obj = [_cmfh_objective(Fx, Fy, *r, lam, mu, g) for r in runs]
    assert all(b <= a * (1 + 1e-10) for a, b in zip(obj, obj[1:])), obj
    assert obj[-1] < 0.9 * obj[0]
    V, U1, U2, P1, P2 = runs[-1]
    gV = (lam * (V @ U1 - Fx) @ U1.T + (1 - lam) * (V @ U2 - Fy) @ U2.T
          + mu * (2 * V - Fx @ P1 - Fy @ P2) + g * V)
    assert np.abs(gV).max() < 1e-9 * np.abs(V).max()
    Vp = runs[-2][0]
    grads = {"U1": lam * Vp.T @ (Vp @ U1 - Fx) + g * U1, "U2": (1 - lam) * Vp.T @ (Vp @ U2 - Fy) + g * U2,
             "P1": mu * Fx.T @ (Fx @ P1 - Vp) + g * P1, "P2": mu * Fy.T @ (Fy @ P2 - Vp) + g * P2}
    for name, G in grads.items():
        assert np.abs(G).max() < 1e-9 * max(1.0, np.abs(Fx).max()), name


def _dlfh_problem(seed=0):
    rng = np.random.default_rng(seed)
    Li = np.eye(5)[rng.integers(0, 5, 40)]
    Lt = np.eye(5)[rng.integers(0, 5, 70)]
    U = np.where(rng.standard_normal((40, 8)) >= 0, 1.0, -1.0)
    V = np.where(rng.standard_normal((70, 8)) >= 0, 1.0, -1.0)
    return Li, Lt, U, V


def test_dlfh_column_update_is_the_papers_bound_maximiser():
    """Jiang & Li 2019: u_k = sign(λ/c (S - σ(Θ)) v_k + λ²m/(4c²) u_k) for each column in turn,
    S and Θ on m sampled columns. The incremental update must give exactly the codes of that
    formula recomputed from scratch after every column, and, the bound being a minoriser,
    never lower the sampled log-likelihood."""
    from scipy.special import expit

    from xmodal.methods.hashing.supervised import DLFH

    m = DLFH(bits=8, lam=4.0, n_sampled=12)
    Li, Lt, U, V = _dlfh_problem()
    k_ = m.lam / 8
    for step in range(6):
        rng = np.random.default_rng(step)
        ref_rng = np.random.default_rng(step)
        cols = np.sort(ref_rng.choice(len(V), 12, replace=False))
        Vs, S = V[cols], (Li @ Lt[cols].T > 0).astype(float)

        def loglik(W):
            T = k_ * W @ Vs.T
            return float((S * T - np.logaddexp(0, T)).sum())

        R = U.copy()
        for k in ref_rng.permutation(8):
            g = k_ * (S - expit(k_ * R @ Vs.T)) @ Vs[:, k]
            R[:, k] = np.where(g + (k_ * k_ * 12 / 4) * R[:, k] >= 0, 1.0, -1.0)
        before = loglik(U)
        m._update(U, V, Li, Lt, rng)
        assert np.array_equal(U, R), step
        assert loglik(U) >= before - 1e-9, (step, loglik(U), before)
    assert set(np.unique(U)) == {-1.0, 1.0}


def test_seph_objective_is_the_kl_to_hamming_affinities_with_its_exact_gradient():
    """Lin et al. 2015: at ±1 codes SePH's Q is 1/(1 + Hamming distance) normalised over
    distinct pairs, the objective is KL(P || Q) up to P's entropy and the quantization term
    vanishes; at real codes the analytic gradient matches finite differences."""
    from scipy.optimize import approx_fprime

    from xmodal.methods.base import pack_codes
    from xmodal.methods.hashing.supervised import seph_objective
    from xmodal.metrics import hamming_distance

    rng = np.random.default_rng(0)
    n, c = 30, 8
    L = np.eye(4)[rng.integers(0, 4, n)]
    P = L @ L.T + 0.05
    np.fill_diagonal(P, 0)
    P /= P.sum()
    B = np.where(rng.standard_normal((n, c)) >= 0, 1.0, -1.0)
    d = hamming_distance(pack_codes(B), pack_codes(B)).astype(float)
    Q = (1 - np.eye(n)) / (1 + d)
    Q /= Q.sum()
    off = ~np.eye(n, dtype=bool)
    kl = float((P[off] * np.log(P[off] / Q[off])).sum())
    entropy = -float((P[off] * np.log(P[off])).sum())
    for alpha in (0.0, 0.5):
        val, _ = seph_objective(B, P, alpha)
        assert val == pytest.approx(kl + entropy, rel=1e-12)
    H = rng.standard_normal((n, c)) * 0.7
    for alpha in (0.0, 3.0):
        f = lambda h: seph_objective(h.reshape(n, c), P, alpha)[0]  # noqa: E731
        num = approx_fprime(H.ravel(), f, 1e-7)
        ana = seph_objective(H, P, alpha)[1].ravel()
        assert np.abs(num - ana).max() < 1e-5 * np.abs(ana).max(), alpha


def test_lasso_fista_reaches_the_lasso_optimum():
    """LSSH's sparse codes: every row s minimises ||x - s D||^2 + alpha |s|_1 (Beck & Teboulle's
    FISTA); scikit-learn's coordinate descent solves the same lasso with its loss halved and
    divided by the number of features."""
    from sklearn.linear_model import Lasso

    from xmodal.methods.hashing.unsupervised import lasso_fista

    rng = np.random.default_rng(0)
    D = rng.standard_normal((15, 40))
    D /= np.linalg.norm(D, axis=1, keepdims=True)
    X = rng.standard_normal((6, 3)) @ D[:3] * 2 + 0.05 * rng.standard_normal((6, 40))
    alpha = 0.3
    S = lasso_fista(X, D, alpha, max_iter=20000, tol=1e-12)
    ref = np.stack([Lasso(alpha=alpha / (2 * D.shape[1]), fit_intercept=False, tol=1e-12, max_iter=100000)
                    .fit(D.T, x).coef_ for x in X])
    assert np.abs(S - ref).max() < 1e-6
    assert (S == 0).mean() > 0.3  # the l1 term bites
    warm = lasso_fista(X, D, alpha, init=ref, max_iter=20000, tol=1e-12)
    assert np.abs(warm - ref).max() < 1e-6


def test_label_propagation_reaches_the_consistency_fixed_point():
    """Zhou et al. 2003: F <- alpha S F + (1-alpha) Y0 converges to (1-alpha)(I - alpha S)^-1 Y0,
    S = D^-1/2 W D^-1/2. On equidistant points with every other point a neighbour the heat
    kernel weights are all equal, so S = (11' - I)/(n-1); unlabelled rows start at zero."""
    from xmodal.methods.hashing.semi import label_propagation

    n, alpha = 7, 0.8
    Z = np.eye(n) * 3.0
    L0 = np.eye(3)[[0, 1, 2, 0, 1, 2, 0]]
    lab = np.array([True, True, False, True, False, False, False])
    F = label_propagation(Z, L0, lab, n_neighbors=n - 1, alpha=alpha, n_iter=400)
    S = (np.ones((n, n)) - np.eye(n)) / (n - 1)
    Y0 = np.where(lab[:, None], L0, 0.0)
    assert np.allclose(F, (1 - alpha) * np.linalg.solve(np.eye(n) - alpha * S, Y0), atol=1e-12)
    F1 = label_propagation(Z, L0, lab, n_neighbors=n - 1, alpha=alpha, n_iter=1)
    assert np.allclose(F1, alpha * S @ Y0 + (1 - alpha) * Y0, atol=1e-12)


def test_scm_seq_bits_follow_the_papers_residual_recursion():
    """Zhang & Li 2014, sequential SCM: bit t is the top generalised singular pair of
    X'(c S̃ - sum_{k<t} h_x^k h_y^k')Y, S̃ = 2 L̂L̂' - 11', formed here as a dense n x n
    residual (the method never forms it); directions are scaled to unit spread."""
    from xmodal.methods._solvers import inv_sqrt_psd, ridge

    rng = np.random.default_rng(0)
    n, c, reg = 80, 8, 1e-2
    X, Y = _planted_pairs(n=n, seed=1)
    L = np.eye(4)[rng.integers(0, 4, n)]
    L[::5, (np.arange(0, n, 5) // 5) % 4] = 1  # some multi-label rows
    m = methods.create("scm_seq", bits=c, kernel="linear", reg=reg).fit(_pairs(X, Y, L))
    Fx, Fy = X - X.mean(0), Y - Y.mean(0)
    Ln = L / np.linalg.norm(L, axis=1, keepdims=True)
    R = c * (2 * Ln @ Ln.T - np.ones((n, n)))
    Wx, Wy = inv_sqrt_psd(ridge(Fx.T @ Fx / n, reg)), inv_sqrt_psd(ridge(Fy.T @ Fy / n, reg))
    for t in range(c):
        u, _, vt = np.linalg.svd(Wx @ Fx.T @ R @ Fy @ Wy)
        wx, wy = Wx @ u[:, 0], Wy @ vt[0]
        wx, wy = wx / np.std(Fx @ wx), wy / np.std(Fy @ wy)
        s = np.sign(wx @ m.image_proj_[:, t])  # a singular pair's joint sign is arbitrary
        assert np.allclose(s * wx, m.image_proj_[:, t], rtol=1e-6, atol=1e-8), t
        assert np.allclose(s * wy, m.text_proj_[:, t], rtol=1e-6, atol=1e-8), t
        hx, hy = np.where(Fx @ wx >= 0, 1.0, -1.0), np.where(Fy @ wy >= 0, 1.0, -1.0)
        R = R - np.outer(hx, hy)


def test_cca_itq_rotation_is_itq_on_the_stacked_weighted_projections():
    """The rotation is ITQ's (from the method's seeded start) on the image and text training
    projections stacked, A and B the CCA directions weighted by rho^p; ITQ itself does not
    depend on the scale of its input (sign and Procrustes are scale-free)."""
    X, Y = _planted_pairs()
    p, iters = 2.0, 20
    cvh = methods.create("cvh", bits=8, kernel="linear", reg=1e-2).fit(_pairs(X, Y))
    m = methods.create("cca_itq", bits=8, kernel="linear", reg=1e-2, scale_power=p, itq_iter=iters).fit(_pairs(X, Y))
    w = cvh.correlations_ ** p
    A, B = cvh.image_proj_ * w, cvh.text_proj_ * w
    V = np.vstack([(X - X.mean(0)) @ A, (Y - Y.mean(0)) @ B])
    R = itq_rotation(V, iters, np.random.default_rng(0))
    assert np.allclose(m.image_proj_, A @ R, atol=1e-9) and np.allclose(m.text_proj_, B @ R, atol=1e-9)
    assert np.allclose(itq_rotation(V * 1e-3, iters, np.random.default_rng(0)), R, atol=1e-9)


def test_sslpdp_affinity_mixes_true_and_confidence_weighted_predicted_labels_with_features():
    """SS-LPDP's target affinity: (1 - w) * label cosine + w * max(feature cosine, 0), where
    labelled rows keep their true labels (confidence 1) and the others take their propagated
    scores, weighted by confidence max/sum, so the label part's diagonal is the confidence."""
    from xmodal.methods.hashing.semi import SSLPDP, label_propagation

    X, Y = _planted_pairs(n=60)
    rng = np.random.default_rng(5)
    L = np.eye(3)[rng.integers(0, 3, 60)]
    lab = np.zeros(60, dtype=bool)
    lab[::4] = True
    rows = np.arange(60)
    parts = {}
    for w in (0.0, 1.0, 0.3):
        m = SSLPDP(bits=8, kernel="linear", distance_weight=w)
        m._labelled = lab
        parts[w] = m._affinity(X, Y, L, rows)
    Fx, Fy = X - X.mean(0), Y - Y.mean(0)
    Z = np.hstack([Fx / np.linalg.norm(Fx, axis=1, keepdims=True),
                   Fy / np.linalg.norm(Fy, axis=1, keepdims=True)]) / np.sqrt(2)
    assert np.allclose(parts[1.0], np.maximum(Z @ Z.T, 0), atol=1e-12)
    assert np.allclose(parts[0.3], 0.7 * parts[0.0] + 0.3 * parts[1.0], atol=1e-12)
    A = parts[0.0]
    Ln = L / np.linalg.norm(L, axis=1, keepdims=True)
    assert np.allclose(A[np.ix_(lab, lab)], Ln[lab] @ Ln[lab].T, atol=1e-12)
    Fs = np.maximum(label_propagation(Z, L, lab, m.n_neighbors, m.propagation_alpha), 0)
    conf = np.where(lab, 1.0, Fs.max(1) / Fs.sum(1))
    assert np.allclose(np.diag(A), conf, atol=1e-12)
    assert conf[~lab].max() < 1 and conf[~lab].min() >= 1 / 3 - 1e-12
    Pn = Fs / np.linalg.norm(Fs, axis=1, keepdims=True) * np.sqrt(conf)[:, None]
    assert np.allclose(A[np.ix_(lab, ~lab)], Ln[lab] @ Pn[~lab].T, atol=1e-12)


def test_scm_seq_learns_more_bits_than_feature_dimensions_and_scm_orth_refuses():
    """SCM-orth's bits are orthogonal directions, at most one per mapped dimension; SCM-seq's
    bits come from successive residuals (Zhang & Li 2014), so it may learn more bits than
    there are dimensions."""
    from xmodal.methods import ParameterError

    X, Y = _planted_pairs(n=200, dx=6, dy=5)
    L = np.eye(3)[np.random.default_rng(0).integers(0, 3, 200)]
    with pytest.raises(ParameterError, match="bits=16 exceeds the 5 dimensions"):
        methods.create("scm_orth", bits=16, kernel="linear").fit(_pairs(X, Y, L))
    m = methods.create("scm_seq", bits=16, kernel="linear").fit(_pairs(X, Y, L))
    assert m.image_proj_.shape == (6, 16) and m.text_proj_.shape == (5, 16)
    assert m.encode_images(X).shape == (200, 2) and m.encode_texts(Y).shape == (200, 2)


def test_learned_codes_protocol_gives_each_database_image_its_first_pairs_code():
    """With several captions per image the learned codes are per pair; the protocol's database
    image takes the code of its first pair (and an image without a text is refused)."""
    from xmodal.data import DataError
    from xmodal.methods.base import pack_codes
    from xmodal.methods.hashing.protocol import evaluate_training_codes

    rng = np.random.default_rng(0)
    n_img, cls = 8, np.arange(8) % 4
    t2i = np.repeat(np.arange(n_img), 2)
    ds = PairedDataset(name="two-captions", text_to_image=t2i, n_images=n_img,
                       image_features=rng.standard_normal((n_img, 6)),
                       text_features=rng.standard_normal((16, 5)), labels=np.eye(4)[cls])
    m = methods.create("seph", bits=8, kernel="linear", n_iter=5).fit(ds)
    words = np.where(np.eye(4, 8, dtype=bool) | np.eye(4, 8, k=4, dtype=bool), 1.0, -1.0)
    per_pair = words[cls[t2i]]
    per_pair[1::2] *= -1  # the second caption's pair learned the opposite code
    m.train_image_codes_ = pack_codes(per_pair)
    m.train_text_codes_ = pack_codes(words[cls[t2i]])
    m.encode_texts = lambda Y: pack_codes(words[cls[t2i]])
    m.encode_images = lambda X: pack_codes(words[cls])
    r = evaluate_training_codes(m, ds, ds, pk=())
    assert r["t2i"]["map"] == pytest.approx(1.0) and r["i2t"]["map"] == pytest.approx(1.0)
    orphan = PairedDataset(name="orphan", text_to_image=t2i, n_images=n_img + 1,
                           image_features=rng.standard_normal((n_img + 1, 6)),
                           text_features=ds.text_features, labels=np.eye(4)[np.append(cls, 0)])
    with pytest.raises(DataError, match="image 8 has no text"):
        evaluate_training_codes(m, ds, orphan, pk=())


def test_scm_seq_refinement_lowers_the_papers_smoothed_objective_bit_by_bit():
    """With ``refine_iter`` each bit starts from the closed form and L-BFGS lowers the paper's
    smoothed ||R_t - φ(X w_x) φ(Y w_y)'||^2, R_t = c S̃ - sum_{k<t} h_x^k h_y^k' (formed
    densely here), φ(z) = 2/(1+e^-z) - 1."""
    from scipy.special import expit

    from xmodal.methods._solvers import inv_sqrt_psd, ridge

    rng = np.random.default_rng(0)
    n, c, reg = 80, 8, 1e-2
    X, Y = _planted_pairs(n=n, seed=1)
    L = np.eye(4)[rng.integers(0, 4, n)]
    m = methods.create("scm_seq", bits=c, kernel="linear", reg=reg, refine_iter=5).fit(_pairs(X, Y, L))
    Fx, Fy = X - X.mean(0), Y - Y.mean(0)
    Ln = L / np.linalg.norm(L, axis=1, keepdims=True)
    R = c * (2 * Ln @ Ln.T - np.ones((n, n)))
    Wx, Wy = inv_sqrt_psd(ridge(Fx.T @ Fx / n, reg)), inv_sqrt_psd(ridge(Fy.T @ Fy / n, reg))
    phi = lambda z: 2 * expit(z) - 1  # noqa: E731
    obj = lambda wx, wy: float(((R - np.outer(phi(Fx @ wx), phi(Fy @ wy))) ** 2).sum())  # noqa: E731
    for t in range(c):
        u, _, vt = np.linalg.svd(Wx @ Fx.T @ R @ Fy @ Wy)
        wx, wy = Wx @ u[:, 0], Wy @ vt[0]
        wx, wy = wx / np.std(Fx @ wx), wy / np.std(Fy @ wy)
        start = min(obj(wx, wy), obj(-wx, -wy))  # the pair's joint sign is arbitrary
        assert obj(m.image_proj_[:, t], m.text_proj_[:, t]) < start - 1e-6 * abs(start), t
        hx = np.where(Fx @ m.image_proj_[:, t] >= 0, 1.0, -1.0)
        hy = np.where(Fy @ m.text_proj_[:, t] >= 0, 1.0, -1.0)
        R = R - np.outer(hx, hy)


def test_label_propagation_graph_is_the_symmetrised_heat_kernel_knn_graph():
    """One neighbour each on a line at 0, 1, 3, 7: the kNN edges 0-1, 2-1, 3-2 (symmetrised by
    the larger weight), heat kernel exp(-d^2 / t) with t the mean squared neighbour distance
    (1, 1, 4, 16: t = 5.5), normalised S = D^-1/2 W D^-1/2."""
    from xmodal.methods.hashing.semi import label_propagation

    Z = np.array([[0.0], [1.0], [3.0], [7.0]])
    L0 = np.eye(2)[[0, 1, 0, 1]]
    lab = np.array([True, False, False, True])
    W = np.zeros((4, 4))
    for i, j, d in ((0, 1, 1.0), (1, 2, 2.0), (2, 3, 4.0)):
        W[i, j] = W[j, i] = np.exp(-d * d / 5.5)
    S = W / np.sqrt(np.outer(W.sum(1), W.sum(1)))
    Y0 = np.where(lab[:, None], L0, 0.0)
    alpha = 0.6
    F1 = label_propagation(Z, L0, lab, n_neighbors=1, alpha=alpha, n_iter=1)
    assert np.allclose(F1, alpha * S @ Y0 + (1 - alpha) * Y0, atol=1e-12)
    F = label_propagation(Z, L0, lab, n_neighbors=1, alpha=alpha, n_iter=200)
    assert np.allclose(F, (1 - alpha) * np.linalg.solve(np.eye(4) - alpha * S, Y0), atol=1e-12)


def test_scm_seq_objective_is_the_papers_smoothed_residual_with_its_exact_gradient():
    """Zhang & Li 2014's smoothed bit objective ||R_t - φ(X w_x) φ(Y w_y)'||^2, φ(z) =
    2/(1+e^-z) - 1, R_t = c (2 L̂L̂' - 11') - H_x H_y', less the constant ||R_t||^2 and over n,
    computed here densely on pairs whose images repeat (two captions each); its gradient
    matches central finite differences."""
    from scipy.special import expit

    from xmodal.methods.hashing.supervised import scm_seq_objective

    rng = np.random.default_rng(4)
    n_img, c = 15, 6
    pair_image = np.repeat(np.arange(n_img), 2)
    n = len(pair_image)
    Fxu, Fy = rng.standard_normal((n_img, 4)), rng.standard_normal((n, 3))
    L = (rng.random((n, 3)) < 0.5).astype(float)
    L[L.sum(1) == 0, 0] = 1.0
    Ln = L / np.linalg.norm(L, axis=1, keepdims=True)
    Hx, Hy = rng.choice([-1.0, 1.0], (n, 2)), rng.choice([-1.0, 1.0], (n, 2))
    R = c * (2 * Ln @ Ln.T - np.ones((n, n))) - Hx @ Hy.T
    phi = lambda z: 2 * expit(z) - 1  # noqa: E731

    def dense(w):
        ab = np.outer(phi(Fxu[pair_image] @ w[:4]), phi(Fy @ w[4:]))
        return (((R - ab) ** 2).sum() - (R ** 2).sum()) / n

    args = (Fxu, pair_image, Fy, Ln, c, Hx, Hy)
    for w in (0.7 * rng.standard_normal(7), 3.0 * rng.standard_normal(7)):
        val, grad = scm_seq_objective(w, *args)
        assert val == pytest.approx(dense(w), rel=1e-10, abs=1e-12)
        eps = 1e-6
        fd = np.array([(scm_seq_objective(w + eps * e, *args)[0] - scm_seq_objective(w - eps * e, *args)[0])
                       / (2 * eps) for e in np.eye(7)])
        np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-8)
    # no learned bits yet: R_0 = c S̃ alone
    w = rng.standard_normal(7)
    R0 = c * (2 * Ln @ Ln.T - np.ones((n, n)))
    ab = np.outer(phi(Fxu[pair_image] @ w[:4]), phi(Fy @ w[4:]))
    got = scm_seq_objective(w, Fxu, pair_image, Fy, Ln, c, np.zeros((n, 0)), np.zeros((n, 0)))[0]
    assert got == pytest.approx((((R0 - ab) ** 2).sum() - (R0 ** 2).sum()) / n, rel=1e-10)


def test_learned_codes_database_check_falls_back_to_what_both_datasets_have():
    """The database is compared with the training split by subset positions only when both
    are subsets, by ids only when both have them, by features only when both have them; a
    row that differs in one feature column alone is another item."""
    from xmodal.data import DataError
    from xmodal.methods.hashing.protocol import evaluate_training_codes

    rng = np.random.default_rng(0)
    n = 24
    full = PairedDataset(name="full", text_to_image=np.arange(n), n_images=n,
                         image_features=rng.standard_normal((n, 5)), text_features=rng.standard_normal((n, 4)),
                         labels=np.eye(3)[np.arange(n) % 3], image_ids=[f"im{i}" for i in range(n)],
                         text_ids=[f"tx{i}" for i in range(n)])
    train = full.subset(np.arange(n), name="train")
    m = methods.create("dlfh", bits=8, n_iter=3).fit(train)

    def plain(**kw):
        fields = dict(name="copy", text_to_image=train.text_to_image, n_images=n,
                      image_features=train.image_features, text_features=train.text_features, labels=train.labels)
        return PairedDataset(**{**fields, **kw})

    want = evaluate_training_codes(m, train, train, pk=())["t2i"]["map"]
    for db, tr in ((plain(), train),  # only train is a subset: compared by features
                   (plain(image_ids=train.image_ids), plain()),  # ids on one side only: features
                   (plain(image_ids=train.image_ids, text_ids=train.text_ids),
                    plain(image_ids=train.image_ids)),  # text ids on one side only: image ids
                   (plain(image_features=None, text_features=None), plain())):  # no features: pairing only
        assert evaluate_training_codes(m, train, db, train=tr, pk=())["t2i"]["map"] == want
    moved = train.image_features.copy()
    moved[3, 2] += 1.0  # one column of one row
    with pytest.raises(DataError, match="row 3 differs in image features"):
        evaluate_training_codes(m, train, plain(image_features=moved), train=plain(), pk=())
    with pytest.raises(DataError, match="row 5 differs in text id"):
        ids = list(train.text_ids)
        ids[5] = "other"
        evaluate_training_codes(m, train, plain(image_ids=train.image_ids, text_ids=ids),
                                train=plain(image_ids=train.image_ids, text_ids=train.text_ids), pk=())


def test_lsh_hashes_by_gaussian_hyperplanes_through_the_training_mean():
    """Charikar 2002's sign random projections, each modality's hyperplanes through its own
    training mean: a code is sign((x - mean) r) with r standard normal, drawn independently
    for images and texts."""
    from xmodal.methods.base import pack_codes

    X, Y = _planted_pairs(n=300)
    m = methods.create("lsh", bits=64, random_state=3).fit(_pairs(X, Y))
    for Z, P, enc in ((X, m.image_proj_, m.encode_images), (Y, m.text_proj_, m.encode_texts)):
        assert P.shape == (Z.shape[1], 64)
        assert abs(P.mean()) < 0.15 and abs(P.std() - 1) < 0.1
        Q = Z[:40] * 1.5 - 0.3  # not training points: the mean is the training one
        want = pack_codes(np.where((Q - Z.mean(0)) @ P >= 0, 1.0, -1.0))
        assert np.array_equal(enc(Q), want)
    assert abs(np.corrcoef(m.image_proj_[:10].ravel(), m.text_proj_[:10].ravel())[0, 1]) < 0.2


def test_feature_map_is_the_centred_rbf_anchor_map_or_the_centred_features():
    """``kernel="rbf"``: similarities exp(-||z - a||^2 / 2σ^2) to ``n_anchors`` distinct
    training rows (all of them when there are fewer), σ the mean anchor distance, centred on
    the training mean, and the same map at encoding; ``"linear"``: the centred features;
    ``"auto"``: rbf below 256 dimensions, linear from 256 on."""
    from sklearn.metrics.pairwise import euclidean_distances

    from xmodal.methods.hashing._common import FeatureMapMixin

    class M(FeatureMapMixin):
        def __init__(self, kernel, n_anchors):
            self.kernel, self.n_anchors = kernel, n_anchors

    rng = np.random.default_rng(5)
    Z, Q = rng.standard_normal((30, 4)), rng.standard_normal((7, 4))
    for n_anchors in (12, 30, 50):
        m = M("rbf", n_anchors)
        F = m._fit_map(Z, "image", np.random.default_rng(0))
        A = m.image_anchors_
        idx = [int(np.flatnonzero((Z == a).all(1))[0]) for a in A]
        assert len(A) == min(n_anchors, 30) and len(set(idx)) == len(idx) and idx == sorted(idx)
        sigma = euclidean_distances(Z, A).mean()
        assert m.image_sigma_ == pytest.approx(sigma, rel=1e-9)
        K = lambda P: np.exp(-euclidean_distances(P, A) ** 2 / (2 * sigma ** 2))  # noqa: E731
        np.testing.assert_allclose(F, K(Z) - K(Z).mean(0), atol=1e-12)
        np.testing.assert_allclose(m._map(Z, "image"), F, atol=1e-12)
        np.testing.assert_allclose(m._map(Q, "image"), K(Q) - K(Z).mean(0), atol=1e-12)
    # identical training rows: every anchor distance is 0, and σ must stay positive
    F = M("rbf", 3)._fit_map(np.ones((6, 4)), "image", np.random.default_rng(0))
    assert np.array_equal(F, np.zeros((6, 3)))
    m = M("linear", 5)
    np.testing.assert_allclose(m._fit_map(Z, "text", rng), Z - Z.mean(0), atol=1e-12)
    np.testing.assert_allclose(m._map(Q, "text"), Q - Z.mean(0), atol=1e-12)
    for d, rbf in ((255, True), (256, False)):
        m = M("auto", 5)
        W = rng.standard_normal((20, d))
        F = m._fit_map(W, "image", np.random.default_rng(0))
        assert (len(m.image_anchors_) == 5) == rbf and F.shape == (20, 5 if rbf else d)


def test_ridge_hash_is_the_scale_free_ridge_closed_form_and_helpers_are_exact():
    """The hash functions' ridge W = (F'F + λ I)^-1 F'B with λ = reg tr(F'F)/d (so scaling F by
    s scales W by 1/s); unit label rows; sign with 0 -> +1; a sample without repeats."""
    from xmodal.methods.hashing._common import normalized_labels, ridge_hash, signs, subsample

    rng = np.random.default_rng(6)
    F, B = rng.standard_normal((50, 6)) * [1, 2, 3, 4, 5, 6], rng.choice([-1.0, 1.0], (50, 3))
    G = F.T @ F
    for reg in (0.0, 0.3):
        want = np.linalg.solve(G + reg * np.trace(G) / 6 * np.eye(6), F.T @ B)
        np.testing.assert_allclose(ridge_hash(F, B, reg), want, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(ridge_hash(10 * F, B, reg), want / 10, rtol=1e-9, atol=1e-12)
    # features all zero (constant training features, centred): W = 0, not a singular solve
    assert np.array_equal(ridge_hash(np.zeros((50, 6)), B, 0.3), np.zeros((6, 3)))
    L = np.array([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0], [0.0, 3.0, 4.0]])
    np.testing.assert_allclose(normalized_labels(L), [[2 ** -0.5, 2 ** -0.5, 0], [0, 0, 0], [0, 0.6, 0.8]])
    assert signs(np.array([-1e-300, 0.0, 1e-300])).tolist() == [-1.0, 1.0, 1.0]
    assert subsample(5, None, rng).tolist() == subsample(5, 5, rng).tolist() == [0, 1, 2, 3, 4]
    rows = subsample(100, 30, rng)
    assert len(rows) == len(set(rows.tolist())) == 30 and rows.tolist() == sorted(rows.tolist())
    assert rows.max() < 100


def test_knn_laplacian_is_the_symmetrised_heat_kernel_graphs_laplacian():
    """One neighbour each on a line at 0, 1, 3, 7: edges 0-1, 2-1, 3-2, heat kernel
    exp(-d^2 / t), t the mean squared neighbour distance (1, 1, 4, 16: t = 5.5); L = D - W."""
    from xmodal.methods.hashing.unsupervised import knn_laplacian

    W = np.zeros((4, 4))
    for i, j, d in ((0, 1, 1.0), (1, 2, 2.0), (2, 3, 4.0)):
        W[i, j] = W[j, i] = np.exp(-d * d / 5.5)
    Lap = knn_laplacian(np.array([[0.0], [1.0], [3.0], [7.0]]), 1)
    np.testing.assert_allclose(Lap, np.diag(W.sum(1)) - W, atol=1e-12)


def test_imh_codes_are_the_bottom_eigenvectors_of_smoothness_plus_fit_error():
    """Song et al. 2013 with every item paired: the training codes Y (Y'Y = I) minimise
    tr Y'(L_x + L_y) Y (scaled to unit mean degree) + beta sum_g tr Y'(I - F_g (F_g'F_g +
    lam I)^-1 F_g') Y, the bottom eigenvectors; the hash functions are the ridge fits
    W_g = (F_g'F_g + lam I)^-1 F_g'Y (lam scaled by tr(F_g'F_g)/d), each up to its sign."""
    from scipy import linalg

    from xmodal.methods.hashing.unsupervised import knn_laplacian

    X, Y = _planted_pairs(n=90, seed=2)
    beta, lam, k, c = 0.7, 0.05, 6, 8
    m = methods.create("imh", bits=c, kernel="linear", beta=beta, lam=lam, n_neighbors=k,
                       max_train=None).fit(_pairs(X, Y))
    M = knn_laplacian(X, k) + knn_laplacian(Y, k)
    M = M / np.abs(np.diag(M)).mean()
    Fs = (X - X.mean(0), Y - Y.mean(0))
    ridge = [F.T @ F + lam * np.trace(F.T @ F) / F.shape[1] * np.eye(F.shape[1]) for F in Fs]
    for F, G in zip(Fs, ridge):
        M = M + beta * (np.eye(90) - F @ np.linalg.solve(G, F.T))
    vals, vecs = linalg.eigh(M)
    assert vals[c] - vals[c - 1] > 1e-6  # the subspace is well defined
    # centred features: (I - P) 1 = 1 and L 1 = 0, so the constant vector is an eigenvector
    # (a bit constant on the training set); n pairs give at most n - 1 others
    from xmodal.methods import ParameterError

    with pytest.raises(ParameterError, match="bits=16 needs more than 16 training pairs"):
        methods.create("imh", bits=16, kernel="linear", max_train=None).fit(_pairs(X[:16], Y[:16]))
    for F, G, proj in zip(Fs, ridge, (m.image_proj_, m.text_proj_)):
        want = np.linalg.solve(G, F.T @ vecs[:, :c])
        sgn = np.sign((want * proj).sum(0))
        np.testing.assert_allclose(proj, want * sgn, rtol=1e-6, atol=1e-9)


def test_lssh_encoders_are_the_papers_latent_maps_centred_on_the_training_mean():
    """Zhou et al. 2014: an image's latent code is s R (s its lasso code over the learned
    dictionary at the feature scale), a text's is the A step with s R unknown, a = argmin
    lam||y - a U||^2 + mu||a||^2, i.e. lam (a U - y) U' + mu a = 0; both are centred on the
    training pairs' mean, so the training codes' real values average to zero."""
    from xmodal.methods.hashing.unsupervised import lasso_fista

    X, Y = _planted_pairs(n=120, seed=3)
    lam, mu = 0.6, 1.7
    m = methods.create("lssh", bits=8, kernel="linear", n_atoms=16, n_iter=3, lam=lam, mu=mu,
                       max_train=None).fit(_pairs(X, Y))
    Fx, Fy = (X - X.mean(0)) / m.image_scale_, (Y - Y.mean(0)) / m.text_scale_
    assert m.image_scale_ == pytest.approx(np.sqrt(((X - X.mean(0)) ** 2).sum(1).mean()), rel=1e-9)
    S = lasso_fista(Fx, m.dictionary_, m.alpha)
    zi, zt = m._encode_images(X), m._encode_texts(Y)
    np.testing.assert_allclose(zi, S @ m.latent_map_ - (S @ m.latent_map_).mean(0), atol=1e-10)
    U = m.text_factor_
    a = zt + m.text_center_
    np.testing.assert_allclose(lam * (a @ U - Fy) @ U.T + mu * a, 0, atol=1e-9)
    np.testing.assert_allclose(zt.mean(0), 0, atol=1e-10)
    np.testing.assert_allclose(zi.mean(0), 0, atol=1e-10)
    # xmodal's optional ridge gamma||A||^2 (not in the paper) joins mu in the text A step
    mg = methods.create("lssh", bits=8, kernel="linear", n_atoms=16, n_iter=1, lam=lam, mu=mu, gamma=0.3,
                        max_train=None).fit(_pairs(X, Y))
    ag = mg._encode_texts(Y) + mg.text_center_
    Ug = mg.text_factor_
    np.testing.assert_allclose(lam * (ag @ Ug - Fy) @ Ug.T + (mu + 0.3) * ag, 0, atol=1e-9)
    # a training image at the training mean is a zero row once centred: as an initial atom
    # (all rows are atoms here) it stays zero, not 0/0
    Aint = np.random.default_rng(1).integers(-3, 4, (14, X.shape[1])).astype(float)
    X0 = np.vstack([np.zeros((1, X.shape[1])), Aint, -Aint]) + 5.0  # integers: the mean is exactly 5
    m0 = methods.create("lssh", bits=8, kernel="linear", n_atoms=29, n_iter=1, max_train=None).fit(_pairs(X0, Y[:29]))
    assert not np.any(m0._map(X0[:1], "image"))
    # a large alpha leaves atoms unused: each restarts as a unit-norm training image
    X1 = X[:60]
    m1 = methods.create("lssh", bits=8, kernel="linear", n_atoms=40, n_iter=1, alpha=1.0, max_train=None).fit(_pairs(X1, Y[:60]))
    F1 = X1 - X1.mean(0)
    cos = np.abs(m1.dictionary_ @ (F1 / np.linalg.norm(F1, axis=1, keepdims=True)).T).max(1)
    assert (cos > 1 - 1e-12).sum() >= 2 and np.linalg.norm(m1.dictionary_, axis=1).max() <= 1 + 1e-9
    assert np.isfinite(m0.dictionary_).all() and np.isfinite(m0._encode_images(X0)).all()


def test_lssh_sweeps_are_the_papers_block_updates():
    """Two of Zhou et al. 2014's alternating sweeps, recomputed: U and R the unit-norm least
    squares fits Y ~ A U and A ~ S R, A the exact minimiser of lam||Y - A U||^2 +
    mu||A - S R||^2, i.e. (lam Y U' + mu S R)(lam U U' + mu I)^-1, B the unit-norm fit X ~ S B,
    and S the lasso on [X, sqrt(mu) A] over [B, sqrt(mu) R]. xmodal's optional ridge
    gamma||A||^2 (not in the paper) adds gamma I next to mu I."""
    from xmodal.methods.hashing.unsupervised import lasso_fista, unit_norm_lstsq

    X, Y = _planted_pairs(n=100, seed=4)
    lam, mu, gamma, alpha, k, c = 0.6, 1.7, 0.2, 0.02, 12, 8
    m = methods.create("lssh", bits=c, kernel="linear", n_atoms=k, n_iter=2, lam=lam, mu=mu, gamma=gamma,
                       alpha=alpha, max_train=None, random_state=5).fit(_pairs(X, Y))
    rng = np.random.default_rng(5)
    Fx, Fy = X - X.mean(0), Y - Y.mean(0)
    Fx, Fy = Fx / np.sqrt((Fx ** 2).sum(1).mean()), Fy / np.sqrt((Fy ** 2).sum(1).mean())
    D = Fx[rng.choice(100, k, replace=False)]
    D = D / np.linalg.norm(D, axis=1, keepdims=True)
    S = lasso_fista(Fx, D, alpha)
    A = rng.standard_normal((100, c)) * 0.1
    for _ in range(2):
        U = unit_norm_lstsq(Fy, A)
        R = unit_norm_lstsq(A, S)
        A = (lam * Fy @ U.T + mu * S @ R) @ np.linalg.inv(lam * U @ U.T + (mu + gamma) * np.eye(c))
        D = unit_norm_lstsq(Fx, S)
        assert np.linalg.norm(D, axis=1).min() > 1e-6  # no atom restarted
        r = np.sqrt(mu)
        S = lasso_fista(np.hstack([Fx, r * A]), np.hstack([D, r * R]), alpha, init=S)
    np.testing.assert_allclose(m.text_factor_, U, atol=1e-6)
    np.testing.assert_allclose(m.latent_map_, R, atol=1e-6)
    np.testing.assert_allclose(m.dictionary_, D, atol=1e-6)
