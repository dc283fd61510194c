"""Spec strings -> encoders. A spec is ``name`` or ``name:argument``."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from .base import Encoder, EncoderError


def _efficientnet(spec, arg):
    from .cnn import EfficientNetLite0, parse_views
    return EfficientNetLite0(spec, parse_views(spec, arg))


def _mobilenet(spec, arg):
    from .cnn import MobileNetV2Encoder, parse_views
    return MobileNetV2Encoder(spec, parse_views(spec, arg))


def _sift(spec, arg):
    from .sift import SiftBoVW
    return SiftBoVW(spec, arg)


def _timm(spec, arg):
    from .cnn import TimmEncoder
    return TimmEncoder(spec, arg)


def _open_clip(spec, arg):
    from .cnn import OpenClipImageEncoder
    return OpenClipImageEncoder(spec, arg)


def _open_clip_text(spec, arg):
    from .text import OpenClipText
    return OpenClipText(spec, arg)


def _minilm(spec, arg):
    from .text import MiniLM
    return MiniLM(spec)


def _sbert(spec, arg):
    from .text import SentenceTransformerModel
    return SentenceTransformerModel(spec, arg)


def _tfidf(spec, arg):
    from .text import TfIdf
    return TfIdf(spec, arg)


def _bow(spec, arg):
    from .text import BagOfWords
    return BagOfWords(spec, arg)


def _lda(spec, arg):
    from .text import LDATopics
    return LDATopics(spec, arg)


def _tags(spec, arg):
    from .text import Tags
    return Tags(spec)


# name -> (factory, modality, argument: None | "optional" | "required", summary)
REGISTRY: dict[str, tuple[Callable[[str, str | None], Encoder], str, str | None, str]] = {
    "efficientnet-lite0": (_efficientnet, "image", "optional",
                           "ImageNet EfficientNet-Lite0, pooled 1280-d; efficientnet-lite0:flip or "
                           ":d4 averages over mirrored / rotated views"),
    "mobilenet-v2": (_mobilenet, "image", "optional", "ImageNet MobileNetV2 (torchvision weights), "
                     "pooled 1280-d; mobilenet-v2:flip or :d4 as above"),
    "sift-bovw": (_sift, "image", "optional", "SIFT bag of visual words, k-means vocabulary "
                  "(default 128 words; sift-bovw:<k>), fitted"),
    "timm": (_timm, "image", "required", "timm:<model>[@<checkpoint>|@random], pooled features "
             "(optional extra)"),
    "open_clip": (_open_clip, "image", "required", "open_clip:<arch>[@<tag>|@<checkpoint>|@random], "
                  "image tower (optional extra)"),
    "minilm": (_minilm, "text", None, "all-MiniLM-L6-v2 sentence embeddings, 384-d"),
    "sbert": (_sbert, "text", "required", "sbert:<folder>|<hub id>, a mean-pooled "
              "sentence-transformers model (a hub id is downloaded: needs a network)"),
    "tfidf": (_tfidf, "text", "optional", "tf-idf over words / CJK character n-grams "
              "(tfidf:<max_features>, default 5000), fitted"),
    "bow": (_bow, "text", "optional", "term counts, same tokens (bow:<max_features>), fitted"),
    "lda": (_lda, "text", "optional", "LDA topic proportions, lda:<k> (default 10), fitted"),
    "tags": (_tags, "text", None, "multi-hot tags (comma- or space-separated), fitted"),
    "open_clip-text": (_open_clip_text, "text", "required",
                       "open_clip-text:<arch>[@...], text tower (optional extra)"),
}


def available_encoders(modality: str | None = None) -> list[dict]:
    """One row per encoder family: name, modality, needs_fit, summary."""
    if modality not in (None, "image", "text"):  # a typo listed nothing, as if none existed
        raise EncoderError(f"modality must be 'image' or 'text', got {modality!r}")
    fitted = {"sift-bovw", "tfidf", "bow", "lda", "tags"}
    return [{"name": name, "modality": mod, "needs_fit": name in fitted, "argument": arg,
             "summary": summary}
            for name, (_, mod, arg, summary) in REGISTRY.items()
            if modality is None or mod == modality]


def parse_spec(spec: str) -> tuple[str, str | None]:
    if not isinstance(spec, str) or not spec.strip():
        raise EncoderError(f"encoder spec must be a non-empty string, got {spec!r}")
    name, sep, arg = spec.strip().partition(":")
    return name, (arg if sep else None)


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def _views_arg(spec: str, arg: str | None) -> None:
    from .cnn import parse_views
    parse_views(spec, arg)


def _model_arg(spec: str, arg: str | None) -> None:
    from .text import model_folder
    model_folder(spec, arg or "", download=False)


def _built_arg(spec: str, arg: str | None) -> None:
    """A count (vocabulary size, topics) checked by building the encoder: these constructors
    only read their argument (nothing is loaded or fitted)."""
    REGISTRY[parse_spec(spec)[0]][0](spec, arg)


# what an argument a family takes is checked by, without loading a model
_ARG_CHECKS: dict[str, Callable[[str, str | None], None]] = {
    "efficientnet-lite0": _views_arg, "mobilenet-v2": _views_arg, "sbert": _model_arg,
    "sift-bovw": _built_arg, "tfidf": _built_arg, "bow": _built_arg, "lda": _built_arg}


def _needs_arg(name: str) -> str:
    """What a family that takes a required argument wants, from its registry summary
    (``sbert:<folder>|<hub id>, ...``)."""
    form = REGISTRY[name][3].split(",")[0].strip()
    if not form.startswith(f"{name}:"):
        form = f"{name}:<argument>"
    return f"{name} needs an argument: {form}"


def _resolve(spec: str, modality: str | None) -> tuple[Callable[[str, str | None], Encoder], str | None]:
    """The factory and argument of one (not ``a+b``) spec, every check made but building it."""
    if modality not in (None, "image", "text"):
        raise EncoderError(f"modality must be 'image' or 'text', got {modality!r}")
    name, arg = parse_spec(spec)
    if name not in REGISTRY:
        raise EncoderError(f"unknown encoder {spec!r}; known: {', '.join(sorted(REGISTRY))}")
    factory, mod, arg_kind, _ = REGISTRY[name]
    if arg is not None and arg_kind is None:
        raise EncoderError(f"encoder {name!r} takes no argument, got {spec!r}")
    if arg is not None and not arg.strip():  # "tfidf:" read as tfidf:5000 under another cache name
        if arg_kind == "required":  # sbert, timm, open_clip: there is no default to offer
            raise EncoderError(f"{spec.strip()!r}: nothing after ':'; {_needs_arg(name)}")
        raise EncoderError(f"{spec.strip()!r}: nothing after ':'; write {name!r} for the default "
                           f"or {name}:<argument>")
    if arg is None and arg_kind == "required":  # what the factory refuses, refused unbuilt too
        raise EncoderError(f"{spec.strip()!r}: {_needs_arg(name)}")
    if modality is not None and mod != modality:
        raise EncoderError(f"{spec!r} is {_article(mod)} {mod} encoder, but {_article(modality)} "
                           f"{modality} encoder is needed here")
    return factory, arg


def split_parts(spec: str) -> list[str]:
    """The parts of an ``a+b`` spec, stripped; an empty part or one given twice is an
    :class:`EncoderError` naming it and the whole spec."""
    parts = [p.strip() for p in spec.split("+")]
    for i, part in enumerate(parts, 1):
        if not part:
            raise EncoderError(f"{spec!r}: part {i} is empty (a '+' at either end, or two in a "
                               "row); join encoder specs as 'a+b'")
    for i, part in enumerate(parts):
        if part in parts[:i]:  # identical columns twice: a singular covariance, surely a typo
            raise EncoderError(f"{spec!r}: {part!r} is given twice")
    return parts


def is_concat(spec: object) -> bool:
    """Whether ``spec`` names an ``a+b`` concatenation: it holds a ``+``, and is not one
    ``sbert:<folder>`` whose folder path itself holds the ``+``."""
    if not isinstance(spec, str) or "+" not in spec:
        return False
    name, arg = parse_spec(spec) if spec.strip() else ("", None)
    return not (name == "sbert" and arg is not None and Path(arg.strip()).expanduser().is_dir())


def _plus_parts(spec: str, modality: str | None) -> list[str]:
    """The parts of an ``a+b`` spec, each resolvable and all of one modality (checked before
    any part is built: a part may load a model)."""
    parts = split_parts(spec)
    mods = set()
    for part in parts:
        try:
            _resolve(part, modality)  # unknown names and arguments first, named
        except EncoderError as exc:
            if any(parse_spec(p)[0] == "sbert" for p in parts) and part.partition(":")[0] not in REGISTRY:
                # e.g. sbert:/models/a+b+tfidf: the folder's own '+' split it
                raise EncoderError(f"{exc}; in {spec!r} every '+' joins two encoders, so an "
                                   "sbert folder path that holds a '+' cannot be a part: "
                                   "rename the folder or link it under another name") from exc
            raise
        mods.add(REGISTRY[parse_spec(part)[0]][1])
    if len(mods) > 1:
        raise EncoderError(f"{spec!r} mixes {' and '.join(sorted(mods))} encoders; "
                           "concatenate encoders of one modality")
    return parts


def check_spec(spec: str, modality: str | None = None) -> None:
    """Raise :class:`EncoderError` where :func:`get_encoder` would for a spec it cannot build
    (an unknown name, an argument the family does not take or a view set it lacks, another
    modality than ``modality``), without building the encoder (some load their model when
    built): what ``xmodal index --dry-run`` checks."""
    parts = _plus_parts(spec, modality) if is_concat(spec) else [spec]
    for part in parts:
        _resolve(part, modality)
        name, arg = parse_spec(part)
        if name in _ARG_CHECKS:
            _ARG_CHECKS[name](part.strip(), arg)


def get_encoder(spec: str, modality: str | None = None) -> Encoder:
    """The encoder named by ``spec`` (e.g. ``"minilm"``, ``"lda:10"``, ``"timm:resnet18@random"``);
    ``"a+b"`` concatenates the features of encoders ``a`` and ``b``. ``modality`` (``"image"``
    or ``"text"``): an encoder of the other one is refused (:class:`EncoderError`)."""
    if is_concat(spec):
        from .concat import ConcatEncoder

        parts = [get_encoder(s, modality) for s in _plus_parts(spec, modality)]
        return ConcatEncoder("+".join(p.spec for p in parts), parts)
    factory, arg = _resolve(spec, modality)
    return factory(spec.strip(), arg)
