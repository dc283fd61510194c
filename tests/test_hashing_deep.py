"""Deep cross-modal hashing (DCMH, SSAH, DJSRH, JDSH, UCCH): regressions for the issue #4
problems. SSAH's label network must give the classes distinct codes even when there are more
classes than bits allow comfortably (it collapsed at 16 bits on the 21 UCM classes); early
stopping must score the hashing protocol (validation queries against the training items);
the supervised deep methods must beat the unsupervised deep ones on real data."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from xmodal import methods
from xmodal.data import PairedDataset, load_dataset
from xmodal.evaluation.protocol import evaluate

from conftest import DATA  # honours $XMODAL_DATA: a path of its own skipped where the data was there
from xmodal.data import DataError
from xmodal.methods.base import CrossModalMethod, unpack_codes
from xmodal.methods.hashing.protocol import evaluate_training_codes, has_training_codes
import math
import torch.nn.functional as F


def _blobs(n_classes: int = 21, per_class: int = 24, captions: int = 2, seed: int = 0) -> PairedDataset:
    """Single-label paired data: class centres plus noise in both modalities, several texts
    per image (like UCM-Captions)."""
    rng = np.random.default_rng(seed)
    cls = np.repeat(np.arange(n_classes), per_class)
    ci, ct = rng.normal(size=(n_classes, 48)), rng.normal(size=(n_classes, 24))
    X = (ci[cls] + 0.6 * rng.normal(size=(len(cls), 48))).astype(np.float32)
    t2i = np.repeat(np.arange(len(cls)), captions)
    Y = (ct[cls[t2i]] + 0.6 * rng.normal(size=(len(t2i), 24))).astype(np.float32)
    perm = rng.permutation(len(cls))
    n_test = len(cls) // 6
    return PairedDataset(name="blobs", text_to_image=t2i, n_images=len(cls), image_features=X,
                         text_features=Y, labels=cls,
                         splits={"query": np.sort(perm[:n_test]), "database": np.sort(perm[n_test:]),
                                 "train": np.sort(perm[n_test:])})


@pytest.fixture(scope="module")
def blobs():
    return _blobs()


def test_ssah_label_codes_distinct_at_16_bits(blobs):
    """21 classes at 16 bits: LabNet gave 1-7 distinct codes before the loss terms were put
    on the paper's scale (likelihood summed over training rows), and SSAH's MAP fell to
    ~0.17 on UCM."""
    m = methods.create("ssah", bits=16, hidden=128, feature_dim=128, label_epochs=200, epochs=6,
                       patience=None, random_state=0).fit(blobs.subset("train"))
    with torch.no_grad():
        H = torch.sign(m.module_.lab_hash(m.module_.lab_body(torch.eye(21)))).numpy()
    assert len(np.unique(H, axis=0)) >= 18
    inner = (H @ H.T)[~np.eye(21, dtype=bool)]
    assert inner.mean() < 4, f"class codes agree on {(inner.mean() + 16) / 2:.1f} of 16 bits on average"
    r = evaluate(m, blobs.subset("query"), blobs.subset("database"), pk=())
    # chance is ~0.05 with 21 classes; collapsed codes gave ~0.17 on UCM
    assert r["i2t"]["map"] > 0.4 and r["t2i"]["map"] > 0.4, (r["i2t"]["map"], r["t2i"]["map"])


@pytest.mark.parametrize("name", ["dcmh", "ssah"])
def test_early_stopping_scores_the_hashing_protocol(name, blobs):
    """The best validation score is the mean MAP of the validation queries against the
    training items as database (the protocol the method is evaluated with)."""
    train = blobs.subset("train")
    val_idx = np.arange(0, train.n_images, 5)
    val = train.subset(val_idx)
    fit_on = train.subset(np.setdiff1d(np.arange(train.n_images), val_idx))
    extra = dict(label_epochs=50) if name == "ssah" else {}
    m = methods.create(name, bits=16, hidden=128, epochs=5, patience=3, random_state=0, **extra)
    m.fit(fit_on, val=val)
    r = evaluate(m, val, fit_on, pk=())
    assert m.best_val_ == pytest.approx(0.5 * (r["i2t"]["map"] + r["t2i"]["map"]), abs=1e-9)
    assert max(h["val"] for h in m.history_) == pytest.approx(m.best_val_)
    assert not hasattr(m, "_val_db")


def test_ucch_trains_against_its_memory_bank(blobs):
    m = methods.create("ucch", bits=16, hidden=128, epochs=4, n_negatives=64, random_state=0)
    m.fit(blobs.subset("train"))
    r = evaluate(m, blobs.subset("query"), blobs.subset("database"), pk=())
    assert r["i2t"]["map"] > 0.5 and r["t2i"]["map"] > 0.5, (r["i2t"]["map"], r["t2i"]["map"])


@pytest.fixture(scope="module")
def wiki():
    if not (DATA / "wikipedia").exists():
        pytest.skip("shared data folder absent")
    return load_dataset("wikipedia", data_dir=str(DATA / "wikipedia"))


def test_supervised_deep_beat_unsupervised_deep_on_wikipedia(wiki):
    """Issue #4: at 32 bits on the Wikipedia hashing protocol (test queries, training
    database), DCMH and SSAH beat JDSH (the strongest unsupervised deep method there) on
    text->image (where JDSH used to win) and on the mean of both directions, with shortened
    schedules for DCMH and JDSH. (Image->text margins are small, ~0.01-0.03 MAP at the default
    schedules, and a 15-epoch JDSH is slightly better at it than the default 30-epoch one, so
    this short test does not assert that direction.) SSAH keeps its default 60 epochs: with
    its LabNet and adversarial terms on the paper's scale its validation MAP still climbs
    after 25 (0.42 at epoch 15, 0.53 at 60)."""
    train, query, db = wiki.subset("train"), wiki.subset("query"), wiki.subset("database")
    res = {}
    for name, extra in (("dcmh", dict(epochs=25)), ("ssah", {}), ("jdsh", dict(epochs=15))):
        m = methods.create(name, bits=32, random_state=0, **extra).fit(train)
        r = evaluate(m, query, db, pk=())
        res[name] = (r["i2t"]["map"], r["t2i"]["map"])
    for sup in ("dcmh", "ssah"):
        assert res[sup][1] > res["jdsh"][1] + 0.03, res
        assert sum(res[sup]) > sum(res["jdsh"]) + 0.02, res
        assert res[sup][0] > 0.2, res  # LSH: ~0.15


def _tiny(n_classes: int = 4, seed: int = 1) -> PairedDataset:
    """Unbalanced classes (so row counts per label vector differ), one caption per image."""
    rng = np.random.default_rng(seed)
    cls = np.repeat(np.arange(n_classes), [6, 10, 14, 18][:n_classes])
    X = rng.normal(size=(len(cls), 12)).astype(np.float32)
    Y = rng.normal(size=(len(cls), 8)).astype(np.float32)
    return PairedDataset(name="tiny", text_to_image=np.arange(len(cls)), n_images=len(cls),
                         image_features=X, text_features=Y, labels=cls)


def test_ssah_label_net_loss_sums_over_every_pair_of_training_rows():
    """LabNet trains on the distinct label vectors; its objective must still be the paper's
    sum over all pairs of training rows (likelihood) and all rows (quantization, labels),
    i.e. equal to the loss computed on the repeated rows themselves. Queries used to be
    unweighted distinct vectors, which over-weights rare label vectors."""
    ds = _tiny()
    m = methods.create("ssah", bits=8, hidden=16, feature_dim=16, dropout=0.0, label_epochs=1, epochs=1,
                       patience=None, random_state=0).fit(ds)
    _, _, L = ds.pairs()
    Lt = torch.from_numpy(L.astype(np.float32))
    U, counts = torch.unique(Lt, dim=0, return_counts=True)
    assert len(set(counts.tolist())) > 1
    m._n_rows = float(len(Lt))
    with torch.no_grad():
        distinct = m._label_net_loss(U, counts)
        rows = m._label_net_loss(Lt, torch.ones(len(Lt), dtype=torch.long))
    assert float(distinct) == pytest.approx(float(rows), rel=1e-5)


def test_ssah_adversarial_term_is_per_item_like_quantization():
    """The adversarial loss is a sum over items in the paper, like quantization and label
    prediction, so it carries the same 1/n as they do (it used to enter unscaled, n times
    stronger than the paper's balance, with a 0.1 weight instead of the paper's 1)."""
    ds = _tiny()
    m = methods.create("ssah", bits=8, hidden=16, feature_dim=16, dropout=0.0, label_epochs=1, epochs=1,
                       patience=None, random_state=0)
    assert m.adversarial == 1.0
    m.fit(ds)
    X, Y, L = ds.pairs()
    n = len(L)
    # rebuild the training-time state _loss reads (dropped after fit)
    m._n_rows = float(n)
    Lt = torch.from_numpy(L.astype(np.float32))
    U, inverse, counts = torch.unique(Lt, dim=0, return_inverse=True, return_counts=True)
    mod = m.module_
    with torch.no_grad():
        m._Fu = mod.lab_body(U)
        m._Hu = torch.tanh(mod.lab_hash(m._Fu))
    m._U, m._inverse, m._counts = U, inverse, counts
    m._Hx, m._Hy = torch.zeros(n, 8), torch.zeros(n, 8)
    m._B = torch.sign(m._Hu[inverse])
    idx = torch.arange(0, n, 3)
    batch = {"x": torch.from_numpy(X.astype(np.float32))[idx],
             "y": torch.from_numpy(Y.astype(np.float32))[idx], "index": idx, "labels": Lt[idx]}
    mod.eval()
    with torch.no_grad():
        with_adv = float(m._loss(batch))
        m.adversarial = 0.0
        without = float(m._loss(batch))
        bce = torch.nn.functional.binary_cross_entropy_with_logits
        expected = 0.0
        for disc, feats, inp in ((mod.disc_x, mod.image_features, batch["x"]),
                                 (mod.disc_y, mod.text_features, batch["y"])):
            real, fake = disc(m._Fu[inverse[idx]]), disc(feats(inp))
            expected += float(bce(real, torch.ones_like(real)) + bce(fake, torch.zeros_like(fake))) / n
    assert with_adv - without == pytest.approx(expected, rel=1e-4)


SMALL = {"dcmh": dict(hidden=64), "ssah": dict(hidden=64, feature_dim=64, label_epochs=20)}


@pytest.fixture(scope="module")
def blobs_8x20():
    return _blobs(n_classes=8, per_class=20)


@pytest.mark.parametrize("name", ["dcmh", "ssah"])
def test_no_learned_codes_when_rows_were_held_out(name, blobs_8x20):
    """With no validation split, early stopping holds out 10% of the training images and their
    texts are not trained on: the learned codes then cover 90% of the pairs. They used to be
    kept anyway, and the learned-codes protocol refused the real training split with 'the
    database must be the training split'."""
    train = blobs_8x20.subset("train")
    m = methods.create(name, bits=16, epochs=2, patience=1, random_state=0, **SMALL[name]).fit(train)
    assert not has_training_codes(m)
    with pytest.raises(DataError, match="keeps no learned training codes"):
        evaluate_training_codes(m, blobs_8x20.subset("query"), train, train=train)


