"""The deep real-valued methods' losses, each checked against its paper's formula computed
independently (plain Python / NumPy loops on tiny hand-made tensors) or by a float64
gradient check: VSE++ hinges, InfoNCE with several captions per image, DCCA's total
correlation, DCCAE's reconstruction term, ACMR's three parts and adversarial signs, DSCMR's
J1 / J2 / J3. No data files, no training."""

import math

import numpy as np
import pytest
import torch
from scipy import linalg

from xmodal.methods.deep._common import hardest_triplet, info_nce, pair_mask
from xmodal.methods.deep.cca import DCCA, DCCAE, cca_correlation
from xmodal.methods.deep.ranking import VSEPP, Contrastive
from xmodal.methods.deep.supervised import ACMR, DSCMR, _ce


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _hinges(S, pos, m, hardest):
    """Faghri et al. 2018, eq. 1 (sum) / eq. 2 (max): per image query over its non-positive
    captions, per caption query over the images it does not belong to; batch means."""
    S = np.asarray(S, float)
    n = len(S)
    i2t = t2i = 0.0
    for q in range(n):
        ci = [max(0.0, m - S[q, q] + S[q, j]) for j in range(n) if not pos[q, j]] or [0.0]
        ct = [max(0.0, m - S[q, q] + S[i, q]) for i in range(n) if not pos[i, q]] or [0.0]
        i2t += max(ci) if hardest else sum(ci)
        t2i += max(ct) if hardest else sum(ct)
    return (i2t + t2i) / n


def test_vse_max_of_hinges_takes_the_hardest_negative_each_way_and_is_zero_past_the_margin():
    # hand-made: image 0's hardest caption is 2 (0.6), caption 0's hardest image is 1 (0.7)
    S = torch.tensor([[0.8, 0.1, 0.6],
                      [0.7, 0.9, 0.2],
                      [0.0, 0.3, 0.5]])
    pos = torch.eye(3, dtype=torch.bool)
    m = 0.2
    # by hand: i2t rows: max(0, .2-.8+.6)=0 -> 0.0; row 1: max(.2-.9+.7=0, .2-.9+.2<0)=0.0;
    # row 2: max(.2-.5+0, .2-.5+.3=0)=0 ; t2i cols: col 0: .2-.8+.7=0.1; col 1: .2-.9+.3<0 -> 0;
    # col 2: max(.2-.5+.6=.3, .2-.5+.2<0)=.3 -> (0.1 + 0.3) / 3
    assert float(hardest_triplet(S, pos, m, True)) == pytest.approx(0.4 / 3, abs=1e-6)
    Sr = torch.rand(5, 5, generator=_gen(2)) * 2 - 1
    eye5 = torch.eye(5, dtype=torch.bool)
    hard, every = _hinges(Sr, eye5, m, True), _hinges(Sr, eye5, m, False)
    assert every > hard + 0.1  # several violating negatives per query here
    assert float(hardest_triplet(Sr, eye5, m)) == pytest.approx(hard, abs=1e-6)  # VSE++'s default
    assert float(hardest_triplet(S, pos, m, True)) == pytest.approx(_hinges(S, pos, m, True), abs=1e-6)
    # the sum of hinges counts every violating negative: col 2 adds .3 only (.2-.5+.2 < 0)
    assert float(hardest_triplet(S, pos, m, False)) == pytest.approx(_hinges(S, pos, m, False), abs=1e-6)
    # every positive beats every negative by the margin: both losses are exactly zero
    good = torch.tensor([[0.9, 0.5, 0.6], [0.1, 0.9, 0.69], [0.0, 0.3, 0.9]])
    assert float(hardest_triplet(good, pos, m, True)) == 0.0
    assert float(hardest_triplet(good, pos, m, False)) == 0.0
    # a second caption of the same image is never a negative, in either direction
    pos2 = pos.clone()
    pos2[0, 2] = pos2[2, 0] = True
    S2 = S.clone()
    S2[0, 2] = 0.99
    assert float(hardest_triplet(S2, pos2, m, True)) == pytest.approx(_hinges(S2, pos2, m, True), abs=1e-6)


def _vse(loss, warmup, epoch):
    m = VSEPP(dim=4, hidden=None, margin=0.2, loss=loss, warmup_epochs=warmup, verbose=False)
    torch.manual_seed(0)
    m.module_ = m._build(5, 3, 0)
    m._epoch = epoch
    return m


