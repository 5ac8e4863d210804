"""Decode and resize: compared with an independent Pillow reference, and every colour mode to RGB."""

from __future__ import annotations

import functools
import io
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageOps

from daskimg.image import DecodeError, decode, fit, srgb_converter, to_array
from daskimg.options import PreprocessOptions

from .conftest import photo


def encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def run(data: bytes, **options: object) -> np.ndarray:
    """What a worker makes of one body (as ``batch.preprocess_partition`` does)."""
    opts = PreprocessOptions(**options)  # type: ignore[arg-type]
    decoded = decode(data, opts)
    return to_array(fit(decoded.pixels, opts, srgb_converter(decoded.icc_profile)), opts)


def reference(img: Image.Image, mode: str, w: int, h: int, fill: tuple[int, int, int] = (0, 0, 0)) -> np.ndarray:
    """What each mode promises, computed by Pillow's own helpers on the fully decoded image."""
    if mode == "center_crop":
        out = ImageOps.fit(img, (w, h), method=Image.Resampling.BILINEAR)
    elif mode == "pad":
        out = ImageOps.pad(img, (w, h), method=Image.Resampling.BILINEAR, color=fill)
    else:
        out = img.resize((w, h), Image.Resampling.BILINEAR)
    return np.asarray(out)


def mean_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


@pytest.mark.parametrize("mode", ["center_crop", "pad", "stretch"])
@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
@pytest.mark.parametrize(("w", "h"), [(96, 96), (160, 90), (64, 128)])
def test_resize_modes_match_pillow_reference(mode: str, fmt: str, w: int, h: int) -> None:
    src = photo("coffee.jpg").resize((900, 600))
    data = encode(src, fmt, quality=95) if fmt != "PNG" else encode(src, fmt)
    decoded = Image.open(io.BytesIO(data)).convert("RGB")
    out = run(data, mode=mode, width=w, height=h, fill=(10, 200, 30))
    assert out.shape == (h, w, 3)
    assert out.dtype == np.uint8
    ref = reference(decoded, mode, w, h, fill=(10, 200, 30))
    assert mean_abs(out, ref) < 4.0  # JPEG is decoded at a reduced DCT scale; the rest is the same filter


def test_pad_letterboxes_with_the_fill_colour() -> None:
    data = encode(photo("coffee.jpg").resize((400, 200)), "PNG")  # 2:1 into a square: bands above and below
    out = run(data, mode="pad", width=100, height=100, fill=(10, 200, 30))
    assert (out[:20] == (10, 200, 30)).all()
    assert (out[-20:] == (10, 200, 30)).all()
    assert not (out[45:55] == (10, 200, 30)).all()


def test_center_crop_keeps_the_centre_and_stretch_keeps_everything() -> None:
    # Left third red, middle green, right third blue: a square crop sees only green.
    arr = np.zeros((100, 300, 3), np.uint8)
    arr[:, :100, 0] = arr[:, 100:200, 1] = arr[:, 200:, 2] = 255
    data = encode(Image.fromarray(arr), "PNG")
    crop = run(data, mode="center_crop", width=50, height=50)
    inner = crop[:, 2:-2]  # the filter's support reaches a pixel past the crop at the very edges
    assert (inner[..., 1] > 250).all()
    assert (inner[..., 0] < 5).all()
    stretch = run(data, mode="stretch", width=60, height=20)
    assert stretch[:, 5, 0].min() > 250
    assert stretch[:, 55, 2].min() > 250


def test_exif_orientation_is_applied() -> None:
    upright = photo("coffee.jpg").resize((300, 200))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated; viewers turn it 90 degrees clockwise
    data = encode(upright.transpose(Image.Transpose.ROTATE_90), "JPEG", quality=95, exif=exif)
    opts = PreprocessOptions(width=150, height=100, mode="stretch")
    decoded = decode(data, opts)
    assert (decoded.width, decoded.height) == (300, 200)
    out = to_array(fit(decoded.pixels, opts), opts)
    assert mean_abs(out, np.asarray(upright.resize((150, 100), Image.Resampling.BILINEAR))) < 6.0


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_every_exif_orientation_matches_pillows_exif_transpose(orientation: int, fmt: str) -> None:
    stored = photo("coffee.jpg").resize((90, 60))
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(stored, fmt, exif=exif.tobytes(), **({"quality": 95} if fmt != "PNG" else {}))
    upright = ImageOps.exif_transpose(Image.open(io.BytesIO(data)).convert("RGB"))
    opts = PreprocessOptions(width=upright.width, height=upright.height, mode="stretch")
    decoded = decode(data, opts)
    assert (decoded.width, decoded.height) == upright.size
    assert mean_abs(to_array(fit(decoded.pixels, opts), opts), np.asarray(upright)) < 1.0


