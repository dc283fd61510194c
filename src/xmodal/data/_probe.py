"""Where a dataset's images are, decided once from a sample of them: downloads miss some
images, so one missing file must not send every path astray, and a stat per image (several
per missing one) costs seconds on 100,000 images. The rule that finds a file of the sample is
then applied to every item without looking at the disk again (missing images are reported by
the encoder that reads them)."""

from __future__ import annotations

import os
from typing import Callable, Iterable, Sequence, TypeVar

#: How many items a probe looks at.
PROBE_SAMPLE = 200

R = TypeVar("R")
X = TypeVar("X")


def any_file(paths: Iterable[str | os.PathLike | None]) -> bool:
    """Whether any of ``paths`` is a file."""
    return any(p is not None and os.path.isfile(p) for p in paths)


def first_rule(rules: Iterable[R], items: Sequence[X],
               path_of: Callable[[R, X], str | os.PathLike | None]) -> R | None:
    """The first of ``rules`` under which a file of the first :data:`PROBE_SAMPLE` ``items``
    exists (``path_of(rule, item)``: the path the rule gives an item, None for none), or None.
    Only the sample's paths are built for each rule."""
    sample = items[:PROBE_SAMPLE]
    for rule in rules:
        if any_file(path_of(rule, x) for x in sample):
            return rule
    return None
