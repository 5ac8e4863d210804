"""WebP decoded straight to a reduced size by libwebp's own scaler, through ctypes.

OpenCV and Pillow decode a WebP at full size; the resize then throws most of those pixels
away. libwebp can crop and scale while it decodes (``WebPDecoderOptions.use_cropping`` and
``use_scaling``): the colour conversion runs on the kept, reduced pixels only, with an
area-averaging scaler. On the benchmark corpus (WebP photos of 256-1280 px, centre-cropped to
128 px) that is 3.3 ms an image, decode and resize, where OpenCV's full-size decode plus the
resize take 5.8 ms; a 10,000-URL run took 11.0 s instead of 11.8 s (4 runs each, interleaved).
No Python binding exposes those options, so this module declares the decoder's C interface
(``webp/decode.h``, ABI 0x0209) itself.

The library is the one Pillow already loaded for its WebP plugin (found in
``/proc/self/maps``), else the system's ``libwebp``; older than 1.3.2 (CVE-2023-4863) it is
not used. Without one, :data:`AVAILABLE` is false and WebP goes through OpenCV as before.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

__all__ = ["AVAILABLE", "MIN_VERSION", "decode"]

MIN_VERSION = 0x010302  # 1.3.2: the lossless decoder's heap overflow (CVE-2023-4863) is fixed
_ABI = 0x0209  # WEBP_DECODER_ABI_VERSION; the library checks the major byte only
_MODE_RGB, _MODE_RGBA = 0, 1
_OK = 0


class _Features(ctypes.Structure):
    _fields_ = [("width", ctypes.c_int), ("height", ctypes.c_int), ("has_alpha", ctypes.c_int),
                ("has_animation", ctypes.c_int), ("format", ctypes.c_int), ("pad", ctypes.c_uint32 * 5)]


class _RGBABuffer(ctypes.Structure):
    _fields_ = [("rgba", ctypes.c_void_p), ("stride", ctypes.c_int), ("size", ctypes.c_size_t)]


class _YUVABuffer(ctypes.Structure):
    _fields_ = [*((name, ctypes.c_void_p) for name in ("y", "u", "v", "a")),
                *((name, ctypes.c_int) for name in ("y_stride", "u_stride", "v_stride", "a_stride")),
                *((name, ctypes.c_size_t) for name in ("y_size", "u_size", "v_size", "a_size"))]


class _Buffers(ctypes.Union):
    _fields_ = [("RGBA", _RGBABuffer), ("YUVA", _YUVABuffer)]


class _DecBuffer(ctypes.Structure):
    _fields_ = [("colorspace", ctypes.c_int), ("width", ctypes.c_int), ("height", ctypes.c_int),
                ("is_external_memory", ctypes.c_int), ("u", _Buffers), ("pad", ctypes.c_uint32 * 4),
                ("private_memory", ctypes.c_void_p)]


class _Options(ctypes.Structure):
    _fields_ = [*((name, ctypes.c_int) for name in (
        "bypass_filtering", "no_fancy_upsampling", "use_cropping", "crop_left", "crop_top", "crop_width",
        "crop_height", "use_scaling", "scaled_width", "scaled_height", "use_threads", "dithering_strength", "flip",
        "alpha_dithering_strength")), ("pad", ctypes.c_uint32 * 5)]


class _Config(ctypes.Structure):
    _fields_ = [("input", _Features), ("output", _DecBuffer), ("options", _Options)]


def _candidates() -> Iterator[str]:
    """The libwebp Pillow loaded, then the system's (found only if needed: ``find_library`` runs ldconfig)."""
    try:
        import PIL._webp  # noqa: F401  (loads Pillow's libwebp, if Pillow has WebP support)

        maps = Path(f"/proc/{os.getpid()}/maps").read_text()
    except (ImportError, OSError):
        maps = ""
    paths: dict[str, None] = {}  # in order, once each
    for line in maps.splitlines():
        fields = line.split(maxsplit=5)  # address perms offset dev inode [path]
        path = fields[5] if len(fields) == 6 else ""
        name = os.path.basename(path)
        if ".so" in name and name.split(".so")[0].split("-")[0] == "libwebp":  # not libwebpmux, libwebpdemux
            paths[path] = None
    yield from paths
    system = ctypes.util.find_library("webp")
    if system:
        yield system