def _final_b_step(m, train) -> np.ndarray:
    """B of the paper's B-step for the nets the method kept: DCMH sign(F + G), SSAH
    sign(H^l + H^v + H^t), over every training pair (a zero sum counts as +1)."""
    X, Y, L = (torch.from_numpy(np.asarray(a, dtype=np.float32)) for a in train.pairs())
    mod = m.module_.eval()
    with torch.no_grad():
        total = mod.encode_image(X) + mod.encode_text(Y)
        if m.name == "ssah":
            total = total + torch.tanh(mod.lab_hash(mod.lab_body(L)))
    return np.where(total.numpy() >= 0, 1.0, -1.0)


@pytest.mark.parametrize("name", ["dcmh", "ssah"])
def test_learned_codes_are_the_b_step_of_the_kept_nets(name, blobs_8x20):
    """The learned codes used to be the B of the *start* of the last epoch (the paper updates
    B after every epoch, the last one included), and after early stopping restored the best
    epoch's nets they stayed those of the last epoch: up to ``patience`` epochs away from the
    nets that encode the queries."""
    train = blobs_8x20.subset("train")
    val_idx = np.arange(0, train.n_images, 5)
    val, fit_on = train.subset(val_idx), train.subset(np.setdiff1d(np.arange(train.n_images), val_idx))
    m = methods.create(name, bits=16, epochs=8, patience=2, random_state=0, **SMALL[name])
    m.fit(fit_on, val=val)
    assert has_training_codes(m)
    B = _final_b_step(m, fit_on)
    np.testing.assert_array_equal(unpack_codes(m.train_text_codes_, 16), B)
    np.testing.assert_array_equal(unpack_codes(m.train_image_codes_, 16), B)
    r = evaluate_training_codes(m, val, fit_on, train=fit_on)
    assert r["database_codes"] == "learned" and r["i2t"]["map"] > 0