def _batch(n=6, dx=5, dy=3, labels=None, image=None, seed=0):
    g = _gen(seed)
    return {"x": torch.randn(n, dx, generator=g), "y": torch.randn(n, dy, generator=g),
            "labels": labels, "index": torch.arange(n),
            "image": torch.arange(n) if image is None else image}


def test_vsepp_batch_loss_is_max_of_hinges_after_warmup_and_sum_during_it():
    image = torch.tensor([0, 0, 1, 2, 3, 4])  # captions 0 and 1 belong to one image
    b = _batch(image=image)
    pos = (image[:, None] == image[None, :]).numpy()
    for loss, warmup, epoch, hardest in [("hardest", 2, 2, True), ("hardest", 2, 1, False), ("sum", 0, 5, False)]:
        m = _vse(loss, warmup, epoch)
        with torch.no_grad():
            u, v = m.module_.encode_image(b["x"]), m.module_.encode_text(b["y"])
            got = float(m._batch_loss(dict(b)))
        assert got == pytest.approx(_hinges((u @ v.T).numpy(), pos, 0.2, hardest), abs=1e-5), (loss, epoch)


def _nce_reference(logits, pos):
    """Symmetric InfoNCE, target uniform over each query's positives: for a row,
    -(1/|P|) sum_{p in P} log(e^{l_ip} / sum_j e^{l_ij}); the same per column; queries with no
    positive are left out; the two directions averaged."""
    L = np.asarray(logits, float)
    P = np.asarray(pos, bool)

    def one_way(L, P):
        per = []
        for i in range(len(L)):
            if P[i].any():
                lse = math.log(sum(math.exp(x) for x in L[i]))
                per.append(-np.mean([L[i, j] - lse for j in np.flatnonzero(P[i])]))
        return float(np.mean(per)) if per else 0.0

    return 0.5 * (one_way(L, P) + one_way(L.T, P.T))


def test_info_nce_with_several_captions_of_one_image_as_positives():
    g = _gen(1)
    logits = torch.randn(5, 5, generator=g, dtype=torch.float64) * 3
    image = torch.tensor([0, 0, 0, 1, 2])  # three captions of image 0
    pos = image[:, None] == image[None, :]
    assert float(info_nce(logits, pos)) == pytest.approx(_nce_reference(logits, pos), rel=1e-7)
    # one positive per row: the CLIP loss, i.e. mean of the two cross-entropies
    eye = torch.eye(5, dtype=torch.bool)
    ce = 0.5 * (torch.nn.functional.cross_entropy(logits, torch.arange(5))
                + torch.nn.functional.cross_entropy(logits.T, torch.arange(5)))
    assert float(info_nce(logits, eye)) == pytest.approx(float(ce), rel=1e-7)
    # asymmetric positives (a repeated caption): rows and columns read their own positives
    asym = eye.clone()
    asym[1, 3] = True
    assert float(info_nce(logits, asym)) == pytest.approx(_nce_reference(logits, asym), rel=1e-7)
    # image 3 has no positive caption, yet caption 3 is one of image 0's: the image-side mean
    # leaves query 3 out, the caption side keeps it
    lone = eye.clone()
    lone[3, 3] = False
    lone[0, 3] = True
    assert float(info_nce(logits, lone)) == pytest.approx(_nce_reference(logits, lone), rel=1e-7)
    x = logits.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda t: info_nce(t, asym), (x,))


def test_contrastive_batch_loss_uses_the_learned_clamped_temperature_and_label_positives():
    L = torch.tensor([[1, 0], [1, 0], [0, 1], [0, 1], [0, 0], [1, 0]], dtype=torch.float32)
    image = torch.tensor([0, 0, 1, 2, 3, 4])
    b = _batch(labels=L, image=image)
    for temperature, scale in [(0.5, 2.0), (0.005, 100.0)]:  # 1/0.005 = 200 is clamped to CLIP's 100
        m = Contrastive(dim=4, hidden=None, temperature=temperature, positives="label", label_weight=0.3,
                        dropout=0.0, verbose=False)
        torch.manual_seed(0)
        m.module_ = m._build(5, 3, 2)
        with torch.no_grad():
            u, v = m.module_.encode_image(b["x"]), m.module_.encode_text(b["y"])
            S = (u @ v.T).numpy()
            got = float(m._batch_loss(dict(b)))
        inst = (image[:, None] == image[None, :]).numpy()
        lab = (L @ L.T > 0).numpy()
        want = _nce_reference(scale * S, inst) + 0.3 * _nce_reference(scale * S, lab)
        assert got == pytest.approx(want, rel=1e-5), temperature
        m.positives = "image"
        with torch.no_grad():
            assert float(m._batch_loss(dict(b))) == pytest.approx(_nce_reference(scale * S, inst), rel=1e-5)


