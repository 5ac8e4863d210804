"""Bytes to an upright RGB Pillow image, refusing what is not an allowed, sane image.

The format comes from the bytes, never from the URL or the Content-Type. Pillow reads
the header (format, size, mode, EXIF) and the pixel count is checked before any pixel is
allocated. Pixels then come from the cheapest decoder for the format:

* JPEG: libjpeg-turbo through simplejpeg, at the smallest of its 1/8-step DCT scales that
  still covers the target (Pillow's ``draft`` only has 1/2, 1/4 and 1/8);
* PNG (8/16-bit grey, RGB, with or without alpha, no palette or tRNS): libspng through
  pyspng, about twice Pillow's speed;
* everything else, and any file a fast decoder rejects: Pillow, which stays the reference.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from .config import PreprocessOptions

__all__ = ["DecodeError", "Decoded", "decode", "to_rgb"]

# EXIF orientation -> the transpose that makes the image upright.
_ORIENT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_EXIF_ORIENTATION = 0x0112
_SIXTEEN_BIT = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is a failure, not grey pixels

try:
    import simplejpeg
except ImportError:  # an optional accelerator: Pillow decodes every JPEG without it
    simplejpeg = None
try:
    import pyspng
except ImportError:  # likewise for PNG
    pyspng = None
_FAST_PNG_MODES = frozenset({"L", "LA", "RGB", "RGBA", "I;16", "I;16B"})


class DecodeError(Exception):
    """Bytes that do not give an image; ``status`` is the metadata status to record."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status

    def __reduce__(self) -> tuple[type[DecodeError], tuple[str, str]]:
        return DecodeError, (self.status, str(self))


@dataclass(frozen=True, slots=True)
class Decoded:
    """An upright RGB image plus what the original looked like."""

    image: Image.Image
    width: int
    height: int
    format: str


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


def _fast_pixels(img: Image.Image, data: bytes, opts: PreprocessOptions, orientation: int) -> Image.Image | None:
    """Pixels from a faster decoder when one applies to this file, else None (then Pillow decodes)."""
    if img.format == "JPEG" and simplejpeg is not None and img.mode in ("RGB", "L"):
        need_w, need_h = _needed_size(*img.size, opts, swapped=orientation >= 5)
        arr = simplejpeg.decode_jpeg(data, colorspace="RGB", min_width=need_w, min_height=need_h, min_factor=1)
        return Image.fromarray(arr, "RGB")
    if img.format == "PNG" and pyspng is not None and img.mode in _FAST_PNG_MODES and "transparency" not in img.info:
        arr = pyspng.load(data)
        if arr.dtype == np.uint16:
            arr = ((arr.astype(np.uint32) + 128) // 257).astype(np.uint8)
        channels = 1 if arr.ndim == 2 else arr.shape[2]
        return Image.fromarray(arr, {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[channels])
    return None


def _pillow_pixels(img: Image.Image, opts: PreprocessOptions, orientation: int) -> Image.Image:
    if img.format == "JPEG":
        need = _needed_size(*img.size, opts, swapped=orientation >= 5)
        if need[0] * 2 <= img.size[0] and need[1] * 2 <= img.size[1]:  # draft only reduces by 2, 4 or 8
            img.draft("RGB", need)
    img.load()
    return img


def to_rgb(img: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """Any Pillow mode to 8-bit RGB: alpha composited on ``background``, 16-bit scaled (not clipped)."""
    if img.mode == "RGB":
        return img
    if img.mode == "P":
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
    """Decode ``data`` into an upright RGB image sized for the resize that follows.

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
        raise DecodeError("too_many_pixels", str(e)) from None
    except UnidentifiedImageError:
        raise DecodeError("not_image", f"not an image in an accepted format ({', '.join(opts.formats)})") from None
    except Exception as e:  # a hostile header can raise anything from a plugin's parser
        raise DecodeError("decode_error", f"unreadable image header: {type(e).__name__}: {e}") from None
    width, height = img.size
    fmt = img.format or "unknown"
    if width * height > opts.max_pixels:
        raise DecodeError("too_many_pixels", f"{width}x{height} exceeds the {opts.max_pixels} pixel cap")
    if width == 0 or height == 0:
        raise DecodeError("decode_error", f"empty image ({width}x{height})")
    orientation = _orientation(img)
    try:
        try:
            pixels = _fast_pixels(img, data, opts, orientation)
        except Exception:  # the fast decoder disliked this file: Pillow decides, and words the error
            pixels = None
        img = pixels if pixels is not None else _pillow_pixels(img, opts, orientation)
        if orientation in _ORIENT:
            img = img.transpose(_ORIENT[orientation])
        rgb = to_rgb(img, opts.background)
    except Exception as e:  # corrupt or truncated data: the plugin's error is the message
        raise DecodeError("decode_error", f"{fmt} decode failed: {type(e).__name__}: {e}") from None
    if orientation >= 5:
        width, height = height, width
    return Decoded(rgb, width, height, fmt)
