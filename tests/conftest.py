from __future__ import annotations

import dataclasses
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import psutil
import pytest
from distributed import Client, LocalCluster
from PIL import Image

from daskimg._stages import FetchedPartition
from daskimg._types import Status
from daskimg.demo import IMAGES
from daskimg.fetch import FetchResult

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


BIN = Path(sys.executable).parent


def without_aws_settings() -> dict[str, str]:
    """This process's environment without credentials, endpoint or profile for object stores."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "FSSPEC_", "BOTO"))} | {
        "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull}


def workers_die_as_they_start(tmp_path: Path) -> dict[str, str]:
    """The environment of a process whose Dask workers exit as they start (a Dask preload)."""
    preload = tmp_path / "exit_at_start.py"
    preload.write_text("import os\n\ndef dask_setup(worker):\n    os._exit(3)\n")
    return {"DASK_DISTRIBUTED__WORKER__PRELOAD": f'["{preload}"]'}


@dataclasses.dataclass
class HandMadeCluster:
    address: str
    nannies: list[subprocess.Popen[bytes]]  # the `dask worker` processes; each runs its worker as a child

    def worker_pids(self) -> list[int]:
        return [c.pid for n in self.nannies for c in psutil.Process(n.pid).children()]


@pytest.fixture
def hand_made_cluster(tmp_path: Path) -> Iterator[HandMadeCluster]:
    """`dask scheduler` and two `dask worker` processes, as an operator would start them."""
    file = tmp_path / "scheduler.json"
    # No credentials, endpoint or profile from the environment: runs that need them pass storage options.
    env = without_aws_settings()
    procs = [subprocess.Popen([str(BIN / "dask"), "scheduler", "--scheduler-file", str(file), "--port", "0",
                               "--dashboard-address", ":0"], stderr=subprocess.DEVNULL, env=env)]
    try:
        for _ in range(200):
            if file.exists() and file.stat().st_size:
                break
            time.sleep(0.1)
        for _ in range(2):
            procs.append(subprocess.Popen([str(BIN / "dask"), "worker", "--scheduler-file", str(file),
                                           "--nthreads", "2", "--no-dashboard"], stderr=subprocess.DEVNULL, env=env))
        address = json.loads(file.read_text())["address"]
        with Client(address, timeout="30s") as c:
            c.wait_for_workers(2, timeout=60)
        yield HandMadeCluster(address, procs[1:])
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            p.wait(30)


def fetched(bodies: list[bytes]) -> FetchedPartition:
    """A chunk whose every URL gave one of ``bodies``, as fetch_partition would return it."""
    rows = pd.DataFrame({"url": [f"http://example.com/{i}" for i in range(len(bodies))]})
    return FetchedPartition(rows, "url", [FetchResult(Status.OK, None, 200, b, "x") for b in bodies])
