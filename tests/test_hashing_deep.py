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
