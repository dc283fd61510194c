"""Properties of the shared PyTorch trainer (xmodal/methods/_torch.py) that mutation testing
found unpinned, checked on a tiny linear method over the checks' toy data (no real data, so
each test takes well under a second): batches cover every training row once per epoch,
seeding, early stopping that restores the best validation epoch and counts patience in
epochs without improvement, the epoch loss and the bar's running loss as the mean over rows,
the learned temperature's clamp and decay exemption, the cosine schedule, gradient clipping,
the hold-out drawn from the training images, chunked encoding, and the state round trip."""

from __future__ import annotations

import io
import math
import re
import sys
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from xmodal.data import PairedDataset
from xmodal.methods import _torch
from xmodal.methods._torch import TorchMethod, mlp, seed_everything
from xmodal.methods.checks import toy_dataset


class _Head(nn.Module):
    def __init__(self):
        super().__init__()
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))


class _Net(nn.Module):
    """The temperature sits in a submodule: it is found by its name at any depth."""

    def __init__(self, dx: int, dy: int, dim: int = 4):
        super().__init__()
        self.img = mlp([dx, 6, dim])
        self.txt = nn.Linear(dy, dim)
        self.head = _Head()

    def encode_image(self, x):
        return self.img(x)

    def encode_text(self, y):
        return self.txt(y)


class Toy(TorchMethod):
    """A two-tower linear method whose loss pulls a pair's encodings together; it records
    every batch it trains on (rows, sizes, losses) and can follow a scripted validation."""

    name = "toy-trainer"

    def __init__(self, epochs: int = 3, batch_size: int = 16, lr: float = 1e-2, weight_decay: float = 0.0,
                 patience: int | None = None, val_fraction: float = 0.1, random_state: int = 0,
                 verbose: bool = False):
        self.epochs, self.batch_size, self.lr, self.weight_decay = epochs, batch_size, lr, weight_decay
        self.patience, self.val_fraction, self.random_state, self.verbose = patience, val_fraction, random_state, verbose

    def _build(self, image_dim, text_dim, n_labels):
        return _Net(image_dim, text_dim)

    def _on_epoch_start(self, epoch):
        self.log_.append([])

    def _refresh(self):
        # before each validation and once after training, always in eval mode
        self.refreshed_.append((len(self.log_), self.module_.training))

    def _finish(self):
        # once, after training, while the training-only state is still there
        self.finished_ = getattr(self, "finished_", 0) + 1, hasattr(self, "_X"), self.module_.training

    def _loss(self, batch):
        assert self.module_.training  # every step in train mode (Dropout, BatchNorm), validation or not
        a = self.module_.encode_image(batch["x"])
        b = self.module_.encode_text(batch["y"])
        # the learned temperature has a gradient that pushes it up (or down) for ever
        loss = ((a - b) ** 2).mean() * self.loss_scale_ - self.push_ * self.module_.head.logit_scale
        self.log_[-1].append(dict(index=batch["index"].clone(), x=batch["x"], y=batch["y"],
                                  image=batch["image"], labels=batch["labels"], loss=float(loss.detach()),
                                  rows=self._rows))
        return loss

    def fit(self, train, val=None, *, script=None, loss_scale=1.0, push=0.1):
        self.log_, self.snapshots_, self.script_, self.loss_scale_, self.push_ = [], [], script, loss_scale, push
        self.refreshed_ = []
        return super().fit(train, val)

    def _validation_result(self, vds):
        self.snapshots_.append({k: v.clone() for k, v in self.module_.state_dict().items()})
        return super()._validation_result(vds) if self.script_ is None else {}

    def _score_validation(self, res, vds):
        if self.script_ is None:
            return super()._score_validation(res, vds)
        return self.script_[len(self.snapshots_) - 1]


@pytest.fixture(scope="module")
def toy():
    ds = toy_dataset()
    return ds.subset("train"), ds.subset("val")


def _unlabelled(ds):
    return PairedDataset(f"{ds.name}-unlabelled", ds.text_to_image, ds.n_images, image_features=ds.image_features,
                         text_features=ds.text_features)


def _weights(m):
    return {k: v.detach().clone() for k, v in m.module_.state_dict().items()}