@pytest.mark.parametrize("resample", ["nearest", "bilinear", "bicubic", "lanczos", "box", "hamming"])
@pytest.mark.parametrize("size", [37, 128, 300])  # down by 5.4x and 1.6x, and up
def test_every_resample_filter_is_close_to_pillows(resample: str, size: int) -> None:
    src = photo("coffee.jpg").resize((200, 200))
    out = run(encode(src, "PNG"), width=size, height=size, mode="stretch", resample=resample)
    ref = np.asarray(src.resize((size, size), getattr(Image.Resampling, resample.upper())))
    assert mean_abs(out, ref) < (6.0 if resample == "nearest" else 3.0)


def test_webp_alpha_is_composited_and_an_animation_gives_its_first_frame() -> None:
    clear = Image.new("RGBA", (32, 32), (255, 0, 0, 0))
    assert np.allclose(run(encode(clear, "WEBP", lossless=True), width=8, height=8).reshape(-1, 3).mean(0),
                       (255, 255, 255))
    half = Image.new("RGBA", (32, 32), (0, 0, 0, 128))
    assert np.allclose(run(encode(half, "WEBP", lossless=True), width=8, height=8), 127, atol=2)
    frames = [Image.new("RGB", (16, 16), c) for c in [(255, 0, 0), (0, 0, 255)]]
    buf = io.BytesIO()
    frames[0].save(buf, "WEBP", save_all=True, append_images=frames[1:], lossless=True)
    assert np.allclose(run(buf.getvalue(), width=4, height=4).reshape(-1, 3).mean(0), (255, 0, 0), atol=3)


def test_jpeg_is_decoded_at_a_reduced_scale_when_smaller_is_enough() -> None:
    data = encode(photo("coffee.jpg").resize((1600, 1200)), "JPEG", quality=90)
    decoded = decode(data, PreprocessOptions(width=64, height=64))
    assert decoded.pixels.shape[1] < 1600  # reduced DCT scale: fewer pixels decoded
    assert min(decoded.pixels.shape[:2]) >= 64
    assert (decoded.width, decoded.height) == (1600, 1200)  # metadata keeps the original size


def _rgb_mean(img: Image.Image, **options: object) -> np.ndarray:
    fmt = "PNG" if img.mode != "CMYK" else "JPEG"
    return run(encode(img, fmt), width=8, height=8, mode="stretch", **options).reshape(-1, 3).mean(axis=0)


def test_transparency_is_composited_on_the_background() -> None:
    clear = Image.new("RGBA", (32, 32), (255, 0, 0, 0))
    assert np.allclose(_rgb_mean(clear), (255, 255, 255))
    assert np.allclose(_rgb_mean(clear, background=(0, 0, 255)), (0, 0, 255))
    half = Image.new("LA", (32, 32), (0, 128))  # black at half opacity over white: mid grey
    assert np.allclose(_rgb_mean(half), 127, atol=2)
    palette = Image.new("P", (32, 32), 1)
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    palette.info["transparency"] = 1
    assert np.allclose(_rgb_mean(palette, background=(0, 255, 0)), (0, 255, 0))
    keyed = Image.new("RGB", (32, 32), (10, 20, 30))  # a tRNS colour key: pixels of that colour are clear
    keyed.info["transparency"] = (10, 20, 30)
    assert np.allclose(_rgb_mean(keyed, background=(0, 255, 0)), (0, 255, 0))


def test_sixteen_bit_is_scaled_not_clipped() -> None:
    grey = Image.fromarray(np.full((16, 16), 32768, dtype=np.uint16))  # half of full scale
    assert grey.mode.startswith("I")
    assert np.allclose(_rgb_mean(grey), 128, atol=1)


def test_cmyk_and_grey_become_rgb() -> None:
    cmyk = Image.new("CMYK", (32, 32), (0, 255, 255, 0))  # pure red in CMYK
    r, g, b = _rgb_mean(cmyk)
    assert r > 230
    assert max(g, b) < 25
    assert np.allclose(_rgb_mean(Image.new("L", (8, 8), 77)), 77)


def test_first_frame_of_an_animation() -> None:
    frames = [Image.new("RGB", (16, 16), c) for c in [(255, 0, 0), (0, 0, 255), (0, 255, 0)]]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    assert np.allclose(run(buf.getvalue(), width=4, height=4).reshape(-1, 3).mean(0), (255, 0, 0), atol=3)


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"", "not_image"),
        (b"<!doctype html><html></html>", "not_image"),
        (encode(Image.new("RGB", (64, 64)), "TIFF"), "not_image"),
        (encode(Image.new("RGB", (64, 64)), "EPS"), "not_image"),  # Pillow would run Ghostscript on it
        (encode(Image.new("RGB", (64, 64)), "PDF"), "not_image"),
        (b"8BPS" + struct.pack(">H6xHIIHH", 1, 3, 64, 64, 8, 3) + bytes(14) + bytes(64 * 64 * 3), "not_image"),  # PSD
        (bytes(range(256)) * 64, "not_image"),
        (encode(photo("cat.jpg"), "JPEG")[:2000], "decode_error"),
        (encode(photo("cat.jpg"), "PNG")[:3000], "decode_error"),
    ],
    ids=["empty", "html", "tiff-not-allowed", "eps-not-allowed", "pdf-not-allowed", "psd-not-allowed",
         "random-bytes", "truncated-jpeg", "truncated-png"],
)
def test_bad_bytes_give_a_status(data: bytes, status: str) -> None:
    with pytest.raises(DecodeError) as info:
        decode(data, PreprocessOptions())
    assert info.value.status == status
    assert str(info.value)


