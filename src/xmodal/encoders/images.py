"""Image reading that never crashes a run, and the batched decode pipeline.

Decoding happens in DataLoader worker processes; each worker returns a ready-to-stack uint8
array (resized and cropped there, so only 224x224x3 bytes per image cross the process
boundary) and the main process only runs the model."""

from __future__ import annotations

import functools
import re
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from .base import Encoder, cpu_count, thread_budget
from .cache import content_hash, file_hash


class ImageReadError(Exception):
    """An image that cannot be used; the message says why."""


EXIF_ORIENTATION = 0x0112  # TIFF/EXIF tag 274


def _orientation(im: Any, header_only: bool = False) -> int:
    """The EXIF Orientation of an open image (1, "upright as stored", when absent or bad).
    ``header_only``: never decode pixels (Pillow's PNG getexif() loads the whole image to find
    an eXIf chunk after the pixel data; one written before it, as usual, is in the header)."""
    if header_only and im.format == "PNG" and not any(
            k in im.info for k in ("exif", "Raw profile type exif", "XML:com.adobe.xmp")):
        return 1  # no EXIF in the header, nor the text chunks Pillow also reads it from
    try:
        o = im.getexif().get(EXIF_ORIENTATION, 1)
    except Exception:  # a malformed EXIF block: the pixels are still fine
        return 1
    return o if isinstance(o, int) and 2 <= o <= 8 else 1


def _transparent(im: Any) -> bool:
    """Whether an open 8-bit image has an alpha channel or a transparent colour (header only)."""
    return im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info


def to_rgb(im: Any) -> Any:
    """``im`` as an 8-bit RGB Pillow image, the way a viewer shows it.

    The EXIF Orientation is applied (phone photos are stored sideways with a tag saying how to
    turn them), and transparent pixels are composited on white, the page such images are shown
    on (``convert("RGB")`` drops the alpha and shows whatever colour they hide, usually black).
    ``convert("RGB")`` also clips 16-bit and 32-bit greyscale at 255 (a 16-bit scan comes out
    white) and rounds floats in 0..1 to black: 16-bit values are scaled by 1/257 (full scale),
    32-bit integers the same when they fit in 16 bits, floats in 0..1 by 255, and anything else
    stretched from its minimum to maximum."""
    from PIL import Image, ImageOps

    if _orientation(im) != 1:
        im = ImageOps.exif_transpose(im)
    if im.mode not in ("I", "F") and not im.mode.startswith("I;16"):
        if _transparent(im):
            rgba = im.convert("RGBA")  # palette/greyscale/premultiplied alpha included
            out = Image.new("RGB", im.size, (255, 255, 255))
            out.paste(rgba, mask=rgba)
            return out
        return im if im.mode == "RGB" else im.convert("RGB")
    a = np.asarray(im).astype(np.float32)
    a = np.where(np.isfinite(a), a, 0.0)
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if im.mode.startswith("I;16") or (im.mode == "I" and lo >= 0 and 255 < hi <= 65535):
        a = a / 257.0
    elif im.mode == "F" and lo >= 0 and hi <= 1:
        a = a * 255.0
    elif lo < 0 or hi > 255:
        a = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
    return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L").convert("RGB")


def _decode_tags(fh: Any) -> list[str]:
    """What :func:`to_rgb` does to an open image file beyond Pillow's plain RGB conversion,
    read from the header only: ``scaled-greyscale`` (16-bit, 32-bit or float greyscale),
    ``exif-orientation`` (turned upright), ``composited-alpha`` (transparency on white),
    ``mpo-reduced-scale`` (a multi-picture JPEG, DCT-scaled like any JPEG)."""
    from PIL import Image

    tags = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(fh) as im:
                if im.mode in ("I", "F") or im.mode.startswith("I;16"):
                    tags.append("scaled-greyscale")
                elif _transparent(im):
                    tags.append("composited-alpha")
                if _orientation(im, header_only=True) != 1:
                    tags.append("exif-orientation")
                if im.format == "MPO":
                    tags.append("mpo-reduced-scale")
    except Exception:  # not an image, or a header Pillow refuses: the decoder reports it
        return []
    return tags


