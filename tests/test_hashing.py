"""Cross-modal hashing methods: interface, determinism, code balance, real retrieval quality
on Wikipedia (every learned method clearly above LSH), FAISS Hamming search, the
learned-training-codes protocol and the semi-supervised label budget."""

from __future__ import annotations


import numpy as np
import pytest

from xmodal import methods
from xmodal.data import DataError, load_dataset
from xmodal.evaluation.protocol import evaluate
from xmodal.methods import ParameterError

from conftest import DATA  # honours $XMODAL_DATA: a path of its own skipped where the data was there
from sklearn.linear_model import LogisticRegression
from xmodal.methods.hashing._common import FeatureMapMixin, logistic_hash, rbf_anchor_features
from xmodal.data.dataset import PairedDataset
from xmodal.methods.base import pack_codes, unpack_codes
from xmodal.methods.hashing.search import build_index, hamming_topk
from xmodal.metrics import hamming_distance

SHALLOW = ["cca_itq", "cvh", "imh", "cmfh", "lssh", "scm_orth", "scm_seq", "seph", "dlfh", "sslpdp"]
DEEP = ["dcmh", "ssah", "djsrh", "jdsh", "ucch"]
ALL = ["lsh"] + SHALLOW + DEEP

# small settings so the whole file stays well under the time budget; defaults are larger
FAST = {
    "lssh": dict(n_iter=3, n_atoms=64, max_train=600),
    "imh": dict(max_train=1000),
    "seph": dict(max_train=800, n_iter=150),
    "sslpdp": dict(max_train=800, n_iter=150),
    "dlfh": dict(n_iter=10),
    "dcmh": dict(epochs=12, hidden=256, patience=None),
    "ssah": dict(epochs=8, hidden=256, label_epochs=10, patience=None),
    "djsrh": dict(epochs=10, hidden=256),
    "jdsh": dict(epochs=10, hidden=256),
    "ucch": dict(epochs=10, hidden=256, n_negatives=512, lr=1e-3),
}


@pytest.fixture(scope="module")
def wiki():
    if not (DATA / "wikipedia").exists():
        pytest.skip("shared data folder absent")
    return load_dataset("wikipedia", data_dir=str(DATA / "wikipedia"))


@pytest.fixture(scope="module")
def small(wiki):
    """600 training pairs for the fast interface checks."""
    return wiki.subset(np.arange(600), name="wiki-small")


def _make(name, bits=16, **extra):
    return methods.create(name, bits=bits, random_state=0, **{**FAST.get(name, {}), **extra})


def test_every_method_registered_as_binary():
    binary = set(methods.available("binary"))
    assert set(ALL) <= binary
    assert "scm" in methods.available("real")  # semantic correlation matching keeps its name


@pytest.mark.parametrize("name", ALL)
def test_interface_shapes_determinism_balance(name, small):
    X, Y = small.image_features[:50], small.text_features[:50]
    a = _make(name, bits=16).fit(small)
    b = _make(name, bits=16).fit(small)
    ci, ct = a.encode_images(X), a.encode_texts(Y)
    assert ci.dtype == np.uint8 and ci.shape == (50, 2) and ct.shape == (50, 2)
    assert np.array_equal(ci, b.encode_images(X)) and np.array_equal(ct, b.encode_texts(Y))
    # balance: over the training set every code is neither all-zeros nor all-ones on average
    on = np.unpackbits(a.encode_images(small.image_features), axis=1).mean()
    assert 0.2 < on < 0.8, f"{name}: {on:.2f} of the bits are on"
    with pytest.raises(DataError, match=rf"encode_images: expected images features with {X.shape[1]} "
                       rf"columns, got shape \(3, {X.shape[1] + 1}\)"):
        a.encode_images(np.zeros((3, X.shape[1] + 1)))