@pytest.mark.parametrize("name", ["dcmh", "ssah", "djsrh", "jdsh", "ucch"])
def test_same_seed_same_codes_and_save_load_round_trip(name, blobs_8x20, tmp_path):
    train, query = blobs_8x20.subset("train"), blobs_8x20.subset("query")
    kw = dict(bits=16, epochs=2, random_state=3, **SMALL.get(name, dict(hidden=64)))
    if name == "ucch":
        kw["n_negatives"] = 32
    a = methods.create(name, **kw).fit(train)
    b = methods.create(name, **kw).fit(train)
    for enc, Z in (("encode_images", query.image_features), ("encode_texts", query.text_features)):
        np.testing.assert_array_equal(getattr(a, enc)(Z), getattr(b, enc)(Z))
    loaded = CrossModalMethod.load(a.save(tmp_path / f"{name}.xm"))
    for enc, Z in (("encode_images", query.image_features), ("encode_texts", query.text_features)):
        codes = getattr(a, enc)(Z)
        assert codes.shape == (len(Z), 2) and codes.dtype == np.uint8
        np.testing.assert_array_equal(getattr(loaded, enc)(Z), codes)
    assert has_training_codes(loaded) == has_training_codes(a)
    if has_training_codes(a):
        np.testing.assert_array_equal(loaded.train_text_codes_, a.train_text_codes_)