def _load() -> ctypes.CDLL | None:
    for path in _candidates():
        try:
            lib = ctypes.CDLL(path)
            if lib.WebPGetDecoderVersion() < MIN_VERSION:
                continue
            lib.WebPInitDecoderConfigInternal.argtypes = [ctypes.POINTER(_Config), ctypes.c_int]
            lib.WebPGetFeaturesInternal.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.POINTER(_Features),
                                                    ctypes.c_int]
            lib.WebPDecode.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.POINTER(_Config)]
        except (OSError, AttributeError):  # not loadable, or not libwebp's decoder
            continue
        return lib
    return None


_LIB = _load()
AVAILABLE = _LIB is not None


def decode(data: bytes, crop: tuple[int, int, int, int], min_width: int, min_height: int) -> np.ndarray | None:
    """The ``crop`` region ``(left, top, width, height)`` of a still WebP, reduced while decoding.

    The region is reduced by the largest integer factor that keeps it at least
    ``min_width`` x ``min_height`` (as libjpeg-turbo's DCT scaling does for JPEG), with
    libwebp's area-averaging scaler, over whole boxes only: the few pixels that do not fill a
    box are left out, half each side (as :func:`daskimg.transform.resize` does). libwebp
    crops from even pixels only (its colour planes have half the resolution; see
    :func:`_boxes`).

    Returns ``(H, W, 3)`` RGB or ``(H, W, 4)`` RGBA (not premultiplied) pixels, or None when
    the region is less than twice the minimum (nothing to gain: decode it whole), when the
    library is missing, or when it refuses the data (an animation, a corrupt file).
    """
    left, top, width, height = crop
    factor = min(width // max(1, min_width), height // max(1, min_height))
    if _LIB is None or factor < 2:
        return None
    config = _Config()
    if not _LIB.WebPInitDecoderConfigInternal(ctypes.byref(config), _ABI):
        return None
    if _LIB.WebPGetFeaturesInternal(data, len(data), ctypes.byref(config.input), _ABI) != _OK:
        return None
    features = config.input
    if features.has_animation or left + width > features.width or top + height > features.height:
        return None
    (x, columns), (y, rows) = _boxes(left, width, factor), _boxes(top, height, factor)
    options = config.options
    options.use_cropping = 1
    options.crop_left, options.crop_top, options.crop_width, options.crop_height = x, y, columns * factor, rows * factor
    options.use_scaling = 1
    options.scaled_width, options.scaled_height = columns, rows
    channels = 4 if features.has_alpha else 3
    pixels = np.empty((rows, columns, channels), np.uint8)
    out = config.output
    out.colorspace = _MODE_RGBA if features.has_alpha else _MODE_RGB
    out.is_external_memory = 1
    out.u.RGBA.rgba = pixels.ctypes.data
    out.u.RGBA.stride = pixels.strides[0]
    out.u.RGBA.size = pixels.nbytes
    if _LIB.WebPDecode(data, len(data), ctypes.byref(config)) != _OK:
        return None
    return pixels


def _boxes(start: int, size: int, factor: int) -> tuple[int, int]:
    """``(first, count)``: whole boxes of ``factor`` pixels in ``start .. start + size``, centred.

    libwebp crops from even pixels only: an odd first pixel moves by one within the pixels
    left out, if any; else libwebp moves it one pixel back, a shift of ``1 / factor`` output
    pixel. (Giving up a box to make room moves the edges further: measured, it was worse.)
    """
    count, spare = divmod(size, factor)
    first = start + spare // 2
    if first % 2 and spare:
        first += 1 if first < start + spare else -1
    return first, count
