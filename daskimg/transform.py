"""Resize, crop or pad an RGB image to the output shape, then dtype and layout. No I/O."""

from __future__ import annotations

import numpy as np
from PIL import Image

from .config import PreprocessOptions

__all__ = ["fit", "to_array"]

# Downscales of more than 3x first shrink by an integer factor (a cheap box filter), then resample:
# Pillow documents the result as indistinguishable from a full resampling at this gap.
_REDUCING_GAP = 3.0

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}


def fit(img: Image.Image, opts: PreprocessOptions) -> Image.Image:
    """Bring ``img`` to ``(opts.width, opts.height)`` by the resize mode of ``opts``."""
    w, h = img.size
    tw, th = opts.width, opts.height
    resample = _RESAMPLE[opts.resample]
    if opts.mode == "stretch":
        return img.resize((tw, th), resample, reducing_gap=_REDUCING_GAP)
    if opts.mode == "center_crop":
        # Crop and scale in one resampling pass: the box is the centred region that scales to the target.
        scale = max(tw / w, th / h)
        cw, ch = min(w, tw / scale), min(h, th / scale)  # min(): t / (t / w) can exceed w by a rounding error
        left, top = (w - cw) / 2, (h - ch) / 2
        return img.resize((tw, th), resample, box=(left, top, left + cw, top + ch), reducing_gap=_REDUCING_GAP)
    scale = min(tw / w, th / h)
    nw, nh = max(1, min(tw, round(w * scale))), max(1, min(th, round(h * scale)))
    canvas = Image.new("RGB", (tw, th), opts.fill)
    canvas.paste(img.resize((nw, nh), resample, reducing_gap=_REDUCING_GAP), ((tw - nw) // 2, (th - nh) // 2))
    return canvas


def to_array(img: Image.Image, opts: PreprocessOptions) -> np.ndarray:
    """An ``(H, W, 3)`` (or ``(3, H, W)``) array in the output dtype and scaling."""
    arr = np.asarray(img)
    if opts.dtype == "float32":
        arr = arr.astype(np.float32) / np.float32(255)
        if opts.mean is not None:
            arr -= np.asarray(opts.mean, dtype=np.float32)
        if opts.std is not None:
            arr /= np.asarray(opts.std, dtype=np.float32)
    if opts.channels_first:
        arr = np.moveaxis(arr, -1, 0)
    return arr
