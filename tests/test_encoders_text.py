"""Text encoders on real UCM captions, MIRFlickr tags and Wikipedia-style topic features."""

from __future__ import annotations

import numpy as np
import pytest

from xmodal.encoders import Encoder, EncoderError, get_encoder
from xmodal.encoders.text import split_tags, tokenize

CHINESE = ["机场上停着几架飞机", "海滩上有白色的沙子和蓝色的大海", "飞机停在跑道上"]


@pytest.fixture(scope="module")
def captions(ucm):
    """Captions of the first 120 training images (600 texts) and of 40 test images."""
    train = ucm.splits["train"][:120]
    test = ucm.splits["test"][:40]
    pick = lambda imgs: [t for t, i in zip(ucm.texts, ucm.text_to_image) if i in set(imgs.tolist())]
    return pick(train), pick(test)


def test_tokenizer_handles_unspaced_scripts():
    toks = tokenize("Two planes at the AIRPORT, 机场上停着飞机 and ２ cars")
    assert toks[:3] == ["planes", "airport", "机"]      # stop words and 1-char words dropped
    assert "机场" in toks and "飞机" in toks and "停着" in toks  # character bigrams
    assert "cars" in toks and "two" not in toks and "the" not in toks
    assert tokenize("東京タワー") == ["東", "京", "タ", "ワ", "ー", "東京", "京タ", "タワ", "ワー"]


def test_minilm(tmp_path, monkeypatch):
    enc = get_encoder("minilm")
    assert (enc.modality, enc.dim, enc.needs_fit) == ("text", 384, False)
    texts = ["Four airplanes are parked at the airport .", "Several planes stand on an airport apron .",
             "This is a beach with blue sea and white sands .", "Four airplanes are parked at the airport ."]
    X = enc.encode(texts, progress=False, cache_dir=tmp_path)
    assert X.shape == (4, 384) and X.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(X, axis=1), 1.0, atol=1e-5)
    S = X @ X.T
    assert S[0, 1] > S[0, 2] + 0.2  # paraphrase closer than an unrelated caption
    np.testing.assert_array_equal(X[0], X[3])
    assert enc.report_.n_computed == 3  # the duplicate is encoded once
    fresh = get_encoder("minilm")
    monkeypatch.setattr(type(fresh), "_compute", lambda *a, **k: (_ for _ in ()).throw(
        AssertionError("model ran on a cache hit")))
    X2 = fresh.encode(texts, progress=False, cache_dir=tmp_path)
    assert fresh.report_.n_cached == 4
    np.testing.assert_array_equal(X, X2)
    monkeypatch.undo()
    # Batching does not change the result beyond float noise.
    X3 = get_encoder("minilm").encode(texts[::-1], batch_size=1, progress=False, cache_dir=False)
    np.testing.assert_allclose(X3[::-1], X, atol=1e-5)


@pytest.mark.parametrize("spec", ["tfidf", "bow", "tfidf:20"])
def test_vocabulary_encoders(spec, captions, tmp_path):
    train, test = captions
    enc = get_encoder(spec).fit(train)
    assert enc.needs_fit and enc.modality == "text"
    assert enc.dim == (20 if spec == "tfidf:20" else len(set(t for s in train for t in tokenize(s))))
    X = enc.encode(test, progress=False, cache_dir=False)
    assert X.shape == (len(test), enc.dim) and np.isfinite(X).all()
    if spec.startswith("tfidf"):
        norms = np.linalg.norm(X, axis=1)
        assert np.allclose(norms[norms > 0], 1.0, atol=1e-5)
    else:
        assert np.array_equal(X, np.round(X)) and X.sum() > 0
    # "airplane" appears in airplane captions, with its count in bow.
    if spec == "bow":
        col = enc.vocabulary_.index("airplane")
        assert enc.encode(["airplane next to an airplane"], cache_dir=False)[0, col] == 2
    enc.save(tmp_path / "enc.zip")
    loaded = Encoder.load(tmp_path / "enc.zip")
    np.testing.assert_array_equal(loaded.encode(test, progress=False, cache_dir=False), X)
    assert loaded.cache_key() == enc.cache_key()
    other = get_encoder(spec).fit(test)
    assert other.cache_key() != enc.cache_key()