def _cca_reference(H1, H2, k, r1, r2):
    A, B = H1 - H1.mean(0), H2 - H2.mean(0)
    n = len(A) - 1
    S11 = A.T @ A / n + r1 * np.eye(A.shape[1])
    S22 = B.T @ B / n + r2 * np.eye(B.shape[1])
    T = linalg.inv(linalg.sqrtm(S11)).real @ (A.T @ B / n) @ linalg.inv(linalg.sqrtm(S22)).real
    return np.sort(linalg.svdvals(T))[::-1][:k].sum()


def test_dcca_total_correlation_with_separate_ridges_and_its_gradient():
    """Andrew et al. 2013: corr = sum of the top k singular values of S11^-1/2 S12 S22^-1/2,
    S11 = H1'H1/(m-1) + r1 I, S22 = H2'H2/(m-1) + r2 I; with r1 != r2 so that a swapped ridge
    shows, on a batch small enough for the ridge to matter."""
    rng = np.random.default_rng(3)
    Z = rng.normal(size=(12, 2))
    H1 = np.c_[Z + 0.3 * rng.normal(size=(12, 2)), rng.normal(size=(12, 1))] * [1.0, 0.2, 0.5]
    H2 = np.c_[Z @ [[1.0, 0.5], [0.2, 1.0]] + 0.3 * rng.normal(size=(12, 2)), 0.1 * rng.normal(size=(12, 2))]
    r1, r2 = 0.3, 0.01
    for k in (1, 2, 3):
        got = float(cca_correlation(torch.from_numpy(H1), torch.from_numpy(H2), k, r1, r2))
        assert got == pytest.approx(_cca_reference(H1, H2, k, r1, r2), rel=1e-7), k
    # the swapped ridges give a different value (else the check above could not see a swap)
    assert abs(_cca_reference(H1, H2, 3, r2, r1) - _cca_reference(H1, H2, 3, r1, r2)) > 1e-3
    # perfectly correlated views: k canonical correlations of (almost) 1
    same = float(cca_correlation(torch.from_numpy(H1), torch.from_numpy(H1 @ rng.normal(size=(3, 3))), 3, 1e-9, 1e-9))
    assert same == pytest.approx(3.0, abs=1e-5)
    x1 = torch.from_numpy(H1).requires_grad_()
    x2 = torch.from_numpy(H2).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: cca_correlation(a, b, 2, r1, r2), (x1, x2))


def _dcca(cls, **kw):
    m = cls(dim=3, hidden=None, n_components=2, reg=0.05, verbose=False, **kw)
    torch.manual_seed(0)
    m.module_ = m._build(5, 4, 0)
    m.image_dim_, m.text_dim_ = 5, 4
    return m


def test_dcca_and_dccae_batch_losses():
    """DCCA minimises -corr(f(x), g(y)) over the top n_components; DCCAE (Wang et al. 2015)
    adds recon_weight * (mean squared error of each view rebuilt from its own code)."""
    b = _batch(n=10, dx=5, dy=4, seed=4)
    m = _dcca(DCCA)
    with torch.no_grad():
        hx, hy = m.module_.f(b["x"]).double().numpy(), m.module_.g(b["y"]).double().numpy()
        assert float(m._batch_loss(dict(b))) == pytest.approx(-_cca_reference(hx, hy, 2, 0.05, 0.05), rel=1e-4)
    e = _dcca(DCCAE, recon_weight=0.7)
    mod = e.module_
    with torch.no_grad():
        hx, hy = mod.f(b["x"]), mod.g(b["y"])
        rx = ((mod.p(hx) - b["x"]) ** 2).numpy().mean()
        ry = ((mod.q(hy) - b["y"]) ** 2).numpy().mean()
        want = -_cca_reference(hx.double().numpy(), hy.double().numpy(), 2, 0.05, 0.05) + 0.7 * (rx + ry)
        assert float(e._batch_loss(dict(b))) == pytest.approx(want, rel=1e-4)


