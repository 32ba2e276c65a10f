"""Decode an image read by :mod:`~clip_embeddings.inputs.sources` into a PIL RGB image.

Pillow decoding with a decompression-bomb guard (a patch of Pillow's own size check, installed
once at import, that adds this thread's ``max_pixels``), a check that the file decodes completely
(a truncated download fails instead of giving a half-grey picture), EXIF orientation, the first
frame of animations, transparency composited on white, 16-bit and float images scaled to 8 bits,
and an optional JPEG draft mode that decodes large photos at a reduced scale still big enough for
CLIP.

Example:
    >>> from clip_embeddings.inputs.decode import decode_image
    >>> from clip_embeddings.inputs.sources import read_image_source
    >>> import numpy as np
    >>> decode_image(read_image_source(np.zeros((4, 6, 3), dtype=np.uint8))).size
    (6, 4)
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import io
import math
from collections.abc import Iterator

import numpy as np
from PIL import Image, ImageOps, JpegImagePlugin, UnidentifiedImageError

from ..errors import ImageLoadError
from . import heif
from .options import DEFAULT_OPTIONS, LoaderOptions, RawImage

DRAFT_MARGIN: float = 2.0
"""JPEG draft decoding stops at a scale whose shorter side is still ``>= DRAFT_MARGIN * R``.

Measured with ``benchmarks/draft_mode.py`` (R = 224, 1-12 MP photos, JPEG quality 90): with a
margin of 2, ``Preprocess(224)`` of the draft decode differs from that of the full decode by at
most 0.075 and on average 0.002-0.006 in normalised units (one 8-bit level is ~0.015), about as
much as JPEG compression itself changes it, while decoding 3-12 MP photos is ~2x faster (1.3-1.7x
for heavily textured ones). A margin of 1 is barely faster and up to 0.42 (max) / 0.019 (mean)
off: the image then lands just above R, where the DCT-scaled pixels are still visible.
"""

# ----- in-memory inputs ----------------------------------------------------------------------


def check_pixels(width: int, height: int, source: str, options: LoaderOptions) -> None:
    if width <= 0 or height <= 0:
        raise ImageLoadError(f"image has no pixels ({width}x{height})", source=source)
    if width * height > options.max_pixels:
        raise _too_many_pixels(width, height, source, options)


def _too_many_pixels(width: int, height: int, source: str, options: LoaderOptions) -> ImageLoadError:
    return ImageLoadError(
        f"image too large: {width}x{height} = {width * height} pixels, more than max_pixels="
        f"{options.max_pixels} (decompression-bomb guard; raise LoaderOptions.max_pixels "
        "if this image is expected)", source=source)


# Pillow asks ``Image._decompression_bomb_check(size)`` before it decodes anything: in
# ``Image.open`` and for each image nested inside another (the PNG or BMP frames of an ICO, which
# ``Image.open`` decodes at once; ICNS members; GIF frames on seek). Its limit is one global, so
# the hook below adds this thread's ``max_pixels`` while :func:`decode_image` runs: one check, at
# the point where every format reveals a size, before a single pixel is allocated.
_pixel_limit: contextvars.ContextVar[int | None] = contextvars.ContextVar("clip_max_pixels", default=None)
_pillow_bomb_check = Image._decompression_bomb_check


class _OverPixelLimit(Image.DecompressionBombError):
    def __init__(self, size: tuple[int, int]):
        super().__init__(f"{size[0]}x{size[1]}")
        self.size = size


def _bomb_check(size: tuple[int, int], *args, **kwargs) -> None:
    limit = _pixel_limit.get()
    if limit is not None and size[0] * size[1] > limit:
        raise _OverPixelLimit((size[0], size[1]))
    _pillow_bomb_check(size, *args, **kwargs)  # Pillow's signature varies (error_only=, ...)


if getattr(Image._decompression_bomb_check, "__module__", None) != __name__:  # once, even on reload
    Image._decompression_bomb_check = _bomb_check


@contextlib.contextmanager
def _max_pixels(limit: int) -> Iterator[None]:
    token = _pixel_limit.set(limit)
    try:
        yield
    finally:
        _pixel_limit.reset(token)


def image_digest(image: Image.Image, source: str) -> str:
    """SHA-256 of an in-memory image's mode, size, palette, transparency and pixels."""
    try:
        pixels = image.tobytes()  # loads a lazily opened file image
        palette = image.palette
        header = repr((image.mode, image.size, palette.mode if palette else None,
                       image.info.get("transparency")))
        digest = hashlib.sha256(b"clip-embeddings image\0" + header.encode() + b"\0")
        if palette is not None:
            digest.update(bytes(palette.tobytes()))
        digest.update(pixels)
    except Exception as e:  # a lazily opened PIL image whose file is broken
        raise ImageLoadError(_pillow_reason(e), source=source) from e
    return digest.hexdigest()


