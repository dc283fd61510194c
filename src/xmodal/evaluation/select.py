"""Choose a method's parameters on its training pairs alone: k-fold cross-validation over the
images (an image and all its captions stay in one fold), each combination of a grid scored on
the held-out folds with the classic protocol, as scikit-learn's ``GridSearchCV`` does for one
estimator. Test data is never seen.

The score is ``"mR"`` (mean of Recall@1/5/10 in both directions: finding an image's own
captions and a caption's own image) or ``"map"`` (mean class mAP of both directions, for
labelled data).

A dataset with a test split is searched on its ``split`` (``"train"``) alone: handing
:func:`select_params` a whole benchmark dataset never lets its test images choose the
parameters. ``split=None`` searches every image (an index of one's own pairs, with no test
protocol to protect).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ..data.dataset import DataError, PairedDataset
from ..methods import ParameterError, create, get
from .protocol import DEFAULT_RK, evaluate

log = logging.getLogger("xmodal.evaluation")

METRICS = ("mR", "map")


@dataclass
class Selection:
    """The chosen ``params``, their mean held-out ``score``, and every combination's score
    (None where the combination could not be fitted on some fold)."""

    params: dict[str, Any]
    score: float
    metric: str
    folds: int
    n_images: int
    table: list[tuple[dict[str, Any], float | None]] = field(default_factory=list)


def fold_score(result: dict, metric: str) -> float:
    """One number from :func:`~xmodal.evaluation.evaluate`'s result."""
    if metric == "mR":
        vals = [result[d].get(f"r@{k}") for d in ("i2t", "t2i") for k in DEFAULT_RK]
    else:
        vals = [result[d].get("map") for d in ("i2t", "t2i")]
    if any(v is None for v in vals):
        raise DataError(f"metric {metric!r} cannot be computed on these pairs "
                        f"({'no instance pairs' if metric == 'mR' else 'no labels'})")
    return float(np.mean(vals))


def _key(params: dict[str, Any]) -> tuple:
    return tuple(sorted(params.items()))


def select_params(method: str, grid: dict[str, Sequence[Any]], data: PairedDataset, *,
                  base: dict[str, Any] | None = None, metric: str = "mR", folds: int = 3,
                  max_images: int | None = 3000, random_state: int = 0,
                  split: str | None = "train") -> Selection:
    """Cross-validate every combination of ``grid`` (on top of ``base`` parameters) for the
    registered ``method`` on ``data`` and return the best. ``max_images`` caps the images used
    for the search (a random subset), which keeps it cheap on large collections. With a test
    split in ``data``, only its ``split`` images are used (None: all of them). ``metric``:
    ``"mR"`` or ``"map"`` (any case). A parameter name the method lacks is an error before
    anything is fitted; a combination the method refuses or cannot fit is skipped (None in
    the table), and the error when none can be fitted gives the reasons."""
    from sklearn.model_selection import KFold, ParameterGrid  # only when a search runs

    metric = {m.lower(): m for m in METRICS}.get(str(metric).lower(), metric)
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    if data.image_features is None or data.text_features is None:
        raise DataError(f"dataset {data.name!r}: parameter search needs features of both modalities")
    if split is not None and "test" in data.splits:
        if split not in data.splits:
            raise DataError(f"dataset {data.name!r} has a test split but no {split!r} split to search on")
        data = data.subset(split)
    for combo in ParameterGrid({k: list(v) for k, v in grid.items()}):
        create(method, **{**(base or {}), **combo})  # a parameter name the method lacks: said now
    rng = np.random.default_rng(random_state)
    n_images = data.n_images if max_images is None else min(data.n_images, max_images)
    if not 2 <= folds <= n_images:
        raise ValueError(f"folds must be between 2 and the number of images searched ({n_images}), got {folds}")
    images = np.arange(data.n_images)
    if max_images is not None and data.n_images > max_images:
        images = np.sort(rng.choice(data.n_images, max_images, replace=False))
    splits = list(KFold(folds, shuffle=True, random_state=random_state).split(images))
    parts = [(data.subset(images[tr], name=f"{data.name}/cv-train"),
              data.subset(images[te], name=f"{data.name}/cv-test")) for tr, te in splits]
    grid = {k: list(v) for k, v in grid.items()}
    # Methods whose leading components do not depend on how many follow (CCA: `truncated`)
    # are fitted once per fold with the largest n_components; smaller ones are truncations.
    sizes = grid.pop("n_components") if hasattr(get(method), "truncated") and "n_components" in grid else None
    fitted: dict[tuple, float | None] = {}
    reasons: dict[str, None] = {}  # why combinations were skipped, in order, once each
    for combo in ParameterGrid(grid):
        params = {**(base or {}), **combo}
        if sizes is not None:
            params["n_components"] = max(sizes)
        scores: list[list[float]] | None = []
        for train, held in parts:
            try:
                m = create(method, **params).fit(train)
            except (ParameterError, DataError, np.linalg.LinAlgError) as exc:
                log.info("%s %s: skipped (%s)", method, params, exc)
                reasons[str(exc)] = None
                scores = None
                break
            variants = [m] if sizes is None else [m.truncated(k) for k in sizes]
            # only what fold_score reads: no P@k, NDCG or precision-recall curves
            scores.append([fold_score(evaluate(v, held, pk=(), ndcg_k=(), curves=False,
                                               rk=DEFAULT_RK if metric == "mR" else ()), metric)
                           for v in variants])
        for j, k in enumerate([None] if sizes is None else sizes):
            key = {**combo, **({} if k is None else {"n_components": k})}
            fitted[_key(key)] = None if scores is None else float(np.mean([s[j] for s in scores]))
    if sizes is not None:
        grid["n_components"] = sizes
    table = [(combo, fitted[_key(combo)]) for combo in ParameterGrid(grid)]
    scored = [(c, s) for c, s in table if s is not None]
    if not scored:
        raise ParameterError(f"{method}: no combination of {grid} could be fitted: {'; '.join(reasons)}")
    best, score = max(scored, key=lambda cs: cs[1])  # first of equals: grid order
    return Selection(params={**(base or {}), **best}, score=score, metric=metric, folds=folds,
                     n_images=len(images), table=table)
