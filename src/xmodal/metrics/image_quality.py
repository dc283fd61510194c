"""Full-reference image quality: PSNR, MS-PSNR, SSIM and MS-SSIM.

For methods that reconstruct or generate images. Images are 2-D (grey) or H x W x C arrays
of one dtype; ``data_range`` is the span of possible values, by default scikit-image's rule:
the dtype's range for integers; for floats 1.0 when the reference lies in [0, 1] and 2.0 when
it lies in [-1, 1] (tanh outputs); a float reference beyond [-1, 1], or mixed dtypes, need an
explicit ``data_range`` (a uint8 reference against a float reconstruction would otherwise be
scored on two scales). NaN or infinite pixels are refused.

- PSNR and SSIM are scikit-image's (``peak_signal_noise_ratio``; ``structural_similarity``
  with the settings of Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, K1 = 0.01,
  K2 = 0.03, population covariances).
- MS-SSIM follows Wang, Simoncelli & Bovik ("Multi-scale structural similarity for image
  quality assessment", Asilomar 2003): five dyadic scales (2x2 average pooling), contrast x
  structure at every scale and luminance at the coarsest, combined with the exponents
  (0.0448, 0.2856, 0.3001, 0.2363, 0.1333); the Gaussian window is applied without padding
  ("valid"), as in the reference implementation, so each side needs > 160 pixels.
- MS-PSNR is PSNR averaged over the same dyadic scales (weights default to equal; pass
  ``weights`` for another scheme).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy.ndimage import correlate1d
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def _check(a: np.ndarray, b: np.ndarray, data_range: float | None) -> tuple[np.ndarray, np.ndarray, float, bool]:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} vs {b.shape}")
    if a.ndim not in (2, 3):
        raise ValueError(f"expected a 2-D (grey) or H x W x C image, got shape {a.shape}")
    if a.ndim == 3 and a.shape[0] in (1, 3, 4) and a.shape[-1] > 4:
        raise ValueError(f"shape {a.shape} looks channel-first; give H x W x C "
                         "(np.moveaxis(image, 0, -1))")
    for name, x in (("reference", a), ("test", b)):
        if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
            raise ValueError(f"the {name} image holds NaN or infinite pixels")
    if data_range is None:
        if a.dtype != b.dtype:
            raise ValueError(f"the images have different dtypes ({a.dtype} and {b.dtype}): convert one "
                             "to the other's scale, or give data_range")
        if np.issubdtype(a.dtype, np.integer):
            info = np.iinfo(a.dtype)
            data_range = float(info.max - info.min)
        else:
            lo, hi = float(a.min()), float(a.max())
            if lo < -1 or hi > 1:
                raise ValueError(f"float reference values span [{lo:g}, {hi:g}], beyond [-1, 1]: "
                                 "give data_range")
            data_range = 1.0 if lo >= 0 else 2.0
    if data_range <= 0:
        raise ValueError(f"data_range must be positive, got {data_range}")
    return a.astype(np.float64), b.astype(np.float64), float(data_range), a.ndim == 3


def psnr(reference: np.ndarray, test: np.ndarray, data_range: float | None = None) -> float:
    """Peak signal-to-noise ratio in dB (inf for identical images)."""
    a, b, rng, _ = _check(reference, test, data_range)
    if np.array_equal(a, b):
        return float("inf")
    return float(peak_signal_noise_ratio(a, b, data_range=rng))


def ssim(reference: np.ndarray, test: np.ndarray, data_range: float | None = None) -> float:
    """Structural similarity (Wang, Bovik, Sheikh & Simoncelli, IEEE TIP 2004), mean over the
    image (and channels); each side needs at least 11 pixels (the Gaussian window)."""
    a, b, rng, color = _check(reference, test, data_range)
    if min(a.shape[:2]) < 11:
        raise ValueError(f"ssim needs at least 11 x 11 pixels (its 11 x 11 Gaussian window), got {a.shape[:2]}")
    return float(structural_similarity(a, b, data_range=rng, gaussian_weights=True, sigma=1.5,
                                       use_sample_covariance=False,
                                       channel_axis=-1 if color else None))


def _gauss_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    x = np.arange(size, dtype=np.float64) - size // 2
    g = np.exp(-(x ** 2) / (2 * sigma ** 2))
    return g / g.sum()


def _filter_valid(img: np.ndarray, win: np.ndarray) -> np.ndarray:
    """Separable filtering over the two spatial axes, keeping only fully covered pixels."""
    half = len(win) // 2
    out = correlate1d(img, win, axis=0, mode="constant")
    out = correlate1d(out, win, axis=1, mode="constant")
    return out[half:img.shape[0] - half, half:img.shape[1] - half]


def _ssim_cs(a: np.ndarray, b: np.ndarray, rng: float, win: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean SSIM and mean contrast-structure term."""
    C1, C2 = (0.01 * rng) ** 2, (0.03 * rng) ** 2
    mu1, mu2 = _filter_valid(a, win), _filter_valid(b, win)
    s11 = _filter_valid(a * a, win) - mu1 ** 2
    s22 = _filter_valid(b * b, win) - mu2 ** 2
    s12 = _filter_valid(a * b, win) - mu1 * mu2
    cs = (2 * s12 + C2) / (s11 + s22 + C2)
    lum = (2 * mu1 * mu2 + C1) / (mu1 ** 2 + mu2 ** 2 + C1)
    return (lum * cs).mean(axis=(0, 1)), cs.mean(axis=(0, 1))


