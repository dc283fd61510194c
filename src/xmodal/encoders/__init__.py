"""Feature extraction: pretrained and fitted image/text encoders named by spec strings, batched
with parallel image decoding, cached on disk by content hash.

>>> from xmodal.encoders import get_encoder
>>> enc = get_encoder("minilm")
>>> X = enc.encode(["a plane on a runway"])          # (1, 384) float32
"""

from __future__ import annotations

from .base import EncodeReport, Encoder, EncoderError
from .cache import FeatureCache, default_cache_dir
from .dataset import encode_dataset, fit_cached
from .images import ImageReadError, open_image
from .registry import available_encoders, get_encoder, parse_spec

__all__ = ["Encoder", "EncoderError", "EncodeReport", "FeatureCache", "ImageReadError",
           "available_encoders", "default_cache_dir", "encode_dataset", "fit_cached",
           "get_encoder", "open_image", "parse_spec"]
