"""Deep methods that read raw inputs, on a small real UCM-Captions subset: VSE++ with a GRU
text encoder trained from scratch, and the TERAN-style transformer on EfficientNet-Lite0
regions and MiniLM tokens (computed by xmodal.methods.deep._features, cached in tmp)."""


from collections import Counter

import numpy as np
import pytest

from xmodal import methods
from xmodal.data import DataError, load_dataset
from xmodal.evaluation.protocol import evaluate
from xmodal.methods.deep import raw_view
from xmodal.methods.deep._raw import build_vocab, to_ids, tokenize

from conftest import DATA  # honours $XMODAL_DATA: a path of its own skipped where the data was there


@pytest.fixture(scope="module")
def ucm(tmp_path_factory):
    if not (DATA / "ucm_captions").exists():
        pytest.skip("shared data folder absent")
    import os

    os.environ["XMODAL_CACHE"] = str(tmp_path_factory.mktemp("xmodal_cache"))
    from xmodal.methods.deep import _features

    ds = load_dataset("ucm_captions", data_dir=str(DATA))
    train_pool = ds.splits["train"]
    cls = ds.class_ids
    pick_tr, pick_te = [], []
    for c in range(5):  # 5 classes: 6 training and 4 test images each
        ids = train_pool[cls[train_pool] == c]
        pick_tr += list(ids[:6])
        pick_te += list(ids[6:10])
    sub = ds.subset(np.array(pick_tr + pick_te))
    R = _features.image_regions(sub.image_paths)
    X = R.astype(np.float32).mean(1)
    Y = _features.sentence_embeddings(sub.texts)
    sub = sub.with_features(X, Y)
    n = len(pick_tr)
    return sub.subset(np.arange(n)), sub.subset(np.arange(n, len(pick_tr) + len(pick_te)))


def random_mr(test) -> float:
    """Expected mR of a random ranking (Recall@1/5/10 both directions)."""
    n_img, n_txt = test.n_images, test.n_texts
    per = test.texts_per_image.max()
    from math import comb

    i2t = [1 - comb(n_txt - per, k) / comb(n_txt, k) for k in (1, 5, 10)]
    t2i = [k / n_img for k in (1, 5, 10)]
    return 100 * float(np.mean(i2t + t2i))


def test_vsepp_gru_learns_from_raw_captions(ucm, tmp_path):
    train, test = ucm
    m = methods.create("vsepp", text_model="gru", dim=256, epochs=12, warmup_epochs=3, batch_size=64,
                       lr=1e-3, patience=None, verbose=False).fit(train)
    losses = [h["loss"] for h in m.history_]
    assert losses[-1] < 0.7 * losses[0], losses
    assert m.raw_inputs == ("texts",) and len(m.vocab_) > 20
    res = evaluate(raw_view(m, test), test)
    assert res["mR"] > random_mr(test) + 12, (res["mR"], random_mr(test))
    # encode_texts takes strings; feature rows are refused with a pointer to raw_view
    a = m.encode_texts(test.texts[:3])
    np.testing.assert_allclose(a, m.encode_raw_texts(test.texts[:3]), atol=1e-6)
    with pytest.raises(DataError, match="raw_view"):
        m.encode_texts(test.text_features)
    back = methods.load(str(m.save(tmp_path / "gru.zip")))
    np.testing.assert_allclose(back.encode_texts(test.texts[:3]), a, atol=1e-5)
    assert back.vocab_ == m.vocab_
    # VSE++'s vocabulary: training words seen at least 4 times; the rarer ones are <unk> in the
    # training captions, so the unknown-word embedding is trained before test captions need it
    counts = Counter(w for t in train.texts for w in tokenize(t))
    assert m.min_word_count == 4 and set(m.vocab_[2:]) == {w for w, c in counts.items() if c >= 4}
    rare = [w for w, c in counts.items() if c < 4]
    assert rare and (to_ids(train.texts, m.vocab_)[0] == 1).any()
    assert build_vocab(train.texts, 1)[2:] == sorted(counts)
    with pytest.raises(ValueError, match="min_word_count"):
        methods.create("vsepp", text_model="gru", min_word_count=0).fit(train)


def test_transformer_regions_and_rerank(ucm, tmp_path):
    train, test = ucm
    m = methods.create("transformer", epochs=6, batch_size=48, patience=None, verbose=False,
                       shortlist=10).fit(train)
    assert m.mode_ == "regions" and m.raw_inputs == ("images", "texts")
    losses = [h["loss"] for h in m.history_]
    # six epochs cut it by 42%; an optimiser that never steps moved it by 0.2%
    assert losses[0] - losses[-1] > 0.05 * abs(losses[0]), losses
    view = raw_view(m, test)
    res = evaluate(view, test)
    assert res["mR"] > random_mr(test) + 12, (res["mR"], random_mr(test))
    assert res["i2t"]["map"] > 0.45 and res["t2i"]["map"] > 0.45  # chance: 1/5
    # full embeddings carry regions/words; score re-ranks only inside the shortlist
    Q, D = view.encode_images(test.image_features), view.encode_texts(test.text_features)
    assert Q.shape[1] > m.global_dim and D.shape[1] > m.global_dim
    S = m.score(Q, D)
    G = m.score(m.encode_images(test.image_features), m.encode_texts(test.text_features))
    top_full = np.argsort(-S, axis=1)[:, :10]
    top_glob = np.argsort(-G, axis=1)[:, :10]
    assert all(set(a) == set(b) for a, b in zip(top_full, top_glob))  # same shortlist, new order
    back = methods.load(str(m.save(tmp_path / "teran.zip")))
    np.testing.assert_allclose(back.score(Q, D), S, atol=1e-4)
