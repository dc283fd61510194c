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