def _sup(cls, **kw):
    m = cls(dim=4, hidden=None, instance_weight=0.0, label_space=0.0, dropout=0.0, verbose=False, **kw)
    torch.manual_seed(0)
    m.module_ = m._build(5, 3, 3)
    return m


LAB = torch.tensor([[1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 0, 1], [0, 1, 1], [1, 0, 0]], dtype=torch.float32)


def _unit(a):
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def _soft_ce(logits, L):
    out = []
    for z, t in zip(logits, L):
        lse = math.log(sum(math.exp(x) for x in z))
        out.append(-sum(ti / t.sum() * (zi - lse) for zi, ti in zip(z, t)))
    return float(np.mean(out))


def test_acmr_loss_is_triplet_plus_label_plus_modality_terms():
    """Wang et al. 2017: L_imi with label-defined hardest positive and negative per anchor in
    both directions, L_imd the label prediction from both modalities' codes, L_adv the
    modality classifier's cross-entropy on the (normalised) codes."""
    m = _sup(ACMR, alpha=0.7, beta=1.3, adv_weight=0.4, margin=0.3)
    b = _batch(labels=LAB, seed=5)
    mod = m.module_
    with torch.no_grad():
        u, v = mod.image_code(b["x"]).numpy(), mod.text_code(b["y"]).numpy()
        imd = (_soft_ce(mod.classifier(torch.from_numpy(u)).numpy(), LAB.numpy())
               + _soft_ce(mod.classifier(torch.from_numpy(v)).numpy(), LAB.numpy()))
        S = _unit(u) @ _unit(v).T
        same = (LAB @ LAB.T > 0).numpy()
        imi = 0.0
        for M, P in ((S, same), (S.T, same.T)):
            imi += np.mean([max(0.0, 0.3 - M[i][P[i]].min() + M[i][~P[i]].max()) for i in range(6)])
        codes = torch.from_numpy(np.r_[_unit(u), _unit(v)]).float()
        adv = _soft_ce(mod.discriminator(codes).numpy(), np.r_[np.tile([1, 0], (6, 1)), np.tile([0, 1], (6, 1))])
        assert float(m._batch_loss(dict(b))) == pytest.approx(0.7 * imi + 1.3 * imd + adv, rel=1e-5)


def test_acmr_modality_classifier_and_projector_get_opposite_adversarial_gradients():
    """The modality classifier minimises L_adv; the projector gets -adv_weight times L_adv's
    gradient (it maximises it), and nothing of L_adv reaches the label classifier."""
    b = _batch(labels=LAB, seed=6)
    m = _sup(ACMR, alpha=0.0, beta=0.0, adv_weight=0.4)
    mod = m.module_
    mod.zero_grad()
    m._batch_loss(dict(b)).backward()
    got = {n: p.grad.clone() for n, p in mod.named_parameters() if p.grad is not None}
    # the plain L_adv, no reversal
    mod.zero_grad()
    from xmodal.methods.deep._common import l2n

    codes = torch.cat([l2n(mod.image_code(b["x"])), l2n(mod.text_code(b["y"]))])
    target = torch.cat([torch.zeros(6), torch.ones(6)]).long()
    torch.nn.functional.cross_entropy(mod.discriminator(codes), target).backward()
    for n, p in mod.named_parameters():
        if n.startswith("discriminator."):
            torch.testing.assert_close(got[n], p.grad, msg=n)
        elif n.startswith(("image.", "text.")):
            torch.testing.assert_close(got[n], -0.4 * p.grad, msg=n)
            assert p.grad.abs().sum() > 0
        else:
            assert n not in got or got[n].abs().sum() == 0, n


def test_soft_cross_entropy_spreads_multi_label_targets():
    z = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    L = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]])
    assert float(_ce(z, L)) == pytest.approx(_soft_ce(z.numpy(), L.numpy()), rel=1e-6)


