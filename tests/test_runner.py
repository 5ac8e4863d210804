"""Streaming through a real cluster: a bounded window of chunks, nothing per row, metadata compacted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from dask.utils import key_split
from distributed import Client
from distributed.diagnostics.plugin import SchedulerPlugin

import daskimg
import daskimg.output._store
import daskimg.sources
from daskimg._runner import Window

from .server import FaultServer

STAGES = {"count", "fetch", "preprocess", "write", "compact"}


class TaskCounter(SchedulerPlugin):
    """Watches the scheduler: the most tasks it held at once, and the kinds of task it ran."""

    name = "daskimg-test-task-counter"

    def __init__(self) -> None:
        self.most = 0
        self.ran: dict[str, int] = {}
        self.fetch_dependencies = 0

    async def start(self, scheduler: Any) -> None:
        self.scheduler = scheduler

    def transition(self, key: Any, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
        self.most = max(self.most, len(self.scheduler.tasks))
        if finish == "processing" and key_split(key) == "fetch":
            self.fetch_dependencies += len(self.scheduler.tasks[key].dependencies)
        if finish == "memory":
            self.ran[key_split(key)] = self.ran.get(key_split(key), 0) + 1


def _counter_state(dask_scheduler: Any) -> tuple[int, dict[str, int]]:
    plugin = dask_scheduler.plugins[TaskCounter.name]
    return plugin.most, plugin.ran, plugin.fetch_dependencies


def test_the_scheduler_holds_a_window_of_chunks_and_nothing_per_row(
    tmp_path: Path, server: FaultServer, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """600 rows in 150 chunks of 4 and 2 KiB input blocks: the scheduler never holds more than a
    window's tasks, every task is per chunk, a chunk's first task depends on none (so any worker
    with a free thread takes it), and the output is whole and in order."""
    monkeypatch.setattr(daskimg.sources, "BLOCKSIZE", 2048)
    monkeypatch.setattr(daskimg.output._store, "GROUP_ROWS", 16)  # 4 chunks a metadata file
    urls = tmp_path / "urls.txt"
    urls.write_text("".join(server.url(f"/img/photo.gif?window={i}\n") for i in range(600)))
    assert len(daskimg.read_urls(str(urls)).source.blocks) > 10
    client.register_plugin(TaskCounter())
    try:
        summary = (daskimg.read_urls(str(urls), chunk=4).fetch(allow_private_network=True).preprocess(size=16)
                   .to_zarr(str(tmp_path / "out.zarr"), client=client, progress=False))
        most, ran, fetch_dependencies = client.run_on_scheduler(_counter_state)
    finally:
        client.unregister_scheduler_plugin(TaskCounter.name)
    assert summary.counts == {"ok": 600}
    window = Window(client).size()
    assert window == 8  # 2 chunks a thread, 2 workers of 2 threads
    # Three tasks a chunk (the scheduler keeps a written chunk's finished tasks until the client has its
    # report), for the chunks in the window and at most as many written since the client last looked,
    # and a compaction or two. Not the 450 tasks that 150 chunks submitted at once would be.
    assert most <= 2 * 3 * window + 4, most
    assert set(ran) <= STAGES, ran
    assert ran["fetch"] == ran["write"] == 150
    assert fetch_dependencies == 0
    assert ran["compact"] == 150 // 4 + 1

    images, meta = daskimg.open(str(tmp_path / "out.zarr"))
    assert meta["index"].tolist() == list(range(600))
    assert meta["url"].tolist() == urls.read_text().splitlines()
    files = sorted(p.name for p in (tmp_path / "out.zarr" / "metadata").iterdir())
    assert files[:2] == ["_done", "part-00000000-00000003.parquet"]
    assert len(files) == 1 + 38  # every group compacted into one file ...
    assert not any((tmp_path / "out.zarr" / "metadata" / "_done").iterdir())  # ... which marks its chunks done
    again = (daskimg.read_urls(str(urls), chunk=4).fetch(allow_private_network=True).preprocess(size=16)
             .to_zarr(str(tmp_path / "out.zarr"), client=client, progress=False))
    assert (again.processed, again.resumed_chunks, again.counts) == (0, 150, {"ok": 600})
    assert (images.compute().reshape(600, -1).max(axis=1) > 0).all()


def test_a_compaction_stopped_before_it_deleted_its_parts_counts_each_row_once(
    tmp_path: Path, server: FaultServer, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(daskimg.output._store, "GROUP_ROWS", 8)
    urls = [server.url(f"/img/photo.gif?stale={i}") for i in range(16)]
    job = daskimg.read_urls(urls, chunk=4).fetch(allow_private_network=True).preprocess(size=16)
    out = tmp_path / "out.zarr"
    job.to_zarr(str(out), client=client, progress=False, chunks=[0, 1, 2])  # group 0 compacted, chunk 2 loose
    meta = out / "metadata"
    assert sorted(p.name for p in meta.glob("*.parquet")) == ["part-00000000-00000001.parquet",
                                                              "part-00000002.parquet"]
    (meta / "part-00000000.parquet").write_bytes((meta / "part-00000002.parquet").read_bytes())  # left behind
    assert len(daskimg.open(str(out))[1]) == 12
    summary = job.to_zarr(str(out), client=client, progress=False)
    assert summary.counts == {"ok": 16}
    assert sorted(p.name for p in meta.glob("*.parquet")) == ["part-00000000-00000001.parquet",
                                                              "part-00000002-00000003.parquet"]
    _, rows = daskimg.open(str(out))
    assert rows["index"].tolist() == list(range(16))
    lazy = daskimg.open(str(out), lazy=True)[1]
    assert lazy.npartitions == 2
    np.testing.assert_array_equal(lazy.compute()["index"].to_numpy(), np.arange(16))
