"""A decoder that crashes or eats memory on one file costs that row: not the chunk, not the run."""

from __future__ import annotations

import ctypes
import time
from pathlib import Path

import numpy as np
import pytest
from distributed import Client, LocalCluster
from distributed.diagnostics.plugin import WorkerPlugin

import daskimg
import daskimg._stages
from daskimg import _isolate as isolate
from daskimg._stages import preprocess_partition
from daskimg.options import PreprocessOptions

from .conftest import fetched
from .server import FaultServer

pytestmark = pytest.mark.skipif(not isolate.AVAILABLE, reason="needs os.fork")

OPTS = PreprocessOptions(height=24, width=24)


def _hostile_decoder(monkeypatch: pytest.MonkeyPatch, on: bytes, act: str) -> None:
    real = daskimg._stages.decode

    def decode(data: bytes, opts: PreprocessOptions) -> object:
        if data.startswith(on):
            if act == "segfault":
                ctypes.string_at(0)  # reads address 0: SIGSEGV, as a decoder bug would
            elif act == "memory":
                hoard = []
                while True:  # address space without end (never touched, so the test stays cheap)
                    hoard.append(np.empty(256 << 20, np.uint8))
            elif act == "hang":
                time.sleep(30)
        return real(data, opts)

    monkeypatch.setattr(daskimg._stages, "decode", decode)


@pytest.mark.parametrize("act", ["segfault", "memory", "hang"])
def test_an_image_that_kills_its_decoder_costs_only_its_row(
    images: dict[str, bytes], monkeypatch: pytest.MonkeyPatch, act: str
) -> None:
    bodies = [images["photo.jpg"], images["photo.bmp"], images["tall.png"], b"not an image"]
    expected = preprocess_partition(fetched(bodies), OPTS)
    monkeypatch.setattr(isolate, "TIME_LIMIT", 2.0)
    _hostile_decoder(monkeypatch, on=b"BM", act=act)

    part = preprocess_partition(fetched(bodies), OPTS, isolate=True)

    assert part.meta["status"].tolist() == [
        "ok", "decoder_crashed" if act != "memory" else "preprocess_error", "ok", "not_image"]
    message = part.meta["error"][1]
    assert {"segfault": "SIGSEGV", "memory": "MemoryError", "hang": "ran past 2 s"}[act] in message
    assert part.ok.tolist() == [True, False, True, False]
    np.testing.assert_array_equal(part.images[[0, 2]], expected.images[[0, 2]])
    assert not part.images[1].any()
    assert part.meta["width"].isna().tolist() == [False, True, False, True]
    assert part.meta["width"][[0, 2]].tolist() == expected.meta["width"][[0, 2]].tolist()


class _HostileBmpDecoder(WorkerPlugin):
    """Every worker, restarted ones too, gets a BMP decoder that segfaults, or eats memory without end."""

    def __init__(self, act: str) -> None:
        self.act = act

    def setup(self, worker: object) -> None:
        import ctypes

        import numpy as np

        import daskimg._isolate
        import daskimg._stages

        real, act = daskimg._stages.decode, self.act
        daskimg._isolate.MEMORY_HEADROOM = 512 << 20  # the isolated retry hits its limit fast

        def decode(data: bytes, opts: object) -> object:
            if data.startswith(b"BM"):
                if act == "segfault":
                    ctypes.string_at(0)
                hoard = []
                while True:  # touched, so the worker's memory really grows until the nanny kills it
                    hoard.append(np.ones(32 << 20, np.uint8))
            return real(data, opts)  # type: ignore[arg-type]

        daskimg._stages.decode = decode


@pytest.mark.cluster
@pytest.mark.parametrize("act", ["segfault", "memory"])
def test_a_hostile_decoder_on_a_real_cluster_costs_one_row_and_no_killed_worker(
    tmp_path: Path, server: FaultServer, client: Client, act: str
) -> None:
    names = ["photo.jpg", "big.jpg", "tall.png", "photo.webp"]
    urls = [server.url(f"/img/{names[i % 4]}?crash={i}") for i in range(11)] + [server.url("/img/photo.bmp?crash")]
    job = daskimg.read_urls(urls, chunk=4).fetch(allow_private_network=True).preprocess(size=32)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      memory_limit="1GiB") as cluster, Client(cluster) as hostile:
        hostile.register_plugin(_HostileBmpDecoder(act))
        summary = job.to_zarr(str(tmp_path / "out.zarr"), client=hostile, progress=False)
    assert summary.complete, summary.failed_chunks
    pixels, meta = daskimg.open(str(tmp_path / "out.zarr"))
    assert meta["status"].tolist() == ["ok"] * 11 + ["decoder_crashed" if act == "segfault" else "preprocess_error"]
    assert ("SIGSEGV" if act == "segfault" else "MemoryError") in meta["error"][11]
    reference = job.to_zarr(str(tmp_path / "ref.zarr"), client=client, progress=False)
    assert reference.complete
    expected, _ = daskimg.open(str(tmp_path / "ref.zarr"))
    np.testing.assert_array_equal(pixels[:11].compute(), expected[:11].compute())
    assert not pixels[11].compute().any()
