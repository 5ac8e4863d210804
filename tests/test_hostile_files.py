"""Files that try to hurt the decoder: each gives an array or a recorded status, without reading what it claims."""

from __future__ import annotations

import io
import resource
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import GifImagePlugin, Image

from daskimg.image import DecodeError, decode, fit, to_array
from daskimg.options import PreprocessOptions

from .conftest import photo

OPTS = PreprocessOptions(height=64, width=64)
MALFORMED_EXIF = b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x05\x01\x12\x00\x03garbage"


def png_header_claiming(width: int, height: int) -> bytes:
    """A PNG whose IHDR announces width x height, followed by a tiny IDAT: a decompression bomb's header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = chunk(b"IDAT", zlib.compress(b"\x00" * 64))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + idat + chunk(b"IEND", b"")


def test_a_60000_square_png_is_refused_before_allocating() -> None:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(DecodeError) as info:
        decode(png_header_claiming(60000, 60000), OPTS)
    assert info.value.status == "too_many_pixels"
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak
    assert grown_kib < 256 << 10  # its 10.8 GB of pixels were never allocated


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data:UserWarning")  # Pillow says so, once per process
def test_malformed_exif_keeps_the_image_unrotated() -> None:
    buf = io.BytesIO()
    photo("cat.jpg").save(buf, "JPEG", exif=MALFORMED_EXIF)
    decoded = decode(buf.getvalue(), OPTS)
    assert decoded.pixels.shape[1] > decoded.pixels.shape[0]  # the landscape photo stays landscape


_EXIF_ON_A_WORKER = """
import io
from tests.conftest import photo
from daskimg.cluster import run_client
from daskimg.image import decode
from daskimg.options import PreprocessOptions

if __name__ == "__main__":
    buf = io.BytesIO()
    photo("cat.jpg").save(buf, "JPEG", exif=EXIF)
    with run_client(workers=1, threads_per_worker=1, dashboard_address=None) as client:
        decoded = client.submit(decode, buf.getvalue(), PreprocessOptions(height=32, width=32)).result()
        print(decoded.width, decoded.height)
"""


def test_malformed_exif_makes_no_noise_in_the_logs_of_daskimgs_workers() -> None:
    script = _EXIF_ON_A_WORKER.replace("EXIF)", f"{MALFORMED_EXIF!r})")
    done = subprocess.run([sys.executable, "-W", "default", "-c", script], capture_output=True,
                          text=True, cwd=Path(__file__).parent.parent, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(n) for n in photo("cat.jpg").size]
    assert "EXIF" not in done.stderr  # Pillow warns "Corrupt EXIF data" unless the worker ignores it


def test_a_gif_with_thousands_of_frames_gives_its_first_frame_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    frames = [Image.new("P", (8, 8), i % 200) for i in range(3000)]
    frames[0] = Image.new("RGB", (8, 8), (255, 0, 0)).convert("P")
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=10)
    seeks = []
    real = GifImagePlugin.GifImageFile._seek
    monkeypatch.setattr(GifImagePlugin.GifImageFile, "_seek",
                        lambda self, frame, *args: (seeks.append(frame), real(self, frame, *args))[1])
    out = to_array(fit(decode(buf.getvalue(), OPTS).pixels, OPTS), OPTS)
    assert max(seeks) == 0  # the other 2,999 frames were not read
    assert np.allclose(out.reshape(-1, 3).mean(axis=0), (255, 0, 0), atol=3)


@pytest.mark.parametrize("mode", ["center_crop", "pad", "stretch"])
@pytest.mark.parametrize(("w", "h"), [(1, 20000), (20000, 1)])
def test_extreme_aspect_ratios_follow_the_resize_policy(mode: str, w: int, h: int) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (0, 128, 255)).save(buf, "PNG")
    opts = PreprocessOptions(height=64, width=64, mode=mode)  # type: ignore[arg-type]
    out = to_array(fit(decode(buf.getvalue(), opts).pixels, opts), opts)
    assert out.shape == (64, 64, 3)
    assert (out == (0, 128, 255)).all(axis=-1).any()