def _downsample(img: np.ndarray) -> np.ndarray:
    """2x2 average pooling; an odd side is zero-padded by one on both ends first (as
    ``avg_pool2d(kernel 2, padding 1)``, which keeps the reference implementation's sizes)."""
    ph, pw = img.shape[0] % 2, img.shape[1] % 2
    if ph or pw:
        img = np.pad(img, ((ph, ph), (pw, pw), (0, 0)))
    h, w = img.shape[0] // 2 * 2, img.shape[1] // 2 * 2
    img = img[:h, :w]
    return img.reshape(h // 2, 2, w // 2, 2, -1).mean(axis=(1, 3))


def ms_ssim(reference: np.ndarray, test: np.ndarray, data_range: float | None = None,
            weights: Sequence[float] = MS_SSIM_WEIGHTS) -> float:
    """Multi-scale SSIM (Wang, Simoncelli & Bovik 2003), mean over channels."""
    a, b, rng, _ = _check(reference, test, data_range)
    if a.ndim == 2:
        a, b = a[..., None], b[..., None]
    w = np.asarray(weights, dtype=np.float64)
    win = _gauss_window()
    need = (len(win) - 1) * 2 ** (len(w) - 1)
    if min(a.shape[:2]) <= need:
        raise ValueError(f"ms_ssim with {len(w)} scales needs images larger than {need} pixels "
                         f"per side, got {a.shape[:2]}")
    mcs = []
    for level in range(len(w)):
        s, cs = _ssim_cs(a, b, rng, win)
        if level < len(w) - 1:
            mcs.append(np.maximum(cs, 0))
            a, b = _downsample(a), _downsample(b)
    vals = np.stack(mcs + [np.maximum(s, 0)])  # (levels, channels)
    return float(np.prod(vals ** w[:, None], axis=0).mean())


def ms_psnr(reference: np.ndarray, test: np.ndarray, data_range: float | None = None,
            scales: int = 5, weights: Sequence[float] | None = None) -> float:
    """PSNR averaged over ``scales`` dyadic scales (2x2 average pooling between them). A scale
    at which the images are identical (a difference the pooling cancels, e.g. a checkerboard)
    is left out of the weighted mean; inf when they are identical at every scale."""
    a, b, rng, _ = _check(reference, test, data_range)
    if scales < 1:
        raise ValueError(f"ms_psnr needs scales >= 1, got {scales}")
    if a.ndim == 2:
        a, b = a[..., None], b[..., None]
    if min(a.shape[:2]) < 2 ** (scales - 1):
        raise ValueError(f"ms_psnr with {scales} scales needs at least {2 ** (scales - 1)} pixels "
                         f"per side, got {a.shape[:2]}")
    w = np.full(scales, 1.0 / scales) if weights is None else np.asarray(weights, np.float64)
    if len(w) != scales:
        raise ValueError(f"ms_psnr: {len(w)} weights for {scales} scales")
    if (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"ms_psnr: weights must be >= 0 with a positive sum, got {w.tolist()}")
    vals = []
    for level in range(scales):
        mse = float(((a - b) ** 2).mean())
        vals.append(np.inf if mse == 0 else 10 * np.log10(rng ** 2 / mse))
        if level < scales - 1:
            a, b = _downsample(a), _downsample(b)
    vals = np.asarray(vals)
    seen = np.isfinite(vals) & (w > 0)
    if not seen.any():
        return float("inf")
    return float((w[seen] * vals[seen]).sum() / w[seen].sum())


__all__ = ["psnr", "ssim", "ms_ssim", "ms_psnr", "MS_SSIM_WEIGHTS"]
