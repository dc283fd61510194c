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
