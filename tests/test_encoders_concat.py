"""``a+b`` encoder specs: features side by side, fitted state saved and restored, one modality."""

from __future__ import annotations

import numpy as np
import pytest

from xmodal.encoders import Encoder, get_encoder
from xmodal.encoders.base import EncoderError

TEXTS = ["a plane parked on the runway", "two planes near the terminal", "green trees and a river",
         "many buildings in a dense residential area", "a baseball field beside a road", "a river"]


def test_concatenated_features_equal_the_parts_side_by_side(tmp_path):
    enc = get_encoder("bow:20+tfidf:30", "text").fit(TEXTS)
    parts = [get_encoder("bow:20").fit(TEXTS), get_encoder("tfidf:30").fit(TEXTS)]
    X, ok = enc.encode(TEXTS, cache_dir=tmp_path, return_mask=True)
    assert enc.dim == sum(p.dim for p in parts) == X.shape[1]
    np.testing.assert_allclose(X, np.hstack([p.encode(TEXTS, cache_dir=False) for p in parts]))
    assert ok.all() and enc.report_.n_computed == 2 * len(TEXTS)
    again = enc.encode(TEXTS, cache_dir=tmp_path)  # each part reuses its own cache
    np.testing.assert_array_equal(again, X)
    assert enc.report_.n_cached == 2 * len(TEXTS) and enc.report_.n_computed == 0
    path = enc.save(tmp_path / "enc.zip")
    loaded = Encoder.load(path)
    assert loaded.spec == "bow:20+tfidf:30"
    np.testing.assert_allclose(loaded.encode(TEXTS, cache_dir=False), X)


def test_concatenation_needs_one_modality_and_known_parts():
    with pytest.raises(EncoderError, match="mixes image and text"):
        get_encoder("minilm+efficientnet-lite0")
    with pytest.raises(EncoderError, match="unknown encoder 'nope'"):
        get_encoder("minilm+nope")
    with pytest.raises(EncoderError, match="is a text encoder"):
        get_encoder("bow+tfidf", "image")