def _same_weights(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_every_training_row_is_in_one_batch_per_epoch(toy):
    train, _ = toy
    X, Y, L = train.pairs()
    n = len(X)  # 60 images x 2 captions
    m = Toy(epochs=3, batch_size=16).fit(train)
    assert len(m.log_) == 3
    orders = []
    for epoch in m.log_:
        idx = torch.cat([b["index"] for b in epoch]).numpy()
        assert sorted(idx.tolist()) == list(range(n))  # every row once, none twice
        assert [len(b["index"]) for b in epoch] == [16] * (n // 16) + [n % 16]
        for b in epoch:  # a batch's rows are those rows' features, images and labels
            i = b["index"].numpy()
            np.testing.assert_array_equal(b["x"].numpy(), X[i])
            np.testing.assert_array_equal(b["y"].numpy(), Y[i])
            np.testing.assert_array_equal(b["labels"].numpy(), L[i])
            np.testing.assert_array_equal(b["image"].numpy(), train.text_to_image[i])
        orders.append(idx)
    assert not np.array_equal(orders[0], orders[1])  # reshuffled every epoch
    # a last batch of one row is skipped (no batch statistics, no in-batch negatives)
    m = Toy(epochs=1, batch_size=17).fit(train)
    assert n % 17 == 1 and [len(b["index"]) for b in m.log_[0]] == [17] * (n // 17)
    m = Toy(epochs=1, batch_size=59).fit(train)  # but a last batch of two rows is trained on
    assert n % 59 == 2 and sorted(len(b["index"]) for b in m.log_[0]) == [2, 59, 59]
    # unlabelled data: no label rows in the batches, no label head
    unl = PairedDataset("unlabelled", train.text_to_image, train.n_images, image_features=train.image_features,
                        text_features=train.text_features)
    m = Toy(epochs=1).fit(unl)
    assert m.n_labels_ == 0 and all(b["labels"] is None for b in m.log_[0])
    assert Toy(epochs=1).fit(train).n_labels_ == 3


def test_same_seed_same_bits_other_seed_other_weights(toy):
    train, _ = toy
    a, b = Toy(random_state=3).fit(train), Toy(random_state=3).fit(train)
    assert _same_weights(_weights(a), _weights(b))
    c = Toy(random_state=4).fit(train)
    assert not any(torch.equal(v, _weights(c)[k]) for k, v in _weights(a).items() if v.numel() > 1)
    # the global generators too, for subclasses that draw from them in _setup
    seed_everything(5)
    first = (np.random.rand(3), torch.rand(3))
    np.random.rand(7), torch.rand(7)
    seed_everything(5)
    again = (np.random.rand(3), torch.rand(3))
    np.testing.assert_array_equal(first[0], again[0])
    assert torch.equal(first[1], again[1])


def test_early_stopping_restores_the_best_epoch_and_counts_patience_in_epochs(toy):
    train, val = toy
    # a tie with the best (or a gain under 1e-6) is no improvement
    script = [0.2, 0.5, 0.4, 0.5, 0.5 + 1e-7, 0.9, 0.9]
    m = Toy(epochs=7, patience=3).fit(train, val, script=script)
    assert [h["val"] for h in m.history_] == script[:5]  # stopped 3 epochs after the best
    assert m.best_val_ == 0.5 and len(m.log_) == 5
    assert _same_weights(_weights(m), m.snapshots_[1])
    assert not _same_weights(_weights(m), m.snapshots_[-1])
    assert not m.module_.training  # eval mode for encoding
    assert m.finished_ == (1, True, False)
    assert m.refreshed_ == [(e, False) for e in range(1, 6)] + [(5, False)]
    # an improvement resets the count
    script = [0.1, 0.2, 0.15, 0.3, 0.25, 0.2, 0.1, 0.0]
    m = Toy(epochs=8, patience=2).fit(train, val, script=script)
    assert len(m.history_) == 6 and m.best_val_ == 0.3
    assert _same_weights(_weights(m), m.snapshots_[3])
    # patience=1 stops at the first epoch without improvement; the best is still restored
    m = Toy(epochs=8, patience=1).fit(train, val, script=[0.3, 0.1, 0.9])
    assert len(m.history_) == 2 and _same_weights(_weights(m), m.snapshots_[0])
    # no early stopping: every epoch runs, the last weights are kept, nothing is validated
    m = Toy(epochs=4, patience=None).fit(train, val, script=[0.9, 0.1, 0.1, 0.1])
    assert len(m.history_) == 4 and m.snapshots_ == [] and m.best_val_ is None
    assert m.refreshed_ == [(4, False)]  # e.g. DCCA's closed-form last stage, on the final weights
    assert all("val" not in h for h in m.history_)


def test_the_validation_score_is_the_protocols_mean(toy):
    train, val = toy
    m = Toy(epochs=1, patience=1).fit(train, val)
    from xmodal.evaluation.protocol import evaluate

    r = evaluate(m, val, pk=(), rk=(1, 5, 10))
    assert m.best_val_ == pytest.approx(0.5 * (r["i2t"]["map"] + r["t2i"]["map"]), abs=1e-12)
    assert m._score_validation({"i2t": {"map": 0.2}, "t2i": {"map": 0.6}, "mR": 0.0}, val) == pytest.approx(0.4)
    unl = PairedDataset("unlabelled", val.text_to_image, val.n_images, image_features=val.image_features,
                        text_features=val.text_features)
    assert m._score_validation({"mR": 0.7}, unl) == 0.7
    # unlabelled validation data: the mean of Recall@1, 5 and 10 of both directions
    m = Toy(epochs=1, patience=1).fit(train, unl)
    r = evaluate(m, unl, pk=(), rk=(1, 5, 10))
    recalls = [r[d][f"r@{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10)]
    assert m.best_val_ == pytest.approx(np.mean(recalls), abs=1e-12)
    res = m._validation_result(unl)
    assert sorted(k for k in res["i2t"] if k.startswith("r@")) == ["r@1", "r@10", "r@5"]
    # and a hold-out of unlabelled training data
    m = Toy(epochs=2, patience=1).fit(_unlabelled(train))
    assert all("val" in h for h in m.history_) and all(b["labels"] is None for b in m.log_[0])


def test_the_epoch_loss_is_the_mean_over_its_rows(toy, monkeypatch):
    train, val = toy
    m = Toy(epochs=2, batch_size=16).fit(train)
    for epoch, h in zip(m.log_, m.history_):
        sizes = np.array([len(b["index"]) for b in epoch])
        losses = np.array([b["loss"] for b in epoch])
        assert h["loss"] == pytest.approx(float((sizes * losses).sum() / sizes.sum()), rel=1e-9)

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    err = Terminal()
    monkeypatch.setattr(sys, "stderr", err)
    monkeypatch.setattr(TorchMethod, "_progress_mininterval", 0.0)
    m = Toy(epochs=2, batch_size=16, verbose=True).fit(train)
    monkeypatch.undo()
    text = err.getvalue()
    # the bar: every step of both epochs, and each loss shown is a running mean of the epoch so far
    steps = math.ceil(len(train.text_to_image) / 16)
    assert f"{2 * steps}/{2 * steps}" in text and "epoch=2/2" in text
    running = set()
    for epoch in m.log_:
        sizes = np.array([len(b["index"]) for b in epoch])
        losses = np.array([b["loss"] for b in epoch])
        running |= {f"{v:.4f}" for v in np.cumsum(sizes * losses) / np.cumsum(sizes)}
    shown = re.findall(r"loss=(-?[0-9.]+)", text)
    assert len(set(shown)) > 4 and set(shown) <= running, (set(shown) - running)
    # with early stopping the bar shows the last validation score too
    err = Terminal()
    monkeypatch.setattr(sys, "stderr", err)
    monkeypatch.setattr(TorchMethod, "_progress_mininterval", 0.0)
    Toy(epochs=2, patience=2, verbose=True).fit(train, val, script=[0.25, 0.75])
    monkeypatch.undo()
    assert "val=0.2500" in err.getvalue() and "val=0.7500" in err.getvalue()
    # verbose=False prints nothing, even on a terminal
    err = Terminal()
    monkeypatch.setattr(sys, "stderr", err)
    Toy(epochs=1, verbose=False).fit(train)
    monkeypatch.undo()
    assert err.getvalue() == ""


def test_the_learned_temperature_is_clamped_and_not_decayed(toy):
    train, _ = toy
    m = Toy(epochs=3, lr=0.5, weight_decay=0.1).fit(train)
    # the loss pushes log-scale up past log 100: CLIP's clamp holds it there, still trainable
    assert m.module_.head.logit_scale.item() == pytest.approx(math.log(100.0))
    m = Toy(epochs=3, lr=0.5).fit(train, push=-0.1)  # and at 0 (scale 1) from below
    assert m.module_.head.logit_scale.item() == 0.0
    groups = m._param_groups()
    assert len(groups) == 2 and groups[1]["weight_decay"] == 0.0
    assert [p is m.module_.head.logit_scale for p in groups[1]["params"]] == [True]
    assert all(p is not m.module_.head.logit_scale for p in groups[0]["params"]) and "weight_decay" not in groups[0]
    assert len(groups[0]["params"]) == len(list(m.module_.parameters())) - 1


class _SpyAdam(torch.optim.Adam):
    made: list = []

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        _SpyAdam.made.append(self)


def test_cosine_schedule_reaches_zero_at_the_last_step_and_clip_bounds_the_gradient(toy, monkeypatch):
    train, _ = toy
    monkeypatch.setattr(torch.optim, "Adam", _SpyAdam)
    m = Toy(epochs=3, lr=0.01)
    m.lr_schedule = "cosine"
    m.fit(train)
    lrs = [g["lr"] for g in _SpyAdam.made[-1].param_groups]
    assert lrs == pytest.approx([0.0, 0.0], abs=1e-12)
    Toy(epochs=3, lr=0.01).fit(train)  # constant by default
    assert [g["lr"] for g in _SpyAdam.made[-1].param_groups] == [0.01, 0.01]
    # the gradient left by the last step was clipped to norm grad_clip
    m = Toy(epochs=1)
    m.grad_clip = 1e-3
    m.fit(train, loss_scale=1e3)
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in m.module_.parameters()]))
    assert norm.item() == pytest.approx(1e-3, rel=1e-4)


def test_the_hold_out_is_drawn_from_the_training_images_and_its_texts_not_trained(toy):
    train, _ = toy
    n_texts = len(train.text_to_image)
    for frac, n_val in ((0.2, 12), (0.05, 10)):  # at least 10 images
        m = Toy(epochs=1, patience=1, val_fraction=frac).fit(train)
        held = np.sort(np.random.default_rng(0).choice(train.n_images, n_val, replace=False))
        rows = m.log_[0][0]["rows"]
        np.testing.assert_array_equal(rows, np.flatnonzero(~np.isin(train.text_to_image, held)))
        assert sum(len(b["index"]) for b in m.log_[0]) == n_texts - 2 * n_val
        assert all(np.isin(b["image"].numpy(), held).sum() == 0 for b in m.log_[0])
        L = train.pairs()[2]
        for b in m.log_[0]:  # each kept row still has its own labels
            np.testing.assert_array_equal(b["labels"].numpy(), L[rows][b["index"].numpy()])
    # 20 training images are enough for a hold-out; fewer are refused with a warning
    small = train.subset(np.arange(20))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert "val" in Toy(epochs=1, patience=1).fit(small).history_[0]
    with pytest.warns(UserWarning, match="19 training images"):
        Toy(epochs=1, patience=1).fit(train.subset(np.arange(19)))


def test_encoding_in_chunks_and_of_zero_rows(toy):
    train, _ = toy
    m = Toy(epochs=1).fit(train)
    Z = np.random.default_rng(0).normal(size=(4096 + 5, train.image_features.shape[1])).astype(np.float32)
    with torch.no_grad():
        direct = m.module_.encode_image(torch.from_numpy(Z)).numpy()
    np.testing.assert_allclose(m.encode_images(Z), direct, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(m.encode_images(Z[:1]), direct[:1], rtol=1e-5, atol=1e-6)
    assert m.encode_texts(np.zeros((0, train.text_features.shape[1]), np.float32)).shape == (0, 4)


def test_state_round_trip_and_training_only_state_dropped(toy):
    train, val = toy
    m = Toy(epochs=2, patience=2)
    m._kept = "set before fit"
    m.fit(train, val)
    # private attributes made during fit (features, rows, images) are gone; earlier ones stay
    assert m._kept == "set before fit"
    assert not {"_X", "_Y", "_L", "_rows", "_train", "_image"} & set(vars(m))
    state = m._get_state()
    back = Toy(epochs=2, patience=2)
    back._set_state({k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in state.items()})
    assert _same_weights(_weights(m), _weights(back)) and not back.module_.training
    assert back.history_ == m.history_ and back.best_val_ == m.best_val_
    X, Y = val.image_features, val.text_features
    np.testing.assert_array_equal(back._encode_images(X), m._encode_images(X))
    np.testing.assert_array_equal(back._encode_texts(Y), m._encode_texts(Y))
    assert _torch.default_threads() >= 1


def test_a_finite_loss_with_a_non_finite_gradient_stops_training(toy):
    """sqrt at 0: the loss is finite, its gradient is not; Adam would write NaN weights."""
    train, _ = toy

    class SqrtAtZero(Toy):
        def _loss(self, batch):
            return super()._loss(batch) + torch.sqrt(0.0 * self.module_.head.logit_scale)

    m = SqrtAtZero(epochs=1)
    with pytest.raises(_torch.TrainingDivergedError, match=r"epoch 1, step 1 \(non-finite gradient\)"):
        m.fit(train)



def test_training_uses_the_thread_budget(toy, monkeypatch):
    """The threads are those of xmodal.device ($XMODAL_THREADS), not torch's own default."""
    train, _ = toy
    before = torch.get_num_threads()
    monkeypatch.setenv("XMODAL_THREADS", "2")
    torch.set_num_threads(1)
    try:
        Toy(epochs=1).fit(train)
        assert torch.get_num_threads() == 2 == _torch.default_threads()
    finally:
        torch.set_num_threads(before)


def test_a_skipped_one_row_batch_is_not_counted_as_a_step(toy, monkeypatch):
    """120 rows in batches of 17 leave one row, skipped: counted as a step, the cosine
    schedule ended above 0 (T_max one step per epoch too long) and the bar never reached
    its total."""
    train, _ = toy
    monkeypatch.setattr(torch.optim, "Adam", _SpyAdam)

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    err = Terminal()
    monkeypatch.setattr(sys, "stderr", err)
    m = Toy(epochs=2, batch_size=17, lr=0.01, verbose=True)
    m.lr_schedule = "cosine"
    m.fit(train)
    text = err.getvalue()
    monkeypatch.undo()
    assert [len(e) for e in m.log_] == [7, 7]
    assert [g["lr"] for g in _SpyAdam.made[-1].param_groups] == pytest.approx([0.0, 0.0], abs=1e-12)
    assert "14/14" in text and "/16" not in text, text[-300:]


def test_each_step_uses_the_gradient_of_its_own_batch_only(toy):
    """The gradient left by the last step is that of the last batch's loss at the weights it
    saw: gradients do not pile up over steps."""
    train, _ = toy

    class Recording(Toy):
        def _loss(self, batch):
            self.pre_ = ({k: v.clone() for k, v in self.module_.state_dict().items()}, batch["x"], batch["y"])
            return super()._loss(batch)

    m = Recording(epochs=2).fit(train)
    pre, x, y = m.pre_
    net = _Net(x.shape[1], y.shape[1])
    net.load_state_dict(pre)
    loss = ((net.encode_image(x) - net.encode_text(y)) ** 2).mean() - 0.1 * net.head.logit_scale
    loss.backward()
    got = dict(m.module_.named_parameters())
    for name, p in net.named_parameters():
        torch.testing.assert_close(got[name].grad, p.grad, rtol=1e-5, atol=1e-7)


def test_weights_that_do_not_fit_the_module_are_refused(toy):
    """A method without ``dropout`` has no older layout to fall back on: mismatched weights
    are a RuntimeError, which ``load`` reports as a DataError naming the file."""
    train, _ = toy
    state = Toy(epochs=1).fit(train)._get_state()
    state.pop("module__txt.bias")
    with pytest.raises(RuntimeError, match="txt.bias"):
        Toy()._set_state(state)
