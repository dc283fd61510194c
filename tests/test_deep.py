"""Deep real-valued methods: each trains a few epochs on real Wikipedia features, its loss
falls, and it retrieves far better than chance; persistence, validation and reconstruction."""


import numpy as np
import pytest

from xmodal import methods
from xmodal.data import DataError
from xmodal.evaluation.protocol import evaluate
from xmodal.methods import ParameterError
from xmodal.methods.deep import raw_view

from conftest import wiki_sample  # honours $XMODAL_DATA
import torch
import torch.nn.functional as F
from dataclasses import replace
from xmodal.methods.deep._common import info_nce
from xmodal.methods.deep.supervised import grad_reverse
import math
import warnings
from xmodal.methods.deep._common import Standardize
FAST = dict(epochs=6, patience=None, verbose=False, random_state=0)

# name -> extra params for a quick run (defaults otherwise)
CASES = {
    "dcca": dict(batch_size=512),
    "dccae": dict(batch_size=512),
    "corr_ae": {},
    "acmr": {},
    "dscmr": {},
    "vsepp": dict(warmup_epochs=1),
    "uwml": {},
    "contrastive": {},
    "graph": {},
    "transformer": {},
}


@pytest.fixture(scope="module")
def wiki():
    return wiki_sample(1000, 0)


def chance_map(ds) -> float:
    """Expected mAP of a random ranking = the mean share of relevant items."""
    prior = ds.labels.mean(0)
    return float((ds.labels @ prior).mean())


@pytest.mark.parametrize("name", sorted(CASES))
def test_trains_and_beats_chance(wiki, name):
    train, test = wiki
    m = methods.create(name, **FAST, **CASES[name])
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # transformer: no image files on Wikipedia
        m.fit(train)
    losses = [h["loss"] for h in m.history_]
    assert len(losses) == FAST["epochs"]
    # falls by a clear share: an optimiser that never steps moved these losses by under 0.5%
    # (shuffled batches), often downwards; six trained epochs cut them by 10% (uwml) to 99%
    # (dcca's negative correlation loss falls too: the share is of its magnitude)
    assert losses[0] - losses[-1] > 0.05 * abs(losses[0]), losses
    # training-only tensors (features, graphs, caption tables) are released after fit
    import torch
    left = [k for k, v in vars(m).items() if isinstance(v, torch.Tensor) and not k.endswith("_")]
    assert not left, left
    res = evaluate(raw_view(m, test), test)
    chance = chance_map(test)
    # CCA on these features scores 0.25 / 0.20 against a chance level of 0.11
    assert res["i2t"]["map"] > 1.35 * chance, (res["i2t"]["map"], chance)
    assert res["t2i"]["map"] > 1.35 * chance, (res["t2i"]["map"], chance)
    emb = m.encode_images(test.image_features[:5])
    assert emb.shape[0] == 5 and np.isfinite(emb).all()


def test_early_stopping_uses_validation_and_is_deterministic(wiki):
    train, test = wiki
    runs = []
    for _ in range(2):
        m = methods.create("contrastive", epochs=12, patience=2, verbose=False, random_state=3).fit(train)
        runs.append(m)
    assert all("val" in h for h in runs[0].history_)
    vals = [h["val"] for h in runs[0].history_]
    assert runs[0].best_val_ == max(vals)
    # the best epoch's weights are the ones kept: re-scoring the same hold-out gives best_val_
    assert np.argmax(vals) < len(vals) - 1, vals  # training went past the best epoch
    m = runs[0]
    assert m._validation_score(*m._validation_arrays(train, None)[:3]) == pytest.approx(m.best_val_, abs=1e-9)
    np.testing.assert_array_equal(runs[0].encode_texts(test.text_features),
                                  runs[1].encode_texts(test.text_features))


@pytest.mark.parametrize("name", ["dccae", "dscmr"])
def test_save_load_roundtrip(wiki, tmp_path, name):
    train, test = wiki
    m = methods.create(name, **FAST).fit(train)
    path = m.save(tmp_path / f"{name}.zip")
    back = methods.load(str(path))
    np.testing.assert_allclose(back.encode_images(test.image_features), m.encode_images(test.image_features),
                               atol=1e-5)
    np.testing.assert_allclose(back.encode_texts(test.text_features), m.encode_texts(test.text_features),
                               atol=1e-5)
    # JSON has no tuples: a tuple parameter must come back a tuple, not a list
    assert back.get_params() == m.get_params() and repr(back) == repr(m)
    assert isinstance(back.hidden, tuple)


