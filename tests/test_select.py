"""Parameter search on the training pairs (xmodal.evaluation.select_params) and its use by the
indexer for methods created by name."""


import numpy as np
import pytest

from xmodal import methods
from xmodal.data import load_dataset
from xmodal.evaluation import evaluate, select_params
from xmodal.evaluation.select import fold_score
from xmodal.index import build
from xmodal.methods import ParameterError

from conftest import DATA  # honours $XMODAL_DATA: a path of its own skipped where the data was there


@pytest.fixture(scope="module")
def wiki():
    if not (DATA / "wikipedia").exists():
        pytest.skip("shared data folder absent")
    ds = load_dataset("wikipedia", data_dir=str(DATA), with_texts=False)
    return ds.subset("train"), ds.subset("test")


def test_search_picks_the_best_cross_validated_combination(wiki):
    train, test = wiki
    grid = {"n_components": [1, 10], "reg": [1e-3, 1e3]}
    sel = select_params("cca", grid, train, metric="map", max_images=1200)
    assert len(sel.table) == 4 and sel.n_images == 1200 and sel.folds == 3
    assert sel.score == max(s for _, s in sel.table)
    # one canonical pair carries far less than ten: the search must see it on held-out folds
    assert sel.params["n_components"] == 10
    scores = {(c["n_components"], c["reg"]): s for c, s in sel.table}
    assert scores[(10, 1e-3)] > scores[(1, 1e-3)] + 0.03
    # and what it picks is clearly better on the untouched test split than what it rejects
    test_map = {k: fold_score(evaluate(methods.create("cca", n_components=k[0], reg=k[1]).fit(train), test), "map")
                for k in scores}
    chosen = (sel.params["n_components"], sel.params["reg"])
    assert test_map[chosen] > max(test_map[(1, 1e-3)], test_map[(1, 1e3)]) + 0.04
    again = select_params("cca", grid, train, metric="map", max_images=1200)
    assert again.table == sel.table  # seeded folds: the same answer every run


def test_base_parameters_are_kept_and_unfittable_combinations_skipped(wiki):
    train, _ = wiki
    sel = select_params("cca", {"reg": [-1.0, 1e-2]}, train, base={"n_components": 5},
                        metric="mR", max_images=400)
    assert sel.params == {"n_components": 5, "reg": 1e-2}
    assert sel.table[0] == ({"reg": -1.0}, None)  # invalid for CCA: skipped, not fatal
    with pytest.raises(ParameterError, match="no combination"):
        select_params("cca", {"reg": [-1.0]}, train, max_images=400)
    with pytest.raises(ValueError, match="metric"):
        select_params("cca", {"reg": [1.0]}, train, metric="accuracy")


def test_indexer_searches_what_was_not_given(wiki, capsys):
    train, _ = wiki
    ds = train.subset(np.arange(300))
    params = build._default_params("cca", None, 128, 10, ds.n_texts)
    out = build._searched_params("cca", None, params, ds, quiet=False)
    assert out["n_components"] in {8, 10} and out["reg"] in build.PARAM_GRIDS["cca"]["reg"]
    assert "cross-validation on 300 images" in capsys.readouterr().err
    # a parameter the caller gave is not searched
    out = build._searched_params("cca", {"reg": 5.0}, {**params, "reg": 5.0}, ds, quiet=True)
    assert out["reg"] == 5.0
    # too few captioned images: the fixed defaults stay
    small = train.subset(np.arange(build.SEARCH_MIN_IMAGES - 1))
    assert build._searched_params("cca", None, params, small, quiet=True) == params


def test_truncated_cca_is_the_smaller_fit_and_the_search_uses_it(wiki, monkeypatch):
    train, test = wiki
    big = methods.create("cca", n_components=10, reg=1e-2).fit(train)
    small = methods.create("cca", n_components=4, reg=1e-2).fit(train)
    cut = big.truncated(4)
    assert big.encode_images(test.image_features).shape[1] == 9  # untouched (10 asked: text rank 9)
    for enc in ("encode_images", "encode_texts"):
        feats = test.image_features if enc == "encode_images" else test.text_features
        a, b = getattr(cut, enc)(feats), getattr(small, enc)(feats)
        np.testing.assert_allclose(np.abs(a), np.abs(b), rtol=1e-6, atol=1e-8)  # up to sign
    grid = {"n_components": [2, 4, 10], "reg": [1e-2, 1.0]}
    nested = select_params("cca", grid, train, max_images=600)
    from xmodal.methods.subspace import CCA
    monkeypatch.delattr(CCA, "truncated")  # every size fitted on its own
    plain = select_params("cca", grid, train, max_images=600)
    assert [c for c, _ in nested.table] == [c for c, _ in plain.table]
    np.testing.assert_allclose([s for _, s in nested.table], [s for _, s in plain.table], atol=1e-9)
    assert nested.params == plain.params


def test_search_uses_the_train_split_of_a_benchmark_dataset_and_says_what_is_wrong(wiki):
    from xmodal.data import load_dataset

    ds = load_dataset("wikipedia")  # train 2173 + test 693
    sel = select_params("cca", {"n_components": [5]}, ds, metric="MAP", max_images=None)
    assert sel.n_images == ds.splits["train"].size and sel.metric == "map"
    assert select_params("cca", {"n_components": [5]}, ds, metric="map", max_images=None,
                         split=None).n_images == ds.n_images
    with pytest.raises(ParameterError, match="n_component"):  # a typo: said before fitting
        select_params("cca", {"n_component": [5]}, ds, metric="map")
    with pytest.raises(ParameterError, match=r"no combination .* could be fitted: .*reg=-1.0 must be"):
        select_params("cca", {"reg": [-1.0]}, ds, metric="map")
