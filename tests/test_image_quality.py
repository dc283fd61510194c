"""Image-quality metrics against reference values (pytorch-msssim 1.0.0, the MS-SSIM authors'
reference settings) on a real UCM image, and against their definitions."""


import numpy as np
import pytest

from conftest import DATA
from xmodal.metrics.image_quality import ms_psnr, ms_ssim, psnr, ssim

IMG = DATA / "ucm_captions" / "imgs" / "1.jpg"  # DATA honours $XMODAL_DATA


@pytest.fixture(scope="module")
def pair():
    if not IMG.exists():
        pytest.skip("shared data folder absent")
    from PIL import Image

    a = np.asarray(Image.open(IMG).convert("RGB"))
    rng = np.random.default_rng(0)
    noisy = np.clip(a.astype(float) + rng.normal(0, 20, a.shape), 0, 255).astype(np.uint8)
    blurred = np.asarray(Image.open(IMG).convert("RGB").resize((128, 128))
                         .resize((256, 256), Image.BILINEAR))
    return a, noisy, blurred


def test_reference_values(pair):
    a, noisy, blurred = pair
    # pytorch_msssim.ssim / ms_ssim(data_range=255) on the same arrays
    assert ssim(a, noisy) == pytest.approx(0.6148360, abs=2e-5)
    assert ms_ssim(a, noisy) == pytest.approx(0.8637970, abs=2e-5)
    assert ssim(a, blurred) == pytest.approx(0.6363413, abs=2e-5)
    assert ms_ssim(a, blurred) == pytest.approx(0.9215663, abs=2e-5)
    # odd sizes go through the padded pooling path
    assert ms_ssim(a[:251, :237], noisy[:251, :237]) == pytest.approx(0.8628352, abs=2e-5)


def test_psnr_definitions(pair):
    a, noisy, _ = pair
    mse = ((a.astype(float) - noisy.astype(float)) ** 2).mean()
    assert psnr(a, noisy) == pytest.approx(10 * np.log10(255 ** 2 / mse), rel=1e-9)
    # scale 1 of MS-PSNR is plain PSNR; noise averages out at coarser scales
    assert ms_psnr(a, noisy, scales=1) == pytest.approx(psnr(a, noisy), rel=1e-9)
    assert ms_psnr(a, noisy) > psnr(a, noisy) + 5
    # floats in [0, 1] give the same values as uint8 in [0, 255]
    assert psnr(a / 255.0, noisy / 255.0) == pytest.approx(psnr(a, noisy), rel=1e-9)
    assert ssim(a / 255.0, noisy / 255.0) == pytest.approx(ssim(a, noisy), abs=1e-9)


def test_identity_and_ordering(pair):
    a, noisy, blurred = pair
    assert ssim(a, a) == pytest.approx(1.0)
    assert ms_ssim(a, a) == pytest.approx(1.0)
    assert psnr(a, a) == float("inf") and ms_psnr(a, a) == float("inf")
    grey = a.mean(axis=2)
    worse = np.clip(a.astype(float) + np.random.default_rng(1).normal(0, 40, a.shape), 0, 255)
    assert ssim(a, worse, data_range=255) < ssim(a, noisy)
    assert ms_ssim(grey, grey + 1.0, data_range=255) > 0.99


def test_bad_input(pair):
    a, noisy, _ = pair
    with pytest.raises(ValueError, match="shape"):
        ssim(a, noisy[:100])
    with pytest.raises(ValueError, match="larger than 160"):
        ms_ssim(a[:100, :100], noisy[:100, :100])
    with pytest.raises(ValueError, match="data_range"):
        psnr(a, noisy, data_range=0)


def test_ms_psnr_leaves_out_a_scale_where_pooling_cancels_the_difference():
    a = np.full((64, 64), 0.5)
    b = a + 0.1 * ((np.indices((64, 64)).sum(0) % 2) * 2 - 1)  # a checkerboard: gone at scale 2
    assert ms_psnr(a, b) == pytest.approx(psnr(a, b))  # only the first scale differs
    assert ms_psnr(a, b, weights=(1, 0, 0, 0, 0)) == pytest.approx(psnr(a, b))
    assert ms_psnr(a, a) == float("inf")
    with pytest.raises(ValueError, match="scales >= 1"):
        ms_psnr(a, b, scales=0)
    with pytest.raises(ValueError, match="positive sum"):
        ms_psnr(a, b, weights=(0, 0, 0, 0, 0))


def test_ranges_follow_scikit_image_and_mixed_or_broken_inputs_are_refused():
    from skimage.metrics import peak_signal_noise_ratio

    rng = np.random.default_rng(0)
    x, y = rng.random((32, 32)), rng.random((32, 32))
    # tanh outputs in [-1, 1]: scikit-image's range of 2, as its own psnr gives
    assert psnr(x * 2 - 1, y * 2 - 1) == pytest.approx(peak_signal_noise_ratio(x * 2 - 1, y * 2 - 1))
    a8 = (x * 255).astype(np.uint8)
    with pytest.raises(ValueError, match="different dtypes"):
        psnr(a8, y)
    with pytest.raises(ValueError, match=r"beyond \[-1, 1\]: give data_range"):
        psnr(x * 255, y * 255)
    assert psnr(x * 255, y * 255, data_range=255) == pytest.approx(psnr(x, y))
    bad = y.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        ssim(x, bad)
    with pytest.raises(ValueError, match="11 x 11"):
        ssim(x[:8, :8], y[:8, :8])
    with pytest.raises(ValueError, match="channel-first"):
        ssim(rng.random((3, 64, 64)), rng.random((3, 64, 64)))