_HEIF_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs",
                b"mif1", b"msf1"}
_AVIF_BRANDS = {b"avif", b"avis"}


def _isobmff_image_kind(path: Path) -> str | None:
    """"HEIC/HEIF" or "AVIF" for a file whose ISO-BMFF ``ftyp`` box names such a brand (an
    iPhone photo), else None: Pillow has no HEIF decoder, and AVIF only where built with it."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(64)
    except OSError:
        return None
    if head[4:8] != b"ftyp":
        return None
    size = min(int.from_bytes(head[:4], "big"), len(head))
    brands = {head[8:12]} | {head[i:i + 4] for i in range(16, size - 3, 4)}
    if brands & _AVIF_BRANDS:
        return "AVIF"
    return "HEIC/HEIF" if brands & _HEIF_BRANDS else None


def _is_jpeg(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(3) == b"\xff\xd8\xff"
    except OSError:
        return False


def _too_large_hint(path: Path) -> str:
    """What to do with an image over the pixel limit (a JPEG is already read at 1/8 scale)."""
    if _is_jpeg(path):
        return ""
    return "; only a JPEG is decoded at reduced scale (up to 1/8): save it as JPEG, or downscale it"


# start-of-frame markers of sequential DCT JPEGs (baseline, extended); every other SOFn is
# progressive, lossless or hierarchical
_SEQUENTIAL_SOF = (0xC0, 0xC1)
_OTHER_SOF = (0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF)


def jpeg_decodes_small(fh: Any) -> bool:
    """Whether the JPEG in the binary file ``fh`` is sequential with all its components in its
    first scan: libjpeg then decodes it at reduced scale (DCT scaling) in memory that follows
    the output size. A progressive or multi-scan JPEG keeps every coefficient of the full-size
    image in memory at any scale (about 2 bytes per pixel and component), so it is judged by
    its full size. Walks the marker segments up to the first scan (EXIF thumbnails inside
    APPn segments are skipped whole); ``fh``'s position is restored."""
    start = fh.tell()
    try:
        fh.seek(0)
        if fh.read(2) != b"\xff\xd8":
            return False
        components = None
        while True:
            b = fh.read(1)
            if not b:
                return False
            if b != b"\xff":
                return False  # bytes between segments: not walked (a byte at a time), judged by full size
            m = fh.read(1)
            while m == b"\xff":  # fill bytes
                m = fh.read(1)
            if not m:
                return False
            marker = m[0]
            if marker == 0x01 or 0xD0 <= marker <= 0xD8:
                continue  # no length field
            head = fh.read(2)
            if len(head) < 2:
                return False
            length = int.from_bytes(head, "big")
            body = fh.read(min(max(length - 2, 0), 8))
            if marker in _OTHER_SOF:
                return False
            if marker in _SEQUENTIAL_SOF:
                components = body[5] if len(body) > 5 else None
            elif marker == 0xDA:  # start of scan: how many components it holds
                return components is not None and len(body) > 0 and body[0] == components
            fh.seek(max(length - 2, 0) - len(body), 1)
    except (OSError, ValueError):
        return False
    finally:
        fh.seek(start)


def _open_jpeg_unchecked(path: Path) -> Any:
    """``path`` opened as a JPEG without Pillow's pixel-count check, or None if not a JPEG
    that decodes at reduced scale in small memory (:func:`jpeg_decodes_small`)."""
    from PIL import JpegImagePlugin

    if not _is_jpeg(path):
        return None
    with open(path, "rb") as fh:
        if not jpeg_decodes_small(fh):
            return None
    return JpegImagePlugin.JpegImageFile(str(path))


