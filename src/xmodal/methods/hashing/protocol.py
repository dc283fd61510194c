"""The hashing protocol's variant in which the database holds the *learned training codes*.

Several papers (DLFH, DCMH, SSAH among them) fill the retrieval database with the codes the
optimiser learned for the training items rather than the codes their hash functions give
those items. Methods that learn such codes keep them as ``train_image_codes_`` and
``train_text_codes_`` (one packed row per training pair); this module evaluates with them.
It applies only when the database is the training split, in the same order: given the
training set, :func:`evaluate_training_codes` checks that item by item.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ...data.dataset import DataError, PairedDataset
from ...evaluation.protocol import DEFAULT_PK, _direction, similarity
from ...metrics import graded_relevance, relevance
from ..base import CrossModalMethod, NoTrainingCodesError


def has_training_codes(method: CrossModalMethod) -> bool:
    return getattr(method, "train_image_codes_", None) is not None


def _same_items(database: PairedDataset, train: PairedDataset) -> None:
    """Refuse a database that is not ``train``'s items in ``train``'s order: the learned codes
    are rows of the training pairs, so any other item would take another item's code. Compared
    by the items' positions in the dataset both were taken from (:meth:`PairedDataset.subset`),
    else by image and text ids, else by features; sizes alone are not enough."""
    if database is train:
        return
    what = (f"database {database.name!r} is not the training split {train.name!r} whose codes "
            "the method learned")
    if (database.n_images, database.n_texts) != (train.n_images, train.n_texts):
        raise DataError(f"{what}: {database.n_images} images and {database.n_texts} texts against "
                        f"{train.n_images} and {train.n_texts}")
    if database.subset_images is not None and train.subset_images is not None:
        if database.subset_of != train.subset_of:
            raise DataError(f"{what}: they are taken from different datasets, {database.subset_of!r} "
                            f"and {train.subset_of!r}")
        pairs = [(f"image (position in {train.subset_of!r})", database.subset_images, train.subset_images)]
    elif database.image_ids is not None and train.image_ids is not None:
        pairs = [("image id", np.asarray(database.image_ids), np.asarray(train.image_ids))]
        if database.text_ids is not None and train.text_ids is not None:
            pairs.append(("text id", np.asarray(database.text_ids), np.asarray(train.text_ids)))
    else:
        pairs = [(f"{side} features", np.asarray(getattr(database, f"{side}_features")),
                  np.asarray(getattr(train, f"{side}_features")))
                 for side in ("image", "text") if getattr(database, f"{side}_features") is not None
                 and getattr(train, f"{side}_features") is not None]
    pairs.append(("image of a text", database.text_to_image, train.text_to_image))
    for item, got, want in pairs:
        if got.shape != want.shape:
            raise DataError(f"{what}: {item} of shapes {got.shape} and {want.shape}")
        rows = np.flatnonzero((got != want).reshape(len(got), -1).any(axis=1))
        if rows.size:
            r = int(rows[0])
            shown = "" if got.ndim > 1 else f": {got[r].item()!r} against {want[r].item()!r}"
            raise DataError(f"{what}: row {r} differs in {item}{shown}; the database must hold "
                            "the training items in training order")


def evaluate_training_codes(method: CrossModalMethod, queries: PairedDataset, database: PairedDataset,
                            *, train: PairedDataset | None = None, map_k: tuple[int, ...] = (),
                            pk: tuple[int, ...] = DEFAULT_PK, tie_seed: int | None = 0) -> dict[str, Any]:
    """Like ``evaluate(method, queries, database)`` but database items take their learned
    training codes (labelled ``"database_codes": "learned"`` in the result). ``train``, the
    dataset the method was fitted on, lets the database be checked item by item (the same
    items in the same order); without it only the sizes can be checked. ``tie_seed`` orders
    tied Hamming distances as in ``evaluate`` (None: database order)."""
    if not has_training_codes(method):
        raise NoTrainingCodesError(f"{type(method).__name__} keeps no learned training codes "
                        "(it learns hash functions only, or trained on a sample of the pairs)")
    if train is not None:
        _same_items(database, train)
    Ct, Ci = method.train_text_codes_, method.train_image_codes_
    if database.n_texts != len(Ct):
        raise DataError(f"database {database.name!r} has {database.n_texts} texts but the method "
                        f"learned codes for {len(Ct)} training pairs: the database must be the "
                        "training split")
    first = np.full(database.n_images, -1)
    rows = np.arange(database.n_texts)[::-1]
    first[database.text_to_image[rows]] = rows  # the first pair of every image
    if (first < 0).any():
        raise DataError(f"database {database.name!r}: image {int(np.flatnonzero(first < 0)[0])} has no text")
    di, dt = Ci[first], Ct
    qi = method.encode_images(queries.image_features)
    qt = method.encode_texts(queries.text_features)
    bits = getattr(method, "bits", None)
    res: dict[str, Any] = {"database_codes": "learned"}
    for direction, Q, D, q_lab, d_lab in (("i2t", qi, dt, queries.labels, database.text_labels),
                                          ("t2i", qt, di, queries.text_labels, database.labels)):
        scores, dist = similarity(method, Q, D)
        rel, graded = relevance(q_lab, d_lab), graded_relevance(q_lab, d_lab)
        res[direction] = _direction(method, scores, dist, rel, graded, None, bits, map_k, pk, (),
                                    tie_seed=tie_seed)
    return res
