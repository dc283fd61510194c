"""The shared PyTorch trainer (xmodal/methods/_torch.py) against the issue's "training
engineering" list, for every method that uses it: seeded (same seed, same bits; another seed,
other encodings), mini-batches of ``batch_size``, early stopping that keeps the best validation
epoch on a hold-out drawn from the training images, a progress bar with the running loss,
bit-identical save/load, and clear messages when early stopping cannot run. Small nets, two or
three epochs on 300 Wikipedia training pairs (tests/test_deep.py and test_hashing_deep*.py cover
what is not repeated here)."""

from __future__ import annotations

import io
import math
import re
import sys
import warnings

import numpy as np
import pytest

from xmodal import methods
from xmodal.data import DataError, PairedDataset, load_dataset
from xmodal.evaluation.protocol import evaluate
from xmodal.methods._torch import TorchMethod

from conftest import DATA, wiki_sample  # honours $XMODAL_DATA

# tiny nets: what is tested is the trainer, not what the methods reach
SMALL = {
    "dcca": dict(hidden=(128,), dim=16, batch_size=100),
    "dccae": dict(hidden=(128,), dim=16, batch_size=100),
    "corr_ae": dict(hidden=(128,), dim=32),
    "acmr": dict(hidden=(128,), dim=32),
    "dscmr": dict(hidden=(128,), dim=32),
    "vsepp": dict(dim=64, warmup_epochs=1),
    "contrastive": dict(hidden=128, dim=32),
    "graph": dict(hidden=128, dim=32),
    "transformer": dict(hidden=128, global_dim=32, dim=16),
    "dcmh": dict(hidden=64, bits=16),
    "ssah": dict(hidden=64, feature_dim=64, bits=16, label_epochs=5),
    "djsrh": dict(hidden=64, bits=16),
    "jdsh": dict(hidden=64, bits=16),
    "ucch": dict(hidden=64, bits=16, n_negatives=32),
}


@pytest.fixture(scope="module")
def wiki():
    return wiki_sample(300, 0, 100)


def _create(name: str, **kw):
    params = dict(epochs=2, batch_size=64, patience=None, verbose=False, random_state=0)
    params.update(SMALL[name])
    params.update(kw)
    return methods.create(name, **params)


