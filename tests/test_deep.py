"""Deep real-valued methods: each trains a few epochs on real Wikipedia features, its loss
falls, and it retrieves far better than chance; persistence, validation and reconstruction."""

from pathlib import Path

import numpy as np
import pytest

from xmodal import methods
from xmodal.data import DataError, load_dataset
from xmodal.evaluation.protocol import evaluate
from xmodal.methods import ParameterError
from xmodal.methods.deep import raw_view

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
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
    if not (DATA / "wikipedia").exists():
        pytest.skip("shared data folder absent")
    ds = load_dataset("wikipedia", data_dir=str(DATA), with_texts=False)
    rng = np.random.default_rng(0)
    train = ds.subset(np.sort(rng.choice(ds.splits["train"], 1000, replace=False)))
    return train, ds.subset("test")


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
    assert losses[-1] < losses[0], losses
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
    assert runs[0].best_val_ == max(h["val"] for h in runs[0].history_)
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