@pytest.mark.parametrize("name", ["lsh", "cmfh", "seph"])
def test_bits_must_be_multiple_of_8(name, small):
    with pytest.raises(ParameterError, match=r"parameter bits=12 must be a positive multiple of 8"):
        methods.create(name, bits=12).fit(small)


@pytest.fixture(scope="module")
def lsh_map(wiki):
    m = methods.create("lsh", bits=32, random_state=0).fit(wiki.subset("train"))
    r = evaluate(m, wiki.subset("query"), wiki.subset("database"), pk=())
    return 0.5 * (r["i2t"]["map"] + r["t2i"]["map"])


# LSSH's FAST fit (3 iterations, 64 atoms) scored 0.137-0.147 over seeds 0-2, inside LSH's own
# spread (0.124-0.139 over seeds 0-7): no margin over chance told it from a broken LSSH
BEAT_LSH = {"lssh": dict(n_iter=10, n_atoms=256, max_train=600)}


@pytest.mark.parametrize("name", SHALLOW + DEEP)
def test_learned_methods_beat_lsh_on_wikipedia(name, wiki, lsh_map):
    bits = 16 if name in ("cvh", "imh", "scm_orth") else 32  # these lose bits to noise beyond ~10 dims
    m = _make(name, bits=bits, **BEAT_LSH.get(name, {})).fit(wiki.subset("train"))
    r = evaluate(m, wiki.subset("query"), wiki.subset("database"), map_k=(50,), pk=(10,))
    score = 0.5 * (r["i2t"]["map"] + r["t2i"]["map"])
    # LSH is chance level (~0.13 with 10 unequal classes; 0.124-0.139 over seeds 0-7, so chance
    # alone reaches lsh_map + 0.01); learned codes must clear it clearly (LSSH by less with the
    # shortened fit used here: 0.154-0.161 over seeds 0-2; 0.161 vs 0.129 with its defaults:
    # see docs/results.md)
    assert lsh_map < 0.15
    margin = 0.02 if name == "lssh" else 0.025
    assert score > lsh_map + margin, f"{name}: mAP {score:.4f} vs LSH {lsh_map:.4f}"
    for d in ("i2t", "t2i"):
        assert 0 <= r[d]["p@r2"] <= 1 and len(r[d]["hamming_pr_curve"]) > 0


def test_hamming_topk_matches_brute_force():
    from xmodal.methods.hashing.search import build_index, hamming_topk
    from xmodal.metrics import hamming_distance

    rng = np.random.default_rng(0)
    db = rng.integers(0, 256, (5000, 8), dtype=np.uint8)
    q = rng.integers(0, 256, (20, 8), dtype=np.uint8)
    D, I = hamming_topk(q, db, 10)
    full = hamming_distance(q, db)
    assert D.shape == I.shape == (20, 10)
    assert np.array_equal(D, np.sort(full, axis=1)[:, :10])
    assert np.array_equal(np.take_along_axis(full, I, axis=1), D)
    D2, _ = hamming_topk(q, build_index(db), 10)  # a reusable index gives the same answer
    assert np.array_equal(D, D2)
    with pytest.raises(ValueError, match="bits"):
        hamming_topk(q[:, :4], db, 5)
    with pytest.raises(ValueError, match="uint8"):
        hamming_topk(q.astype(np.int64), db, 5)


def test_training_codes_protocol(wiki):
    from xmodal.methods.hashing.protocol import evaluate_training_codes

    train = wiki.subset("train")
    m = _make("dlfh", bits=16).fit(train)
    r = evaluate_training_codes(m, wiki.subset("query"), wiki.subset("database"))
    assert r["database_codes"] == "learned"
    # learned codes of a supervised method sit on the labels: better than its hash functions'
    plain = evaluate(m, wiki.subset("query"), wiki.subset("database"), pk=())
    assert r["t2i"]["map"] > plain["t2i"]["map"]
    with pytest.raises(DataError, match="training split"):
        evaluate_training_codes(m, wiki.subset("query"), wiki.subset("query"))
    cvh = _make("cvh").fit(train)
    with pytest.raises(DataError, match="no learned training codes"):
        evaluate_training_codes(cvh, wiki.subset("query"), wiki.subset("database"))


