"""The hashing protocol's variant in which the database holds the *learned training codes*.

Several papers (DLFH, DCMH, SSAH among them) fill the retrieval database with the codes the
optimiser learned for the training items rather than the codes their hash functions give
those items. Methods that learn such codes keep them as ``train_image_codes_`` and
``train_text_codes_`` (one packed row per training pair); this module evaluates with them.
It applies only when the database is the training split, in the same order.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ...data.dataset import DataError, PairedDataset
from ...evaluation.protocol import DEFAULT_PK, _direction, similarity
from ...metrics import graded_relevance, relevance
from ..base import CrossModalMethod


def has_training_codes(method: CrossModalMethod) -> bool:
    return getattr(method, "train_image_codes_", None) is not None


def evaluate_training_codes(method: CrossModalMethod, queries: PairedDataset, database: PairedDataset,
                            *, map_k: tuple[int, ...] = (), pk: tuple[int, ...] = DEFAULT_PK) -> dict[str, Any]:
    """Like ``evaluate(method, queries, database)`` but database items take their learned
    training codes (labelled ``"database_codes": "learned"`` in the result)."""
    if not has_training_codes(method):
        raise DataError(f"{type(method).__name__} keeps no learned training codes "
                        "(it learns hash functions only, or trained on a sample of the pairs)")
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
        res[direction] = _direction(method, scores, dist, rel, graded, None, bits, map_k, pk, ())
    return res