def open_image(path: str, max_pixels: int | None = None, draft_size: int | None = None) -> Any:
    """Open and fully decode ``path`` as RGB, or raise :class:`ImageReadError`.

    ``max_pixels`` (default Pillow's ``Image.MAX_IMAGE_PIXELS``) guards against decompression
    bombs: anything larger is refused before its pixels are decoded. With ``draft_size`` a
    JPEG is decoded at a reduced scale (DCT scaling, down to 1/8), and the limit applies to the
    pixels decoded: a 12000x12000 aerial photo costs 1500x1500, and so does a JPEG over twice
    the limit, which Pillow itself refuses to open. Other formats cannot be decoded at reduced
    scale and are refused over the limit.
    """
    from PIL import Image, JpegImagePlugin, UnidentifiedImageError

    p = Path(path)
    try:
        size = p.stat().st_size
    except OSError as exc:
        raise ImageReadError(f"cannot read file ({exc.strerror or exc})") from exc
    if size == 0:
        raise ImageReadError("empty file (0 bytes)")
    limit = Image.MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    try:
        with warnings.catch_warnings():
            # Pillow warns between 1x and 2x its limit: the size is checked below, against
            # the pixels that will really be decoded.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            try:
                im = Image.open(p)
            except Image.DecompressionBombError:
                # Over twice Pillow's limit: refused as soon as it is opened, before a JPEG
                # could be decoded at 1/8 scale. A JPEG is opened without that check; the
                # pixels really decoded are checked below.
                im = _open_jpeg_unchecked(p) if draft_size else None
                if im is None:
                    raise
            w, h = im.size
            if draft_size and isinstance(im, JpegImagePlugin.JpegImageFile):  # MPO too
                # JPEG DCT scaling: decode big photos at reduced size directly (much faster).
                im.draft("RGB", (draft_size, draft_size))
            dw, dh = im.size
            if (dw, dh) != (w, h) and limit and w * h > limit and not jpeg_decodes_small(im.fp):
                dw, dh = w, h  # progressive / multi-scan: its memory follows the full size
            if limit and dw * dh > limit:
                scaled = f" (decoded at {dw}x{dh})" if (dw, dh) != (w, h) else ""
                raise ImageReadError(f"decompression bomb refused: {w}x{h} = {w * h} pixels{scaled} "
                                     f"exceeds the limit of {limit}{_too_large_hint(p)}")
            im.load()
            return to_rgb(im)
    except ImageReadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow's message names twice its limit; say ours, and the pixel count it found.
        n = re.search(r"\((\d+) pixels\)", str(exc))
        pillow = 2 * (Image.MAX_IMAGE_PIXELS or 0)  # Pillow refuses at open from twice its limit
        what = (str(exc) if not n else
                f"{n.group(1)} pixels exceeds the limit of {limit}" if not limit or limit < pillow else
                f"{n.group(1)} pixels exceeds Pillow's limit of {pillow} (raise PIL.Image.MAX_IMAGE_PIXELS)")
        raise ImageReadError(f"decompression bomb refused: {what}{_too_large_hint(p)}") from exc
    except UnidentifiedImageError as exc:
        kind = _isobmff_image_kind(p)
        if kind:
            raise ImageReadError(f"unsupported format: {kind} (Pillow here cannot decode it; "
                                 "convert it to JPEG or PNG)") from exc
        raise ImageReadError("not an image (unknown or unsupported format)") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        # Pillow signals truncated/corrupt data with OSError ("image file is truncated") and,
        # for some formats, SyntaxError or ValueError.
        raise ImageReadError(f"corrupt or truncated image ({exc})") from exc


THIN_RESIZE = 16  # resized images over this many times resize**2 pixels: only the crop resized