def test_semi_supervised_uses_only_its_label_budget(small):
    m = _make("sslpdp", labeled_fraction=0.1)
    keep = m.labelled_rows(small)
    assert keep.sum() == 60
    # scrambling the labels the method may not see changes nothing
    other = small.subset(np.arange(small.n_images))
    rng = np.random.default_rng(1)
    other.labels[~keep] = other.labels[~keep][rng.permutation(int((~keep).sum()))][:, ::-1]
    a = _make("sslpdp", labeled_fraction=0.1).fit(small)
    b = _make("sslpdp", labeled_fraction=0.1).fit(other)
    X = small.image_features[:100]
    assert np.array_equal(a.encode_images(X), b.encode_images(X))
    assert a.n_labelled_ == 60


@pytest.mark.parametrize("name", ["cca_itq", "seph", "djsrh"])
def test_save_load_round_trip(name, small, tmp_path):
    m = _make(name).fit(small)
    path = m.save(tmp_path / f"{name}.zip")
    back = methods.load(str(path))
    X, Y = small.image_features[:30], small.text_features[:30]
    assert np.array_equal(m.encode_images(X), back.encode_images(X))
    assert np.array_equal(m.encode_texts(Y), back.encode_texts(Y))


def _dlfh_code_map(m, data) -> float:
    from xmodal.metrics import hamming_distance, mean_average_precision, relevance

    D = hamming_distance(m.train_image_codes_, m.train_text_codes_)
    return mean_average_precision(distances=D, relevant=relevance(data.labels, data.text_labels))


def test_dlfh_codes_escape_collapse_with_many_classes(wiki):
    """Regression: with few positives per row (UCM-Captions: 21 classes, 5 %) and many sampled
    columns DLFH's bound-maximising update drove every row to one code (MAP 0.10 at 16 bits).
    Splitting Wikipedia's 10 classes in two by image parity gives the same regime (20 classes);
    the learned image and text codes must still separate the classes, and the hash functions
    must clearly beat LSH on the real 10-class protocol."""
    train = wiki.subset("train")
    fine = train.subset(np.arange(train.n_images))
    cls = fine.labels.argmax(axis=1) * 2 + np.arange(fine.n_images) % 2
    fine.labels = np.eye(20, dtype=fine.labels.dtype)[cls]
    m = methods.create("dlfh", bits=16, random_state=0).fit(fine)
    assert _dlfh_code_map(m, fine) > 0.9
    collapsed = methods.create("dlfh", bits=16, random_state=0, n_sampled=1000).fit(fine)
    assert _dlfh_code_map(collapsed, fine) < 0.5  # the failure this guards against is real
    m = methods.create("dlfh", bits=32, random_state=0).fit(train)
    lsh = methods.create("lsh", bits=32, random_state=0).fit(train)
    r = evaluate(m, wiki.subset("query"), wiki.subset("database"), pk=())
    r0 = evaluate(lsh, wiki.subset("query"), wiki.subset("database"), pk=())
    for d in ("i2t", "t2i"):
        assert r[d]["map"] > r0[d]["map"] + 0.08, (d, r[d]["map"], r0[d]["map"])


def test_scm_seq_closed_form_bits_beat_the_smoothed_refinement_on_a_train_holdout(wiki):
    """Why ``refine_iter=0`` is SCM-seq's default: on a hold-out of Wikipedia's *training*
    split (never the test split) the closed-form bits win clearly, and refinement still runs."""
    tr = wiki.subset("train")
    p = np.random.default_rng(0).permutation(tr.n_images)
    fit_part, held = tr.subset(np.sort(p[200:])), tr.subset(np.sort(p[:200]))
    scores = {}
    for ri in (0, 10):
        m = methods.create("scm_seq", bits=32, refine_iter=ri, random_state=0).fit(fit_part)
        r = evaluate(m, held, fit_part, pk=())
        scores[ri] = 0.5 * (r["i2t"]["map"] + r["t2i"]["map"])
    assert scores[0] > scores[10] + 0.02, scores


