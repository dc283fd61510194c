"""Review of the shallow hashing methods against their papers: edge inputs (fewer training
pairs than bits, bits above the feature dimension, one class, multi-label label matrices,
rows of zeros, float32), the sign/packing convention shared by both modalities and FAISS,
and the input checks of the FAISS Hamming search."""

from __future__ import annotations

import numpy as np
import pytest

from xmodal import methods
from xmodal.data.dataset import PairedDataset
from xmodal.methods import ParameterError
from xmodal.methods.base import pack_codes, unpack_codes
from xmodal.methods.hashing.search import build_index, hamming_topk
from xmodal.metrics import hamming_distance

SHALLOW = ["lsh", "cca_itq", "cvh", "imh", "cmfh", "lssh", "scm_orth", "scm_seq", "seph", "dlfh", "sslpdp"]
# few iterations: these checks are about shapes, conventions and errors, not quality
FAST = {"lssh": dict(n_iter=2, n_atoms=32), "seph": dict(n_iter=40), "sslpdp": dict(n_iter=40),
        "dlfh": dict(n_iter=3)}


def _synthetic(n=120, dx=20, dy=12, labels=None, X=None, Y=None, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, dx)) if X is None else X
    Y = rng.standard_normal((n, dy)) if Y is None else Y
    labels = rng.integers(0, 4, n) if labels is None else labels
    return PairedDataset(name="synthetic", text_to_image=np.arange(n), n_images=n,
                         image_features=X, text_features=Y, labels=labels)


def _make(name, bits=16, **extra):
    return methods.create(name, bits=bits, **{"random_state": 0, **FAST.get(name, {}), **extra})


@pytest.mark.parametrize("name", SHALLOW)
def test_fewer_training_pairs_than_bits_is_refused_at_fit_or_encodes(name):
    """30 training pairs, 64 bits: either fit refuses with a ParameterError that says why, or
    the fitted method encodes (IMH used to fit and then fail in encode_* with a numpy
    broadcasting error: its n x n eigenproblem has at most n - 1 useful eigenvectors)."""
    ds = _synthetic(n=30)
    m = _make(name, bits=64)
    try:
        m.fit(ds)
    except ParameterError as exc:
        assert "bits=64" in str(exc) and "training pairs" in str(exc), str(exc)
        assert not getattr(m, "fitted_", False)
        return
    assert m.encode_images(ds.image_features).shape == (30, 8)
    assert m.encode_texts(ds.text_features).shape == (30, 8)


def test_imh_refuses_more_bits_than_training_pairs():
    with pytest.raises(ParameterError, match=r"IMH: bits=64 .* 30 training pairs"):
        _make("imh", bits=64).fit(_synthetic(n=30))
    # max_train counts: the eigenproblem runs on the sampled pairs
    with pytest.raises(ParameterError, match="20 training pairs"):
        _make("imh", bits=32, max_train=20).fit(_synthetic(n=120))
    assert _make("imh", bits=16).fit(_synthetic(n=30)).encode_images(np.zeros((2, 20))).shape == (2, 2)


def test_rank_error_names_the_training_pairs_when_they_limit_the_rbf_map():
    """CCA-ITQ / CVH / SCM-orth need ``bits`` mapped dimensions. With fewer training pairs
    than ``n_anchors`` the RBF map has one dimension per pair, and the advice
    "n_anchors >= bits" cannot help: the error must say that the pairs are the limit."""
    with pytest.raises(ParameterError, match="30 training pairs") as exc:
        _make("cca_itq", bits=64).fit(_synthetic(n=30))
    assert "n_anchors >= bits" not in str(exc.value)
    # where n_anchors is the limit, the advice stays
    with pytest.raises(ParameterError, match="n_anchors >= bits"):
        _make("cvh", bits=64, kernel="rbf", n_anchors=40).fit(_synthetic(n=200))


EDGE = {
    "one class": dict(labels=np.zeros(120, int)),
    "multi-label with empty rows": dict(labels=np.vstack([
        (np.random.default_rng(1).random((100, 6)) < 0.3).astype(int), np.zeros((20, 6), int)])),
    "rows of zeros": dict(X=np.vstack([np.random.default_rng(2).standard_normal((100, 20)), np.zeros((20, 20))]),
                          Y=np.vstack([np.random.default_rng(3).standard_normal((100, 12)), np.zeros((20, 12))])),
}


@pytest.mark.parametrize("case", sorted(EDGE))
@pytest.mark.parametrize("name", SHALLOW)
def test_edge_inputs_fit_and_encode(name, case):
    ds = _synthetic(**EDGE[case])
    m = _make(name).fit(ds)
    ci, ct = m.encode_images(ds.image_features), m.encode_texts(ds.text_features)
    assert ci.shape == ct.shape == (120, 2) and ci.dtype == ct.dtype == np.uint8


@pytest.mark.parametrize("name", SHALLOW)
def test_float32_features_give_the_float64_codes(name):
    """Every shallow method computes in float64: float32 input is the same data."""
    ds = _synthetic()
    ds32 = _synthetic(X=ds.image_features.astype(np.float32), Y=ds.text_features.astype(np.float32))
    ds64 = _synthetic(X=ds32.image_features.astype(np.float64), Y=ds32.text_features.astype(np.float64))
    a, b = _make(name).fit(ds32), _make(name).fit(ds64)
    assert np.array_equal(a.encode_images(ds32.image_features), b.encode_images(ds64.image_features))
    assert np.array_equal(a.encode_texts(ds32.text_features), b.encode_texts(ds64.text_features))


