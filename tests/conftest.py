from __future__ import annotations

import io
from collections.abc import Iterator

import pytest
from distributed import Client, LocalCluster
from PIL import Image

from daskimg.demo import IMAGES

from .s3 import S3
from .s3 import start as start_s3
from .server import FaultServer


def _encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def photo(name: str = "coffee.jpg") -> Image.Image:
    """A real photo shipped with the package, as RGB."""
    return Image.open(IMAGES / name).convert("RGB")


@pytest.fixture(scope="session")
def images() -> dict[str, bytes]:
    """Real photos in every default format, at sizes that exercise every resize path."""
    cat, coffee, rocket = photo("cat.jpg"), photo("coffee.jpg"), photo("rocket.jpg")
    big = coffee.resize((1200, 800))
    return {
        "photo.jpg": _encode(cat, "JPEG", quality=92),
        "big.jpg": _encode(big, "JPEG", quality=92),
        "tall.png": _encode(rocket.rotate(90, expand=True), "PNG"),
        "photo.webp": _encode(coffee, "WEBP", quality=90),
        "photo.gif": _encode(cat.convert("P", palette=Image.Palette.ADAPTIVE), "GIF"),
        "photo.bmp": _encode(rocket.resize((200, 150)), "BMP"),
        "photo.tiff": _encode(cat, "TIFF"),
    }


@pytest.fixture(scope="session")
def server(images: dict[str, bytes]) -> Iterator[FaultServer]:
    with FaultServer(images, slow_seconds=4.0) as s:
        yield s


@pytest.fixture(scope="session")
def client() -> Iterator[Client]:
    """A real local cluster of two process workers, shared by the tests that run jobs."""
    with (
        LocalCluster(n_workers=2, threads_per_worker=2, processes=True, dashboard_address=None) as cluster,
        Client(cluster) as c,
    ):
        yield c


@pytest.fixture(scope="session")
def s3() -> Iterator[S3]:
    """A real S3 API (moto's server) on loopback; buckets are made by the tests that need them."""
    server = start_s3()
    yield server
    server.server.stop()