def test_unit_norm_lstsq_solves_the_constrained_basis_update():
    """LSSH's basis updates: min ||T - S B||^2 with every row of B in the unit ball, solved
    through the Lagrange dual; compared against long projected gradient descent and the KKT
    conditions (rows strictly inside the ball have zero gradient)."""
    from xmodal.methods.hashing.unsupervised import unit_norm_lstsq

    rng = np.random.default_rng(0)
    S = rng.standard_normal((300, 12))
    S[:, 3] = 0  # an atom nobody uses
    # some atoms need long rows (the constraint binds), others short ones (it does not)
    T = S @ (rng.standard_normal((12, 9)) * rng.choice([0.02, 2.0], (12, 1))) + 0.1 * rng.standard_normal((300, 9))
    B = unit_norm_lstsq(T, S)
    norms = np.linalg.norm(B, axis=1)
    assert norms.max() <= 1 + 1e-9
    assert (norms > 1 - 1e-6).any() and (norms < 0.9).any()  # both active and inactive rows
    G, C = S.T @ S, S.T @ T
    P, step = np.zeros_like(B), 0.5 / np.linalg.eigvalsh(G).max()
    for _ in range(5000):
        P = P - step * 2 * (G @ P - C)
        P /= np.maximum(np.linalg.norm(P, axis=1, keepdims=True), 1)
    f = lambda M: ((T - S @ M) ** 2).sum()  # noqa: E731
    assert f(B) <= f(P) * (1 + 1e-7)
    grad = 2 * (G @ B - C)
    inside = norms < 1 - 1e-6
    assert np.abs(grad[inside]).max() < 1e-5 * np.abs(C).max()


def test_lssh_keeps_the_papers_unit_norm_constraints(small):
    """Regression: LSSH's dictionary atoms, text basis U and latent map R live in the unit ball
    (Zhou et al. 2014, and the authors' code); a ridge penalty in their place let U's rows grow
    to norm ~3 and shrank every text latent factor accordingly."""
    m = _make("lssh", bits=16).fit(small)
    for name in ("dictionary_", "latent_map_", "text_factor_"):
        norms = np.linalg.norm(getattr(m, name), axis=1)
        assert norms.max() <= 1 + 1e-9, (name, norms.max())
    assert np.linalg.norm(m.text_factor_, axis=1).max() > 1 - 1e-6  # the constraint binds


def test_cmfh_authors_mu_beats_the_old_default_on_a_train_holdout(wiki):
    """CMFH's default μ = 100 is the authors' setting; μ = 1 (the earlier default) nearly
    drops the projection terms that tie V to each modality, and text queries suffer. Checked on
    a hold-out of Wikipedia's *training* split, never the test split."""
    tr = wiki.subset("train")
    p = np.random.default_rng(0).permutation(tr.n_images)
    fit_part, held = tr.subset(np.sort(p[400:])), tr.subset(np.sort(p[:400]))
    assert methods.create("cmfh").mu == 100
    scores = {}
    for mu in (1.0, None):
        extra = {} if mu is None else {"mu": mu}
        m = methods.create("cmfh", bits=32, random_state=0, **extra).fit(fit_part)
        scores[mu] = evaluate(m, held, fit_part, pk=())["t2i"]["map"]
    assert scores[None] > scores[1.0] + 0.04, scores


def _objective(F, B, W, b, lam):
    Z = (F @ W + b) * B
    return np.logaddexp(0, -Z).sum() + 0.5 * lam * (W * W).sum()


