"""Bytes to upright RGB pixels, refusing what is not an allowed, sane image.

The format comes from the bytes, never from the URL or the Content-Type. Pillow reads
the header (format, size, mode, EXIF) and the pixel count is checked before any pixel is
allocated. Pixels then come from the cheapest decoder for the format:

* JPEG: libjpeg-turbo through simplejpeg, at the smallest of its 1/8-step DCT scales that
  still covers the target (Pillow's ``draft`` only has 1/2, 1/4 and 1/8);
* 8-bit PNG (every colour type, palette and tRNS included): Wuffs through pywuffs when the
  ``[fast]`` extra is installed;
* other PNG (16-bit grey, RGB, with or without alpha, no palette or tRNS): libspng through
  pyspng;
* WebP (still images): libwebp through OpenCV;
* everything else, and any file a fast decoder rejects: Pillow, which stays the reference.

A truncated file is a ``decode_error``, as long as Pillow's ``ImageFile.LOAD_TRUNCATED_IMAGES``
keeps its default (False): daskimg reads that setting and never changes it. Malformed EXIF is
handled (the image is kept, unrotated); the warning Pillow emits for it goes wherever the
process sends warnings (the clusters daskimg starts ignore it, see :mod:`daskimg.cluster`).
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np
import pyspng
import simplejpeg
from PIL import Image, UnidentifiedImageError

from .._types import Status
from ..options import PreprocessOptions

__all__ = ["DecodeError", "Decoded", "decode", "to_rgb"]

# EXIF orientation -> the flip or transpose (a view: no copy) that makes the pixels upright.
_ORIENT: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: a.transpose(1, 0, 2)[:, ::-1],
    7: lambda a: a.transpose(1, 0, 2)[::-1, ::-1],
    8: lambda a: a.transpose(1, 0, 2)[::-1],
}
_EXIF_ORIENTATION = 0x0112
_SIXTEEN_BIT = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})

_FAST_PNG_MODES = frozenset({"L", "RGB", "RGBA", "I;16", "I;16B"})  # pyspng refuses grey + alpha
try:
    from pywuffs import ImageDecoderType, PixelFormat
    from pywuffs.aux import ImageDecoder, ImageDecoderConfig
except ImportError:  # the [fast] extra is not installed: libspng decodes 8-bit PNG
    ImageDecoder = None
else:
    _WUFFS_PNG = {}
    for _alpha, _format in ((False, PixelFormat.RGB), (True, PixelFormat.RGBA_NONPREMUL)):
        _WUFFS_PNG[_alpha] = _config = ImageDecoderConfig()
        _config.enabled_decoders = [ImageDecoderType.PNG]
        _config.pixel_format = _format
_PNG_BIT_DEPTH = 24  # offset of the bit depth in a PNG file: signature (8), IHDR length, type, width, height


class DecodeError(Exception):
    """Bytes that do not give an image; ``status`` is the metadata status to record."""

    def __init__(self, status: Status, message: str) -> None:
        super().__init__(message)
        self.status = status

    def __reduce__(self) -> tuple[type[DecodeError], tuple[Status, str]]:
        return DecodeError, (self.status, str(self))


@dataclass(frozen=True, slots=True)
class Decoded:
    """Upright RGB pixels, ``(H, W, 3)`` uint8 (possibly a strided view), and what the original was.

    The pixels may be fewer than the original's (a JPEG decoded at a reduced DCT scale)
    but always cover what the resize needs.
    """

    pixels: np.ndarray
    width: int
    height: int
    format: str
    icc_profile: bytes | None = None  # the colour space the pixels are in, when the file names one


def _orientation(img: Image.Image) -> int:
    if img.format in ("GIF", "BMP") or (img.format == "PNG" and "exif" not in img.info):
        return 1  # no EXIF here; and Pillow would decode a whole PNG looking for a late eXIf chunk
    try:
        value = img.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # malformed EXIF of any kind: keep the image, unrotated
        return 1
    return value if isinstance(value, int) and value in _ORIENT else 1


def _needed_size(width: int, height: int, opts: PreprocessOptions, swapped: bool) -> tuple[int, int]:
    """Smallest stored-orientation size the resize still needs (never more than the image)."""
    tw, th = (opts.height, opts.width) if swapped else (opts.width, opts.height)
    if opts.mode == "stretch":
        sx, sy = tw / width, th / height
    else:
        pick = max if opts.mode == "center_crop" else min
        sx = sy = pick(tw / width, th / height)
    return min(width, math.ceil(width * sx)), min(height, math.ceil(height * sy))


def _fast_pixels(img: Image.Image, data: bytes, opts: PreprocessOptions, orientation: int) -> np.ndarray | None:
    """RGB pixels from a faster decoder when one applies to this file, else None (then Pillow decodes)."""
    if img.format == "JPEG" and img.mode in ("RGB", "L"):
        need_w, need_h = _needed_size(*img.size, opts, swapped=orientation >= 5)
        jpeg: np.ndarray = simplejpeg.decode_jpeg(data, colorspace="RGB", min_width=need_w, min_height=need_h,
                                                  min_factor=1)
        return jpeg
    if img.format == "PNG" and ImageDecoder is not None and len(data) > _PNG_BIT_DEPTH and data[_PNG_BIT_DEPTH] <= 8:
        alpha = img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info
        decoded = ImageDecoder(_WUFFS_PNG[alpha]).decode(data)  # a fresh decoder: no state shared by threads
        if decoded.error_message:
            return None
        return _rgb_array(decoded.pixbuf, opts.background) if alpha else decoded.pixbuf
    if img.format == "PNG" and img.mode in _FAST_PNG_MODES and "transparency" not in img.info:
        png: np.ndarray = pyspng.load(data)
        if png.dtype == np.uint16:
            png = ((png.astype(np.uint32) + 128) // 257).astype(np.uint8)
        return _rgb_array(png, opts.background)
    if img.format == "WEBP" and not getattr(img, "is_animated", False):
        webp = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        if webp is None:
            return None
        code = cv2.COLOR_BGRA2RGBA if webp.ndim == 3 and webp.shape[2] == 4 else cv2.COLOR_BGR2RGB
        return _rgb_array(cv2.cvtColor(webp, code), opts.background)
    return None


def _rgb_array(arr: np.ndarray, background: tuple[int, int, int]) -> np.ndarray:
    """8-bit grey, grey + alpha, RGB or RGBA pixels to RGB, alpha composited on ``background``."""
    channels = 1 if arr.ndim == 2 else arr.shape[2]
    if channels == 3:
        return arr
    if channels == 4:
        rgb, alpha = arr[..., :3], arr[..., 3]
    else:
        rgb = cv2.cvtColor(np.ascontiguousarray(arr if channels == 1 else arr[..., 0]), cv2.COLOR_GRAY2RGB)
        if channels == 1:
            return rgb
        alpha = arr[..., 1]
    a = alpha.astype(np.uint16)[..., None]  # rgb * a + background * (1 - a), rounded
    mixed = rgb * a + np.asarray(background, np.uint16) * (255 - a) + 127
    return (mixed // 255).astype(np.uint8)


def _pillow_pixels(img: Image.Image, opts: PreprocessOptions, orientation: int) -> np.ndarray:
    if img.format == "JPEG":
        need = _needed_size(*img.size, opts, swapped=orientation >= 5)
        if need[0] * 2 <= img.size[0] and need[1] * 2 <= img.size[1]:  # draft only reduces by 2, 4 or 8
            img.draft("RGB", need)
    img.load()
    return np.asarray(to_rgb(img, opts.background))


def to_rgb(img: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """Any Pillow mode to 8-bit RGB: alpha composited on ``background``, 16-bit scaled (not clipped)."""
    if img.mode == "RGB" and "transparency" not in img.info:
        return img
    if img.mode in ("P", "RGB", "L", "1"):  # a palette, or a tRNS colour key: its pixels are transparent
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif img.mode in _SIXTEEN_BIT:
        wide = np.asarray(img, dtype=np.uint32)
        img = Image.fromarray(((np.minimum(wide, 65535) + 128) // 257).astype(np.uint8), "L")
    elif img.mode == "F":
        img = Image.fromarray(np.clip(np.asarray(img) * 255 + 0.5, 0, 255).astype(np.uint8), "L")
    elif img.mode in ("LA", "La", "PA", "RGBa"):
        img = img.convert("RGBA")
    if img.mode == "RGBA":
        canvas = Image.new("RGB", img.size, background)
        canvas.paste(img, mask=img.getchannel("A"))
        return canvas
    return img.convert("RGB")


def decode(data: bytes, opts: PreprocessOptions) -> Decoded:
    """Decode ``data`` into upright RGB pixels sized for the resize that follows.

    Raises
    ------
    DecodeError
        With status ``not_image`` (no allowed format recognised), ``too_many_pixels`` or
        ``decode_error`` (truncated or corrupt data).
    """
    img: Image.Image
    try:
        img = Image.open(io.BytesIO(data), formats=list(opts.formats))
    except Image.DecompressionBombError as e:
        raise DecodeError(Status.TOO_MANY_PIXELS, str(e)) from None
    except UnidentifiedImageError:
        raise DecodeError(Status.NOT_IMAGE, f"not an image in an accepted format ({', '.join(opts.formats)})") from None
    except Exception as e:  # a hostile header can raise anything from a plugin's parser
        raise DecodeError(Status.DECODE_ERROR, f"unreadable image header: {type(e).__name__}: {e}") from None
    width, height = img.size
    fmt = img.format or "unknown"
    if width * height > opts.max_pixels:
        raise DecodeError(Status.TOO_MANY_PIXELS, f"{width}x{height} exceeds the {opts.max_pixels} pixel cap")
    if width == 0 or height == 0:
        raise DecodeError(Status.DECODE_ERROR, f"empty image ({width}x{height})")
    orientation = _orientation(img)
    try:
        try:
            pixels = _fast_pixels(img, data, opts, orientation)
        except Exception:  # the fast decoder disliked this file: Pillow decides, and words the error
            pixels = None
        if pixels is None:
            pixels = _pillow_pixels(img, opts, orientation)
    except Exception as e:  # corrupt or truncated data: the plugin's error is the message
        raise DecodeError(Status.DECODE_ERROR, f"{fmt} decode failed: {type(e).__name__}: {e}") from None
    if orientation in _ORIENT:
        pixels = _ORIENT[orientation](pixels)
        width, height = (height, width) if orientation >= 5 else (width, height)
    icc = img.info.get("icc_profile")
    return Decoded(pixels, width, height, fmt, icc if isinstance(icc, bytes) else None)