@pytest.mark.parametrize("name", ["dccae", "corr_ae"])
def test_reconstruction_error(wiki, name):
    train, test = wiki
    m = methods.create(name, **FAST).fit(train)
    err = m.reconstruction_error(test.image_features, test.text_features)
    # standardised units: predicting the training mean scores about 1
    assert 0 < err["image_mse_std"] < 1.0 and 0 < err["text_mse_std"] < 1.0
    assert np.isfinite(err["image_mse"]) and np.isfinite(err["text_mse"])
    Xr, Yr = m.reconstruct(test.image_features, test.text_features)
    assert Xr.shape == test.image_features.shape and Yr.shape == test.text_features.shape


def test_bad_parameters_and_inputs(wiki):
    train, test = wiki
    with pytest.raises(ParameterError, match="margin"):
        methods.create("vsepp", margin=-1).fit(train)
    with pytest.raises(ParameterError, match="text_model"):
        methods.create("vsepp", text_model="lstm").fit(train)
    unlabelled = train.subset(np.arange(50))
    unlabelled.labels = None
    with pytest.raises(DataError, match="supervised"):
        methods.create("acmr").fit(unlabelled)
    m = methods.create("contrastive", **FAST).fit(train)
    with pytest.raises(DataError, match="columns"):
        m.encode_images(np.zeros((2, 7)))
    assert raw_view(m, test) is m


def test_registered_in_family():
    names = set(methods.available("real"))
    assert {"dcca", "dccae", "corr_ae", "acmr", "dscmr", "vsepp", "contrastive", "uwml", "graph",
            "transformer"} <= names


