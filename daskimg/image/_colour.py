"""Pixels described by an embedded ICC profile, converted to sRGB (what every output holds).

A photo saved in Adobe RGB or Display P3 stores other numbers for the same colour: taken as
sRGB it looks dull or shifted. Pillow reads the profile from the header; LittleCMS (Pillow's
``ImageCms``) converts. The conversion runs on the resized pixels, a few thousand rather than
millions, which keeps it to tens of microseconds an image; transforms are built once per
distinct profile. sRGB profiles (most of them) are left alone, and so is a profile that
LittleCMS cannot read or that does not describe RGB or grey pixels: the pixels are kept as
they are rather than the row lost.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageCms

__all__ = ["srgb_converter"]

_SRGB = ImageCms.createProfile("sRGB")


@functools.lru_cache(maxsize=64)
def srgb_converter(icc_profile: bytes | None) -> Callable[[np.ndarray], np.ndarray] | None:
    """A function from ``(H, W, 3)`` uint8 pixels in ``icc_profile``'s space to sRGB, or None to keep them."""
    if not icc_profile:
        return None
    try:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(icc_profile))
        space = profile.profile.xcolor_space.strip()
        if space not in ("RGB", "GRAY") or "srgb" in (profile.profile.profile_description or "").lower():
            return None
        mode = "RGB" if space == "RGB" else "L"
        # NOCACHE: the transform is shared by the threads of a worker
        transform = ImageCms.buildTransform(profile, _SRGB, mode, "RGB", flags=ImageCms.Flags.NOCACHE)
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
        return None

    def convert(pixels: np.ndarray) -> np.ndarray:
        if mode == "L" and not (np.array_equal(pixels[..., 0], pixels[..., 1])
                                and np.array_equal(pixels[..., 1], pixels[..., 2])):
            return pixels  # a grey profile on a colour image: the file contradicts itself; keep the colours
        src = np.ascontiguousarray(pixels if mode == "RGB" else pixels[..., 0])
        return np.asarray(ImageCms.applyTransform(Image.fromarray(src, mode), transform))

    return convert
