"""Image files a practitioner's folder really holds (each test failed before its fix)."""

import numpy as np
import pytest
from PIL import Image

from xmodal.encoders.images import ImageReadError, load_center_crop, open_image


@pytest.fixture
def small_pillow_limit(monkeypatch):
    # Stands in for Pillow's 89.5 Mpx limit, so a 12000x12000 aerial photo costs 1200x1200.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000_000)


def _photo(path, size, fmt):
    rng = np.random.default_rng(0)
    small = Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).resize(size)
    small.save(path, fmt)
    return str(path)


def test_big_jpeg_is_decoded_at_reduced_scale_not_refused_as_a_bomb(tmp_path, small_pillow_limit):
    # A JPEG over Pillow's pixel limit was skipped as a "decompression bomb" although JPEG
    # DCT scaling decodes it at 1/8 of its size: the limit now applies to the pixels decoded.
    big = _photo(tmp_path / "aerial.jpg", (1200, 1200), "JPEG")
    crop = load_center_crop(big, resize=256, crop=224)
    assert crop.shape == (224, 224, 3)
    assert open_image(big, draft_size=32).size[0] <= 1200 // 4
    # decoded in full it is still over the limit, and refused
    with pytest.raises(ImageReadError, match="decompression bomb"):
        open_image(big)


def test_big_png_is_still_refused(tmp_path, small_pillow_limit):
    # PNG has no reduced-scale decoding: every pixel would be decoded
    big = _photo(tmp_path / "aerial.png", (1200, 1200), "PNG")
    with pytest.raises(ImageReadError, match="decompression bomb"):
        load_center_crop(big, resize=256, crop=224)


def test_big_jpeg_in_a_collection_gets_a_thumbnail(tmp_path, small_pillow_limit, monkeypatch):
    # ...and the web page showed no thumbnail for it (413): the check came before DCT scaling
    import io

    from xmodal.index import Collection
    from xmodal.service import app as service

    monkeypatch.setattr(service, "MAX_IMAGE_PIXELS", 1_000_000)
    big = _photo(tmp_path / "aerial.jpg", (1200, 1200), "JPEG")
    coll = Collection.create(tmp_path / "c.xmc", dim=4)
    (item_id,) = coll.add_vectors("image", ["aerial.jpg"], np.ones((1, 4), np.float32), paths=[big]).ids
    thumb = Image.open(io.BytesIO(service.make_thumbnail(coll, item_id, big, 128)))
    assert thumb.format == "JPEG" and max(thumb.size) == 128
    coll.close()


def _grey_gradient():
    return np.tile(np.arange(0, 256, 2, dtype=np.uint8), (64, 1))  # 64x128, 0..254


@pytest.mark.parametrize("mode", ["I;16", "I", "F"])
def test_high_bit_depth_greyscale_is_scaled_not_clipped_to_white(tmp_path, mode):
    # A 16-bit PNG (or 32-bit int / float TIFF) came out of Pillow's convert("RGB") clipped at
    # 255: almost every pixel white, and the image indexed by the features of a white square.
    g = _grey_gradient()
    if mode == "I;16":
        im, path = Image.fromarray(g.astype(np.uint16) * 257), tmp_path / "scan.png"
    elif mode == "I":
        im, path = Image.fromarray(g.astype(np.int32) * 257), tmp_path / "scan.tif"
    else:
        im, path = Image.fromarray(g.astype(np.float32) / 255), tmp_path / "scan.tif"
    im.save(path)
    assert Image.open(path).mode == mode
    rgb = np.asarray(open_image(str(path)), dtype=np.int16)
    assert rgb.shape == (64, 128, 3)
    assert np.abs(rgb[..., 0] - g).max() <= 1


def test_sixteen_bit_thumbnail_is_not_white(tmp_path):
    import io

    from xmodal.index import Collection
    from xmodal.service import app as service

    g = _grey_gradient()
    path = tmp_path / "scan.png"
    Image.fromarray(g.astype(np.uint16) * 257).save(path)
    coll = Collection.create(tmp_path / "c.xmc", dim=4)
    (item_id,) = coll.add_vectors("image", ["scan.png"], np.ones((1, 4), np.float32), paths=[str(path)]).ids
    thumb = np.asarray(Image.open(io.BytesIO(service.make_thumbnail(coll, item_id, str(path), 128))))
    assert abs(float(thumb.mean()) - float(g.mean())) < 10
    coll.close()


def test_sixteen_bit_images_do_not_reuse_features_cached_from_the_clipped_decode():
    # The feature cache is keyed by file content: without a new key, a rebuild would reuse
    # the features of the white square cached before 16-bit scaling.
    import tempfile

    from xmodal.encoders.cache import file_hash
    from xmodal.encoders.images import ImageEncoder

    with tempfile.TemporaryDirectory() as d:
        grey16, rgb = f"{d}/scan.png", f"{d}/photo.png"
        Image.fromarray(_grey_gradient().astype(np.uint16) * 257).save(grey16)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(rgb)
        enc = ImageEncoder.__new__(ImageEncoder)
        with open(rgb, "rb") as fh:
            assert enc._item_key(rgb) == file_hash(fh)  # ordinary images keep their cache
        with open(grey16, "rb") as fh:
            assert enc._item_key(grey16) != file_hash(fh)