def load_center_crop(path: str, resize: int, crop: int, max_pixels: int | None = None) -> np.ndarray:
    """Standard ImageNet evaluation preprocessing up to normalisation: shorter side to
    ``resize`` (bilinear), centre ``crop`` x ``crop``; uint8 HxWx3."""
    from PIL import Image

    im = open_image(path, max_pixels, draft_size=resize)
    w, h = im.size
    scale = resize / min(w, h)
    nw, nh = max(crop, round(w * scale)), max(crop, round(h * scale))
    left, top = (nw - crop) // 2, (nh - crop) // 2
    if nw * nh <= THIN_RESIZE * resize * resize:
        im = im.resize((nw, nh), Image.BILINEAR, reducing_gap=None)
        im = im.crop((left, top, left + crop, top + crop))
    else:
        # A very thin image (a 2x3000 strip would become 256x384000, ~300 MB): resize only the
        # crop's part of it, with the same sampling (the filter still reads the pixels around).
        sx, sy = w / nw, h / nh
        box = (left * sx, top * sy, (left + crop) * sx, (top + crop) * sy)
        im = im.resize((crop, crop), Image.BILINEAR, box=box, reducing_gap=None)
    return np.asarray(im, dtype=np.uint8)


class _Items:
    """Map-style dataset: position -> (position, array or None, failure reason or None)."""

    def __init__(self, paths: list[str], load: Callable[[str], np.ndarray]) -> None:
        self.paths, self.load = paths, load

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            return i, self.load(self.paths[i]), None
        except ImageReadError as exc:
            return i, None, str(exc)
        except Exception as exc:  # a loader bug must not kill a long run either
            return i, None, f"{type(exc).__name__}: {exc}"


def _collate(batch, stack: bool):
    import torch

    pos = [i for i, a, _ in batch if a is not None]
    arrays = [a for _, a, _ in batch if a is not None]
    fails = [(i, r) for i, a, r in batch if a is None]
    if stack:
        data = torch.from_numpy(np.stack(arrays)) if arrays else None
    else:
        data = arrays
    return pos, data, fails


def default_workers(n_items: int, batch_size: int) -> int:
    """Decode workers: none for a handful of items (process start-up would dominate), else
    half the cores, at most 4. (With the model on a GPU, 15 workers were slower than 4 on 768
    images: start-up outweighed the extra decoding; docs/encoders.md.) ``$XMODAL_THREADS``
    counts as the cores: half of it, and none for one thread (each worker is a process that
    takes a core of its own)."""
    budget = thread_budget()
    if n_items <= batch_size or budget == 1:
        return 0
    return max(1, min(4, (budget or cpu_count()) // 2))


def iterate_batches(paths: list[str], load: Callable[[str], np.ndarray], batch_size: int,
                    num_workers: int | None = None, stack: bool = True,
                    prefetch_factor: int = 4) -> Iterator[tuple[list[int], object, list[tuple[int, str]]]]:
    """Batches of decoded items in order: (positions, stacked uint8 tensor or list, failures)."""
    from torch.utils.data import DataLoader

    if num_workers is None:
        num_workers = default_workers(len(paths), batch_size)
    # DataLoader limits torch to one thread per worker; OpenCV is limited in sift._cv2.
    kw = {"prefetch_factor": prefetch_factor} if num_workers > 0 else {}
    loader = DataLoader(_Items(paths, load), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers,
                        collate_fn=functools.partial(_collate, stack=stack), **kw)
    it = iter(loader)
    try:
        yield from it
    finally:
        # Stop the workers now, also when the consumer stops early or fails.
        shutdown = getattr(it, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()


class ImageEncoder(Encoder):
    """Shared part of image encoders: items are file paths, keyed by file content."""

    modality = "image"
    max_pixels: int | None = None  # None: Pillow's Image.MAX_IMAGE_PIXELS
    num_workers: int | None = None  # None: default_workers()

    def _item_key(self, item: str) -> str:
        with open(item, "rb") as fh:
            key = file_hash(fh)
            # Images now decoded differently (high-bit-depth greyscale was clipped to white,
            # EXIF orientation was ignored, transparent pixels were black, an MPO was decoded
            # in full) get their own key, so features cached from the old decode are not
            # reused. Other images keep theirs.
            fh.seek(0)
            tags = _decode_tags(fh)
            if tags:
                key = content_hash(f"{key}:{'+'.join(tags)}".encode())
        return key
