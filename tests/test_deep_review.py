"""Review checks of the deep real-valued methods and their trainer: multi-label data with
unlabelled images (COCO's Karpathy splits keep them), a validation split without features,
the InfoNCE target rule, ACMR's gradient reversal, DSCMR/ACMR on a one-class batch, and
DCCA with a last mini-batch of one row."""

from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from xmodal import methods
from xmodal.data import DataError
from xmodal.evaluation.protocol import evaluate
from xmodal.methods.deep._common import info_nce
from xmodal.methods.deep.supervised import grad_reverse

from conftest import wiki_sample  # honours $XMODAL_DATA
QUICK = dict(epochs=2, patience=None, verbose=False, random_state=0)


@pytest.fixture(scope="module")
def wiki():
    return wiki_sample(400, 1)


def _old_info_nce(logits, pos):
    """The formula before the review (every row and column must have a positive)."""
    tgt = pos.float()
    li = -(tgt / tgt.sum(1, keepdim=True) * F.log_softmax(logits, dim=1)).sum(1).mean()
    lt = -(tgt / tgt.sum(0, keepdim=True) * F.log_softmax(logits, dim=0)).sum(0).mean()
    return 0.5 * (li + lt)


def test_info_nce_unchanged_when_every_row_has_a_positive():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(9, 9, generator=g) * 5
    im = torch.tensor([0, 0, 1, 2, 2, 2, 3, 4, 5])
    pos = im[:, None] == im[None, :]
    assert torch.equal(info_nce(logits, pos), _old_info_nce(logits, pos))


def test_info_nce_leaves_out_queries_without_a_positive():
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(6, 6, generator=g) * 3).requires_grad_()
    L = torch.tensor([[1, 0], [0, 1], [1, 0], [0, 0], [0, 1], [0, 0]], dtype=torch.float32)
    pos = (L @ L.T) > 0  # rows 3 and 5: an unlabelled image / caption, no positive at all
    loss = info_nce(logits, pos)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    # the labelled queries' terms, averaged over them alone
    keep = pos.any(1)
    tgt = pos.float()
    li = -(tgt / tgt.sum(1, keepdim=True).clamp(min=1) * F.log_softmax(logits, 1)).sum(1)[keep].mean()
    lt = -(tgt / tgt.sum(0, keepdim=True).clamp(min=1) * F.log_softmax(logits, 0)).sum(0)[keep].mean()
    assert float(loss.detach()) == pytest.approx(float((0.5 * (li + lt)).detach()), rel=1e-6)
    # no positive anywhere (a batch of unlabelled items): the term is zero, not NaN
    none = info_nce(logits.detach(), torch.zeros(6, 6, dtype=torch.bool))
    assert float(none) == 0.0


@pytest.mark.parametrize("name,params", [("transformer", {}), ("contrastive", {"positives": "label"})])
def test_label_positives_train_with_unlabelled_images(wiki, name, params):
    """COCO's Karpathy splits keep images without a category (an all-zero label row): the
    label-positive InfoNCE terms were 0/0 on them and every fit stopped as diverged."""
    train, test = wiki
    labels = train.labels.copy()
    labels[::10] = 0
    train = replace(train, labels=labels)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # transformer: no image files on Wikipedia
        m = methods.create(name, **QUICK, **params).fit(train)
    losses = [h["loss"] for h in m.history_]
    # two trained epochs cut the loss by 9-13% (seeds 0-2); an optimiser that never steps by < 0.5%
    assert np.isfinite(losses).all() and losses[0] - losses[-1] > 0.05 * abs(losses[0]), losses
    res = evaluate(m, test)
    assert res["i2t"]["map"] > 0.15 and res["t2i"]["map"] > 0.15, res  # chance is about 0.11


def test_contrastive_label_positives_need_labels(wiki):
    train, _ = wiki
    unlabelled = replace(train, labels=None)
    with pytest.raises(DataError, match="positives='label'.*labels"):
        methods.create("contrastive", positives="label", **QUICK).fit(unlabelled)


def test_validation_split_without_features_is_refused(wiki):
    """A val split without features used to be ignored in silence: early stopping then scored
    a hold-out of train whose pairs it also trained on."""
    train, test = wiki
    bare = replace(test, image_features=None, text_features=None)
    m = methods.create("contrastive", epochs=2, patience=1, verbose=False)
    with pytest.raises(DataError, match=f"{bare.name}.*features"):
        m.fit(train, val=bare)
    assert not getattr(m, "fitted_", False)
    # without patience the val split is not read, so nothing is refused
    methods.create("contrastive", **QUICK).fit(train, val=bare)