def array_to_image(arr: np.ndarray, source: str, options: LoaderOptions) -> Image.Image:
    """A numpy image, (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), as an 8-bit PIL image.

    How the value range is decided (the dtype alone cannot say it: Chroma declares images as
    ``int64``/``float64`` arrays, and its ``ImageLoader`` returns ``int32`` for mode-I files and
    ``float32`` holding 0..255 for mode-F files):

    - ``uint8`` is 8-bit and ``uint16`` is 16-bit (scaled by 255/65535), whatever the values.
    - ``bool`` is black and white.
    - Any other integer dtype is read by its values: all in 0..255 is 8-bit; else all in
      0..65535 is 16-bit (a 16-bit image whose brightest pixel is at most 255 would read as 8-bit:
      pass it as ``uint16`` to say so). Negative values or values above 65535 are refused.
    - Floats: all in [0, 1] is normalised data (times 255); else all in [0, 255] is 8-bit data
      (rounded). Values outside [0, 255], NaN and infinity are refused.
    """
    shape = tuple(arr.shape)
    if arr.ndim == 3 and shape[2] == 1:
        arr = arr[:, :, 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4))):
        hint = ""
        if arr.ndim == 3 and shape[0] in (1, 3, 4):
            hint = "; it looks channels-first: pass arr.transpose(1, 2, 0)"
        elif arr.ndim == 4:
            hint = "; it looks like a batch: pass the images one by one"
        raise ImageLoadError(f"unsupported array shape {shape}: expected (H, W), (H, W, 1), "
                             f"(H, W, 3) or (H, W, 4){hint}", source=source)
    check_pixels(arr.shape[1], arr.shape[0], source, options)
    kind = arr.dtype.kind
    lo: float  # the value range: ints for an integer dtype, floats for a float one
    hi: float
    if arr.dtype == np.uint8:
        out = arr
    elif kind == "b":
        out = arr.astype(np.uint8) * 255
    elif arr.dtype == np.uint16:
        out = _sixteen_bit_to_eight(arr)
    elif kind in "iu":
        lo, hi = int(arr.min()), int(arr.max())
        if lo >= 0 and hi <= 255:
            out = arr.astype(np.uint8)
        elif lo >= 0 and hi <= 65535:
            out = _sixteen_bit_to_eight(arr)
        else:
            raise ImageLoadError(
                f"{arr.dtype} array values must lie in 0..255 (8-bit) or 0..65535 (16-bit), got "
                f"[{lo}, {hi}]; rescale it to one of those ranges first", source=source)
    elif kind == "f":
        work = arr.astype(np.float32) if arr.dtype.itemsize < 4 else arr
        if not np.isfinite(work).all():
            raise ImageLoadError(f"array contains NaN or infinity (dtype {arr.dtype})",
                                 source=source)
        lo, hi = float(work.min()), float(work.max())
        if lo < 0.0 or hi > 255.0:
            raise ImageLoadError(
                f"{arr.dtype} array values must lie in [0, 1] (normalised) or [0, 255] (8-bit), "
                f"got [{lo:.4g}, {hi:.4g}]; rescale it first, e.g. to uint8", source=source)
        scale = 255.0 if hi <= 1.0 else 1.0
        out = np.rint(work * scale).astype(np.uint8)
    else:
        raise ImageLoadError(f"unsupported array dtype {arr.dtype} (shape {shape}): use an integer "
                             "dtype (0..255 or 0..65535), bool, or float in [0, 1] or [0, 255]",
                             source=source)
    image = Image.fromarray(np.ascontiguousarray(out))
    if np.may_share_memory(out, arr):  # Pillow maps L and RGBA arrays: snapshot the pixels
        image = image.copy()
    return image