def test_dscmr_loss_is_label_space_plus_common_space_plus_invariance():
    """Zhen et al. 2019: J1 = mean ||P'u - y|| + mean ||P'v - y|| (label space), J2 = for the
    image-image, image-text and text-text pairs the mean of log(1 + e^G) - S G with
    G = cos / 2 and S = 1 when the pair shares a label, J3 = mean ||u - v||."""
    m = _sup(DSCMR, alpha=0.6, beta=0.25)
    b = _batch(labels=LAB, seed=7)
    mod = m.module_
    with torch.no_grad():
        u, v = mod.image_code(b["x"]).double().numpy(), mod.text_code(b["y"]).double().numpy()
        W = mod.classifier.weight.double().numpy()
        c = mod.classifier.bias.double().numpy()
        Y = LAB.double().numpy()
        j1 = np.linalg.norm(u @ W.T + c - Y, axis=1).mean() + np.linalg.norm(v @ W.T + c - Y, axis=1).mean()
        Sl = (Y @ Y.T > 0).astype(float)
        j2 = 0.0
        for a, bb in ((u, u), (u, v), (v, v)):
            G = 0.5 * _unit(a) @ _unit(bb).T
            j2 += (np.log1p(np.exp(G)) - Sl * G).mean()
        j3 = np.linalg.norm(u - v, axis=1).mean()
        assert float(m._batch_loss(dict(b))) == pytest.approx(j1 + 0.6 * j2 + 0.25 * j3, rel=1e-5)


@pytest.mark.parametrize("cls", [ACMR, DSCMR])
def test_instance_term_is_info_nce_on_the_codes_with_image_positives(cls):
    image = torch.tensor([0, 0, 1, 2, 3, 4])
    b = _batch(labels=LAB, image=image, seed=8)
    m = _sup(cls, alpha=0.0, beta=0.0)
    with torch.no_grad():
        base = float(m._batch_loss(dict(b)))
        m.instance_weight, m.temperature = 0.5, 0.1
        u, v = m.module_.image_code(b["x"]).numpy(), m.module_.text_code(b["y"]).numpy()
        want = 0.5 * _nce_reference(_unit(u) @ _unit(v).T / 0.1, (image[:, None] == image[None, :]).numpy())
        assert float(m._batch_loss(dict(b))) - base == pytest.approx(want, rel=1e-4)
    assert pair_mask({"image": image, "labels": LAB}, "image").sum() == 8


def test_dcca_gradient_stays_finite_with_a_dead_output_unit():
    """A constant output (a dead ReLU unit) gives T'T an exactly zero eigenvalue: the eps floor
    keeps sqrt's gradient finite, whichever k."""
    g = _gen(0)
    H1 = torch.randn(8, 3, generator=g, dtype=torch.float64)
    H2 = torch.randn(8, 3, generator=g, dtype=torch.float64)
    H2[:, 2] = 0.5
    for k in (2, 3):
        a, b = H1.clone().requires_grad_(), H2.clone().requires_grad_()
        cca_correlation(a, b, k, 1e-3, 1e-3).backward()
        assert torch.isfinite(a.grad).all() and torch.isfinite(b.grad).all(), k


def test_dcca_singular_text_covariance_is_a_divergence_naming_the_text_side():
    from xmodal.methods.base import TrainingDivergedError

    with pytest.raises(TrainingDivergedError, match=r"text outputs' covariance.*ridge 0 "):
        cca_correlation(torch.randn(10, 4, generator=_gen(1)), torch.zeros(10, 4), k=2, r1=1e-3, r2=0.0)