def _fit(m, train, val=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # transformer: no image files on Wikipedia
        return m.fit(train, val=val)


def _encode(m, test):
    return m.encode_images(test.image_features), m.encode_texts(test.text_features)


class _BatchCounter:
    """Wraps a method class's ``_loss`` to record the rows of every mini-batch."""

    def __init__(self, monkeypatch, cls):
        self.sizes: list[int] = []
        orig = cls._loss

        def counting(method, batch):
            self.sizes.append(len(batch["index"]))
            return orig(method, batch)

        monkeypatch.setattr(cls, "_loss", counting)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_seed_batches_and_save_load(name, wiki, monkeypatch, tmp_path):
    train, test = wiki
    a = _fit(_create(name), train)
    # every optimiser step sees one mini-batch of batch_size rows (the last one the rest)
    counter = _BatchCounter(monkeypatch, type(a))
    b = _fit(_create(name), train)
    bs, n = b.batch_size, train.n_texts
    assert len(counter.sizes) == 2 * math.ceil(n / bs), (counter.sizes, n, bs)
    assert sorted(counter.sizes[:math.ceil(n / bs)]) == sorted([bs] * (n // bs) + ([n % bs] if n % bs else []))
    assert sum(counter.sizes) == 2 * n
    monkeypatch.undo()
    # same seed: the same bits (XMODAL_THREADS=1 in the suite's runs; one process here)
    ea, eb = _encode(a, test), _encode(b, test)
    for x, y in zip(ea, eb):
        np.testing.assert_array_equal(x, y)
    # another seed: other initial weights and batch order, other encodings
    ec = _encode(_fit(_create(name, random_state=1), train), test)
    assert not all(np.array_equal(x, y) for x, y in zip(ea, ec))
    # save/load: bit-identical encodings, every learned attribute back
    back = methods.load(str(a.save(tmp_path / f"{name}.xm")))
    for x, y in zip(ea, _encode(back, test)):
        np.testing.assert_array_equal(x, y)
    learned = {k for k in vars(a) if k.endswith("_") and not k.startswith("_")}
    assert learned <= set(vars(back)), learned - set(vars(back))
    assert back.history_ == a.history_ and back.get_params() == a.get_params()


@pytest.mark.parametrize("name", ["dcca", "corr_ae"])
def test_early_stopping_keeps_the_best_epoch_of_a_training_hold_out(name, wiki, monkeypatch):
    """DCCA's last stage (a linear CCA in module buffers) is refreshed before each validation:
    the weights kept must give the best epoch's score again. The hold-out is 10% of the
    training images, whose texts are then not trained on."""
    train, _ = wiki
    m = _create(name, epochs=12, patience=2, batch_size=100)
    counter = _BatchCounter(monkeypatch, type(m))
    _fit(m, train)
    monkeypatch.undo()
    vals = [h["val"] for h in m.history_]
    assert len(vals) < 12 and np.argmax(vals) == len(vals) - 3, vals  # stopped 2 epochs past the best
    assert m.best_val_ == max(vals)
    rng = np.random.default_rng(m.random_state)  # the trainer's hold-out draw
    held = np.sort(rng.choice(train.n_images, 30, replace=False))
    hold_out = train.subset(held)
    r = evaluate(m, hold_out, pk=(), rk=(1, 5, 10))
    score = 0.5 * (r["i2t"]["map"] + r["t2i"]["map"])
    assert score == pytest.approx(m.best_val_, abs=1e-9)
    # the held-out images' texts took no part in training (Wikipedia: one text per image)
    assert sum(counter.sizes) == len(vals) * (train.n_texts - len(held))


@pytest.mark.parametrize("name", ["contrastive", "dcmh"])
def test_progress_bar_shows_the_running_loss_within_an_epoch(name, wiki, monkeypatch):
    """verbose=True on a terminal: the bar counts mini-batch steps and its loss is the running
    mean of the epoch so far, so a long epoch does not sit silent at 0%."""
    train, _ = wiki

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    err = Terminal()
    monkeypatch.setattr(sys, "stderr", err)
    monkeypatch.setattr(TorchMethod, "_progress_mininterval", 0.0, raising=False)
    m = _fit(_create(name, epochs=2, verbose=True), train)
    monkeypatch.undo()
    text = err.getvalue()
    steps = math.ceil(train.n_texts / m.batch_size)
    losses = re.findall(r"loss=(-?[0-9.]+)", text)
    assert len(set(losses)) > 2 * 2, text[-500:]  # several values per epoch, not one
    assert f"{2 * steps}/{2 * steps}" in text, text[-500:]
    assert "epoch=2/2" in text
    # the last running loss shown is the mean of the last epoch, as recorded
    assert float(losses[-1]) == pytest.approx(m.history_[-1]["loss"], abs=1e-4)


def test_verbose_without_a_terminal_prints_nothing(wiki, monkeypatch):
    train, _ = wiki
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    _fit(_create("contrastive", verbose=True), train)
    monkeypatch.undo()
    assert err.getvalue() == ""


@pytest.mark.parametrize("name", ["djsrh", "contrastive", "dcca"])
def test_patience_without_a_validation_split_says_so(name, wiki):
    """patience=... with val_fraction=0 and no val split used to train to the last epoch in
    silence (the unsupervised hashing methods default to val_fraction=0)."""
    train, _ = wiki
    with pytest.warns(UserWarning, match=rf"{name}: patience=2 .*no validation split.*val_fraction=0") as w:
        line = sys._getframe().f_lineno + 1
        m = _create(name, epochs=2, patience=2, val_fraction=0.0).fit(train)
    # the warning names the caller's line (a fixed stacklevel named a frame above the script, "sys", for dcca)
    assert [(x.filename, x.lineno) for x in w if "patience" in str(x.message)] == [(__file__, line)]
    assert all("val" not in h for h in m.history_) and m.best_val_ is None
    small = train.subset(np.arange(12))
    with pytest.warns(UserWarning, match=r"patience=2 .*12 training images"):
        _create(name, epochs=1, patience=2, val_fraction=0.1).fit(small)


def test_the_transformers_global_stage_warning_names_the_fit_line(wiki):
    """A fixed stacklevel named base.py's fit, not the line calling it."""
    train, _ = wiki
    with pytest.warns(UserWarning, match="training the global stage only") as w:
        line = sys._getframe().f_lineno + 1
        _create("transformer", epochs=1).fit(train)
    assert [(x.filename, x.lineno) for x in w if "global stage" in str(x.message)] == [(__file__, line)]


def test_hashing_early_stopping_on_unlabelled_data_is_refused_by_name(wiki):
    """Hashing early stopping scores class mAP; on unlabelled data it failed at the end of the
    first epoch with 'label matrices must agree in columns, got () and ()'."""
    train, _ = wiki
    unl = PairedDataset(name="unlabelled", text_to_image=train.text_to_image, n_images=train.n_images,
                        image_features=train.image_features, text_features=train.text_features)
    with pytest.raises(DataError, match=r"djsrh: early stopping .*labels.*'unlabelled'.*patience=None"):
        _create("djsrh", patience=2, val_fraction=0.1).fit(unl)
    # a labelled val split does not do: its codes are scored against the training items' labels
    val = train.subset(np.arange(30), name="labelled-val")
    with pytest.raises(DataError, match=r"djsrh: early stopping .*labels.*training dataset 'unlabelled'"):
        _create("djsrh", patience=2).fit(unl, val)


@pytest.fixture(scope="module")
def ucm_small(tmp_path_factory):
    """30 UCM-Captions training images of 5 classes (150 captions) with their regions, tokens
    and pooled features, computed into a temporary cache."""
    if not (DATA / "ucm_captions").exists():
        pytest.skip("shared data folder absent")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XMODAL_CACHE", str(tmp_path_factory.mktemp("xmodal_cache")))
        from xmodal.methods.deep import _features

        ds = load_dataset("ucm_captions", data_dir=str(DATA))
        pool, cls = ds.splits["train"], ds.class_ids
        sub = ds.subset(np.concatenate([pool[cls[pool] == c][:6] for c in range(5)]))
        X = _features.image_regions(sub.image_paths).astype(np.float32).mean(1)
        sub = sub.with_features(X, _features.sentence_embeddings(sub.texts))
        _features.text_tokens(sub.texts)
        yield sub


@pytest.mark.parametrize("name,params", [
    ("vsepp", dict(text_model="gru", dim=32, word_dim=32)),
    ("transformer", dict(dim=16, global_dim=32, hidden=64, align_batch=8)),
])
def test_raw_input_methods_are_seeded_and_reload_bit_for_bit(name, params, ucm_small, tmp_path):
    """The GRU text encoder trained from scratch and the region/word transformer, through the
    raw inputs they read (captions, image regions)."""
    from xmodal.methods.deep import raw_view

    def fit(seed):
        return methods.create(name, epochs=2, batch_size=32, patience=None, verbose=False,
                              random_state=seed, **params).fit(ucm_small)

    def encode(m):
        v = raw_view(m, ucm_small)
        return v.encode_images(ucm_small.image_features), v.encode_texts(ucm_small.text_features)

    a = fit(0)
    assert a.raw_inputs  # the raw (GRU / region) path, not the pooled features alone
    ea = encode(a)
    for x, y in zip(ea, encode(fit(0))):
        np.testing.assert_array_equal(x, y)
    assert not all(np.array_equal(x, y) for x, y in zip(ea, encode(fit(1))))
    back = methods.load(str(a.save(tmp_path / f"{name}.xm")))
    for x, y in zip(ea, encode(back)):
        np.testing.assert_array_equal(x, y)