def test_logistic_hash_reaches_sklearns_per_bit_optimum():
    rng = np.random.default_rng(0)
    F = rng.standard_normal((300, 12))
    B = np.where(F @ rng.standard_normal((12, 6)) + rng.standard_normal((300, 6)) >= 0, 1.0, -1.0)
    reg = 1e-3
    W, b = logistic_hash(F, B, reg, max_iter=5000)
    W2, b2 = np.zeros_like(W), np.zeros_like(b)
    for j in range(B.shape[1]):
        clf = LogisticRegression(C=1 / (reg * len(F)), tol=1e-10, max_iter=10000).fit(F, B[:, j] > 0)
        W2[:, j], b2[j] = clf.coef_[0], clf.intercept_[0]
    lam = reg * len(F)
    assert _objective(F, B, W, b, lam) == pytest.approx(_objective(F, B, W2, b2, lam), rel=1e-7)
    np.testing.assert_allclose(W, W2, atol=1e-3)
    np.testing.assert_allclose(b, b2, atol=1e-3)


def test_rbf_anchor_features_are_the_rbf_kernel_of_float32_features():
    rng = np.random.default_rng(1)
    Z = (rng.standard_normal((50, 8)) * 100).astype(np.float32)
    A = Z[:7]
    sigma = 120.0
    d2 = ((Z.astype(np.float64)[:, None, :] - A.astype(np.float64)[None]) ** 2).sum(-1)
    want = np.exp(-d2 / (2 * sigma * sigma))
    np.testing.assert_allclose(rbf_anchor_features(Z, A, sigma), want, rtol=1e-5, atol=1e-6)
    # an anchor against itself is exactly 1 despite float32 rounding of the large norms
    assert np.all(rbf_anchor_features(Z[:7], A, sigma).diagonal() == 1.0)


def test_feature_map_sigma_is_the_mean_anchor_distance():
    class M(FeatureMapMixin):
        kernel, n_anchors = "rbf", 10

    rng = np.random.default_rng(2)
    Z = rng.standard_normal((40, 5))
    m = M()
    m._fit_map(Z, "image", np.random.default_rng(0))
    d = np.sqrt(((Z[:, None, :] - m.image_anchors_[None]) ** 2).sum(-1))
    assert m.image_sigma_ == pytest.approx(d.mean(), rel=1e-9)


def test_scm_orth_is_the_authors_eigenproblem_and_bits_past_the_label_rank_are_null():
    """SCM-orth against a transcription of the authors' trainSCM_orth/trainCCA (same ridge):
    eig(Cxy Cyy^-1 Cxy', Cxx), Cxy = 2 X'L (Y'L)' - X'1 (Y'1)', Wy = Cyy^-1 Cxy' Wx / sqrt(eig).
    Up to the rank of X'S̃Y (labels - 1 for single-label data) both give the same eigenvalues
    and the same bits; past it the eigenvalues are zero, so those bits are arbitrary in both."""
    from scipy import linalg

    from conftest import need
    from xmodal import methods
    from xmodal.data import load_dataset
    from xmodal.methods.hashing._common import normalized_labels

    ds = load_dataset("wikipedia", data_dir=str(need("wikipedia")))
    tr = ds.subset(np.arange(700), name="wiki-700")
    reg = 1e-2
    m = methods.create("scm_orth", bits=24, reg=reg, random_state=0).fit(tr)
    X, Y, L = (np.asarray(a, np.float64) for a in tr.pairs())
    Fx, Fy = m._map(X, "image"), m._map(Y, "text")
    Ln = normalized_labels((L > 0).astype(float))
    n_labels = int((L.sum(axis=0) > 0).sum())
    Cxy = 2 * (Fx.T @ Ln) @ (Fy.T @ Ln).T - np.outer(Fx.sum(0), Fy.sum(0))
    Gx, Gy = Fx.T @ Fx, Fy.T @ Fy
    # xmodal's scale-free ridge, written on the unnormalised Gram matrices as the authors' code
    Cxx = Gx + reg * np.trace(Gx) / len(Gx) * np.eye(len(Gx))
    Cyy = Gy + reg * np.trace(Gy) / len(Gy) * np.eye(len(Gy))
    A = Cxy @ linalg.solve(Cyy, Cxy.T, assume_a="pos")
    ev, V = linalg.eigh((A + A.T) / 2, Cxx)
    order = np.argsort(-ev)
    ev, V = ev[order], V[:, order]
    r = n_labels - 1
    assert np.all(ev[:r] > 1e-3 * ev[0]) and np.all(np.abs(ev[r:24]) < 1e-9 * ev[0]), ev[:r + 2] / ev[0]
    Wy = linalg.solve(Cyy, Cxy.T @ V[:, :r], assume_a="pos") / np.sqrt(ev[:r])
    for ours, theirs in ((Fx @ m.image_proj_[:, :r], Fx @ V[:, :r]), (Fy @ m.text_proj_[:, :r], Fy @ Wy)):
        corr = np.array([np.corrcoef(ours[:, j], theirs[:, j])[0, 1] for j in range(r)])
        np.testing.assert_allclose(np.abs(corr), 1.0, atol=1e-6)
    # the pair (x-bit, y-bit) of each direction has one sign in both: the same codes up to a flip
    sx = np.sign(np.sum(Fx @ m.image_proj_[:, :r] * (Fx @ V[:, :r]), axis=0))
    sy = np.sign(np.sum(Fy @ m.text_proj_[:, :r] * (Fy @ Wy), axis=0))
    np.testing.assert_array_equal(sx, sy)


