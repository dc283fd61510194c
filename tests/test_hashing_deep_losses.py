"""The deep hashing objectives and code updates (src/xmodal/methods/hashing/deep.py) against
the papers' formulas, computed independently on tiny hand-made tensors, in float64.

A stand-in module whose "nets" return their inputs makes each loss a function of the outputs
themselves (F, G, H, z), as the papers write it: values and gradients are then compared with
the papers' closed forms (DCMH's gradient, eq. 4 of Jiang & Li 2017), not with stored numbers.
These close the gaps a mutation run left (a B-step that never ran, a gradient-reversal layer
that did not reverse, JDSH's decision thresholds, UCCH's initial bank, the input
standardisation) and re-check the likelihood terms at the level of single pairs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from xmodal import methods
from xmodal.data import PairedDataset
from xmodal.methods.hashing.deep import DCMH, JDSH, SSAH, UCCH, _GradReverse, _neg_log_likelihood

class _Outputs(nn.Module):
    """The nets replaced by the identity: a batch's "x"/"y" are the modality outputs."""

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def encode_text(self, y: torch.Tensor) -> torch.Tensor:
        return y


def _rng(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_pairwise_likelihood_is_the_papers_per_pair_sum():
    """-sum_ij (S_ij θ_ij - log(1 + e^θ_ij)), written out pair by pair."""
    theta = torch.tensor([[0.3, -1.2], [2.0, 0.0], [-0.4, 5.0]], dtype=torch.float64)
    S = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    expected = sum(-(S[i, j].item() * theta[i, j].item() - math.log(1 + math.exp(theta[i, j].item())))
                   for i in range(3) for j in range(2))
    assert float(_neg_log_likelihood(theta, S)) == pytest.approx(expected, rel=1e-12)


def _dcmh_state(gamma: float, eta: float):
    """DCMH with hand-made buffers over n = 6 training rows (4 bits), multi-label."""
    m = DCMH(bits=4, gamma=gamma, eta=eta)
    m.module_ = _Outputs()
    g = _rng(1)
    m._F = torch.randn(6, 4, generator=g, dtype=torch.float64)
    m._G = torch.randn(6, 4, generator=g, dtype=torch.float64)
    m._L = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 1], [0, 1, 1], [1, 0, 0]], dtype=torch.float64)
    m._on_epoch_start(1)
    return m