@pytest.mark.parametrize("cls", [ACMR, DSCMR])
def test_label_space_embedding_mixes_the_two_cosines(cls):
    """label_space = w: cosine of the embeddings = (common-space cosine + w * cosine of the
    predicted label vectors) / (1 + w); ACMR's are softmax probabilities, DSCMR's P'u (kept
    positive); w = 0 is the plain L2-normalised code."""
    m = _sup(cls)
    mod = m.module_
    b = _batch(labels=LAB, seed=9)
    with torch.no_grad():
        u, v = mod.image_code(b["x"]), mod.text_code(b["y"])
        pu, pv = mod.classifier(u), mod.classifier(v)
        if cls is ACMR:
            pu, pv = pu.softmax(1), pv.softmax(1)
        else:
            pu, pv = pu.clamp(min=0) + 1e-6, pv.clamp(min=0) + 1e-6
        cz = _unit(u.numpy()) @ _unit(v.numpy()).T
        cp = _unit(pu.numpy()) @ _unit(pv.numpy()).T
        np.testing.assert_allclose(mod.encode_image(b["x"]).numpy(), _unit(u.numpy()), rtol=1e-5, atol=1e-6)
        mod.label_space = 0.5
        ei, et = mod.encode_image(b["x"]).numpy(), mod.encode_text(b["y"]).numpy()
    np.testing.assert_allclose(np.linalg.norm(ei, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(ei @ et.T, (cz + 0.5 * cp) / 1.5, rtol=1e-4, atol=1e-6)


def test_poly_loss_hand_cases_of_the_authors_pair_rule():
    """Wei et al. 2020 (PolyLoss release): a negative is informative when s_neg + margin > s_pos
    (strictly), the hardest informative one is weighted even when its similarity is negative,
    and a query whose positive similarity is 1 is skipped. Values worked out by hand."""
    from xmodal.methods.deep._common import poly_loss

    eye = torch.eye(2, dtype=torch.bool)

    def P(S, margin):
        return float(poly_loss(torch.tensor(S, dtype=torch.float64), eye, margin))

    # exactly on the margin (0.25 + 0.25 == 0.5 in binary): not informative, no loss
    assert P([[0.5, 0.25], [0.25, 0.5]], 0.25) == 0.0
    # image 0 (positive -0.1) has one informative negative at -0.2; nothing else counts:
    # (0.2*0.01 + 0.07 + 0.5) + (0.9*0.04 + 0.08 + 0.03) over 2 image queries
    assert P([[-0.1, -0.2], [-0.35, 0.4]], 0.2) == pytest.approx((0.572 + 0.146) / 2, abs=1e-12)
    # image 0's positive is 1 (or within eps = 1e-5 of it): skipped although 0.9 lies within the
    # margin; text 1 (positive 0.5) has image 0 at 0.9: (0.05 - 0.35 + 0.5) + (0.729 - 0.36 +
    # 0.03) over 2 text queries
    for top in (1.0, 1 - 1e-6, 1 - 1e-5):
        assert P([[top, 0.9], [0.1, 0.5]], 0.2) == pytest.approx((0.2 + 0.399) / 2, abs=1e-12)


def test_standardize_calls_constant_only_what_scikit_learns_rule_does():
    """scikit-learn's test for a constant feature: var <= n eps var + (n mean eps)^2 (float64
    eps). A float32 column of ones with a single next-float-up value has a real (tiny) spread:
    it keeps its std; an exactly constant column gets std 1."""
    from xmodal.methods.deep._common import Standardize

    Z = np.ones((100, 2), np.float32)
    Z[0, 0] = np.nextafter(np.float32(1), np.float32(2))
    st = Standardize(2)
    st.set(Z)
    assert float(st.std[0]) == np.float32(Z[:, 0].std() + np.float32(1e-6))
    assert float(st.std[1]) == 1.0


def test_soft_cross_entropy_of_an_unlabelled_row_is_zero_not_nan():
    z = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    L = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])  # row 1: no label (COCO keeps such images)
    assert float(_ce(z, L)) == pytest.approx(_soft_ce(z[:1].numpy(), L[:1].numpy()) / 2, rel=1e-6)


def test_dscmr_label_space_of_an_all_negative_prediction_is_the_uniform_direction():
    m = _sup(DSCMR)
    mod = m.module_
    with torch.no_grad():
        mod.classifier.weight.zero_()
        mod.classifier.bias.fill_(-10.0)  # every class predicted negative
        mod.label_space = 0.5
        e = mod.encode_image(torch.randn(2, 5, generator=_gen(3)))
    np.testing.assert_allclose(e[:, 4:].numpy(), np.full((2, 3), math.sqrt(0.5 / 1.5 / 3)), rtol=1e-5)


def test_pair_mask_adds_repeated_captions_and_l2n_keeps_a_zero_code_finite():
    from xmodal.methods.deep._common import l2n

    image = torch.tensor([0, 0, 1, 2])
    has = torch.zeros(4, 4, dtype=torch.bool)
    has[3, 1] = True  # caption 1 repeats word for word one of image 2's captions (row 3's image)
    got = pair_mask({"image": image, "has_caption": has})
    want = (image[:, None] == image[None, :]) | has
    assert torch.equal(got, want) and got[3, 1] and got[0, 1]
    z = l2n(torch.tensor([[0.0, 0.0], [3.0, 4.0]]))
    assert torch.equal(z, torch.tensor([[0.0, 0.0], [0.6, 0.8]]))