def test_acmr_gradient_reversal_flips_and_scales_the_feature_gradient():
    x = torch.randn(4, 3, requires_grad=True)
    w = torch.randn(3)
    (grad_reverse(x, 0.3) @ w).sum().backward()
    assert torch.allclose(x.grad, -0.3 * w.expand(4, 3))


def test_acmr_adversary_learns_while_the_projector_fools_it(wiki):
    """One step of ACMR's loss: the modality classifier's own gradient lowers its
    cross-entropy, the projector's (through the reversal) raises it."""
    train, _ = wiki
    m = methods.create("acmr", **QUICK, instance_weight=0.0, label_space=0.0)
    m.fit(train)
    mod = m.module_.train()
    X, Y, _ = train.pairs()
    x, y = torch.from_numpy(X[:64].astype(np.float32)), torch.from_numpy(Y[:64].astype(np.float32))

    def adv():
        from xmodal.methods.deep._common import l2n
        codes = torch.cat([l2n(mod.image_code(x)), l2n(mod.text_code(y))])
        modality = torch.cat([torch.zeros(64), torch.ones(64)]).long()
        return F.cross_entropy(mod.discriminator(grad_reverse(codes, m.adv_weight)), modality)

    torch.manual_seed(0)
    base = adv()
    mod.zero_grad()
    base.backward()
    disc = [p for p in mod.discriminator.parameters()]
    proj = [p for p in mod.image.parameters()] + [p for p in mod.text.parameters()]
    with torch.no_grad():  # a small step along each side's own gradient
        for p in disc:
            p -= 1e-2 * p.grad
    torch.manual_seed(0)
    after_disc = float(adv().detach())
    with torch.no_grad():
        for p in disc:
            p += 1e-2 * p.grad
        for p in proj:
            p -= 1e-2 * p.grad
    torch.manual_seed(0)
    after_proj = float(adv().detach())
    b = float(base.detach())
    assert after_disc < b < after_proj, (after_disc, b, after_proj)


@pytest.mark.parametrize("name", ["acmr", "dscmr"])
def test_supervised_losses_finite_on_a_one_class_batch(wiki, name):
    train, _ = wiki
    m = methods.create(name, **QUICK).fit(train)
    X, Y, L = train.pairs()
    cls = L.argmax(1)
    rows = np.flatnonzero(cls == cls[0])[:16]
    batch = {"x": torch.from_numpy(X[rows].astype(np.float32)), "y": torch.from_numpy(Y[rows].astype(np.float32)),
             "labels": torch.from_numpy(L[rows].astype(np.float32)), "index": torch.from_numpy(rows),
             "image": torch.from_numpy(rows)}
    m.module_.train()
    assert torch.isfinite(m._batch_loss(batch))


def test_dcca_last_batch_of_one_row_is_skipped(wiki):
    """A batch of one row has no covariance: the trainer skips it instead of failing."""
    train, _ = wiki
    sub = train.subset(np.arange(129))  # batch_size 64: batches of 64, 64 and 1
    m = methods.create("dcca", batch_size=64, dim=16, **QUICK).fit(sub)
    assert np.isfinite([h["loss"] for h in m.history_]).all()


@pytest.mark.parametrize("name", ["dcca", "corr_ae", "acmr", "dscmr", "vsepp", "contrastive", "graph"])
def test_empty_input_keeps_the_embedding_width(wiki, name):
    """Zero rows embed to (0, width) as a linear method's X @ W does, not (0, 0)."""
    train, test = wiki
    m = methods.create(name, epochs=1, patience=None, verbose=False).fit(train)
    img = m.encode_images(test.image_features[:3])
    assert m.encode_images(test.image_features[:0]).shape == (0, img.shape[1])
    assert m.encode_texts(test.text_features[:0]).shape == (0, m.encode_texts(test.text_features[:3]).shape[1])


def test_dcca_objective_is_the_sum_of_canonical_correlations():
    """Andrew et al. 2013, eq. 10-11: the singular values of S11^-1/2 S12 S22^-1/2 (ridge r on
    the centred covariances, m - 1 normaliser), checked against a NumPy eigendecomposition."""
    from scipy import linalg

    from xmodal.methods.deep.cca import cca_correlation

    rng = np.random.default_rng(0)
    Z = rng.normal(size=(300, 3))
    H1 = np.c_[Z + 0.5 * rng.normal(size=(300, 3)), rng.normal(size=(300, 2))]
    H2 = np.c_[Z @ rng.normal(size=(3, 3)) + rng.normal(size=(300, 3)), rng.normal(size=(300, 1))]
    r = 1e-3
    A, B = H1 - H1.mean(0), H2 - H2.mean(0)
    S11, S22 = A.T @ A / 299 + r * np.eye(5), B.T @ B / 299 + r * np.eye(4)
    T = linalg.inv(linalg.sqrtm(S11)).real @ (A.T @ B / 299) @ linalg.inv(linalg.sqrtm(S22)).real
    sv = np.sort(linalg.svdvals(T))[::-1]
    for k in (1, 3, 4):
        got = float(cca_correlation(torch.from_numpy(H1), torch.from_numpy(H2), k, r, r))
        assert got == pytest.approx(sv[:k].sum(), rel=1e-6)


