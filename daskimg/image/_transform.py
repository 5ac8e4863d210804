"""Resize, crop or pad RGB pixels to the output shape, then dtype and layout. No I/O.

Resizing is OpenCV's (SIMD, several times Pillow's speed on small images). A downscale by
more than 2x first shrinks by the largest integer factor with an exact box filter
(``INTER_AREA`` on an integer ratio: its fast path), then interpolates the rest (a factor
under 2) with the chosen filter, so no source pixel is skipped: the same idea as Pillow's
``reducing_gap``. ``box`` is a box filter over the whole ratio and ``hamming`` goes through
Pillow, which alone has it.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np
from PIL import Image

from ..options import PreprocessOptions

__all__ = ["center_crop_box", "fit", "resize", "to_array"]

_INTERPOLATION = {
    "bilinear": cv2.INTER_LINEAR,
    "bicubic": cv2.INTER_CUBIC,
    "lanczos": cv2.INTER_LANCZOS4,
}


def resize(pixels: np.ndarray, width: int, height: int, resample: str) -> np.ndarray:
    """``(H, W, 3)`` uint8 pixels (any strides) to ``(height, width, 3)`` by ``resample``."""
    h, w = pixels.shape[:2]
    if (w, h) == (width, height):
        return np.ascontiguousarray(pixels)
    if resample == "hamming":
        img = Image.fromarray(np.ascontiguousarray(pixels), "RGB")
        return np.asarray(img.resize((width, height), Image.Resampling.HAMMING, reducing_gap=3.0))
    if resample in ("nearest", "box"):
        how = cv2.INTER_NEAREST_EXACT if resample == "nearest" else cv2.INTER_AREA
        return cv2.resize(np.ascontiguousarray(pixels), (width, height), interpolation=how)
    kx, ky = max(1, w // width), max(1, h // height)
    if kx > 1 or ky > 1:  # exact integer box reduction first: every source pixel counts
        x0, y0 = (w % kx) // 2, (h % ky) // 2  # the few pixels that do not fill a box: half each side
        w, h = w // kx, h // ky
        box = pixels[y0 : y0 + h * ky, x0 : x0 + w * kx]
        pixels = cv2.resize(np.ascontiguousarray(box), (w, h), interpolation=cv2.INTER_AREA)
    if (w, h) == (width, height):
        return pixels
    return cv2.resize(np.ascontiguousarray(pixels), (width, height), interpolation=_INTERPOLATION[resample])


def center_crop_box(width: int, height: int, target_width: int, target_height: int) -> tuple[int, int, int, int]:
    """``(left, top, width, height)``: the centred region of a ``width`` x ``height`` image with the target's aspect."""
    scale = max(target_width / width, target_height / height)
    cw = min(width, max(1, round(target_width / scale)))
    ch = min(height, max(1, round(target_height / scale)))
    return (width - cw) // 2, (height - ch) // 2, cw, ch


def fit(pixels: np.ndarray, opts: PreprocessOptions,
        convert: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """Bring RGB ``pixels`` to ``(opts.height, opts.width, 3)`` by the resize mode of ``opts``.

    ``convert`` (a colour conversion) is applied to the resized image, not to the padding.
    """

    def sized(src: np.ndarray, width: int, height: int) -> np.ndarray:
        out = resize(src, width, height, opts.resample)
        return out if convert is None else convert(out)

    h, w = pixels.shape[:2]
    tw, th = opts.width, opts.height
    if opts.mode == "stretch":
        return sized(pixels, tw, th)
    if opts.mode == "center_crop":  # one resize of just the centred region with the target's aspect ratio
        left, top, cw, ch = center_crop_box(w, h, tw, th)
        return sized(pixels[top : top + ch, left : left + cw], tw, th)
    scale = min(tw / w, th / h)
    nw, nh = max(1, min(tw, round(w * scale))), max(1, min(th, round(h * scale)))
    canvas = np.empty((th, tw, 3), np.uint8)
    canvas[...] = opts.fill
    top, left = (th - nh) // 2, (tw - nw) // 2
    canvas[top : top + nh, left : left + nw] = sized(pixels, nw, nh)
    return canvas


def to_array(pixels: np.ndarray, opts: PreprocessOptions) -> np.ndarray:
    """An ``(H, W, 3)`` (or ``(3, H, W)``) array in the output dtype and scaling."""
    arr = pixels
    if opts.dtype == "float32":
        arr = arr.astype(np.float32) / np.float32(255)
        if opts.mean is not None:
            arr -= np.asarray(opts.mean, dtype=np.float32)
        if opts.std is not None:
            arr /= np.asarray(opts.std, dtype=np.float32)
    if opts.channels_first:
        arr = np.moveaxis(arr, -1, 0)
    return arr
