"""Embedded ICC profiles: pixels end in sRGB, checked against the colour science done by hand."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
from PIL import Image, ImageCms

from daskimg.image import srgb_converter

from .test_decode_transform import run

# Adobe RGB (1998) primaries adapted to D50 (Bradford), as ICC matrix profiles store them, and sRGB's.
ADOBE_D50 = np.array([[0.60974, 0.20528, 0.14919], [0.31111, 0.62567, 0.06322], [0.01947, 0.06087, 0.74457]])
SRGB_D50 = np.array([[0.43607, 0.38515, 0.14307], [0.22249, 0.71687, 0.06061], [0.01392, 0.09708, 0.71410]])
GAMMA = 563 / 256  # Adobe RGB's 2.2, as a u8Fixed8 curve


def _s15(x: float) -> bytes:
    return struct.pack(">i", round(x * 65536))


def _xyz(x: float, y: float, z: float) -> bytes:
    return b"XYZ " + bytes(4) + _s15(x) + _s15(y) + _s15(z)


def _desc(text: str) -> bytes:
    ascii_ = text.encode() + b"\0"
    return b"desc" + bytes(4) + struct.pack(">I", len(ascii_)) + ascii_ + bytes(4 + 4 + 2 + 1 + 67)


def matrix_profile(columns: np.ndarray, gamma: float, name: str) -> bytes:
    """A minimal ICC v2 RGB display profile: three colorants, one gamma curve each, a D50 white point."""
    curve = b"curv" + bytes(4) + struct.pack(">IH", 1, round(gamma * 256)) + bytes(2)
    tags = [(b"desc", _desc(name)), (b"wtpt", _xyz(0.9642, 1.0, 0.8249)), (b"cprt", b"text" + bytes(4) + b"test\0")]
    tags += [(sig, _xyz(*columns[:, i])) for i, sig in enumerate((b"rXYZ", b"gXYZ", b"bXYZ"))]
    tags += [(sig, curve) for sig in (b"rTRC", b"gTRC", b"bTRC")]
    offset = 128 + 4 + 12 * len(tags)
    table, data = b"", b""
    for sig, body in tags:
        body += bytes(-len(body) % 4)
        table += sig + struct.pack(">II", offset + len(data), len(body))
        data += body
    size = offset + len(data)
    header = (struct.pack(">I", size) + bytes(4) + struct.pack(">I", 0x02100000) + b"mntr" + b"RGB " + b"XYZ "
              + bytes(12) + b"acsp" + bytes(4 + 4 + 4 + 4 + 8) + struct.pack(">I", 0) + _xyz(0.9642, 1.0, 0.8249)[8:]
              + bytes(4 + 16 + 28))
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + table + data


def adobe_to_srgb_by_hand(rgb: np.ndarray) -> np.ndarray:
    linear = (rgb / 255.0) ** GAMMA
    out = np.clip(np.linalg.solve(SRGB_D50, ADOBE_D50 @ linear.reshape(-1, 3).T).T, 0, 1)
    encoded = np.where(out <= 0.0031308, 12.92 * out, 1.055 * out ** (1 / 2.4) - 0.055)
    return (encoded * 255).reshape(rgb.shape)


COLOURS = np.array([[[200, 100, 50], [50, 150, 200], [128, 128, 128], [30, 200, 40]]], dtype=np.uint8)


def test_the_hand_built_profile_is_what_littlecms_reads() -> None:
    profile = ImageCms.ImageCmsProfile(io.BytesIO(matrix_profile(ADOBE_D50, GAMMA, "Adobe RGB test")))
    assert profile.profile.profile_description == "Adobe RGB test"
    assert profile.profile.xcolor_space == "RGB "


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_adobe_rgb_pixels_end_as_the_same_colours_in_srgb(fmt: str) -> None:
    icc = matrix_profile(ADOBE_D50, GAMMA, "Adobe RGB test")
    big = np.repeat(np.repeat(COLOURS, 16, axis=0), 16, axis=1)  # 16 x 64: four flat patches
    buf = io.BytesIO()
    Image.fromarray(big).save(buf, fmt, icc_profile=icc, **({"quality": 100} if fmt != "PNG" else {}),
                              **({"lossless": True} if fmt == "WEBP" else {}))
    out = run(buf.getvalue(), width=4, height=1, mode="stretch", resample="box")
    expected = adobe_to_srgb_by_hand(COLOURS.astype(float))
    tolerance = 2.5 if fmt != "JPEG" else 4.5  # JPEG's own rounding adds its part
    assert np.abs(out.astype(float) - expected).max() <= tolerance, (out, expected.round())
    assert np.abs(out.astype(float) - COLOURS).max() > 20  # and it did change them: saturated colours move


def test_srgb_and_unusable_profiles_leave_pixels_alone() -> None:
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    assert srgb_converter(srgb) is None
    assert srgb_converter(b"not a profile at all") is None
    assert srgb_converter(None) is None
    data = io.BytesIO()
    Image.fromarray(np.repeat(np.repeat(COLOURS, 8, 0), 8, 1)).save(data, "PNG", icc_profile=b"\0garbage" * 20)
    out = run(data.getvalue(), width=4, height=1, mode="stretch", resample="box")
    np.testing.assert_array_equal(out, COLOURS)  # an unreadable profile costs nothing: the pixels as stored


def test_padding_keeps_the_fill_colour_exact() -> None:
    icc = matrix_profile(ADOBE_D50, GAMMA, "Adobe RGB test")
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 32, 3), 90, np.uint8)).save(buf, "PNG", icc_profile=icc)
    out = run(buf.getvalue(), width=16, height=16, mode="pad", fill=(255, 0, 0))
    assert (out[0] == (255, 0, 0)).all()
    assert (out[-1] == (255, 0, 0)).all()
