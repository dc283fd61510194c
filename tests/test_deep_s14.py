"""Second-look review of the deep real-valued methods (session 14): CLIP's clamp of the learned
temperature on the parameter itself, and standardisation of features that are constant in
training."""

import math
import warnings

import numpy as np
import pytest
import torch

from xmodal import methods
from xmodal.methods.deep._common import Standardize

from conftest import wiki_sample  # honours $XMODAL_DATA

FAST = dict(epochs=1, patience=None, verbose=False, random_state=0)


@pytest.fixture(scope="module")
def wiki():
    return wiki_sample(400, 0)


@pytest.mark.parametrize("name", ["contrastive", "graph", "transformer"])
def test_learned_temperature_is_clamped_on_the_parameter_as_in_clip(wiki, name):
    """CLIP clips the logit scale to [0, log 100] after each step. A clamp in the forward pass
    only would leave a parameter above log 100 with no gradient at all: stuck there for good
    (here from the first step, as ``temperature=1e-3`` starts it at log 1000)."""
    train, _ = wiki
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # transformer: global stage only on Wikipedia
        m = methods.create(name, **FAST, temperature=1e-3, lr=1e-3).fit(train)
    s = float(m.module_.logit_scale.detach())
    assert 0.0 <= s <= math.log(100.0) + 1e-6, s


def test_a_feature_constant_in_training_is_not_blown_up_at_test_time():
    """A column with no spread in training (a tag absent from the training texts, a dead unit)
    is centred but not scaled, as scikit-learn's StandardScaler does: dividing by the 1e-6
    floor turned a test value of 1 into 1e6, and the embedding into that column's weights."""
    Z = np.array([[0.0, 1.0, 0.1], [0.0, 3.0, 0.1], [0.0, 5.0, 0.1]] * 7, np.float32)
    assert Z[:, 2].std() > 0  # float32 rounding: a constant 0.1 has a tiny std
    st = Standardize(3)
    st.set(Z)
    out = st(torch.tensor([[1.0, 3.0, 1.1]]))
    np.testing.assert_allclose(out.numpy(), [[1.0, 0.0, 1.0]], atol=1e-6)
    # columns with a spread keep exactly the old scale (std + 1e-6): fitted models unchanged
    assert float(st.std[1]) == np.float32(Z[:, 1].std() + np.float32(1e-6))
    # a tiny but real spread (MiniLM's near-dead units on UCM captions) is not "constant"
    W = np.array([[-2.1e-8], [-2.0e-8], [-2.2e-8], [-2.6e-8]], np.float32)
    st1 = Standardize(1)
    st1.set(W)
    assert float(st1.std[0]) == np.float32(W[:, 0].std() + np.float32(1e-6))
