"""Image files as users' folders really hold them, through the paths a user hits: the
encoders' ``encode`` on a list of paths and ``xmodal index`` on a folder (each defect test
failed before its fix)."""

from __future__ import annotations

import io
import logging

import numpy as np
import pytest
from PIL import Image

from xmodal.encoders import get_encoder
from xmodal.encoders.cache import file_hash
from xmodal.encoders.images import ImageEncoder, ImageReadError, load_center_crop, open_image


def _scene(size=(96, 64)) -> Image.Image:
    """A smooth colour scene with structure (SIFT finds keypoints, a CNN sees more than noise)."""
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (6, 9, 3), dtype=np.uint8)
    return Image.fromarray(small).resize(size, Image.BICUBIC)


@pytest.fixture(scope="module")
def effnet():
    enc = get_encoder("efficientnet-lite0")
    enc.num_workers = 0  # a handful of files: no worker processes
    return enc


@pytest.fixture(scope="module")
def sift(tmp_path_factory):
    d = tmp_path_factory.mktemp("sift-fit")
    fit = []
    for s in range(4):
        rng = np.random.default_rng(s)
        p = d / f"fit{s}.png"
        noise = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
        Image.fromarray(noise).resize((192, 192)).save(p)
        fit.append(str(p))
    enc = get_encoder("sift-bovw:8").fit(fit, progress=False)
    enc.num_workers = 0
    return enc


def _encode(enc, paths):
    return enc.encode([str(p) for p in paths], progress=False, cache_dir=False, return_mask=True)


# ------------------------------------------------------------------ EXIF orientation
def _exif(orientation: int) -> bytes:
    ex = Image.Exif()
    ex[0x0112] = orientation
    return ex.tobytes()