SHALLOW_AND_LSH = ["lsh", "cca_itq", "cvh", "imh", "cmfh", "lssh", "scm_orth", "scm_seq", "seph", "dlfh", "sslpdp"]


# few iterations: these checks are about shapes, conventions and errors, not quality
QUICK = {"lssh": dict(n_iter=2, n_atoms=32), "seph": dict(n_iter=40), "sslpdp": dict(n_iter=40),
        "dlfh": dict(n_iter=3)}


def _synthetic(n=120, dx=20, dy=12, labels=None, X=None, Y=None, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, dx)) if X is None else X
    Y = rng.standard_normal((n, dy)) if Y is None else Y
    labels = rng.integers(0, 4, n) if labels is None else labels
    return PairedDataset(name="synthetic", text_to_image=np.arange(n), n_images=n,
                         image_features=X, text_features=Y, labels=labels)


def _make_quick(name, bits=16, **extra):
    return methods.create(name, bits=bits, **{"random_state": 0, **QUICK.get(name, {}), **extra})


@pytest.mark.parametrize("name", SHALLOW_AND_LSH)
def test_fewer_training_pairs_than_bits_is_refused_at_fit_or_encodes(name):
    """30 training pairs, 64 bits: either fit refuses with a ParameterError that says why, or
    the fitted method encodes (IMH used to fit and then fail in encode_* with a numpy
    broadcasting error: its n x n eigenproblem has at most n - 1 useful eigenvectors)."""
    ds = _synthetic(n=30)
    m = _make_quick(name, bits=64)
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
        _make_quick("imh", bits=64).fit(_synthetic(n=30))
    # max_train counts: the eigenproblem runs on the sampled pairs
    with pytest.raises(ParameterError, match="20 training pairs"):
        _make_quick("imh", bits=32, max_train=20).fit(_synthetic(n=120))
    assert _make_quick("imh", bits=16).fit(_synthetic(n=30)).encode_images(np.zeros((2, 20))).shape == (2, 2)


