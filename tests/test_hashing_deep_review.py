"""Review of the deep hashing methods against their papers (session 12): the learned training
codes DCMH and SSAH keep (``train_image_codes_`` / ``train_text_codes_``, the database of the
``--database-codes learned`` protocol) must be the B-step of the nets the method keeps, and
exist only when every training pair was trained on; determinism and save/load round trips."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from xmodal import methods
from xmodal.data import DataError
from xmodal.methods.base import CrossModalMethod, unpack_codes
from xmodal.methods.hashing.protocol import evaluate_training_codes, has_training_codes

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_hashing_deep import _blobs  # noqa: E402

SMALL = {"dcmh": dict(hidden=64), "ssah": dict(hidden=64, feature_dim=64, label_epochs=20)}


@pytest.fixture(scope="module")
def blobs():
    return _blobs(n_classes=8, per_class=20)


@pytest.mark.parametrize("name", ["dcmh", "ssah"])
def test_no_learned_codes_when_rows_were_held_out(name, blobs):
    """With no validation split, early stopping holds out 10% of the training images and their
    texts are not trained on: the learned codes then cover 90% of the pairs. They used to be
    kept anyway, and the learned-codes protocol refused the real training split with 'the
    database must be the training split'."""
    train = blobs.subset("train")
    m = methods.create(name, bits=16, epochs=2, patience=1, random_state=0, **SMALL[name]).fit(train)
    assert not has_training_codes(m)
    with pytest.raises(DataError, match="keeps no learned training codes"):
        evaluate_training_codes(m, blobs.subset("query"), train, train=train)


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
def test_learned_codes_are_the_b_step_of_the_kept_nets(name, blobs):
    """The learned codes used to be the B of the *start* of the last epoch (the paper updates
    B after every epoch, the last one included), and after early stopping restored the best
    epoch's nets they stayed those of the last epoch: up to ``patience`` epochs away from the
    nets that encode the queries."""
    train = blobs.subset("train")
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
def test_same_seed_same_codes_and_save_load_round_trip(name, blobs, tmp_path):
    train, query = blobs.subset("train"), blobs.subset("query")
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
def test_a_feature_constant_in_training_does_not_swamp_the_codes(name, blobs):
    """Inputs are standardised with training statistics. A feature that never varies in
    training (a tag no training text carries) used to be divided by 1e-6: a query carrying it
    got an input of 1e6, and every such query fell onto one code (1 distinct code where 21-48
    without the tag). Such a feature now keeps its raw scale, as in scikit-learn's scaler."""
    from xmodal.data import PairedDataset

    tr, q = blobs.subset("train"), blobs.subset("query")
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
