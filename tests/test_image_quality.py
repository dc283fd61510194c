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


def test_one_scale_ms_ssim_is_ssim_and_the_constants_follow_the_range(pair):
    # MS-SSIM's own SSIM ("valid" Gaussian window, K1 = 0.01, K2 = 0.03) against scikit-image's,
    # grey and colour, on a darkened copy where the luminance term and C1 matter
    a, noisy, _ = pair
    dark = (a * 0.6).astype(np.uint8)
    for x, y in ((a, dark), (a, noisy)):
        assert ms_ssim(x, y, weights=(1.0,)) == pytest.approx(ssim(x, y), abs=1e-9)
        gx, gy = x.mean(axis=2), y.mean(axis=2)
        assert ms_ssim(gx, gy, data_range=255, weights=(1.0,)) == pytest.approx(ssim(gx, gy, data_range=255), abs=1e-9)
        assert ms_ssim(x / 255.0, y / 255.0, weights=(1.0,)) == pytest.approx(ssim(x, y), abs=1e-9)
    # grey SSIM is the 2-D one, not 1-D columns with W channels
    from skimage.metrics import structural_similarity

    g1, g2 = a[..., 0], dark[..., 0]
    assert ssim(g1, g2) == pytest.approx(structural_similarity(g1, g2, data_range=255, gaussian_weights=True,
                                                               sigma=1.5, use_sample_covariance=False), abs=1e-12)


def test_integer_ranges_and_exact_range_ends():
    from skimage.metrics import peak_signal_noise_ratio

    rng = np.random.default_rng(3)
    x16, y16 = (rng.integers(-3000, 3000, (32, 32)).astype(np.int16) for _ in range(2))
    # a signed type's range is max - min (65535 for int16), as scikit-image's dtype_range
    assert psnr(x16, y16) == pytest.approx(peak_signal_noise_ratio(x16, y16, data_range=65535), rel=1e-12)
    x, y = rng.random((16, 16)), rng.random((16, 16))
    x[0, 0], x[0, 1] = 0.0, 1.0  # [0, 1] with both ends reached: range 1
    assert psnr(x, y) == pytest.approx(peak_signal_noise_ratio(x, y, data_range=1.0))
    t = x * 2 - 1  # tanh outputs reaching -1 exactly: range 2, not refused
    assert t.min() == -1.0 and psnr(t, y) == pytest.approx(peak_signal_noise_ratio(t, y, data_range=2.0))


def test_window_size_limits_are_exact():
    rng = np.random.default_rng(4)
    x, y = rng.random((11, 11)), rng.random((11, 11))
    assert np.isfinite(ssim(x, y))  # 11 x 11: one full window
    with pytest.raises(ValueError, match="11 x 11"):
        ssim(rng.random((10, 40)), rng.random((10, 40)))
    with pytest.raises(ValueError, match="11 x 11"):
        ssim(rng.random((40, 10)), rng.random((40, 10)))
    # five scales: the coarsest side must still hold the 11-pixel window, so > 160 pixels
    x, y = rng.random((161, 170)), rng.random((161, 170))
    assert np.isfinite(ms_ssim(x, y))
    for shape in ((160, 170), (170, 160), (100, 300)):
        with pytest.raises(ValueError, match="larger than 160"):
            ms_ssim(rng.random(shape), rng.random(shape))


def test_channel_first_arrays_are_told_from_short_images():
    rng = np.random.default_rng(5)
    for c in (1, 3, 4):
        with pytest.raises(ValueError, match="channel-first"):
            psnr(rng.random((c, 32, 32)), rng.random((c, 32, 32)))
    # an H x W x 4 image only 3 or 4 rows high is H x W x C, not channel-first
    for shape in ((3, 32, 4), (4, 32, 4), (1, 32, 4)):
        x, y = rng.random(shape), rng.random(shape)
        assert psnr(x, y) == pytest.approx(10 * np.log10(1 / ((x - y) ** 2).mean()))


def _pool(x: np.ndarray) -> np.ndarray:
    return x.reshape(x.shape[0] // 2, 2, x.shape[1] // 2, 2, *x.shape[2:]).mean(axis=(1, 3))


def test_ms_psnr_is_the_weighted_mean_of_each_scales_psnr(pair):
    a, noisy, blurred = pair
    x, y = a.astype(float), noisy.astype(float)
    per = []
    for _ in range(5):
        per.append(10 * np.log10(255 ** 2 / ((x - y) ** 2).mean()))
        x, y = _pool(x), _pool(y)
    assert ms_psnr(a, noisy) == pytest.approx(np.mean(per), rel=1e-12)
    w = np.array([0.5, 1.0, 0.0, 2.0, 0.25])
    assert ms_psnr(a, noisy, weights=w) == pytest.approx((w * per).sum() / w.sum(), rel=1e-12)
    assert ms_psnr(a, noisy, scales=3) == pytest.approx(np.mean(per[:3]), rel=1e-12)


def test_ms_psnr_weights_and_sizes_are_checked():
    a = np.full((64, 64), 0.5)
    b = a + 0.1 * ((np.indices((64, 64)).sum(0) % 2) * 2 - 1)  # differs at scale 1 only
    # the only weighted scale sees identical images: inf, not 0/0 over the unweighted one
    assert ms_psnr(a, b, weights=(0, 1, 0, 0, 0)) == float("inf")
    with pytest.raises(ValueError, match="weights must be >= 0"):
        ms_psnr(a, b, weights=(1, -0.5, 1, 1, 1))
    rng = np.random.default_rng(6)
    x, y = rng.random((16, 16)), rng.random((16, 16))
    assert np.isfinite(ms_psnr(x, y))  # five scales: 16 pixels pool down to one
    assert np.isfinite(ms_psnr(x[:4, :4], y[:4, :4], scales=3))
    for shape, scales in (((15, 16), 5), ((16, 15), 5), ((8, 64), 5), ((3, 8), 3)):
        with pytest.raises(ValueError, match=f"needs at least {2 ** (scales - 1)} pixels"):
            ms_psnr(rng.random(shape), rng.random(shape), scales=scales)