def test_rank_error_names_the_training_pairs_when_they_limit_the_rbf_map():
    """CCA-ITQ / CVH / SCM-orth need ``bits`` mapped dimensions. With fewer training pairs
    than ``n_anchors`` the RBF map has one dimension per pair, and the advice
    "n_anchors >= bits" cannot help: the error must say that the pairs are the limit."""
    with pytest.raises(ParameterError, match="30 training pairs") as exc:
        _make_quick("cca_itq", bits=64).fit(_synthetic(n=30))
    assert "n_anchors >= bits" not in str(exc.value)
    # where n_anchors is the limit, the advice stays
    with pytest.raises(ParameterError, match="n_anchors >= bits"):
        _make_quick("cvh", bits=64, kernel="rbf", n_anchors=40).fit(_synthetic(n=200))


EDGE = {
    "one class": dict(labels=np.zeros(120, int)),
    "multi-label with empty rows": dict(labels=np.vstack([
        (np.random.default_rng(1).random((100, 6)) < 0.3).astype(int), np.zeros((20, 6), int)])),
    "rows of zeros": dict(X=np.vstack([np.random.default_rng(2).standard_normal((100, 20)), np.zeros((20, 20))]),
                          Y=np.vstack([np.random.default_rng(3).standard_normal((100, 12)), np.zeros((20, 12))])),
}


@pytest.mark.parametrize("case", sorted(EDGE))
@pytest.mark.parametrize("name", SHALLOW_AND_LSH)
def test_edge_inputs_fit_and_encode(name, case):
    ds = _synthetic(**EDGE[case])
    m = _make_quick(name).fit(ds)
    ci, ct = m.encode_images(ds.image_features), m.encode_texts(ds.text_features)
    assert ci.shape == ct.shape == (120, 2) and ci.dtype == ct.dtype == np.uint8


@pytest.mark.parametrize("name", SHALLOW_AND_LSH)
def test_float32_features_give_the_float64_codes(name):
    """Every shallow method computes in float64: float32 input is the same data."""
    ds = _synthetic()
    ds32 = _synthetic(X=ds.image_features.astype(np.float32), Y=ds.text_features.astype(np.float32))
    ds64 = _synthetic(X=ds32.image_features.astype(np.float64), Y=ds32.text_features.astype(np.float64))
    a, b = _make_quick(name).fit(ds32), _make_quick(name).fit(ds64)
    assert np.array_equal(a.encode_images(ds32.image_features), b.encode_images(ds64.image_features))
    assert np.array_equal(a.encode_texts(ds32.text_features), b.encode_texts(ds64.text_features))


@pytest.mark.parametrize("name", ["cca_itq", "cmfh", "scm_seq", "seph"])
def test_random_state_changes_only_what_is_random(name):
    ds = _synthetic()
    # 50 of the 120 pairs as RBF anchors, so that the seed also picks the anchors (SCM-seq's
    # only random step; with every pair an anchor it is deterministic)
    a, b = _make_quick(name, n_anchors=50).fit(ds), _make_quick(name, n_anchors=50, random_state=1).fit(ds)
    c = _make_quick(name, n_anchors=50).fit(ds)
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
    keep = _make_quick("sslpdp", **kw).labelled_rows(ds)
    assert keep.sum() == 3
    sampled = np.random.default_rng(0).choice(600, 60, replace=False)  # SePH's subsample draw
    assert not keep[sampled].any()  # the case under test: no labelled pair in the sample
    labels = ds.labels.copy()
    labels[~keep] = 1 - labels[~keep]
    labels[~keep & (labels.sum(axis=1) == 0), 0] = 1
    other = _synthetic(n=600, X=ds.image_features, Y=ds.text_features, labels=labels)
    a = _make_quick("sslpdp", **kw).fit(ds)
    b = _make_quick("sslpdp", **kw).fit(other)
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
    m = _make_quick("dlfh", bits=8).fit(train)
    default = evaluate_training_codes(m, query, train, train=train, pk=())
    same = evaluate_training_codes(m, query, train, train=train, pk=(), tie_seed=0)
    ordered = evaluate_training_codes(m, query, train, train=train, pk=(), tie_seed=None)
    assert default["i2t"]["map"] == same["i2t"]["map"]
    assert ordered["i2t"]["map"] != default["i2t"]["map"]
