"""Region and token features for the methods that need more than one pooled vector per item.

- Images: the 7x7x1280 output of EfficientNet-Lite0's head (Tan & Le 2019, the ``lite``
  variant) on the ``efficientnet-lite0`` encoder's own input (shorter side 256, centre crop
  224, the weights' ``(x - 127) / 128``): 49 region vectors whose mean is that encoder's
  pooled 1280-d feature.
- Texts: MiniLM (all-MiniLM-L6-v2, Wang et al. 2020) token outputs, 384-d per word piece
  ([CLS] and [SEP] included), whose masked mean is the usual sentence embedding before
  normalisation.

Both come from the pretrained packages already used by the encoders (texts through the
``minilm`` encoder, :class:`xmodal.encoders.text.MiniLM`) and are cached on disk
(``$XMODAL_CACHE`` or ``~/.cache/xmodal``), keyed by a hash of the inputs, so a second run is
free. Paths and texts are read exactly as given: a missing image is an error naming its file.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from pathlib import Path
from typing import Sequence

import numpy as np

from ...data.dataset import DataError

MAX_TOKENS = 40  # UCM captions are < 30 word pieces; longer texts are truncated

_models: dict[str, object] = {}


def cache_dir() -> Path:
    root = Path(os.environ.get("XMODAL_CACHE") or Path.home() / ".cache" / "xmodal")
    out = root / "deep_features"
    out.mkdir(parents=True, exist_ok=True)
    return out


def _read(f: Path, names: tuple[str, ...] = ()):
    """A cached array (or the arrays ``names`` of a cached .npz), or None when absent or
    unreadable (a file cut short by a crash in an older version): it is then recomputed."""
    if not f.exists():
        return None
    try:
        if not names:
            return np.load(f, allow_pickle=False)
        with np.load(f, allow_pickle=False) as z:
            return tuple(z[n] for n in names)
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile):
        return None


def _write(f: Path, save) -> None:
    """Write a cache file under a temporary name, fsync and rename: an interrupted run (or two
    runs at once) never leaves a partial file under the final name."""
    from ..._fs import atomic_write

    atomic_write(f, save)


def _key(kind: str, items: Sequence[str], extra: str = "") -> str:
    h = hashlib.sha1(f"{kind}|{extra}|".encode())
    for it in items:
        h.update(it.encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    return h.hexdigest()[:20]


def _efficientnet():
    """The ``efficientnet-lite0`` encoder: its decode, crop and normalisation, and its network
    on the device in force (:mod:`xmodal.device`). The regions once had a preprocessing of their
    own (a squashed 224 x 224 image, ImageNet mean/std, not the weights' (x - 127) / 128), so
    their mean was not the pooled feature (cosine 0.59-0.90 on UCM images)."""
    if "effnet" not in _models:
        from ...encoders import get_encoder

        _models["effnet"] = get_encoder("efficientnet-lite0")
    return _models["effnet"]


def _load_image(load, path: str) -> np.ndarray:
    from ...encoders.images import ImageReadError

    try:
        return load(path)
    except ImageReadError as exc:
        raise DataError(f"{path}: cannot read image ({exc})") from exc


def _contents(paths: Sequence[str]) -> list[str]:
    """The content hash of each file (an unreadable one is an error naming it)."""
    from ...encoders.cache import file_hash

    out = []
    for p in paths:
        try:
            with open(p, "rb") as fh:
                out.append(file_hash(fh))
        except OSError as exc:
            raise DataError(f"{p}: cannot read image ({exc.strerror or exc})") from exc
    return out


def image_regions(paths: Sequence[str], batch_size: int = 32, progress: bool = False) -> np.ndarray:
    """(n, 49, 1280) float16 region features (7x7 head feature map, row-major cells) of the
    ``efficientnet-lite0`` encoder's centre crop: their mean is its pooled feature."""
    from ...encoders.base import check_batch_size

    batch_size = check_batch_size("efficientnet-lite0 regions", batch_size)
    paths = [str(p) for p in paths]
    # Keyed by the files' contents: a path and size said nothing of a picture replaced by
    # another of the same size (its old regions came back).
    f = cache_dir() / f"regions_{_key('effnet-lite0-crop', _contents(paths))}.npy"
    cached = _read(f)
    if cached is not None:
        return cached
    import torch
    from tqdm.auto import tqdm

    enc = _efficientnet()
    net, load = enc.model, enc.load_fn()
    device = next(net.parameters()).device
    out = []
    with torch.inference_mode():
        for s in tqdm(range(0, len(paths), batch_size), disable=not progress, desc="regions"):
            batch = torch.from_numpy(np.stack([_load_image(load, p) for p in paths[s:s + batch_size]]))
            fm = net.extract_features(enc.preprocess(batch.to(device)))  # (b, 1280, 7, 7)
            out.append(fm.flatten(2).transpose(1, 2).cpu().numpy().astype(np.float16))
    arr = np.concatenate(out) if out else np.zeros((0, 49, 1280), np.float16)
    _write(f, lambda fh: np.save(fh, arr))
    return arr


def _texts(texts: Sequence[str]) -> list[str]:
    """``texts`` as a list of ``str``; ``str()`` turned a missing caption into the word "None"
    or "nan" and embedded it as text."""
    from ...encoders.base import check_texts

    return check_texts("minilm", texts)


def _minilm():
    """The ``minilm`` encoder (transformers directly, no sentence-transformers import); it
    moves its model to the device in force (:mod:`xmodal.device`) on each use."""
    if "minilm" not in _models:
        from ...encoders.text import MiniLM

        _models["minilm"] = MiniLM("minilm")
    return _models["minilm"]


def text_tokens(texts: Sequence[str], max_tokens: int = MAX_TOKENS,
                batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(tokens (n, max_tokens, 384) float16 zero-padded, lengths (n,) int) of MiniLM outputs.
    A text that is not a ``str`` (``None``, NaN) is an error naming its row."""
    from ...encoders.base import check_batch_size

    batch_size = check_batch_size("minilm", batch_size)
    texts = _texts(texts)
    f = cache_dir() / f"tokens_{_key('minilm', texts, str(max_tokens))}.npz"
    cached = _read(f, ("tokens", "lengths"))
    if cached is not None:
        return cached
    model = _minilm()
    toks = np.zeros((len(texts), max_tokens, 384), np.float16)
    lengths = np.zeros(len(texts), np.int64)
    for s in range(0, len(texts), batch_size):
        for i, t in enumerate(model.encode_tokens(texts[s:s + batch_size], batch_size=batch_size)):
            t = t[:max_tokens]
            toks[s + i, :len(t)] = t
            lengths[s + i] = len(t)
    _write(f, lambda fh: np.savez(fh, tokens=toks, lengths=lengths))
    return toks, lengths


def sentence_embeddings(texts: Sequence[str]) -> np.ndarray:
    """MiniLM sentence embeddings (mean pooled, L2-normalised), 384-d float32, cached.
    A text that is not a ``str`` (``None``, NaN) is an error naming its row."""
    texts = _texts(texts)
    f = cache_dir() / f"sentences_{_key('minilm-sent', texts)}.npy"
    cached = _read(f)
    if cached is not None:
        return cached
    # Our own .npy cache above: the encoder's feature cache would hold the same rows twice.
    emb = _minilm().encode(texts, batch_size=256, progress=False, cache_dir=False).astype(np.float32)
    _write(f, lambda fh: np.save(fh, emb))
    return emb