def test_exif_orientation_is_applied(tmp_path, effnet, sift):
    # A phone photo taken upright is stored landscape with Orientation=6 ("rotate 90 CW to
    # view"): it was encoded lying on its side, unlike the same picture saved upright.
    scene = _scene()
    tagged, upright = tmp_path / "phone.png", tmp_path / "upright.png"
    scene.save(tagged, exif=_exif(6))
    scene.transpose(Image.Transpose.ROTATE_270).save(upright)
    im = open_image(str(tagged))
    assert im.size == (64, 96)
    np.testing.assert_array_equal(np.asarray(im), np.asarray(Image.open(upright)))
    for enc in (effnet, sift):
        X, ok = _encode(enc, [tagged, upright])
        assert ok.all()
        np.testing.assert_allclose(X[0], X[1], rtol=1e-5, atol=1e-6)
    # every orientation value, and through JPEG's reduced-scale decode
    for o in range(1, 9):
        p = tmp_path / f"o{o}.jpg"
        scene.save(p, "JPEG", quality=95, exif=_exif(o))
        expect = (64, 96) if o >= 5 else (96, 64)
        assert open_image(str(p)).size == expect, o
        half = (expect[0] // 2, expect[1] // 2)  # DCT-scaled, and still upright
        assert open_image(str(p), draft_size=32).size in (expect, half), o


# ------------------------------------------------------------------ transparency
def _transparent_files(tmp_path):
    """A red square on a fully transparent background, in each way a file can say so."""
    rgba = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    rgba.paste((255, 0, 0, 255), (8, 8, 24, 24))
    pal = Image.new("P", (32, 32), 0)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    pal.paste(1, (8, 8, 24, 24))
    out = {}
    for name, im, kw in [("rgba.png", rgba, {}), ("rgba.webp", rgba, {"lossless": True}),
                         ("palette.png", pal, {"transparency": 0}),
                         ("palette.gif", pal, {"transparency": 0}),
                         ("la.png", rgba.convert("LA"), {}),
                         ("rgba.tif", rgba, {})]:
        im.save(tmp_path / name, **kw)
        out[name] = tmp_path / name
    return out


def test_transparent_pixels_are_composited_on_white(tmp_path):
    # Transparent pixels came out as whatever colour they hide (black here): a logo or a cut-out
    # product photo was encoded on a black square instead of the white page it is shown on.
    for name, p in _transparent_files(tmp_path).items():
        a = np.asarray(open_image(str(p)))
        assert a.shape == (32, 32, 3), name
        assert (a[0, 0] == 255).all(), (name, a[0, 0])
        red = (255, 0, 0) if not name.startswith("la") else (76, 76, 76)
        np.testing.assert_allclose(a[16, 16], red, atol=1, err_msg=name)
    # half transparent: blended half way
    half = Image.new("RGBA", (4, 4), (0, 0, 0, 128))
    half.save(tmp_path / "half.png")
    assert abs(int(np.asarray(open_image(str(tmp_path / "half.png")))[0, 0, 0]) - 127) <= 1


def test_decode_changes_give_the_changed_files_a_new_cache_key(tmp_path):
    # The feature cache is keyed by file content: rotated, transparent and multi-picture JPEG
    # images need a key of their own, or a rebuild reuses the features cached from the old
    # (sideways, black, full-scale) decode.
    enc = ImageEncoder.__new__(ImageEncoder)
    scene = _scene()
    plain, rotated = tmp_path / "plain.jpg", tmp_path / "rotated.jpg"
    scene.save(plain)
    scene.save(rotated, exif=_exif(6))
    upright_tag = tmp_path / "upright_tag.jpg"
    scene.save(upright_tag, exif=_exif(1))
    # a phone's multi-picture JPEG was decoded in full, now at reduced scale like a JPEG
    mpo = tmp_path / "mpo.jpg"
    scene.save(mpo, "MPO", save_all=True, append_images=[scene.resize((32, 32))])
    files = {"plain": plain, "upright_tag": upright_tag, "rotated": rotated, "mpo": mpo,
             **_transparent_files(tmp_path)}
    for name, p in files.items():
        with open(p, "rb") as fh:
            same = enc._item_key(str(p)) == file_hash(fh)
        assert same == (name in ("plain", "upright_tag")), name
    # ... and the key does not depend on the file's name or place
    copy = tmp_path / "sub" / "copy.jpg"
    copy.parent.mkdir()
    copy.write_bytes(rotated.read_bytes())
    assert enc._item_key(str(copy)) == enc._item_key(str(rotated))


# ------------------------------------------------------------------ very large, very thin
def test_jpeg_over_twice_the_pixel_limit_is_decoded_at_reduced_scale(tmp_path, monkeypatch, effnet):
    # Pillow refuses a file over twice its limit (89.5 Mpx: a 20000x10000 aerial mosaic) as
    # soon as it is opened, before JPEG DCT scaling could decode it at 1/8 of its size: the
    # encoders skipped it as a "decompression bomb" although it costs 2500x1250 pixels.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 150_000)  # stands in for 89.5 Mpx
    big = tmp_path / "mosaic.jpg"
    _scene((2048, 2048)).save(big, quality=90)  # 4.2 Mpx: over twice the limit
    crop = load_center_crop(str(big), resize=256, crop=224)
    assert crop.shape == (224, 224, 3)
    # the same picture under the limit gives (nearly) the same crop
    small = tmp_path / "small.jpg"
    _scene((2048, 2048)).resize((256, 256), Image.BILINEAR).save(small, quality=90)
    assert np.abs(crop.astype(int) - load_center_crop(str(small), 256, 224).astype(int)).mean() < 4
    # a phone's multi-picture JPEG (MPO) is decoded at reduced scale too
    mpo = tmp_path / "phone.jpg"
    _scene((2048, 2048)).save(mpo, "MPO", save_all=True, append_images=[_scene((64, 64))],
                              quality=90)
    with monkeypatch.context() as m:
        m.setattr(Image, "MAX_IMAGE_PIXELS", None)
        assert Image.open(mpo).format == "MPO"
    np.testing.assert_array_equal(load_center_crop(str(mpo), 256, 224), crop)
    with monkeypatch.context() as m:  # between 1x and 2x the limit: opened as MPO, not JPEG
        m.setattr(Image, "MAX_IMAGE_PIXELS", 3_000_000)
        np.testing.assert_array_equal(load_center_crop(str(mpo), 256, 224), crop)
    X, ok = _encode(effnet, [big, mpo])
    assert ok.all() and np.isfinite(X).all()
    # decoded in full it is still refused, by name of the limit; so is a PNG (no DCT scaling)
    with pytest.raises(ImageReadError, match="decompression bomb"):
        open_image(str(big))
    png = tmp_path / "mosaic.png"
    _scene((2048, 2048)).save(png)
    with pytest.raises(ImageReadError, match="decompression bomb"):
        load_center_crop(str(png), resize=256, crop=224)


def test_a_very_thin_image_is_not_resized_whole(tmp_path, monkeypatch, effnet, sift):
    # Shorter side to 256 then a centre crop: a 2x3000 strip (a 6 kB PNG) was first resized to
    # 256x384000, ~300 MB, and an upload of 1x30000 would ask for 3.9 GB. Only the crop's part
    # of the image needs resizing.
    real_resize = Image.Image.resize

    def resize(self, size, *args, **kw):
        assert size[0] * size[1] <= 4_000_000, f"resize to {size}"
        return real_resize(self, size, *args, **kw)

    strip = tmp_path / "strip.png"
    _scene((2, 3000)).save(strip)
    monkeypatch.setattr(Image.Image, "resize", resize)
    assert load_center_crop(str(strip), resize=256, crop=224).shape == (224, 224, 3)
    for enc in (effnet, sift):
        X, ok = _encode(enc, [strip])
        assert ok.all() and np.isfinite(X).all()
    monkeypatch.undo()
    # resizing only the crop's region samples exactly as resizing the whole and cropping
    thin = _scene((12, 600))
    thin.save(tmp_path / "thin.png")
    nw, nh = 256, round(600 * 256 / 12)
    whole = thin.resize((nw, nh), Image.BILINEAR, reducing_gap=None)
    top = (nh - 224) // 2
    ref = np.asarray(whole.crop((16, top, 240, top + 224)), dtype=int)
    got = load_center_crop(str(tmp_path / "thin.png"), resize=256, crop=224).astype(int)
    assert np.abs(got - ref).max() <= 1


# ------------------------------------------------------------------ unreadable formats
def test_heic_without_a_decoder_is_skipped_naming_the_format(tmp_path, effnet):
    # An iPhone's .HEIC (Pillow has no HEIF decoder) was reported as "not an image", which
    # reads as a broken file; the reason now names the format and what to do.
    heic = tmp_path / "IMG_0001.HEIC"
    ftyp = b"ftypheic" + b"\0\0\0\0" + b"mif1heic"
    heic.write_bytes(len(ftyp).to_bytes(4, "big") + ftyp + b"\0" * 200)
    with pytest.raises(ImageReadError, match="HEIC/HEIF.*convert"):
        open_image(str(heic))
    X, ok = _encode(effnet, [heic])
    assert not ok.any()
    assert "HEIC/HEIF" in dict(effnet.report_.skipped)[str(heic)]


# ------------------------------------------------------------------ odd but readable files
def _odd_files(d):
    """Readable files that are not plain 8-bit RGB, each with the RGB picture it must decode to
    (approximately, where the format is lossy)."""
    scene = _scene()
    rng = np.random.default_rng(1)
    other = Image.fromarray(rng.integers(0, 256, (64, 96, 3), dtype=np.uint8))
    out = {}

    def put(name, expect, im, *args, **kw):
        im.save(d / name, *args, **kw)
        out[name] = expect

    put("cmyk.jpg", scene, scene.convert("CMYK"), quality=95)
    put("cmyk.tif", scene.convert("CMYK").convert("RGB"), scene.convert("CMYK"))
    put("progressive.jpg", scene, scene, quality=95, progressive=True)
    bw = scene.convert("1")
    put("bilevel.png", bw.convert("RGB"), bw)
    g16 = Image.fromarray(np.asarray(scene.convert("L")).astype(np.uint16) * 257)
    assert g16.mode == "I;16"
    put("grey16.png", scene.convert("L").convert("RGB"), g16)
    # UC Merced-style TIFF, 16-bit and multi-page: the first page
    put("pages16.tif", scene.convert("L").convert("RGB"), g16, save_all=True,
        append_images=[Image.fromarray(np.zeros((64, 96), np.uint16))])
    put("anim.gif", scene.quantize(256).convert("RGB"), scene.quantize(256), save_all=True,
        append_images=[other.quantize(256)])
    put("anim.webp", scene, scene, save_all=True, append_images=[other], lossless=True)
    red = Image.new("RGB", (1, 1), (200, 30, 60))
    put("tiny.png", red, red)
    put("narrow.png", scene.resize((3, 500)), scene.resize((3, 500)))
    buf = io.BytesIO()
    scene.save(buf, "PNG")
    (d / "png-named.jpg").write_bytes(buf.getvalue())  # a PNG with the wrong extension
    out["png-named.jpg"] = scene
    return out


def test_odd_but_readable_files_decode_to_their_picture(tmp_path, effnet, sift):
    odd = _odd_files(tmp_path)
    for name, expect in odd.items():
        got = np.asarray(open_image(str(tmp_path / name)), dtype=int)
        want = np.asarray(expect, dtype=int)
        assert got.shape == want.shape, name
        assert np.abs(got - want).mean() < 3, name  # lossy JPEG/CMYK within a few levels
    # the first frame, not the second
    first = np.asarray(open_image(str(tmp_path / "anim.webp")), dtype=int)
    np.testing.assert_array_equal(first, np.asarray(_scene(), dtype=int))
    # every one encodes, in one batch with worker processes as in a big run and one at a time
    paths = [tmp_path / n for n in odd]
    for enc in (effnet, sift):
        X, ok = _encode(enc, paths)
        assert ok.all() and np.isfinite(X).all(), enc.spec
        one = np.stack([_encode(enc, [p])[0][0] for p in paths[:3]])
        np.testing.assert_allclose(one, X[:3], rtol=1e-4, atol=1e-5)
        workers = enc.num_workers
        enc.num_workers = 2
        try:
            Xw = enc.encode([str(p) for p in paths], batch_size=4, progress=False, cache_dir=False)
        finally:
            enc.num_workers = workers
        np.testing.assert_allclose(Xw, X, rtol=1e-4, atol=1e-5)
    # a PNG named .jpg is the same image as that PNG named .png
    (tmp_path / "named-right.png").write_bytes((tmp_path / "png-named.jpg").read_bytes())
    X, _ = _encode(effnet, [tmp_path / "png-named.jpg", tmp_path / "named-right.png"])
    np.testing.assert_array_equal(X[0], X[1])


# ------------------------------------------------------------------ broken files
def _broken_files(d) -> dict[str, str]:
    """Unusable files, each with a word its skip reason must contain."""
    good = io.BytesIO()
    _scene((640, 480)).save(good, "JPEG", quality=90)
    data = good.getvalue()
    (d / "empty.jpg").write_bytes(b"")
    (d / "cut-short.jpg").write_bytes(data[: len(data) // 2])  # a download cut short
    png = io.BytesIO()
    _scene((640, 480)).save(png, "PNG")
    (d / "cut-short.png").write_bytes(png.getvalue()[: len(png.getvalue()) // 2])
    (d / "readme.jpg").write_text("this is a text file named .jpg\n")
    ftyp = b"ftypheic\0\0\0\0mif1heic"
    (d / "IMG_0001.png").write_bytes(len(ftyp).to_bytes(4, "big") + ftyp + b"\0" * 64)
    return {"empty.jpg": "empty", "cut-short.jpg": "truncated", "cut-short.png": "truncated",
            "readme.jpg": "not an image", "IMG_0001.png": "HEIC"}


def test_broken_files_are_skipped_by_name_with_the_reason(tmp_path, effnet, sift, caplog):
    broken = _broken_files(tmp_path)
    good = tmp_path / "good.png"
    _scene().save(good)
    paths = [str(good)] + [str(tmp_path / n) for n in broken] + [str(good)]
    for enc in (effnet, sift):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="xmodal.encoders"):
            X, ok = _encode(enc, paths)
        assert ok.tolist() == [True] + [False] * len(broken) + [True], enc.spec
        np.testing.assert_array_equal(X[0], X[-1])
        reasons = dict(enc.report_.skipped)
        for name, word in broken.items():
            assert word in reasons[str(tmp_path / name)], (enc.spec, name, reasons)
            assert any(str(tmp_path / name) in r.getMessage() and word in r.getMessage()
                       for r in caplog.records), (enc.spec, name)


# ------------------------------------------------------------------ xmodal index on a folder
def test_index_a_folder_mixing_good_odd_and_broken_files(tmp_path_factory, caplog):
    from typer.testing import CliRunner

    from conftest import ucm_caption_folder
    from xmodal.cli import app
    from xmodal.index import Collection

    root, folder, _, mp = ucm_caption_folder(tmp_path_factory, "realworld", 300)  # 7 captioned
    try:
        odd = _odd_files(folder)
        broken = _broken_files(folder)
        rotated = folder / "phone.jpg"
        _scene().save(rotated, quality=95, exif=_exif(6))
        coll = root / "c.xmc"
        with caplog.at_level(logging.WARNING, logger="xmodal.encoders"):
            r = CliRunner().invoke(app, ["index", str(folder), "-c", str(coll), "--image-encoder",
                                         "efficientnet-lite0", "--text-encoder", "tfidf"])
        assert r.exit_code == 0, r.output
        assert f"skipping {len(broken)} unreadable image(s)" in r.output
        # each broken file named, with its reason (on stderr: Python's last-resort log
        # handler, which pytest's own log handlers replace here)
        lines = [rec.getMessage() for rec in caplog.records]
        for name, word in broken.items():
            assert any(name in ln and word in ln for ln in lines), (name, lines)
        c = Collection.open(coll)
        try:
            for name in broken:
                assert c.id_of(name) is None, name
            # odd files are indexed, as the search path (and an HTTP upload) encodes them
            for name in [*(n for n in odd if not n.endswith(".gif")), rotated.name]:
                item = c.id_of(name)
                assert item is not None, name
                stored, _ = c.item_vectors([item])
                query, _ = c.encode_query_image(folder / name)
                a, b = stored.ravel(), query.ravel()  # stored unit-length
                assert a @ b / np.linalg.norm(a) / np.linalg.norm(b) > 0.9999, name
        finally:
            c.close()
    finally:
        mp.undo()


def test_index_scans_gif_avif_and_heic_files(tmp_path):
    from xmodal.index.build import scan_folder

    scene = _scene()
    scene.save(tmp_path / "a.jpg")
    scene.save(tmp_path / "anim.gif")
    scene.save(tmp_path / "photo.avif")
    ftyp = b"ftypheic\0\0\0\0mif1heic"
    (tmp_path / "IMG_0001.HEIC").write_bytes(len(ftyp).to_bytes(4, "big") + ftyp + b"\0" * 64)
    images, _ = scan_folder(tmp_path)
    # the HEIC must reach the encoder, to be skipped there with its reason, not vanish
    assert sorted(i.key for i in images) == ["IMG_0001.HEIC", "a.jpg", "anim.gif", "photo.avif"]


def test_the_cache_key_reads_headers_only(tmp_path, monkeypatch):
    # Looking for an EXIF Orientation made Pillow decode every PNG in full (PngImageFile's
    # getexif loads the image when the header has no eXIf chunk): the cache key of a folder
    # of big PNGs cost a full decode each, in the main process and without the pixel limit.
    from PIL import ImageFile

    scene = _scene()
    files = [tmp_path / "plain.png", tmp_path / "alpha.png", tmp_path / "exif.png",
             tmp_path / "a.jpg", tmp_path / "a.webp", tmp_path / "a.tif", tmp_path / "a.gif"]
    scene.save(files[0])
    scene.convert("RGBA").save(files[1])
    scene.save(files[2], exif=_exif(6))
    for f in files[3:]:
        scene.save(f)
    loads = []
    real_load = ImageFile.ImageFile.load

    def load(self):
        loads.append(self.format)
        return real_load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    enc = ImageEncoder.__new__(ImageEncoder)
    keys = [enc._item_key(str(f)) for f in files]
    assert loads == []
    with open(files[2], "rb") as fh:
        assert keys[2] != file_hash(fh)  # the tag in a PNG header is still seen


def test_an_image_too_large_to_decode_is_refused_saying_what_to_do(tmp_path, monkeypatch, effnet):
    # A legitimate 12000x9000 PNG orthophoto (108 Mpx, over Pillow's 89.5 Mpx) was skipped as a
    # "decompression bomb" with no hint that a JPEG of it would be read (at reduced scale).
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100_000)  # stands in for 89.5 Mpx
    over, far_over = tmp_path / "ortho.png", tmp_path / "mosaic.tif"
    _scene((400, 300)).save(over)        # 1.2x the limit: Pillow only warns
    _scene((600, 400)).save(far_over)    # 2.4x: Pillow refuses to open it
    X, ok = _encode(effnet, [over, far_over])
    assert not ok.any()
    reasons = dict(effnet.report_.skipped)
    assert "400x300 = 120000 pixels" in reasons[str(over)]
    for p in (over, far_over):
        assert "decompression bomb" in reasons[str(p)] and "100000" in reasons[str(p)], reasons
        assert "JPEG" in reasons[str(p)], reasons
    # a JPEG too large even at 1/8 scale gets no advice to save it as JPEG
    jpg = tmp_path / "huge.jpg"
    _scene((1600, 1600)).save(jpg)  # 200x200 at 1/8: still over a 30000 limit
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 30_000)
    with pytest.raises(ImageReadError, match="decoded at 200x200") as err:
        load_center_crop(str(jpg), 16, 16)
    assert "JPEG" not in str(err.value)


def test_progressive_jpegs_are_judged_by_their_full_size(tmp_path):
    """DCT scaling shrinks only the output: a progressive (or multi-scan) JPEG keeps every
    coefficient of the full image in memory, so only a sequential single-scan JPEG may be
    checked against the pixel limit at its reduced scale (a 1 MB progressive file of 23170²
    took 1 GB at 1/8 scale)."""
    from xmodal.encoders.images import jpeg_decodes_small

    scene = _scene((400, 320))
    exif = Image.Exif()
    exif[0x010F] = "maker \xff\xda inside APP1"  # an SOS-like byte pair inside an EXIF block
    scene.save(tmp_path / "base.jpg", quality=90, exif=exif)
    scene.save(tmp_path / "prog.jpg", quality=90, progressive=True)
    with open(tmp_path / "base.jpg", "rb") as fh:
        assert jpeg_decodes_small(fh) and fh.tell() == 0
    with open(tmp_path / "prog.jpg", "rb") as fh:
        assert not jpeg_decodes_small(fh)
    limit = 400 * 320 // 16  # the 1/8-scale decode (50x40) is under it, the full size is not
    assert open_image(str(tmp_path / "base.jpg"), limit, draft_size=40).size == (50, 40)
    with pytest.raises(ImageReadError, match=r"decompression bomb refused: 400x320 = 128000 pixels exceeds"):
        open_image(str(tmp_path / "prog.jpg"), limit, draft_size=40)


def test_png_orientation_from_xmp_is_seen_from_the_header(tmp_path):
    from PIL.PngImagePlugin import PngInfo

    from xmodal.encoders.images import _orientation

    xmp = ('<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
           '<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="6"/>'
           '</rdf:RDF></x:xmpmeta>')
    info = PngInfo()
    info.add_itxt("XML:com.adobe.xmp", xmp)
    _scene().save(tmp_path / "xmp.png", pnginfo=info)
    with Image.open(tmp_path / "xmp.png") as im:
        assert _orientation(im) == 6
        assert _orientation(im, header_only=True) == 6
