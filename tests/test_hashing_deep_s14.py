"""Second-look review of the deep hashing methods (session 14): each mini-batch objective is
recomputed here from the papers' equations as the authors' released code evaluates them
(DCMH: jiangqy/DCMH and its PyTorch port; DJSRH: zs-zhong/DJSRH train.py; JDSH:
KaiserLew/JDSH cal_similarity_matrix/cal_loss; UCCH: penghu-cs/UCCH NCEAverage,
NCESoftmaxLoss and ContrastiveLoss), written independently of the method code, and compared
with the method's ``_loss`` on the same batch. Plus: codes do not depend on the mode the
module was left in (dropout is off at encode time)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from xmodal import methods

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_hashing_deep import _blobs  # noqa: E402


@pytest.fixture(scope="module")
def blobs():
    return _blobs(n_classes=6, per_class=12)


def _prepared(name: str, ds, **kw):
    """A method fitted for one epoch, then given back the training-time state ``_loss`` reads
    (the trainer drops it after fit), as ``_fit`` builds it; dropout 0 so that a recomputed
    forward pass is the same one."""
    m = methods.create(name, bits=16, hidden=32, dropout=0.0, epochs=1, patience=None, random_state=0,
                       **kw).fit(ds)
    X, Y, L = (np.asarray(a, dtype=np.float32) for a in ds.pairs())
    m._dev = torch.device("cpu")
    m._rows, m._train = np.arange(len(X)), ds
    m._X, m._Y, m._L = torch.from_numpy(X), torch.from_numpy(Y), torch.from_numpy(L)
    m._setup(X, Y, L)
    m.module_.train()
    return m


def _batch(m, idx):
    idx = torch.as_tensor(idx)
    return {"x": m._X[idx], "y": m._Y[idx], "index": idx, "labels": m._L[idx], "image": idx}


def test_dcmh_step_objective_is_the_papers(blobs):
    """Per modality: -sum_ij (S_ij θ_ij - log(1 + e^θ_ij)) with θ = F_i'G_j / 2 against the
    other modality's buffer over every training row, + γ ||B_i - F_i||^2 over the batch, + the
    balance ||F'1||^2 over every row (this batch live, the rest from the buffer; divided by n,
    the documented deviation), all over n·m; then the batch rows of the buffers are replaced."""
    ds = blobs.subset("train")
    m = _prepared("dcmh", ds, gamma=0.7, eta=0.3)
    m._on_epoch_start(1)  # B = sign(F + G) from the buffers
    n = len(m._X)
    idx = torch.arange(3, 3 + 20)
    F_buf, G_buf, B = m._F.clone(), m._G.clone(), m._B.clone()
    got = m._loss(_batch(m, idx))
    with torch.no_grad():
        f = m.module_.encode_image(m._X[idx])
        g = m.module_.encode_text(m._Y[idx])
        S = (m._L[idx] @ m._L.T > 0).double()
        expected = 0.0
        for live, buf, other in ((f, F_buf, G_buf), (g, G_buf, F_buf)):
            theta = 0.5 * live.double() @ other.double().T
            nll = -(S * theta - torch.log1p(torch.exp(theta))).sum()
            quant = ((B[idx].double() - live.double()) ** 2).sum()
            rest = np.setdiff1d(np.arange(n), idx.numpy())
            col_sum = live.double().sum(0) + buf[rest].double().sum(0)
            expected += nll + 0.7 * quant + 0.3 * (col_sum ** 2).sum() / n
        expected /= n * len(idx)
    assert float(got.detach()) == pytest.approx(float(expected), rel=1e-5)
    # the B-step of the next epoch sees this batch's outputs
    torch.testing.assert_close(m._F[idx], f)
    torch.testing.assert_close(m._G[idx], g)
    # the loss reaches each net only through its own outputs
    got.backward()
    assert all(p.grad is not None for p in m.module_.x_hash.parameters())
    assert all(p.grad is not None for p in m.module_.y_hash.parameters())


def test_djsrh_step_objective_is_the_authors(blobs):
    """S̃ = β S_I + (1-β) S_T (S = 2 cos - 1 of the batch features), S = μ((1-η) S̃ + η S̃S̃/m);
    codes tanh(sqrt(epoch+1) h) row-normalised; loss = mse(B_I B_T', S) + λ1 mse(B_I B_I', S)
    + λ2 mse(B_T B_T', S)."""
    ds = blobs.subset("train")
    beta, eta, mu, l1, l2 = 0.3, 0.4, 1.5, 0.2, 0.25
    m = _prepared("djsrh", ds, beta=beta, eta=eta, mu=mu, lambda1=l1, lambda2=l2)
    m._on_epoch_start(3)
    idx = torch.arange(0, 40, 2)
    got = m._loss(_batch(m, idx))
    with torch.no_grad():
        x, y = m._X[idx].double(), m._Y[idx].double()
        SI = (x / x.norm(dim=1, keepdim=True)) @ (x / x.norm(dim=1, keepdim=True)).T * 2 - 1
        ST = (y / y.norm(dim=1, keepdim=True)) @ (y / y.norm(dim=1, keepdim=True)).T * 2 - 1
        St = beta * SI + (1 - beta) * ST
        S = mu * ((1 - eta) * St + eta * St @ St / len(idx))
        a = math.sqrt(4.0)
        BI = torch.tanh(a * m.module_.encode_image(m._X[idx]).double())
        BT = torch.tanh(a * m.module_.encode_text(m._Y[idx]).double())
        BI, BT = BI / BI.norm(dim=1, keepdim=True), BT / BT.norm(dim=1, keepdim=True)
        mse = lambda A: ((A - S) ** 2).mean()  # noqa: E731
        expected = mse(BI @ BT.T) + l1 * mse(BI @ BI.T) + l2 * mse(BT @ BT.T)
    assert float(got.detach()) == pytest.approx(float(expected), rel=1e-5)


def test_jdsh_step_objective_is_the_authors(blobs):
    """S = a S_I + b S_T + l (Ŝ + Ŝ')/2, Ŝ = rownorm(S_I) rownorm(S_T)'; values below ``left``
    multiplied by (1 + L1 e^{-(s - min)}), then values above ``right`` by (1 + L2 e^{s - max})
    (in place, in that order, as the authors' code does), times μ; loss = mse(B_I B_T', S) +
    mse(B_T B_I', S) - mean_i B_I,i'B_T,i + intra (mse(B_I B_I', S) + mse(B_T B_T', S))."""
    ds = blobs.subset("train")
    a_, b_, l_, mu, intra, L1, L2 = 0.4, 0.3, 0.3, 1.4, 0.1, 0.2, 0.15
    # k_left/k_right 1: on these two-level blobs mean + 4 sd_above lies above every similarity
    m = _prepared("jdsh", ds, a=a_, b=b_, l=l_, mu=mu, intra=intra, l1=L1, l2=L2, k_left=1.0, k_right=1.0)
    m._on_epoch_start(0)
    idx = torch.arange(1, 41, 2)
    got = m._loss(_batch(m, idx))
    with torch.no_grad():
        def cos2(Z):
            Z = Z.double() / Z.double().norm(dim=1, keepdim=True)
            return Z @ Z.T * 2 - 1
        SI, ST = cos2(m._X[idx]), cos2(m._Y[idx])
        Sh = (SI / SI.norm(dim=1, keepdim=True)) @ (ST / ST.norm(dim=1, keepdim=True)).T
        S = a_ * SI + b_ * ST + l_ * (Sh + Sh.T) / 2
        lo = S < m.left_
        assert lo.any() and (S > m.right_).any(), "the batch exercises both reweightings"
        S[lo] = (1 + L1 * torch.exp(-(S[lo] - m.s_min_))) * S[lo]
        hi = S > m.right_
        S[hi] = (1 + L2 * torch.exp(S[hi] - m.s_max_)) * S[hi]
        S = S * mu
        BI = torch.tanh(m.module_.encode_image(m._X[idx]).double())
        BT = torch.tanh(m.module_.encode_text(m._Y[idx]).double())
        BI, BT = BI / BI.norm(dim=1, keepdim=True), BT / BT.norm(dim=1, keepdim=True)
        mse = lambda A: ((A - S) ** 2).mean()  # noqa: E731
        expected = (mse(BI @ BT.T) + mse(BT @ BI.T) - (BI * BT).sum(1).mean()
                    + intra * (mse(BI @ BI.T) + mse(BT @ BT.T)))
    assert float(got.detach()) == pytest.approx(float(expected), rel=1e-5)


def _ucch_crl(zi, zt, margin, shift):
    """The authors' ContrastiveLoss (tau = 1) on the image-text score matrix."""
    scores = zi @ zt.T
    d = scores.diag().view(-1, 1)
    out = 0.0
    for mask, dim in (((scores >= d - margin).double(), 1), ((scores >= d.T - margin).double(), 0)):
        cost = scores * mask + (1 - mask) * (scores - shift)
        out = out + (-cost.diag() + cost.exp().sum(dim).log() + margin).mean()
    return out


@pytest.mark.parametrize("warm", [True, False])
def test_ucch_step_objective_and_memory_update_are_the_authors(blobs, warm):
    """alpha (NCE_l + NCE_ab) + (1 - alpha) CRL, NCE = -log softmax(...)[own] over the signs of
    the candidates (during warm-up the batch's mean outputs, own first then every other item;
    after it the memory rows of the item and of K uniform draws) at temperature T sqrt(bits);
    then memory row <- normalise(m·row + (1-m)·normalise((z_I + z_T)/2)), m = 0 in warm-up."""
    ds = blobs.subset("train")
    alpha, mom, K, T, margin, shift = 0.8, 0.4, 24, 0.9, 0.2, 1.0
    m = _prepared("ucch", ds, alpha=alpha, momentum=mom, n_negatives=K, temperature=T, margin=margin,
                  shift=shift, warmup_epochs=1)
    m._on_epoch_start(0 if warm else 1)
    idx = torch.arange(5, 5 + 16)
    n_rows = len(m._X)
    memory = m._memory.clone()
    draws = torch.Generator()
    draws.set_state(m._gen.get_state())
    got = m._loss(_batch(m, idx))
    with torch.no_grad():
        zi = m.module_.encode_image(m._X[idx]).double()
        zt = m.module_.encode_text(m._Y[idx]).double()
        b = len(idx)
        if warm:
            mean = (zi + zt) / 2
            order = torch.cat([torch.cat([torch.tensor([i]), torch.tensor([j for j in range(b) if j != i])])
                               for i in range(b)])
            cand = mean[order].view(b, b, -1).sign()
        else:
            rows = torch.randint(n_rows, (b, K), generator=draws)
            rows = torch.cat([idx.view(-1, 1), rows], dim=1)
            cand = memory.double()[rows].sign()
        tau = T * math.sqrt(16)
        nce = lambda z: -(torch.bmm(cand, z.unsqueeze(2)).squeeze(2) / tau).softmax(1)[:, 0].log().mean()  # noqa: E731
        expected = alpha * (nce(zi) + nce(zt)) + (1 - alpha) * _ucch_crl(zi, zt, margin, shift)
        new = F.normalize((zi + zt) / 2, dim=1)
        w = 0.0 if warm else mom
        row = w * memory.double()[idx] + (1 - w) * new
        row = row / row.norm(dim=1, keepdim=True)
    assert float(got.detach()) == pytest.approx(float(expected), rel=1e-5)
    torch.testing.assert_close(m._memory[idx].double(), row, rtol=1e-5, atol=1e-6)
    others = np.setdiff1d(np.arange(n_rows), idx.numpy())
    torch.testing.assert_close(m._memory[others], memory[others], rtol=0, atol=0)


@pytest.mark.parametrize("name", ["dcmh", "ssah", "djsrh", "jdsh", "ucch"])
def test_codes_do_not_depend_on_the_mode_the_module_was_left_in(name, blobs):
    """Dropout is on while training; encoding switches it off whatever mode the module is in
    (a module left in training mode, e.g. by a caller's own fine-tuning, gave random bits)."""
    train, query = blobs.subset("train"), blobs.subset("query")
    extra = dict(feature_dim=32, label_epochs=2) if name == "ssah" else {}
    if name == "ucch":
        extra["n_negatives"] = 16
    m = methods.create(name, bits=16, hidden=32, dropout=0.5, epochs=1, patience=None, random_state=0,
                       **extra).fit(train)
    ref_i, ref_t = m.encode_images(query.image_features), m.encode_texts(query.text_features)
    m.module_.train()
    np.testing.assert_array_equal(m.encode_images(query.image_features), ref_i)
    m.module_.train()
    np.testing.assert_array_equal(m.encode_texts(query.text_features), ref_t)
    # the eval-mode codes are those of the nets without dropout
    with torch.no_grad():
        h = m.module_.encode_image(torch.from_numpy(query.image_features.astype(np.float32))).numpy()
    np.testing.assert_array_equal(np.packbits(h > 0, axis=1), ref_i)