@pytest.mark.parametrize("name", ["cca_itq", "cmfh", "scm_seq", "seph"])
def test_random_state_changes_only_what_is_random(name):
    ds = _synthetic()
    # 50 of the 120 pairs as RBF anchors, so that the seed also picks the anchors (SCM-seq's
    # only random step; with every pair an anchor it is deterministic)
    a, b = _make(name, n_anchors=50).fit(ds), _make(name, n_anchors=50, random_state=1).fit(ds)
    c = _make(name, n_anchors=50).fit(ds)
    assert np.array_equal(a.encode_images(ds.image_features), c.encode_images(ds.image_features))
    # the RBF anchors are drawn with random_state: another seed is another map
    assert not np.array_equal(a.encode_images(ds.image_features), b.encode_images(ds.image_features))


def test_packing_is_the_same_for_both_modalities_and_faiss():
    """Bit j of a code is bit 7 - j % 8 of byte j // 8 (numpy's big-endian packbits) for
    images and texts alike, and FAISS's Hamming distance on the packed rows equals the
    number of differing signs."""
    rng = np.random.default_rng(0)
    Bi, Bt = np.sign(rng.standard_normal((50, 24))), np.sign(rng.standard_normal((40, 24)))
    ci, ct = pack_codes(Bi), pack_codes(Bt)
    assert ci.shape == (50, 3) and np.array_equal(unpack_codes(ci, 24), Bi)
    first = np.zeros((1, 24))
    first[0, 0] = 1
    assert pack_codes(np.where(first > 0, 1.0, -1.0))[0, 0] == 0b10000000
    want = (Bi[:, None, :] != Bt[None, :, :]).sum(axis=2)
    assert np.array_equal(hamming_distance(ci, ct), want)
    D, I = hamming_topk(ci, ct, 40)
    assert np.array_equal(np.take_along_axis(want, I, axis=1), D)


def test_hamming_topk_empty_database_and_bad_k():
    q = np.zeros((3, 2), np.uint8)
    D, I = hamming_topk(q, np.zeros((0, 2), np.uint8), 5)  # was a bare AssertionError from FAISS
    assert D.shape == I.shape == (3, 0)
    D, I = hamming_topk(q, np.zeros((4, 2), np.uint8), np.int64(10))  # k above the database size
    assert D.shape == I.shape == (3, 4) and sorted(I[0]) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="integer"):
        hamming_topk(q, np.zeros((4, 2), np.uint8), 2.5)  # was silently 2
    with pytest.raises(ValueError, match="integer"):
        hamming_topk(q, np.zeros((4, 2), np.uint8), True)
    with pytest.raises(ValueError, match="at least one byte"):
        build_index(np.zeros((4, 0), np.uint8))


def test_sslpdp_never_reads_a_label_outside_its_budget_when_the_sample_misses_them():
    """Three labelled images (labeled_fraction=3/600) and a 60-pair code-learning sample that
    does not hold it: SS-LPDP used to mark sampled row 0 as labelled and read its true label,
    one label beyond the budget. Scrambling every label it may not see must change nothing."""
    rng = np.random.default_rng(0)
    # multi-label (MIRFlickr-like): a propagated label vector's confidence depends on how many
    # labels the seed row carries, so a row read beyond the budget shows in the codes
    L = (rng.random((600, 6)) < 0.3).astype(int)
    L[np.arange(600), rng.integers(0, 6, 600)] = 1
    ds = _synthetic(n=600, labels=L)
    kw = dict(labeled_fraction=3 / 600, max_train=60)
    keep = _make("sslpdp", **kw).labelled_rows(ds)
    assert keep.sum() == 3
    sampled = np.random.default_rng(0).choice(600, 60, replace=False)  # SePH's subsample draw
    assert not keep[sampled].any()  # the case under test: no labelled pair in the sample
    labels = ds.labels.copy()
    labels[~keep] = 1 - labels[~keep]
    labels[~keep & (labels.sum(axis=1) == 0), 0] = 1
    other = _synthetic(n=600, X=ds.image_features, Y=ds.text_features, labels=labels)
    a = _make("sslpdp", **kw).fit(ds)
    b = _make("sslpdp", **kw).fit(other)
    assert np.array_equal(a.encode_images(ds.image_features), b.encode_images(ds.image_features))
    assert np.array_equal(a.encode_texts(ds.text_features), b.encode_texts(ds.text_features))


def test_learned_codes_protocol_takes_the_tie_order_like_evaluate():
    """``evaluate`` lets the caller choose how tied Hamming distances are ordered
    (``tie_seed``); the learned-codes variant ranks the same codes, so it takes the same
    choice (it could not, and always used tie_seed=0). DLFH's 8-bit class codewords tie
    heavily, so database order and a random order give different MAP."""
    from xmodal.methods.hashing.protocol import evaluate_training_codes

    rng = np.random.default_rng(0)
    labels = np.sort(rng.integers(0, 4, 160))  # class-sorted: database order favours ties
    ds = _synthetic(n=160, labels=labels)
    train = ds.subset(np.arange(120), name="train")
    query = ds.subset(np.arange(120, 160), name="query")
    m = _make("dlfh", bits=8).fit(train)
    default = evaluate_training_codes(m, query, train, train=train, pk=())
    same = evaluate_training_codes(m, query, train, train=train, pk=(), tie_seed=0)
    ordered = evaluate_training_codes(m, query, train, train=train, pk=(), tie_seed=None)
    assert default["i2t"]["map"] == same["i2t"]["map"]
    assert ordered["i2t"]["map"] != default["i2t"]["map"]