def test_dcca_final_linear_cca_whitens_the_training_outputs(wiki):
    """The last stage: on the training pairs the projections are uncorrelated within each view
    (unit variance up to the ridge) and pair up one to one across views."""
    train, _ = wiki
    m = methods.create("dcca", dim=8, batch_size=256, **QUICK).fit(train)
    X, Y, _ = train.pairs()
    U, V = m.encode_images(X).astype(np.float64), m.encode_texts(Y).astype(np.float64)
    k = m.text_dim_ if m.text_dim_ < 8 else 8
    U, V = U[:, :k] - U[:, :k].mean(0), V[:, :k] - V[:, :k].mean(0)
    n = len(U) - 1
    Cuu, Cvv, Cuv = U.T @ U / n, V.T @ V / n, U.T @ V / n
    assert np.abs(Cuu - np.diag(np.diag(Cuu))).max() < 5e-3 and np.abs(Cvv - np.diag(np.diag(Cvv))).max() < 5e-3
    assert np.diag(Cuu).min() > 0.95 and np.diag(Cuu).max() <= 1 + 1e-4
    corr = np.diag(Cuv)
    assert np.abs(Cuv - np.diag(corr)).max() < 5e-3
    assert np.all(np.diff(corr) <= 5e-3) and corr[0] > 0.3, corr  # sorted canonical correlations


def test_vse_hinge_losses_match_a_loop_over_queries():
    """VSE++ (Faghri et al. 2018): for each image query the hardest (or every) caption that is
    not one of its positives, for each caption query the hardest (or every) such image; the
    diagonal holds each row's own pair and captions of the same image are no negatives."""
    from xmodal.methods.deep._common import hardest_triplet

    g = torch.Generator().manual_seed(0)
    S = torch.rand(7, 7, generator=g) * 2 - 1
    im = torch.tensor([0, 0, 1, 2, 2, 3, 4])  # rows 0-1 and 3-4: two captions of one image
    pos = im[:, None] == im[None, :]
    m = 0.2
    for hardest in (True, False):
        i2t = t2i = 0.0
        for q in range(7):
            ci = [max(0.0, m + float(S[q, j] - S[q, q])) for j in range(7) if not pos[q, j]]
            ct = [max(0.0, m + float(S[i, q] - S[q, q])) for i in range(7) if not pos[i, q]]
            i2t += (max(ci) if hardest else sum(ci)) / 7
            t2i += (max(ct) if hardest else sum(ct)) / 7
        assert float(hardest_triplet(S, pos, m, hardest)) == pytest.approx(i2t + t2i, rel=1e-6)


@pytest.mark.parametrize("variant,trained", [("basic", {"dec_xx", "dec_yy"}), ("cross", {"dec_xy", "dec_yx"}),
                                             ("full", {"dec_xx", "dec_yy", "dec_xy", "dec_yx"})])
def test_corr_ae_variants_train_their_own_decoders(wiki, variant, trained):
    """Feng et al. 2014: Corr-AE rebuilds each view from its own code, Corr-Cross-AE from the
    other view's, Corr-Full-AE from both; the code distance ties the two encoders."""
    train, _ = wiki
    m = methods.create("corr_ae", variant=variant, **QUICK).fit(train)
    X, Y, _ = train.pairs()
    batch = {"x": torch.from_numpy(X[:32].astype(np.float32)), "y": torch.from_numpy(Y[:32].astype(np.float32)),
             "labels": None, "index": torch.arange(32), "image": torch.arange(32)}
    m.module_.train().zero_grad()
    m._batch_loss(batch).backward()
    got = {name for name in ("dec_xx", "dec_yy", "dec_xy", "dec_yx")
           if any(p.grad is not None and p.grad.abs().sum() > 0 for p in getattr(m.module_, name).parameters())}
    assert got == trained
    # alpha = 1: only the code distance, which pulls both encoders
    m.alpha = 1.0
    m.module_.zero_grad()
    m._batch_loss(batch).backward()
    assert all(p.grad is not None for p in m.module_.enc_x.parameters())
    assert all(p.grad is not None for p in m.module_.enc_y.parameters())