def test_graph_and_caption_lookups_match_dense_matrices():
    """The O(n k) edge keys answer exactly what the n x n matrices they replace would."""
    import torch

    from xmodal.methods.deep.graph import adjacent, knn_edges

    rng = np.random.default_rng(0)
    Z = rng.normal(size=(60, 5))
    Zn = Z / np.linalg.norm(Z, axis=1, keepdims=True)
    S = Zn @ Zn.T
    np.fill_diagonal(S, -np.inf)
    dense = np.zeros((60, 60), bool)
    dense[np.repeat(np.arange(60), 4), np.argsort(-S, axis=1)[:, :4].ravel()] = True
    dense |= dense.T
    edges = torch.from_numpy(knn_edges(Z, 4, chunk=7))
    nodes = torch.from_numpy(rng.permutation(60)[:25])
    assert torch.equal(adjacent(edges, 60, nodes), torch.from_numpy(dense)[nodes][:, nodes])
    # repeated captions: a caption shared word for word is a positive of every image that has it
    from xmodal.data import PairedDataset

    Y = rng.normal(size=(12, 3)).astype(np.float32)
    Y[7] = Y[2]  # image 3's second caption repeats image 1's first one
    ds = PairedDataset("rep", np.repeat(np.arange(6), 2), 6, image_features=rng.normal(size=(6, 4)),
                       text_features=Y, labels=np.arange(6) % 2)
    m = methods.create("contrastive", epochs=1, patience=None, verbose=False)
    m.fit(ds)
    m._image = torch.from_numpy(np.repeat(np.arange(6), 2))
    m._caption_index(Y)
    batch = {"image": m._image, "index": torch.arange(12), "x": None, "y": None}
    m._batch_loss = lambda b: b["has_caption"]
    has = m._loss(batch).numpy()
    expect = np.zeros((12, 12), bool)
    for i in range(12):
        for j in range(12):
            expect[i, j] = any((Y[t] == Y[j]).all() for t in range(12) if t // 2 == i // 2)
    np.testing.assert_array_equal(has, expect)


def _poly_reference(S, pos, margin=0.2, eps=1e-5):
    """The authors' PolyLoss rule, one query at a time: a query counts only when some
    negative lies within ``margin`` of its positive; text queries read the transposed mask."""
    n, total = len(S), 0.0
    for M, P in ((S, pos), (S.T, pos.T)):
        for i in range(n):
            p = M[i, i]
            informative = [M[i, j] for j in range(n) if not P[i, j] and M[i, j] + margin > p]
            if not informative or p >= 1 - eps:
                continue
            h = max(informative)
            total += max(0.2 * p * p - 0.7 * p + 0.5, 0) + max(0.9 * h * h - 0.4 * h + 0.03, 0)
    return total / n


def test_poly_loss_follows_the_authors_pair_rule():
    import torch

    from xmodal.methods.deep._common import poly_loss

    rng = np.random.default_rng(0)
    S = rng.uniform(-0.3, 0.4, size=(5, 5))
    np.fill_diagonal(S, 0.5)
    S[0, 0] = 0.95  # image 0 beats all its negatives by far more than the margin: no term
    S[:, 0] = np.minimum(S[:, 0], 0.2)
    S[0, 0] = 0.95
    pos = np.eye(5, dtype=bool)
    pos[1, 3] = True  # text 3 repeats a caption of image 1, not the other way round
    S[1, 3] = 0.9     # a positive of image 1 (and of text 3): never a negative
    S[3, 1] = 0.95    # image 3 against text 1: text 1's hardest negative
    got = float(poly_loss(torch.tensor(S), torch.tensor(pos), 0.2))
    assert got == pytest.approx(_poly_reference(S, pos), abs=1e-9)


def test_dropout_parameter_reaches_every_tower(wiki):
    from torch import nn

    train, test = wiki
    for name, extra in [("dcca", {}), ("dccae", {}), ("corr_ae", {}), ("vsepp", dict(hidden=64))]:
        m = methods.create(name, dropout=0.5, epochs=1, patience=None, verbose=False, **extra).fit(train)
        drops = [x for x in m.module_.modules() if isinstance(x, nn.Dropout)]
        assert drops and all(d.p == 0.5 for d in drops), name
        off = methods.create(name, dropout=0.0, epochs=1, patience=None, verbose=False, **extra).fit(train)
        assert not any(isinstance(x, nn.Dropout) for x in off.module_.modules()), name


def test_models_saved_before_dropout_reached_the_towers_still_load(wiki, tmp_path):
    """Such a model was trained without Dropout layers although its params say dropout > 0;
    it must load and embed exactly as before (dropout is inert at inference)."""
    import json
    import zipfile

    train, test = wiki
    m = methods.create("dcca", dropout=0.0, epochs=1, patience=None, verbose=False).fit(train)
    m.save(tmp_path / "new.zip")
    with zipfile.ZipFile(tmp_path / "new.zip") as src, zipfile.ZipFile(tmp_path / "old.zip", "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename == "meta.json":
                meta = json.loads(data)
                meta["params"]["dropout"] = 0.3  # what the old code saved, having ignored it
                data = json.dumps(meta).encode()
            dst.writestr(item, data)
    old = methods.load(tmp_path / "old.zip")
    assert old.dropout == 0.3
    np.testing.assert_allclose(old.encode_images(test.image_features[:50]),
                               m.encode_images(test.image_features[:50]), atol=1e-6)
    # a state that fits neither layout is still an error
    with zipfile.ZipFile(tmp_path / "new.zip") as src, zipfile.ZipFile(tmp_path / "bad.zip", "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename == "meta.json":
                meta = json.loads(data)
                meta["params"].update(hidden=[7], dropout=0.3)
                data = json.dumps(meta).encode()
            dst.writestr(item, data)
    with pytest.raises(DataError, match=r"bad.zip: its saved state does not fit a DCCA \(RuntimeError"):
        methods.load(tmp_path / "bad.zip")


def test_teran_max_sum_pooling_skips_special_tokens():
    import torch

    from xmodal.methods.deep.transformer import alignment

    g = torch.Generator().manual_seed(0)
    R = torch.nn.functional.normalize(torch.randn(3, 49, 8, generator=g), dim=-1)
    W = torch.nn.functional.normalize(torch.randn(4, 7, 8, generator=g), dim=-1)
    lengths = torch.tensor([7, 5, 3, 4])
    expect = torch.zeros(3, 4)
    for i in range(3):
        for j in range(4):
            words = range(1, int(lengths[j]) - 1)  # [CLS] first, [SEP] last: left out
            expect[i, j] = sum((R[i] @ W[j, t]).max() for t in words)
    assert torch.allclose(alignment(R, W, lengths), expect, atol=1e-5)
    mean = alignment(R, W, lengths, "mean")
    assert torch.allclose(mean, expect / (lengths - 2).float()[None], atol=1e-5)


def test_teran_shortlist_stays_on_top_whatever_the_alignment():
    """Summed alignments are unbounded: a shortlisted item must still outrank every other."""
    from xmodal.methods.deep.transformer import IMAGE_FULL, N_REGIONS, TEXT_FULL, TERAN

    m = TERAN(dim=4, global_dim=3, shortlist=2)
    rng = np.random.default_rng(0)
    g_img, g_txt = rng.normal(size=(2, 3)), rng.normal(size=(6, 3))
    regions = np.zeros((2, N_REGIONS, 4))
    regions[..., 0] = 1.0
    words = np.zeros((6, 40, 4))
    words[..., 0] = -1.0  # every word opposes every region: alignment = -(length - 2)
    Q = np.concatenate([np.full((2, 1), IMAGE_FULL), g_img, regions.reshape(2, -1)], 1)
    D = np.concatenate([np.full((6, 1), TEXT_FULL), g_txt, np.full((6, 1), 40.0), words.reshape(6, -1)], 1)
    S = m.score(Q, D)
    G = g_img @ g_txt.T
    for r in range(2):
        short = np.argsort(-G[r])[:2]
        rest = np.setdiff1d(np.arange(6), short)
        assert S[r, short].min() > S[r, rest].max()
        np.testing.assert_array_equal(np.argsort(-S[r, rest]), np.argsort(-G[r, rest]))


@pytest.mark.parametrize("name", ["contrastive", "graph"])
def test_learned_temperature_is_not_weight_decayed(wiki, name, monkeypatch):
    """CLIP's recipe: weight decay skips the temperature (it would pull logit_scale to 0)."""
    import torch

    from xmodal.methods import _torch

    seen = []

    class Recording(torch.optim.Adam):
        def __init__(self, params, **kw):
            super().__init__(params, **kw)
            seen.append(self)

    monkeypatch.setattr(_torch.torch.optim, "Adam", Recording)
    train, _ = wiki
    m = methods.create(name, **{**FAST, "epochs": 1}, weight_decay=0.5).fit(train)
    decay = {id(p): g["weight_decay"] for g in seen[0].param_groups for p in g["params"]}
    named = dict(m.module_.named_parameters())
    assert len(decay) == len(named)  # every parameter is optimised, once
    for pname, p in named.items():
        assert decay[id(p)] == (0.0 if pname.endswith("logit_scale") else 0.5), pname


def test_corr_ae_cross_reconstruction_needs_row_aligned_pairs():
    from xmodal.methods.checks import toy_dataset

    ds = toy_dataset()
    te = ds.subset("test")
    m = methods.create("corr_ae", variant="cross", epochs=2, verbose=False).fit(ds.subset("train"))
    with pytest.raises(ValueError, match="row-aligned pairs.*X\\[ds.text_to_image\\]"):
        m.reconstruction_error(te.image_features, te.text_features)
    err = m.reconstruction_error(te.image_features[te.text_to_image], te.text_features)
    assert set(err) == {"image_mse", "text_mse", "image_mse_std", "text_mse_std"}


QUICK = dict(epochs=2, patience=None, verbose=False, random_state=0)


@pytest.fixture(scope="module")
def wiki_400_seed1():
    return wiki_sample(400, 1)


def _old_info_nce(logits, pos):
    """The formula used before (every row and column must have a positive)."""
    tgt = pos.float()
    li = -(tgt / tgt.sum(1, keepdim=True) * F.log_softmax(logits, dim=1)).sum(1).mean()
    lt = -(tgt / tgt.sum(0, keepdim=True) * F.log_softmax(logits, dim=0)).sum(0).mean()
    return 0.5 * (li + lt)


def test_info_nce_unchanged_when_every_row_has_a_positive():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(9, 9, generator=g) * 5
    im = torch.tensor([0, 0, 1, 2, 2, 2, 3, 4, 5])
    pos = im[:, None] == im[None, :]
    assert torch.equal(info_nce(logits, pos), _old_info_nce(logits, pos))


def test_info_nce_leaves_out_queries_without_a_positive():
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(6, 6, generator=g) * 3).requires_grad_()
    L = torch.tensor([[1, 0], [0, 1], [1, 0], [0, 0], [0, 1], [0, 0]], dtype=torch.float32)
    pos = (L @ L.T) > 0  # rows 3 and 5: an unlabelled image / caption, no positive at all
    loss = info_nce(logits, pos)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    # the labelled queries' terms, averaged over them alone
    keep = pos.any(1)
    tgt = pos.float()
    li = -(tgt / tgt.sum(1, keepdim=True).clamp(min=1) * F.log_softmax(logits, 1)).sum(1)[keep].mean()
    lt = -(tgt / tgt.sum(0, keepdim=True).clamp(min=1) * F.log_softmax(logits, 0)).sum(0)[keep].mean()
    assert float(loss.detach()) == pytest.approx(float((0.5 * (li + lt)).detach()), rel=1e-6)
    # no positive anywhere (a batch of unlabelled items): the term is zero, not NaN
    none = info_nce(logits.detach(), torch.zeros(6, 6, dtype=torch.bool))
    assert float(none) == 0.0


@pytest.mark.parametrize("name,params", [("transformer", {}), ("contrastive", {"positives": "label"})])
def test_label_positives_train_with_unlabelled_images(wiki_400_seed1, name, params):
    """COCO's Karpathy splits keep images without a category (an all-zero label row): the
    label-positive InfoNCE terms were 0/0 on them and every fit stopped as diverged."""
    train, test = wiki_400_seed1
    labels = train.labels.copy()
    labels[::10] = 0
    train = replace(train, labels=labels)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # transformer: no image files on Wikipedia
        m = methods.create(name, **QUICK, **params).fit(train)
    losses = [h["loss"] for h in m.history_]
    # two trained epochs cut the loss by 9-13% (seeds 0-2); an optimiser that never steps by < 0.5%
    assert np.isfinite(losses).all() and losses[0] - losses[-1] > 0.05 * abs(losses[0]), losses
    res = evaluate(m, test)
    assert res["i2t"]["map"] > 0.15 and res["t2i"]["map"] > 0.15, res  # chance is about 0.11


def test_contrastive_label_positives_need_labels(wiki_400_seed1):
    train, _ = wiki_400_seed1
    unlabelled = replace(train, labels=None)
    with pytest.raises(DataError, match="positives='label'.*labels"):
        methods.create("contrastive", positives="label", **QUICK).fit(unlabelled)


def test_validation_split_without_features_is_refused(wiki_400_seed1):
    """A val split without features used to be ignored in silence: early stopping then scored
    a hold-out of train whose pairs it also trained on."""
    train, test = wiki_400_seed1
    bare = replace(test, image_features=None, text_features=None)
    m = methods.create("contrastive", epochs=2, patience=1, verbose=False)
    with pytest.raises(DataError, match=f"{bare.name}.*features"):
        m.fit(train, val=bare)
    assert not getattr(m, "fitted_", False)
    # without patience the val split is not read, so nothing is refused
    methods.create("contrastive", **QUICK).fit(train, val=bare)


def test_acmr_gradient_reversal_flips_and_scales_the_feature_gradient():
    x = torch.randn(4, 3, requires_grad=True)
    w = torch.randn(3)
    (grad_reverse(x, 0.3) @ w).sum().backward()
    assert torch.allclose(x.grad, -0.3 * w.expand(4, 3))


def test_acmr_adversary_learns_while_the_projector_fools_it(wiki_400_seed1):
    """One step of ACMR's loss: the modality classifier's own gradient lowers its
    cross-entropy, the projector's (through the reversal) raises it."""
    train, _ = wiki_400_seed1
    m = methods.create("acmr", **QUICK, instance_weight=0.0, label_space=0.0)
    m.fit(train)
    mod = m.module_.train()
    X, Y, _ = train.pairs()
    x, y = torch.from_numpy(X[:64].astype(np.float32)), torch.from_numpy(Y[:64].astype(np.float32))

    def adv():
        from xmodal.methods.deep._common import l2n
        codes = torch.cat([l2n(mod.image_code(x)), l2n(mod.text_code(y))])
        modality = torch.cat([torch.zeros(64), torch.ones(64)]).long()
        return F.cross_entropy(mod.discriminator(grad_reverse(codes, m.adv_weight)), modality)

    torch.manual_seed(0)
    base = adv()
    mod.zero_grad()
    base.backward()
    disc = [p for p in mod.discriminator.parameters()]
    proj = [p for p in mod.image.parameters()] + [p for p in mod.text.parameters()]
    with torch.no_grad():  # a small step along each side's own gradient
        for p in disc:
            p -= 1e-2 * p.grad
    torch.manual_seed(0)
    after_disc = float(adv().detach())
    with torch.no_grad():
        for p in disc:
            p += 1e-2 * p.grad
        for p in proj:
            p -= 1e-2 * p.grad
    torch.manual_seed(0)
    after_proj = float(adv().detach())
    b = float(base.detach())
    assert after_disc < b < after_proj, (after_disc, b, after_proj)


@pytest.mark.parametrize("name", ["acmr", "dscmr"])
def test_supervised_losses_finite_on_a_one_class_batch(wiki_400_seed1, name):
    train, _ = wiki_400_seed1
    m = methods.create(name, **QUICK).fit(train)
    X, Y, L = train.pairs()
    cls = L.argmax(1)
    rows = np.flatnonzero(cls == cls[0])[:16]
    batch = {"x": torch.from_numpy(X[rows].astype(np.float32)), "y": torch.from_numpy(Y[rows].astype(np.float32)),
             "labels": torch.from_numpy(L[rows].astype(np.float32)), "index": torch.from_numpy(rows),
             "image": torch.from_numpy(rows)}
    m.module_.train()
    assert torch.isfinite(m._batch_loss(batch))


def test_dcca_last_batch_of_one_row_is_skipped(wiki_400_seed1):
    """A batch of one row has no covariance: the trainer skips it instead of failing."""
    train, _ = wiki_400_seed1
    sub = train.subset(np.arange(129))  # batch_size 64: batches of 64, 64 and 1
    m = methods.create("dcca", batch_size=64, dim=16, **QUICK).fit(sub)
    assert np.isfinite([h["loss"] for h in m.history_]).all()


@pytest.mark.parametrize("name", ["dcca", "corr_ae", "acmr", "dscmr", "vsepp", "contrastive", "graph"])
def test_empty_input_keeps_the_embedding_width(wiki_400_seed1, name):
    """Zero rows embed to (0, width) as a linear method's X @ W does, not (0, 0)."""
    train, test = wiki_400_seed1
    m = methods.create(name, epochs=1, patience=None, verbose=False).fit(train)
    img = m.encode_images(test.image_features[:3])
    assert m.encode_images(test.image_features[:0]).shape == (0, img.shape[1])
    assert m.encode_texts(test.text_features[:0]).shape == (0, m.encode_texts(test.text_features[:3]).shape[1])


def test_dcca_objective_is_the_sum_of_canonical_correlations():
    """Andrew et al. 2013, eq. 10-11: the singular values of S11^-1/2 S12 S22^-1/2 (ridge r on
    the centred covariances, m - 1 normaliser), checked against a NumPy eigendecomposition."""
    from scipy import linalg

    from xmodal.methods.deep.cca import cca_correlation

    rng = np.random.default_rng(0)
    Z = rng.normal(size=(300, 3))
    H1 = np.c_[Z + 0.5 * rng.normal(size=(300, 3)), rng.normal(size=(300, 2))]
    H2 = np.c_[Z @ rng.normal(size=(3, 3)) + rng.normal(size=(300, 3)), rng.normal(size=(300, 1))]
    r = 1e-3
    A, B = H1 - H1.mean(0), H2 - H2.mean(0)
    S11, S22 = A.T @ A / 299 + r * np.eye(5), B.T @ B / 299 + r * np.eye(4)
    T = linalg.inv(linalg.sqrtm(S11)).real @ (A.T @ B / 299) @ linalg.inv(linalg.sqrtm(S22)).real
    sv = np.sort(linalg.svdvals(T))[::-1]
    for k in (1, 3, 4):
        got = float(cca_correlation(torch.from_numpy(H1), torch.from_numpy(H2), k, r, r))
        assert got == pytest.approx(sv[:k].sum(), rel=1e-6)


def test_dcca_final_linear_cca_whitens_the_training_outputs(wiki_400_seed1):
    """The last stage: on the training pairs the projections are uncorrelated within each view
    (unit variance up to the ridge) and pair up one to one across views."""
    train, _ = wiki_400_seed1
    m = methods.create("dcca", dim=8, batch_size=256, **QUICK).fit(train)
    X, Y, _ = train.pairs()
    U, V = m.encode_images(X).astype(np.float64), m.encode_texts(Y).astype(np.float64)
    k = m.text_dim_ if m.text_dim_ < 8 else 8
    U, V = U[:, :k] - U[:, :k].mean(0), V[:, :k] - V[:, :k].mean(0)
    n = len(U) - 1
    Cuu, Cvv, Cuv = U.T @ U / n, V.T @ V / n, U.T @ V / n
    assert np.abs(Cuu - np.diag(np.diag(Cuu))).max() < 5e-3 and np.abs(Cvv - np.diag(np.diag(Cvv))).max() < 5e-3
    assert np.diag(Cuu).min() > 0.95 and np.diag(Cuu).max() <= 1 + 1e-4
    corr = np.diag(Cuv)
    assert np.abs(Cuv - np.diag(corr)).max() < 5e-3
    assert np.all(np.diff(corr) <= 5e-3) and corr[0] > 0.3, corr  # sorted canonical correlations


def test_vse_hinge_losses_match_a_loop_over_queries():
    """VSE++ (Faghri et al. 2018): for each image query the hardest (or every) caption that is
    not one of its positives, for each caption query the hardest (or every) such image; the
    diagonal holds each row's own pair and captions of the same image are no negatives."""
    from xmodal.methods.deep._common import hardest_triplet

    g = torch.Generator().manual_seed(0)
    S = torch.rand(7, 7, generator=g) * 2 - 1
    im = torch.tensor([0, 0, 1, 2, 2, 3, 4])  # rows 0-1 and 3-4: two captions of one image
    pos = im[:, None] == im[None, :]
    m = 0.2
    for hardest in (True, False):
        i2t = t2i = 0.0
        for q in range(7):
            ci = [max(0.0, m + float(S[q, j] - S[q, q])) for j in range(7) if not pos[q, j]]
            ct = [max(0.0, m + float(S[i, q] - S[q, q])) for i in range(7) if not pos[i, q]]
            i2t += (max(ci) if hardest else sum(ci)) / 7
            t2i += (max(ct) if hardest else sum(ct)) / 7
        assert float(hardest_triplet(S, pos, m, hardest)) == pytest.approx(i2t + t2i, rel=1e-6)


@pytest.mark.parametrize("variant,trained", [("basic", {"dec_xx", "dec_yy"}), ("cross", {"dec_xy", "dec_yx"}),
                                             ("full", {"dec_xx", "dec_yy", "dec_xy", "dec_yx"})])
def test_corr_ae_variants_train_their_own_decoders(wiki_400_seed1, variant, trained):
    """Feng et al. 2014: Corr-AE rebuilds each view from its own code, Corr-Cross-AE from the
    other view's, Corr-Full-AE from both; the code distance ties the two encoders."""
    train, _ = wiki_400_seed1
    m = methods.create("corr_ae", variant=variant, **QUICK).fit(train)
    X, Y, _ = train.pairs()
    batch = {"x": torch.from_numpy(X[:32].astype(np.float32)), "y": torch.from_numpy(Y[:32].astype(np.float32)),
             "labels": None, "index": torch.arange(32), "image": torch.arange(32)}
    m.module_.train().zero_grad()
    m._batch_loss(batch).backward()
    got = {name for name in ("dec_xx", "dec_yy", "dec_xy", "dec_yx")
           if any(p.grad is not None and p.grad.abs().sum() > 0 for p in getattr(m.module_, name).parameters())}
    assert got == trained
    # alpha = 1: only the code distance, which pulls both encoders
    m.alpha = 1.0
    m.module_.zero_grad()
    m._batch_loss(batch).backward()
    assert all(p.grad is not None for p in m.module_.enc_x.parameters())
    assert all(p.grad is not None for p in m.module_.enc_y.parameters())


ONE_EPOCH = dict(epochs=1, patience=None, verbose=False, random_state=0)


@pytest.fixture(scope="module")
def wiki_400():
    return wiki_sample(400, 0)


@pytest.mark.parametrize("name", ["contrastive", "graph", "transformer"])
def test_learned_temperature_is_clamped_on_the_parameter_as_in_clip(wiki_400, name):
    """CLIP clips the logit scale to [0, log 100] after each step. A clamp in the forward pass
    only would leave a parameter above log 100 with no gradient at all: stuck there for good
    (here from the first step, as ``temperature=1e-3`` starts it at log 1000)."""
    train, _ = wiki_400
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # transformer: global stage only on Wikipedia
        m = methods.create(name, **ONE_EPOCH, temperature=1e-3, lr=1e-3).fit(train)
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