def test_dcmh_objective_and_gradient_are_the_papers():
    """Per modality (image shown; text alike with F and G swapped), over the batch rows i and
    every training row j, θ_ij = F_i'G_j / 2:
        J = -Σ (S_ij θ_ij - log(1 + e^θ_ij)) + γ Σ_i ||B_i - F_i||^2 + (η/n) ||F'1||^2
        ∂J/∂F_i = ½ Σ_j (σ(θ_ij) - S_ij) G_j + 2γ (F_i - B_i) + (2η/n) F'1
    with F'1 over every row (the batch's live outputs, the others from the buffer) and the
    documented 1/n on the balance term; the step loss is J_F + J_G over n·m."""
    gamma, eta = 0.7, 0.3
    m = _dcmh_state(gamma, eta)
    F0, G0, B, L = m._F.clone(), m._G.clone(), m._B.clone(), m._L
    n, idx = 6, torch.tensor([1, 3, 4])
    g = _rng(2)
    f = torch.randn(3, 4, generator=g, dtype=torch.float64).requires_grad_(True)
    t = torch.randn(3, 4, generator=g, dtype=torch.float64).requires_grad_(True)
    loss = m._loss({"x": f, "y": t, "index": idx, "labels": L[idx]})
    loss.backward()
    S = (L[idx] @ L.T > 0).double()
    expected_value, grads = 0.0, []
    for live, other_buf, own_buf in ((f.detach(), G0, F0), (t.detach(), F0, G0)):
        theta = 0.5 * live @ other_buf.T
        allrows = own_buf.clone()
        allrows[idx] = live
        ones = allrows.sum(0)
        J = (-(S * theta - torch.log(1 + torch.exp(theta))).sum() + gamma * ((B[idx] - live) ** 2).sum()
             + eta / n * (ones ** 2).sum())
        expected_value += float(J)
        sigma = 1 / (1 + torch.exp(-theta))
        grads.append(0.5 * (sigma - S) @ other_buf + 2 * gamma * (live - B[idx]) + 2 * eta / n * ones)
    scale = n * len(idx)
    assert float(loss.detach()) * scale == pytest.approx(expected_value, rel=1e-10)
    torch.testing.assert_close(f.grad * scale, grads[0], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(t.grad * scale, grads[1], rtol=1e-10, atol=1e-12)
    # the buffers now hold this batch's outputs (the next B-step sees them), the rest unchanged
    torch.testing.assert_close(m._F[idx], f.detach())
    torch.testing.assert_close(m._G[idx], t.detach())
    rest = torch.tensor([0, 2, 5])
    torch.testing.assert_close(m._F[rest], F0[rest])
    torch.testing.assert_close(m._G[rest], G0[rest])


def test_dcmh_b_step_is_the_sign_of_f_plus_g_every_epoch():
    """The paper's closed-form B-step B = sign(γ(F + G)) (γ > 0; a zero sum counts as +1),
    taken at the start of every epoch after the first from the buffers; the first epoch's
    B is the sign of the random initial buffers."""
    m = DCMH(bits=2, gamma=0.5, random_state=3)
    m.module_ = m._build(3, 2, 0)
    X, Y = np.random.default_rng(0).normal(size=(4, 3)), np.random.default_rng(1).normal(size=(4, 2))
    m._setup(X, Y, None)
    torch.testing.assert_close(m._B, torch.sign(m._F + m._G))
    assert set(m._B.unique().tolist()) <= {-1.0, 1.0}
    m._F = torch.tensor([[1.0, -2.0], [0.5, 0.5], [-0.3, 0.2], [0.0, 0.0]])
    m._G = torch.tensor([[-1.0, 1.0], [0.1, -0.7], [0.1, 0.3], [-0.01, 0.01]])
    before = m._B.clone()
    m._on_epoch_start(0)
    torch.testing.assert_close(m._B, before)  # epoch 0 keeps the initial B
    m._on_epoch_start(2)
    # F + G = [[0, -1], [0.6, -0.2], [-0.2, 0.5], [-0.01, 0.01]]
    torch.testing.assert_close(m._B, torch.tensor([[1.0, -1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, 1.0]]))


def test_gradient_reversal_is_identity_forward_and_negates_backward():
    """SSAH's discriminators are trained through a gradient-reversal layer: the features see
    the adversary's gradient negated (they maximise what the discriminator minimises)."""
    x = torch.tensor([[0.5, -1.0], [2.0, 0.25]], dtype=torch.float64, requires_grad=True)
    w = torch.tensor([[1.0, 2.0], [-3.0, 0.5]], dtype=torch.float64)
    y = _GradReverse.apply(x)
    torch.testing.assert_close(y, x.detach())
    (y * w).sum().backward()
    torch.testing.assert_close(x.grad, -w)


def _ssah(alpha=0.6, gamma=1.3, eta=0.8, beta=0.4):
    m = SSAH(bits=3, alpha=alpha, gamma=gamma, eta=eta, beta=beta)
    m._n_rows = 6.0
    return m


def test_ssah_semantic_loss_is_the_likelihood_over_every_training_row():
    """alpha·NLL(S, F_q'F^l/2) + gamma·NLL(S, H_q'H^l/2) summed over (query, training row)
    pairs, over their number; the training rows are given as distinct label vectors with
    counts, and must count as the repeated rows themselves."""
    m = _ssah()
    g = _rng(4)
    U = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    counts = torch.tensor([1, 2, 3])
    Fl, Hl = torch.randn(3, 5, generator=g, dtype=torch.float64), torch.tanh(torch.randn(3, 3, generator=g, dtype=torch.float64))
    Fq, Hq = torch.randn(2, 5, generator=g, dtype=torch.float64), torch.tanh(torch.randn(2, 3, generator=g, dtype=torch.float64))
    Lq = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    rows = torch.repeat_interleave(torch.arange(3), counts)  # the six training rows

    def nll_sum(A, B, La, Lb):
        total = 0.0
        for i in range(len(A)):
            for j in range(len(B)):
                th = 0.5 * float(A[i] @ B[j])
                s = float(float(La[i] @ Lb[j]) > 0)
                total += -(s * th - math.log(1 + math.exp(th)))
        return total

    expected = (0.6 * nll_sum(Fq, Fl[rows], Lq, U[rows]) + 1.3 * nll_sum(Hq, Hl[rows], Lq, U[rows])) / (2 * 6)
    got = m._semantic_loss(Fq, Hq, Lq, Fl, Hl, U, counts)
    assert float(got) == pytest.approx(expected, rel=1e-10)
    # LabNet's own loss: the queries are the distinct vectors too, weighted by their counts
    expected = (0.6 * nll_sum(Fl[rows], Fl[rows], U[rows], U[rows])
                + 1.3 * nll_sum(Hl[rows], Hl[rows], U[rows], U[rows])) / 36
    got = m._semantic_loss(Fl, Hl, U, Fl, Hl, U, counts, counts)
    assert float(got) == pytest.approx(expected, rel=1e-10)


def test_ssah_pointwise_terms_are_quantization_and_label_prediction_per_item():
    """eta ||H_i - B_i||^2 + beta ||sigmoid(ŷ_i) - l_i||^2 averaged over items (weighted by the
    rows each stands for), over n like the likelihood terms."""
    m = _ssah(eta=0.8, beta=0.4)
    H = torch.tensor([[0.5, -0.2, 0.9], [-0.7, 0.1, 0.3]], dtype=torch.float64)
    B = torch.tensor([[1.0, -1.0, 1.0], [-1.0, 1.0, -1.0]], dtype=torch.float64)
    logits = torch.tensor([[2.0, -1.0], [0.0, 0.5]], dtype=torch.float64)
    L = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    per = [0.8 * sum((float(H[i, k]) - float(B[i, k])) ** 2 for k in range(3))
           + 0.4 * sum((sig(float(logits[i, k])) - float(L[i, k])) ** 2 for k in range(2)) for i in range(2)]
    assert float(m._pointwise(H, B, logits, L)) == pytest.approx((per[0] + per[1]) / 2 / 6, rel=1e-10)
    w = torch.tensor([1.0, 3.0], dtype=torch.float64)
    assert float(m._pointwise(H, B, logits, L, w)) == pytest.approx((per[0] + 3 * per[1]) / 4 / 6, rel=1e-10)


def test_ssah_b_step_is_the_sign_of_all_three_outputs():
    """B = sign(H^l + H^v + H^t) at the start of every epoch after the first (zero counts as +1)."""
    m = _ssah()
    m._Hl = torch.tensor([[0.5, -0.5], [0.2, 0.0]])
    m._Hx = torch.tensor([[-0.75, 0.1], [0.3, 0.0]])
    m._Hy = torch.tensor([[0.25, 0.3], [-0.4, 0.0]])
    m._B = torch.ones(2, 2)
    m._on_epoch_start(0)
    torch.testing.assert_close(m._B, torch.ones(2, 2))
    m._on_epoch_start(1)
    # sums: [[0, -0.1], [0.1, 0]] (any two of the three alone give other signs)
    torch.testing.assert_close(m._B, torch.tensor([[1.0, -1.0], [1.0, 1.0]]))


def _cos2(Z: np.ndarray) -> np.ndarray:
    Z = Z / np.linalg.norm(Z, axis=1, keepdims=True)
    return Z @ Z.T * 2 - 1


def test_jdsh_decision_thresholds_come_from_the_similarity_distribution():
    """left = mean - k_left·sd(values below the mean), right = mean + k_right·sd(values at or
    above it), min / max of the joint similarities S = a S_I + b S_T + l (Ŝ + Ŝ')/2 with
    Ŝ = rownorm(S_I) rownorm(S_T)'. Batches of at least n rows are the whole set (in some
    order), so every sampled batch has the same values as the full matrix."""
    rng = np.random.default_rng(5)
    X, Y = rng.normal(size=(7, 4)), rng.normal(size=(7, 3))
    a, b, l_, kl, kr = 0.5, 0.2, 0.3, 1.5, 0.7
    m = JDSH(bits=4, a=a, b=b, l=l_, k_left=kl, k_right=kr, batch_size=64)
    m.module_ = m._build(4, 3, 0)
    m._X, m._Y = torch.from_numpy(X), torch.from_numpy(Y)
    m._setup(X, Y, None)
    SI, ST = _cos2(X), _cos2(Y)
    nI = SI / np.linalg.norm(SI, axis=1, keepdims=True)
    nT = ST / np.linalg.norm(ST, axis=1, keepdims=True)
    Sh = nI @ nT.T
    v = (a * SI + b * ST + l_ * (Sh + Sh.T) / 2).ravel()
    mean = v.mean()
    below, above = v[v < mean], v[v >= mean]
    assert m.s_min_ == pytest.approx(v.min(), abs=1e-6) and m.s_max_ == pytest.approx(v.max(), abs=1e-6)
    # the spread of ten copies of the same values (ddof 0 or 1 alike to 1e-3)
    assert m.left_ == pytest.approx(mean - kl * below.std(), abs=2e-3)
    assert m.right_ == pytest.approx(mean + kr * above.std(), abs=2e-3)
    assert m.left_ < mean < m.right_


def test_ucch_initial_bank_holds_unit_binary_codes_balanced():
    """The bank starts from normalised sign codes (entries ±1/sqrt(bits)), balanced signs."""
    m = UCCH(bits=16, random_state=2)
    m.module_ = m._build(3, 2, 0)
    X, Y = np.zeros((500, 3)) + np.arange(3), np.zeros((500, 2)) + np.arange(2)
    m._setup(X, Y, None)
    mem = m._memory
    assert mem.shape == (500, 16)
    torch.testing.assert_close(mem.abs(), torch.full_like(mem, 0.25))
    assert 0.45 < float((mem > 0).float().mean()) < 0.55


def _tiny_paired() -> PairedDataset:
    rng = np.random.default_rng(7)
    cls = np.repeat(np.arange(3), 8)
    X = (rng.normal(size=(3, 6))[cls] + rng.normal(size=(24, 6)) + 5.0).astype(np.float32)
    Y = (rng.normal(size=(3, 5))[cls] + rng.normal(size=(24, 5)) * 3.0 - 2.0).astype(np.float32)
    return PairedDataset(name="tiny", text_to_image=np.arange(24), n_images=24, image_features=X,
                         text_features=Y, labels=cls)


@pytest.mark.parametrize("name", ["dcmh", "ssah", "djsrh", "jdsh", "ucch"])
def test_inputs_are_standardised_with_training_statistics(name):
    """Every deep method's nets see standardised features (training mean and spread)."""
    ds = _tiny_paired()
    extra = dict(feature_dim=8, label_epochs=1) if name == "ssah" else {}
    if name == "ucch":
        extra["n_negatives"] = 8
    m = methods.create(name, bits=8, hidden=8, epochs=1, patience=None, batch_size=12, **extra).fit(ds)
    for norm, Z in ((m.module_.x_norm, ds.image_features), (m.module_.y_norm, ds.text_features)):
        np.testing.assert_allclose(norm.mean.numpy(), Z.mean(axis=0), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(norm.scale.numpy(), Z.std(axis=0) + 1e-6, rtol=1e-4)


def test_ssah_modality_step_is_likelihood_quantization_labels_and_adversary():
    """Per modality m: [alpha Σ_ij NLL(S_ij, F^m_i'F^l_j/2) + gamma Σ_ij NLL(S_ij, H^m_i'H^l_j/2)]
    / (m·n) over the batch rows i and every training row j, + [eta ||H^m_i - B_i||^2 + beta
    ||sigmoid(ŷ_i) - l_i||^2 + adversarial (-log D(F^l_i) - log(1 - D(F^m_i)))] averaged over
    the batch and divided by n; the buffer of H^m then holds the batch's outputs."""
    torch.manual_seed(0)
    m = SSAH(bits=3, hidden=4, feature_dim=4, alpha=0.6, gamma=1.3, eta=0.8, beta=0.4, adversarial=0.7)
    m.module_ = m._build(3, 2, 2).double().eval()
    mod = m.module_
    L = torch.tensor([[1, 0], [0, 1], [1, 1], [1, 0], [0, 1], [1, 0]], dtype=torch.float64)
    U, inverse, counts = torch.unique(L, dim=0, return_inverse=True, return_counts=True)
    n = len(L)
    g = _rng(6)
    X, Y = torch.randn(n, 3, generator=g, dtype=torch.float64), torch.randn(n, 2, generator=g, dtype=torch.float64)
    with torch.no_grad():
        Fu = mod.lab_body(U)
        Hu = torch.tanh(mod.lab_hash(Fu))
    m._n_rows, m._U, m._inverse, m._counts, m._Fu, m._Hu = float(n), U, inverse, counts, Fu, Hu
    m._B = torch.tensor([[1, -1, 1], [-1, -1, 1], [1, 1, -1], [1, -1, -1], [-1, 1, 1], [1, 1, 1]],
                        dtype=torch.float64)
    m._Hx, m._Hy = torch.zeros(n, 3, dtype=torch.float64), torch.zeros(n, 3, dtype=torch.float64)
    idx = torch.tensor([0, 2, 5])
    with torch.no_grad():
        got = float(m._loss({"x": X[idx], "y": Y[idx], "index": idx, "labels": L[idx]}))
        Fl, Hl = Fu[inverse], Hu[inverse]  # LabNet's outputs for every training row
        sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
        expected = 0.0
        for feats, hash_, lab, disc, inp in ((mod.image_features, mod.x_hash, mod.x_label, mod.disc_x, X),
                                             (mod.text_features, mod.y_hash, mod.y_label, mod.disc_y, Y)):
            Fm = feats(inp[idx])
            Hm = torch.tanh(hash_(Fm))
            logits = lab(Fm)
            pairs, items = 0.0, 0.0
            for a, i in enumerate(idx.tolist()):
                for j in range(n):
                    s = float(float(L[i] @ L[j]) > 0)
                    for w, th in ((0.6, 0.5 * float(Fm[a] @ Fl[j])), (1.3, 0.5 * float(Hm[a] @ Hl[j]))):
                        pairs += w * (math.log(1 + math.exp(th)) - s * th)
                items += 0.8 * float(((Hm[a] - m._B[i]) ** 2).sum())
                items += 0.4 * sum((sig(float(logits[a, k])) - float(L[i, k])) ** 2 for k in range(2))
                items += 0.7 * (-math.log(sig(float(disc(Fl[i:i + 1]))))
                                - math.log(1 - sig(float(disc(Fm[a:a + 1])))))
            expected += pairs / (len(idx) * n) + items / len(idx) / n
            torch.testing.assert_close((m._Hx if inp is X else m._Hy)[idx], Hm)
    assert got == pytest.approx(expected, rel=1e-10)


def test_ssah_label_net_objective_is_likelihood_quantization_to_its_signs_and_labels():
    """LabNet: [alpha Σ NLL(S, F^l'F^l/2) + gamma Σ NLL(S, H^l'H^l/2)] over every pair of
    training rows / n^2 + [eta ||H^l_i - sign(H^l_i)||^2 + beta ||sigmoid(ŷ_i) - l_i||^2]
    averaged over the rows / n (the distinct label vectors standing for their rows)."""
    torch.manual_seed(1)
    m = SSAH(bits=3, hidden=4, feature_dim=4, alpha=0.6, gamma=1.3, eta=0.8, beta=0.4)
    m.module_ = m._build(3, 2, 2).double().eval()
    mod = m.module_
    U = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    counts = torch.tensor([2, 1, 3])
    rows = torch.repeat_interleave(torch.arange(3), counts)
    n = len(rows)
    m._n_rows = float(n)
    with torch.no_grad():
        got = float(m._label_net_loss(U, counts))
        Fl = mod.lab_body(U)
        Hl = torch.tanh(mod.lab_hash(Fl))
        logits = mod.lab_label(Fl)
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    pairs = items = 0.0
    for i in rows.tolist():
        for j in rows.tolist():
            s = float(float(U[i] @ U[j]) > 0)
            for w, th in ((0.6, 0.5 * float(Fl[i] @ Fl[j])), (1.3, 0.5 * float(Hl[i] @ Hl[j]))):
                pairs += w * (math.log(1 + math.exp(th)) - s * th)
        items += 0.8 * sum((float(h) - math.copysign(1.0, float(h))) ** 2 for h in Hl[i])
        items += 0.4 * sum((sig(float(logits[i, k])) - float(U[i, k])) ** 2 for k in range(2))
    assert got == pytest.approx(pairs / n ** 2 + items / n / n, rel=1e-10)


def test_ucch_outputs_are_unit_rows_of_tanh():
    """UCCH's nets end in tanh and a per-item L2 normalisation (what the bank and the
    contrast compare); the codes are their signs."""
    m = UCCH(bits=6, hidden=5, dropout=0.0)
    m.module_ = mod = m._build(4, 3, 0).double().eval()
    g = _rng(8)
    X, Y = torch.randn(5, 4, generator=g, dtype=torch.float64), torch.randn(5, 3, generator=g, dtype=torch.float64)
    with torch.no_grad():
        for out, raw in ((mod.encode_image(X), mod.x_hash(mod.image_features(X))),
                         (mod.encode_text(Y), mod.y_hash(mod.text_features(Y)))):
            t = torch.tanh(raw)
            torch.testing.assert_close(out, t / t.norm(dim=1, keepdim=True))


@pytest.mark.parametrize("margin", [0.0, 0.2])
def test_ucch_cross_modal_ranking_loss_is_the_papers(margin):
    """CRL over the batch's score matrix s_ij = z_I,i'z_T,j: per image row i, pairs within
    ``margin`` of the positive (s_ij >= s_ii - margin, the positive itself included) keep their
    score, the others are lowered by ``shift``; loss -c_ii + log Σ_j e^{c_ij} + margin, and
    the same per text column; each averaged over the batch. With margin 0 the positive is
    on the boundary and still keeps its score."""
    shift = 0.7
    m = UCCH(bits=3, margin=margin, shift=shift)
    zi = torch.tensor([[0.6, 0.8, 0.0], [0.0, 0.6, 0.8], [0.8, 0.0, 0.6]], dtype=torch.float64)
    zt = torch.tensor([[0.8, 0.6, 0.0], [0.0, 0.8, 0.6], [0.6, 0.0, -0.8]], dtype=torch.float64)
    s = (zi @ zt.T).tolist()
    b = len(s)

    def side(get):  # get(i, j): the score of query i against candidate j
        total = 0.0
        for i in range(b):
            c = [get(i, j) if get(i, j) >= get(i, i) - margin else get(i, j) - shift for j in range(b)]
            total += -c[i] + math.log(sum(math.exp(v) for v in c)) + margin
        return total / b

    expected = side(lambda i, j: s[i][j]) + side(lambda i, j: s[j][i])
    assert float(m._crl(zi, zt)) == pytest.approx(expected, rel=1e-12)