def test_tfidf_is_scikit_learns(captions):
    """tf-idf is scikit-learn's (smooth idf, L2 rows) over the tokenizer: same idf, same rows."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    train, test = captions
    enc = get_encoder("tfidf").fit(train)
    ref = TfidfVectorizer(analyzer=tokenize, vocabulary=enc.vocabulary_).fit(train)
    np.testing.assert_array_equal(enc.idf_, ref.idf_)
    np.testing.assert_allclose(enc.encode(test, progress=False, cache_dir=False),
                               ref.transform(test).toarray(), rtol=0, atol=1e-7)  # float32 rows


def test_tfidf_chinese():
    enc = get_encoder("tfidf").fit(CHINESE + ["airplanes at the airport"])
    X = enc.encode(["跑道上的飞机", "sandy beach"], cache_dir=False)
    assert X[0].sum() > 0 and X[1].sum() == 0  # unseen words: an all-zero (not NaN) row
    assert "飞机" in enc.vocabulary_ and "跑道" in enc.vocabulary_


def test_lda_topics(captions, tmp_path):
    train, test = captions
    enc = get_encoder("lda:10").fit(train)
    assert enc.dim == 10
    X = enc.encode(test, progress=False, cache_dir=False)
    assert X.shape == (len(test), 10)
    np.testing.assert_allclose(X.sum(axis=1), 1.0, atol=1e-5)  # topic proportions
    again = get_encoder("lda:10").fit(train)
    np.testing.assert_array_equal(again.components_, enc.components_)  # seeded
    enc.save(tmp_path / "lda.zip")
    loaded = Encoder.load(tmp_path / "lda.zip")
    np.testing.assert_allclose(loaded.encode(test, progress=False, cache_dir=False), X, atol=1e-6)
    # Captions of the same image share their dominant topic more often than chance.
    top = X.argmax(axis=1).reshape(-1, 5)
    agree = np.mean([np.bincount(r).max() / 5 for r in top])
    assert agree > 0.5, agree
    with pytest.raises(EncoderError, match="positive"):
        get_encoder("lda:0")


def test_tags_mirflickr(data_root, tmp_path):
    path = data_root / "mirflickr25k" / "all_tags.txt"
    if not path.exists():
        pytest.skip(f"{path} not present")
    rows = path.read_text(encoding="utf-8").splitlines()
    enc = get_encoder("tags").fit(rows)
    assert enc.dim == 1386  # the release's tag vocabulary
    X = enc.encode(rows[:50], progress=False, cache_dir=False)
    assert set(np.unique(X)) <= {0.0, 1.0}
    assert X.sum(axis=1).tolist() == [len(set(split_tags(r))) for r in rows[:50]]
    # Comma- and space-separated forms of the same tags give the same vector.
    spaced = [" ".join(split_tags(r)) for r in rows[:50]]
    np.testing.assert_array_equal(enc.encode(spaced, progress=False, cache_dir=False), X)
    enc.save(tmp_path / "tags.zip")
    assert Encoder.load(tmp_path / "tags.zip").vocabulary_ == enc.vocabulary_


def test_progress_bar_quiet_when_not_a_tty(capsys):
    enc = get_encoder("tags").fit(["a b", "c"])
    enc.encode(["a", "b c"] * 3000, cache_dir=False)  # stderr is captured: not a TTY
    assert capsys.readouterr().err == ""
    enc.encode(["a", "b c"] * 3000, cache_dir=False, progress=True)
    assert "encode tags" in capsys.readouterr().err


@pytest.fixture(scope="module")
def reference_minilm():
    """sentence-transformers' own pipeline for the same package folder: the reference only."""
    st = pytest.importorskip("sentence_transformers")
    from xmodal.encoders.text import _minilm_dir

    return st.SentenceTransformer(_minilm_dir(), device="cpu")


def test_minilm_matches_sentence_transformers(ucm, reference_minilm):
    # 50 real captions of varied length, plus one past max_seq_length (256 word pieces) so that
    # truncation is compared too, and one with stray spaces and capitals.
    texts = list(ucm.texts[::103][:50])
    texts += [" ".join(ucm.texts[:60]), "  An AIRPLANE parked  at the Airport .  "]
    X = get_encoder("minilm").encode(texts, batch_size=16, progress=False, cache_dir=False)
    R = reference_minilm.encode(texts, batch_size=16, convert_to_numpy=True)
    assert X.shape == R.shape == (52, 384) and X.dtype == np.float32
    assert np.abs(X - R).max() < 1e-5


def test_minilm_token_outputs_match_sentence_transformers(ucm, reference_minilm):
    texts = list(ucm.texts[5:25:4]) + [" ".join(ucm.texts[:60])]
    enc = get_encoder("minilm")
    mine = enc.encode_tokens(texts, batch_size=4)
    ref = reference_minilm.encode(texts, output_value="token_embeddings", batch_size=4)
    assert len(mine) == len(ref) == len(texts)
    for a, b in zip(mine, ref):
        b = b.float().numpy()
        assert a.shape == b.shape and a.shape[1] == 384 and a.dtype == np.float32
        assert np.abs(a - b).max() < 1e-4
    assert mine[-1].shape[0] == 256  # truncated at the package's max_seq_length


def test_minilm_pipeline_read_from_package_files(tmp_path):
    from xmodal.encoders.text import _minilm_dir, sentence_pipeline

    p = sentence_pipeline(_minilm_dir())
    assert p == {"max_seq_length": 256, "do_lower_case": False, "dim": 384, "normalize": True}
    # A layout the encoder does not implement is an error naming the file, not other vectors.
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "modules.json").write_text(
        '[{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},'
        ' {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]')
    (tmp_path / "1_Pooling" / "config.json").write_text(
        '{"word_embedding_dimension": 384, "pooling_mode_cls_token": true}')
    with pytest.raises(EncoderError, match=r"1_Pooling/config.json.*pooling_mode_cls_token"):
        sentence_pipeline(tmp_path)
    (tmp_path / "modules.json").write_text('[{"type": "sentence_transformers.models.Dense"}]')
    with pytest.raises(EncoderError, match="modules.json"):
        sentence_pipeline(tmp_path)


def test_minilm_does_not_import_sentence_transformers():
    # Importing sentence-transformers roughly doubled `xmodal search`'s start-up: the encoder
    # runs its pipeline on transformers alone. A fresh interpreter, since this one may have it.
    import subprocess
    import sys

    code = ("import sys; from xmodal.encoders import get_encoder; "
            "X = get_encoder('minilm').encode(['a plane on a runway'], progress=False, cache_dir=False); "
            "print(X.shape, sorted(m for m in sys.modules if m.split('.')[0] == 'sentence_transformers'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split("\n")[0] == "(1, 384) []", out.stdout