def _sixteen_bit_to_eight(arr: np.ndarray) -> np.ndarray:
    """0..65535 to 0..255, rounded to nearest (the same rounding as 16-bit files get)."""
    return ((arr.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# Decoding

_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF8", "GIF"), (b"BM", "BMP"),
    (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"),
)


def _unidentified_reason(data: bytes) -> str:
    for magic, name in _MAGIC:
        if data.startswith(magic):
            return f"truncated or corrupt image data: starts like a {name} file but its header " \
                   "cannot be read"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "truncated or corrupt image data: starts like a WebP file but its header " \
               "cannot be read"
    reason = "not an image (cannot identify image file)"
    head = data[:256].lstrip().lower()
    if head.startswith((b"<svg", b"<?xml")) and b"<svg" in data[:4096].lower():
        reason += "; it is an SVG drawing, which is not supported"
    elif head.startswith((b"<!doctype html", b"<html", b"<head", b"<body")):
        reason += "; it is an HTML page (an error or login page?)"
    elif head.startswith((b"{", b"[")):
        reason += "; it looks like JSON"
    return reason


def _pillow_reason(e: BaseException) -> str:
    if isinstance(e, Image.DecompressionBombError):
        return (f"image too large for Pillow's own decompression-bomb limit ({e}); a "
                "LoaderOptions.max_pixels above 2 * PIL.Image.MAX_IMAGE_PIXELS needs that raised too")
    if isinstance(e, Image.DecompressionBombWarning):
        return f"image too large ({e})"
    if isinstance(e, MemoryError):
        return "out of memory while decoding the image"
    text = str(e).strip() or type(e).__name__
    return f"truncated or corrupt image data: {text}"


def decode_image(raw: RawImage, options: LoaderOptions = DEFAULT_OPTIONS, *,
                 draft_resolution: int | None = None) -> Image.Image:
    """Decode a :class:`RawImage` into an RGB PIL image, ready for CLIP preprocessing.

    The pixel count is checked against ``options.max_pixels`` from the header before decoding;
    the whole image must decode (truncated files fail); EXIF orientation is applied; animations
    give their first frame; transparent pixels are composited on white; 16-bit and float images
    are scaled to 8 bits; CMYK, palette and gray images are converted to RGB.

    ``draft_resolution=R`` lets a JPEG be decoded at a reduced scale (1/2, 1/4 or 1/8) whose
    shorter side stays at least ``DRAFT_MARGIN * R``: about twice as fast for 3-12 MP photos, and
    the preprocessed tensor changes about as little as JPEG compression changes it. Other formats
    ignore it. In-memory images (PIL, numpy) are only converted to RGB: no EXIF rotation, current frame.

    Example:
        >>> from clip_embeddings.inputs.sources import read_image_source
        >>> raw = read_image_source(np.full((2, 2), 0.5))
        >>> decode_image(raw).getpixel((0, 0))
        (128, 128, 128)
    """
    if draft_resolution is not None and draft_resolution < 1:
        raise ValueError(f"draft_resolution must be >= 1, got {draft_resolution}")
    source = raw.source
    if raw.image is not None:
        image = raw.image
        check_pixels(image.width, image.height, source, options)
        return _convert(image, source)
    if raw.data is None:
        raise ImageLoadError("nothing to decode (RawImage has neither data nor image)",
                             source=source)
    with _max_pixels(options.max_pixels):
        image = _open_and_load(raw.data, source, options, draft_resolution)
    try:
        ImageOps.exif_transpose(image, in_place=True)
    except Exception:  # malformed EXIF: the pixels are fine, keep them as stored
        pass
    return _convert(image, source)


def _open_and_load(data: bytes, source: str, options: LoaderOptions,
                   draft_resolution: int | None) -> Image.Image:
    """``Image.open`` then ``load``, under :func:`_max_pixels` (set by the caller)."""
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        kind = heif.container(data)
        if kind is not None and heif.register_plugin():  # the first HEIC seen: try again with the plugin
            return _open_and_load(data, source, options, draft_resolution)
        raise ImageLoadError(heif.unreadable_reason(kind) if kind else _unidentified_reason(data),
                             source=source) from None
    except _OverPixelLimit as e:  # an ICO's frame, refused before Pillow decoded it
        raise _too_many_pixels(*e.size, source, options) from None
    except Exception as e:  # DecompressionBombError, SyntaxError from broken headers, ...
        raise ImageLoadError(_pillow_reason(e), source=source) from e
    check_pixels(image.width, image.height, source, options)
    if image.format == "EPS":
        # Pillow decodes PostScript by running Ghostscript on it (when installed): a program from
        # the file, not pixel data. Refused before load(), which is what would start it.
        raise ImageLoadError("PostScript (EPS) files are not decoded: rendering them runs "
                             "Ghostscript on the file; convert it to PNG or JPEG first", source=source)
    try:
        if draft_resolution is not None and isinstance(image, JpegImagePlugin.JpegImageFile):
            side = max(1, math.ceil(DRAFT_MARGIN * draft_resolution))
            image.draft("RGB", (side, side))
        image.load()  # decodes everything; a truncated file raises (LOAD_TRUNCATED_IMAGES False)
    except _OverPixelLimit as e:
        raise _too_many_pixels(*e.size, source, options) from None
    except Exception as e:
        raise ImageLoadError(_pillow_reason(e), source=source) from e
    return image


def _convert(image: Image.Image, source: str) -> Image.Image:
    try:
        return _to_rgb(image)
    except ValueError as e:  # no conversion from this mode
        raise ImageLoadError(f"unsupported image mode {image.mode!r} ({e})", source=source) from e
    except Exception as e:  # a lazily opened PIL image whose file is broken
        raise ImageLoadError(_pillow_reason(e), source=source) from e


_PREMULTIPLIED = {"La": "LA", "RGBa": "RGBA"}  # Pillow converts these only to their straight-alpha twin


def _composite_on_white(image: Image.Image) -> Image.Image:
    if image.mode in _PREMULTIPLIED:
        image = image.convert(_PREMULTIPLIED[image.mode])
    rgba = image if image.mode == "RGBA" else image.convert("RGBA")
    alpha = rgba.getchannel("A")
    if alpha.getextrema()[0] == 255:  # fully opaque
        return rgba.convert("RGB")
    background = Image.new("RGB", rgba.size, (255, 255, 255))
    background.paste(rgba.convert("RGB"), (0, 0), alpha)
    return background


def _gray_to_rgb(gray8: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(gray8)).convert("RGB")


def _sixteen_to_uint8(arr: np.ndarray, transparent: object) -> Image.Image:
    """16-bit gray (0..65535) to 8 bits, full range to full range; a tRNS value becomes white."""
    out = _sixteen_bit_to_eight(arr)
    if isinstance(transparent, int):
        out[arr == transparent] = 255
    return _gray_to_rgb(out)


def _stretch_to_uint8(arr: np.ndarray, lo: float, hi: float) -> Image.Image:
    if hi <= lo:
        return _gray_to_rgb(np.zeros(arr.shape, dtype=np.uint8))
    return _gray_to_rgb(np.clip(np.rint((arr - lo) * (255.0 / (hi - lo))), 0, 255).astype(np.uint8))


def _to_rgb(image: Image.Image) -> Image.Image:
    mode = image.mode
    lo: float  # the value range: ints in mode I, floats in mode F
    hi: float
    if mode.startswith("I;16"):
        return _sixteen_to_uint8(np.asarray(image), image.info.get("transparency"))
    if mode == "I":
        arr = np.asarray(image).astype(np.int64)
        lo, hi = int(arr.min()), int(arr.max())
        if lo >= 0 and hi <= 65535:  # 16-bit data, as PNG and TIFF give it
            return _sixteen_to_uint8(arr, image.info.get("transparency"))
        return _stretch_to_uint8(arr.astype(np.float64), lo, hi)  # other integers: min..max
    if mode == "F":
        arr = np.asarray(image).astype(np.float64)
        finite = np.isfinite(arr)
        if not finite.any():
            return Image.new("RGB", image.size, (0, 0, 0))
        lo, hi = float(arr[finite].min()), float(arr[finite].max())
        if lo >= 0.0 and hi <= 1.0:  # normalised data: 0..1 -> 0..255
            lo, hi = 0.0, 1.0
        return _stretch_to_uint8(np.where(finite, arr, lo), lo, hi)  # NaN/inf: black
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        return _composite_on_white(image)
    if mode == "P" and image.palette is not None and image.palette.mode == "RGBA":
        return _composite_on_white(image)
    if mode == "RGB":
        return image
    return image.convert("RGB")  # 1, L, P, CMYK, YCbCr, LAB, HSV
