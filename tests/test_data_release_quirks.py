"""Quirks of real downloads found by rebuilding each release's layout in miniature: a split
list that names an image twice, the ``index.mat`` / ``caption.mat`` / ``label.mat`` layout as
its other writers save it (labels under ``category``, several captions per item)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.io
from PIL import Image

from xmodal.data import DataError, load_dataset

F8K = [f"{1000268201 + 3 * i}_693b08cb0e.jpg" for i in range(12)]


def _flickr8k(root):
    (root / "Flickr8k.token.txt").write_text(
        "".join(f"{n}#{k}\tA picture {i} caption {k} .\n" for i, n in enumerate(F8K) for k in range(5)))
    (root / "Flicker8k_Dataset").mkdir()
    for n in F8K:
        Image.new("RGB", (6, 4)).save(root / "Flicker8k_Dataset" / n)
    for name, part in (("train", F8K[:8]), ("dev", F8K[8:10]), ("test", F8K[10:])):
        (root / f"Flickr_8k.{name}Images.txt").write_text("".join(n + "\n" for n in part))


def test_flickr8k_split_list_naming_an_image_twice_is_named(tmp_path):
    # A repeated line would count the image twice in its split (a query asked twice, a
    # training pair weighted double) without a word.
    _flickr8k(tmp_path)
    ds = load_dataset(str(tmp_path))
    assert [len(ds.splits[s]) for s in ("train", "val", "test")] == [8, 2, 2]
    (tmp_path / "Flickr_8k.trainImages.txt").write_text("".join(n + "\n" for n in F8K[:8] + [F8K[3]]))
    with pytest.raises(DataError, match=rf"Flickr_8k.trainImages.txt:9: image {F8K[3]} listed twice "
                                        r"\(first at line 4\)"):
        load_dataset(str(tmp_path))
