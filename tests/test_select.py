"""Parameter search on the training pairs (xmodal.evaluation.select_params) and its use by the
indexer for methods created by name."""


import numpy as np
import pytest

from xmodal import methods
from xmodal.data import DataError, load_dataset
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


def test_fold_score_is_the_plain_mean_of_the_figures_it_names():
    # mR: the mean of the six Recall@1/5/10 figures; map: the mean of both directions' MAP
    rec = {"i2t": {"r@1": 10.0, "r@5": 20.0, "r@10": 30.0, "map": 0.2},
           "t2i": {"r@1": 40.0, "r@5": 50.0, "r@10": 60.0, "map": 0.4}}
    assert fold_score(rec, "mR") == pytest.approx(35.0) and fold_score(rec, "map") == pytest.approx(0.3)
    # one direction without the figure is as unusable as both: a clear error, not a mean over None
    with pytest.raises(DataError, match="metric 'map' cannot be computed on these pairs .no labels"):
        fold_score({"i2t": {"map": 0.2}, "t2i": {}}, "map")
    with pytest.raises(DataError, match="no instance pairs"):
        fold_score({"i2t": rec["i2t"], "t2i": {"r@1": 40.0, "r@5": 50.0}}, "mR")


def test_each_combination_scores_the_mean_of_its_held_out_folds_and_cca_is_fitted_once_per_fold(monkeypatch):
    """Selection.score is the mean held-out score (docstring); CCA's sizes are truncations of one
    fit per fold and regulariser, whatever the number of sizes."""
    from xmodal.evaluation import select
    from xmodal.methods.checks import toy_dataset

    CCA = methods.get("cca")
    ds = toy_dataset(n_images=120).subset("train")
    per_fold, fits = [], []
    real_score, real_fit = select.fold_score, CCA.fit
    monkeypatch.setattr(select, "fold_score", lambda *a: per_fold.append(real_score(*a)) or per_fold[-1])
    monkeypatch.setattr(CCA, "fit", lambda self, *a, **kw: fits.append(self.n_components) or real_fit(self, *a, **kw))
    grid = {"n_components": [1, 2, 4], "reg": [1e-2, 1.0]}
    sel = select_params("cca", grid, ds, metric="map", folds=3)
    assert fits == [4] * 6  # 2 regularisers x 3 folds, each at the largest size
    # per fold, one score per size: folds x sizes for each regulariser, in ParameterGrid's order
    want = {}
    for r, reg in enumerate(grid["reg"]):
        block = np.reshape(per_fold[9 * r:9 * (r + 1)], (3, 3))  # folds x sizes
        for j, k in enumerate(grid["n_components"]):
            want[(k, reg)] = float(np.mean(block[:, j]))
    assert {(c["n_components"], c["reg"]): s for c, s in sel.table} == pytest.approx(want)
    assert sel.score == max(want.values()) and 0 < sel.score <= 1


def test_search_refuses_data_it_cannot_cross_validate():
    import dataclasses

    from xmodal.methods.checks import toy_dataset

    ds = toy_dataset(n_images=60)
    for lacking in ("image_features", "text_features"):
        with pytest.raises(DataError, match="needs features of both modalities"):
            select_params("cca", {"reg": [1.0]}, dataclasses.replace(ds, **{lacking: None}))
    # the folds are counted against the images searched (max_images), not the whole split
    with pytest.raises(ValueError, match=r"between 2 and the number of images searched \(4\), got 5"):
        select_params("cca", {"reg": [1.0]}, ds, folds=5, max_images=4)
    with pytest.raises(ValueError, match=r"folds must be between 2 .* got 1"):
        select_params("cca", {"reg": [1.0]}, ds, folds=1)