@pytest.mark.parametrize("name", ["dcmh", "jdsh"])
def test_a_feature_constant_in_training_does_not_swamp_the_codes(name, blobs_8x20):
    """Inputs are standardised with training statistics. A feature that never varies in
    training (a tag no training text carries) used to be divided by 1e-6: a query carrying it
    got an input of 1e6, and every such query fell onto one code (1 distinct code where 21-48
    without the tag). Such a feature now keeps its raw scale, as in scikit-learn's scaler."""
    from xmodal.data import PairedDataset

    tr, q = blobs_8x20.subset("train"), blobs_8x20.subset("query")
    Y = np.hstack([tr.text_features, np.zeros((tr.n_texts, 1), np.float32)])
    tr2 = PairedDataset(name="tag", text_to_image=tr.text_to_image, n_images=tr.n_images,
                        image_features=tr.image_features, text_features=Y, labels=tr.labels)
    m = methods.create(name, bits=16, hidden=64, epochs=3, patience=None, random_state=0).fit(tr2)
    assert float(m.module_.y_norm.scale[-1]) == 1.0
    without = np.hstack([q.text_features, np.zeros((q.n_texts, 1), np.float32)])
    with_tag = without.copy()
    with_tag[:, -1] = 1.0
    a, b = unpack_codes(m.encode_texts(without), 16), unpack_codes(m.encode_texts(with_tag), 16)
    assert len(np.unique(b, axis=0)) >= len(np.unique(a, axis=0)) // 2
    assert (a != b).sum(axis=1).mean() < 4


@pytest.fixture(scope="module")
def blobs_6x12():
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


def test_dcmh_step_objective_is_the_papers(blobs_6x12):
    """Per modality: -sum_ij (S_ij θ_ij - log(1 + e^θ_ij)) with θ = F_i'G_j / 2 against the
    other modality's buffer over every training row, + γ ||B_i - F_i||^2 over the batch, + the
    balance ||F'1||^2 over every row (this batch live, the rest from the buffer; divided by n,
    the documented deviation), all over n·m; then the batch rows of the buffers are replaced."""
    ds = blobs_6x12.subset("train")
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


def test_djsrh_step_objective_is_the_authors(blobs_6x12):
    """S̃ = β S_I + (1-β) S_T (S = 2 cos - 1 of the batch features), S = μ((1-η) S̃ + η S̃S̃/m);
    codes tanh(sqrt(epoch+1) h) row-normalised; loss = mse(B_I B_T', S) + λ1 mse(B_I B_I', S)
    + λ2 mse(B_T B_T', S)."""
    ds = blobs_6x12.subset("train")
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


def test_jdsh_step_objective_is_the_authors(blobs_6x12):
    """S = a S_I + b S_T + l (Ŝ + Ŝ')/2, Ŝ = rownorm(S_I) rownorm(S_T)'; values below ``left``
    multiplied by (1 + L1 e^{-(s - min)}), then values above ``right`` by (1 + L2 e^{s - max})
    (in place, in that order, as the authors' code does), times μ; loss = mse(B_I B_T', S) +
    mse(B_T B_I', S) - mean_i B_I,i'B_T,i + intra (mse(B_I B_I', S) + mse(B_T B_T', S))."""
    ds = blobs_6x12.subset("train")
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
def test_ucch_step_objective_and_memory_update_are_the_authors(blobs_6x12, warm):
    """alpha (NCE_l + NCE_ab) + (1 - alpha) CRL, NCE = -log softmax(...)[own] over the signs of
    the candidates (during warm-up the batch's mean outputs, own first then every other item;
    after it the memory rows of the item and of K uniform draws) at temperature T sqrt(bits);
    then memory row <- normalise(m·row + (1-m)·normalise((z_I + z_T)/2)), m = 0 in warm-up."""
    ds = blobs_6x12.subset("train")
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
def test_codes_do_not_depend_on_the_mode_the_module_was_left_in(name, blobs_6x12):
    """Dropout is on while training; encoding switches it off whatever mode the module is in
    (a module left in training mode, e.g. by a caller's own fine-tuning, gave random bits)."""
    train, query = blobs_6x12.subset("train"), blobs_6x12.subset("query")
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