def test_pixel_cap_is_checked_before_decoding() -> None:
    data = encode(Image.new("L", (4000, 3000)), "PNG")
    with pytest.raises(DecodeError) as info:
        decode(data, PreprocessOptions(max_pixels=1_000_000))
    assert info.value.status == "too_many_pixels"


def test_float32_scaling_normalisation_and_channels_first() -> None:
    data = encode(Image.new("RGB", (20, 20), (255, 0, 51)), "PNG")
    out = run(data, width=4, height=4, dtype="float32")
    assert out.dtype == np.float32
    assert np.allclose(out[0, 0], (1.0, 0.0, 0.2))
    norm = run(data, width=4, height=4, dtype="float32", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    assert np.allclose(norm[0, 0], (1.0, -1.0, -0.6))
    first = run(data, width=6, height=4, channels_first=True)
    assert first.shape == (3, 4, 6)
    assert (first[0] == 255).all()


@pytest.mark.parametrize(("w", "h"), [(49, 49), (66, 49), (98, 98), (131, 98)])
@pytest.mark.parametrize("mode", ["center_crop", "pad", "stretch"])
def test_sizes_whose_scale_rounds_past_the_edge(w: int, h: int, mode: str) -> None:
    # 128 / (128 / 49) > 49 in floating point: the crop box must still lie inside the image.
    data = encode(photo("cat.jpg").resize((w, h)), "PNG")
    assert run(data, width=128, height=128, mode=mode).shape == (128, 128, 3)


@settings(max_examples=40, deadline=None)
@given(
    src_w=st.integers(1, 400), src_h=st.integers(1, 400),
    w=st.integers(1, 64), h=st.integers(1, 64),
    mode=st.sampled_from(["center_crop", "pad", "stretch"]),
    fmt=st.sampled_from(["JPEG", "PNG"]),
)
def test_any_size_in_gives_exactly_the_target_shape(
    src_w: int, src_h: int, w: int, h: int, mode: str, fmt: str
) -> None:
    data = encode(photo("cat.jpg").resize((src_w, src_h)), fmt)
    out = run(data, width=w, height=h, mode=mode)
    assert out.shape == (h, w, 3)


@functools.cache
def _variants() -> dict[str, bytes]:
    base = photo("coffee.jpg").resize((640, 427))
    rgba = base.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(base.size))
    exif = Image.Exif()
    exif[0x0112] = 8
    wide = (np.asarray(base.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    return {
        "jpeg-rgb": encode(base, "JPEG", quality=92),
        "jpeg-grey": encode(base.convert("L"), "JPEG", quality=92),
        "jpeg-exif-8": encode(base, "JPEG", quality=92, exif=exif),
        "jpeg-cmyk": encode(base.convert("CMYK"), "JPEG", quality=92),
        "jpeg-progressive": encode(base, "JPEG", quality=92, progressive=True),
        "png-rgb": encode(base, "PNG"),
        "png-rgba": encode(rgba, "PNG"),
        "png-grey": encode(base.convert("L"), "PNG"),
        "png-la": encode(rgba.convert("LA"), "PNG"),
        "png-grey16": encode(Image.fromarray(wide), "PNG"),
        "png-palette": encode(base.convert("P", palette=Image.Palette.ADAPTIVE), "PNG"),
        "png-palette-alpha": encode(base.convert("P", palette=Image.Palette.ADAPTIVE, colors=16), "PNG",
                                    transparency=bytes(range(0, 256, 16))),
        "png-rgb-colour-key": encode(base, "PNG", transparency=base.getpixel((0, 0))),
        "png-1-bit": encode(base.convert("1"), "PNG"),
        "webp-lossy": encode(base, "WEBP", quality=92),
        "webp-lossy-alpha": encode(rgba, "WEBP", quality=92),
        "webp-lossless-alpha": encode(rgba, "WEBP", lossless=True),
    }


@pytest.mark.parametrize("name", list(_variants()))
@pytest.mark.parametrize("mode", ["center_crop", "pad"])
def test_fast_decoders_agree_with_pillow(name: str, mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import daskimg.image._decode

    data = _variants()[name]
    fast = run(data, width=96, height=80, mode=mode)
    monkeypatch.setattr(daskimg.image._decode, "_fast_pixels", lambda *args: None)  # Pillow decodes every file
    pillow = run(data, width=96, height=80, mode=mode)
    assert fast.shape == pillow.shape == (80, 96, 3)
    assert mean_abs(fast, pillow) < 3.0


def test_fast_decoders_are_used_when_installed() -> None:
    import daskimg.image._decode

    assert daskimg.image._decode.ImageDecoder is not None  # Wuffs, for 8-bit PNG: the [fast] extra the tests install
