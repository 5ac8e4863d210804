"""End to end on a real local cluster: URL tables in, zarr / npy arrays and metadata out."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import typing
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zarr
from distributed import Client

import daskimg
from daskimg._lock import holding, refuse_busy
from daskimg.errors import ConfigError, OutputError
from daskimg.options import FetchChanges, FetchOptions, PreprocessChanges, PreprocessOptions

from .server import FaultServer
from .tables import write_table

GOOD = ["photo.jpg", "big.jpg", "tall.png", "photo.webp", "photo.gif", "photo.bmp"]


def job(table: object, **read: object) -> daskimg.Job:
    return (
        daskimg.read_urls(table, **read)  # type: ignore[arg-type]
        .fetch(allow_private_network=True, timeout=1.0, deadline=2.5, backoff=0.01)
        .preprocess(size=32)
    )


def mixed_urls(server: FaultServer) -> list[str]:
    """Good images of every format between a 404, a non-image, a truncated JPEG, a slow endpoint and more."""
    bad = ["/missing", "/html", "/truncated.jpg", "/slow", "/error500", "/img/photo.tiff", "/loop"]
    urls = [server.url(f"/img/{n}") for n in GOOD] + [server.url(p) for p in bad] + ["not a url", ""]
    return urls * 3


def test_a_mixed_run_completes_with_a_row_and_a_message_for_every_url(
    tmp_path: Path, server: FaultServer, client: Client
) -> None:
    urls = mixed_urls(server)
    table = pd.DataFrame({"url": urls, "caption": [f"c{i}" for i in range(len(urls))]})
    summary = job(table, chunk=8).to_zarr(str(tmp_path / "out.zarr"), client=client, progress=False)
    assert summary.complete
    images, meta = daskimg.open(str(tmp_path / "out.zarr"))
    assert images.shape == (len(urls), 32, 32, 3)
    assert meta["index"].tolist() == list(range(len(urls)))
    assert meta["url"].tolist() == urls  # the empty URL too: as it was in the input
    assert meta["caption"].tolist() == table["caption"].tolist()
    good = meta["url"].str.contains("/img/") & ~meta["url"].fillna("").str.endswith(".tiff")
    assert (meta.loc[good, "status"] == "ok").all()
    failed = meta[meta["status"] != "ok"]
    assert len(failed) == len(urls) - int(good.sum())
    assert failed["error"].notna().all()
    by_path = dict(zip(meta["url"].fillna(""), meta["status"], strict=False))
    assert by_path[server.url("/missing")] == "http_error"
    assert by_path[server.url("/html")] == "not_image"
    assert by_path[server.url("/truncated.jpg")] == "decode_error"
    assert by_path[server.url("/slow")] == "timeout"
    assert by_path[server.url("/img/photo.tiff")] == "not_image"
    pixels = images.compute()
    ok = zarr.open_array(str(tmp_path / "out.zarr"), path="ok", mode="r")[:]
    assert (ok == (meta["status"] == "ok").to_numpy()).all()
    assert (pixels[~ok] == 0).all()
    assert (pixels[ok].reshape(int(ok.sum()), -1).max(axis=1) > 0).all()
    assert meta.loc[good, ["width", "height", "bytes"]].notna().all().all()
    assert set(meta.loc[good, "format"]) == {"JPEG", "PNG", "WEBP", "GIF", "BMP"}
    attrs = zarr.open_group(str(tmp_path / "out.zarr"), mode="r").attrs["daskimg"]
    assert attrs["counts"] == meta["status"].value_counts().to_dict()
    assert attrs["settings"]["preprocess"]["height"] == 32
    arr = zarr.open_array(str(tmp_path / "out.zarr"), path="images", mode="r")
    assert arr.chunks == (8, 32, 32, 3)
    assert arr.metadata.dimension_names == ("image", "y", "x", "channel")


@pytest.mark.parametrize("fmt", ["txt", "csv", "tsv", "jsonl", "parquet"])
def test_every_input_format_gives_the_same_pixels(
    tmp_path: Path, server: FaultServer, client: Client, fmt: str
) -> None:
    urls = [server.url(f"/img/{GOOD[i % len(GOOD)]}") for i in range(20)]
    table = pd.DataFrame({"url": urls, "caption": [f"c{i}" for i in range(20)]})
    reference = tmp_path / "ref.zarr"
    job(table, chunk=8).to_zarr(str(reference), client=client, progress=False)
    ref_images, _ = daskimg.open(str(reference))

    (tmp_path / "in").mkdir()
    path = write_table(tmp_path / "in", fmt, table)
    out = tmp_path / "out.zarr"
    job(path, chunk=8).to_zarr(str(out), client=client, progress=False)
    images, meta = daskimg.open(str(out))
    np.testing.assert_array_equal(images.compute(), ref_images.compute())
    assert meta["url"].tolist() == urls
    if fmt != "txt":
        assert meta["caption"].tolist() == table["caption"].tolist()


def test_npy_output_holds_every_row(tmp_path: Path, server: FaultServer, client: Client) -> None:
    urls = mixed_urls(server)[:20]
    zarr_sum = job(urls, chunk=8).to_zarr(str(tmp_path / "a.zarr"), client=client, progress=False)
    npy_sum = job(urls, chunk=8).to_npy(str(tmp_path / "a.npy"), client=client, progress=False)
    assert zarr_sum.counts == npy_sum.counts
    files = sorted((tmp_path / "a.npy" / "images").glob("*.npy"))
    assert len(files) == 3
    chunks = [np.load(f, mmap_mode="r") for f in files]
    assert [c.shape for c in chunks] == [(8, 32, 32, 3), (8, 32, 32, 3), (4, 32, 32, 3)]
    ok = np.concatenate([np.load(f) for f in sorted((tmp_path / "a.npy" / "ok").glob("*.npy"))])
    meta = pd.read_parquet(tmp_path / "a.npy" / "metadata")
    assert len(meta) == 20
    assert ok.tolist() == (meta.sort_values("index")["status"] == "ok").tolist()
    zarr_images, _ = daskimg.open(str(tmp_path / "a.zarr"))
    npy_images, _ = daskimg.open(str(tmp_path / "a.npy"))
    np.testing.assert_array_equal(npy_images.compute(), zarr_images.compute())


def test_a_second_identical_run_fetches_nothing_and_other_settings_are_refused(
    tmp_path: Path, server: FaultServer, client: Client
) -> None:
    urls = [server.url(f"/img/{GOOD[i % len(GOOD)]}?run=resume&i={i}") for i in range(30)]
    out = str(tmp_path / "out.zarr")
    first = job(urls, chunk=8).to_zarr(out, client=client, progress=False)
    assert first.processed == 30
    hits = sum(server.hits.values())
    second = job(urls, chunk=8).to_zarr(out, client=client, progress=False)
    assert sum(server.hits.values()) == hits
    assert second.processed == 0
    assert second.resumed_chunks == 4
    assert second.counts == first.counts
    with pytest.raises(OutputError, match="other settings"):
        job(urls, chunk=8).preprocess(size=48).to_zarr(out, client=client, progress=False)
    third = job(urls, chunk=8).preprocess(size=48).to_zarr(out, client=client, progress=False, overwrite=True)
    assert third.processed == 30
    assert daskimg.open(out)[0].shape == (30, 48, 48, 3)


def test_an_interrupted_output_is_completed_by_the_next_run(
    tmp_path: Path, server: FaultServer, client: Client
) -> None:
    urls = [server.url(f"/img/{GOOD[i % len(GOOD)]}?run=partial&i={i}") for i in range(24)]
    out = str(tmp_path / "out.zarr")
    j = job(urls, chunk=8)
    j.to_zarr(out, client=client, progress=False, chunks=[1])  # as if the run had stopped after one chunk
    assert j.counted().prepare(out).done_chunks().tolist() == [False, True, False]
    summary = j.to_zarr(out, client=client, progress=False)
    assert summary.processed == 16
    images, meta = daskimg.open(out)
    assert (meta["status"] == "ok").all()
    reference = tmp_path / "ref.zarr"
    j.to_zarr(str(reference), client=client, progress=False)
    np.testing.assert_array_equal(images.compute(), daskimg.open(str(reference))[0].compute())


def test_an_output_another_run_is_writing_is_refused_and_left_as_it_is(
    tmp_path: Path, server: FaultServer, client: Client
) -> None:
    urls = [server.url(f"/img/{GOOD[i % len(GOOD)]}?run=locked&i={i}") for i in range(16)]
    out = str(tmp_path / "out.zarr")
    j = job(urls, chunk=8)
    j.to_zarr(out, client=client, progress=False, chunks=[0])  # a run that has written its first chunk
    hits = sum(server.hits.values())
    output = j.counted().prepare(out)
    held = re.escape(f"{out} is being written by another run (process {os.getpid()} on ")
    with output.locked():  # as that run holds it while it writes the second
        for overwrite in (False, True):
            with pytest.raises(OutputError, match=held):
                j.to_zarr(out, client=client, progress=False, overwrite=overwrite)
        assert output.done_chunks().tolist() == [True, False]  # nothing removed, nothing redone
    assert sum(server.hits.values()) == hits  # nothing fetched
    summary = j.to_zarr(out, client=client, progress=False)  # once that run has ended, the next one resumes
    assert summary.complete
    assert summary.processed == 8


def test_a_busy_output_is_refused_by_its_path_and_by_its_file_url(tmp_path: Path) -> None:
    out = tmp_path / "out.zarr"
    out.mkdir()
    with holding(str(out), str(out)):  # as a run in this or another process holds it
        for name in (str(out), f"file://{out}", f"local://{out}"):
            with pytest.raises(OutputError, match="is being written by another run"):
                refuse_busy(name)
        refuse_busy(f"memory://{out}")  # another store: no lock to ask
    refuse_busy(str(out))  # free once its holder has let go


def test_a_directory_that_is_not_an_output_is_never_touched(tmp_path: Path, client: Client) -> None:
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "thesis.tex").write_text("years of work")
    with pytest.raises(OutputError, match="not a daskimg output"):
        job(["http://example.com/a.jpg"]).to_zarr(str(tmp_path / "precious"), client=client, overwrite=True)
    assert (tmp_path / "precious" / "thesis.tex").read_text() == "years of work"


def test_float32_channels_first_output(tmp_path: Path, server: FaultServer, client: Client) -> None:
    urls = [server.url("/img/photo.jpg"), server.url("/missing")]
    out = str(tmp_path / "f.zarr")
    job(urls).preprocess(dtype="float32", channels_first=True).to_zarr(out, client=client, progress=False)
    arr = zarr.open_array(out, path="images", mode="r")
    assert arr.dtype == np.float32
    assert arr.shape == (2, 3, 32, 32)
    assert arr.metadata.dimension_names == ("image", "channel", "y", "x")
    assert 0 < float(arr[0].max()) <= 1.0
    assert float(np.abs(arr[1]).max()) == 0.0


@pytest.mark.parametrize("compression", ["lz4", "zstd", "none"])
@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_chunks_written_directly_read_back_through_zarr(tmp_path: Path, compression: str, dtype: str) -> None:
    # Whole chunks are encoded by daskimg and stored under zarr's key; zarr must read them as its own.
    from daskimg._types import ImagePartition
    from daskimg.output import prepare_output

    rng = np.random.default_rng(0)
    out = prepare_output(str(tmp_path / "o.zarr"), format="zarr", n_rows=10, chunk=4, shape=(6, 5, 3), dtype=dtype,
                         dim_names=("y", "x", "channel"), compression=compression, settings={}, overwrite=False)
    parts = []
    for start in (0, 4, 8):  # two whole chunks and a short last one (written through zarr)
        n = min(4, 10 - start)
        pixels = (rng.random((n, 6, 5, 3)) * 255).astype(dtype)
        meta = pd.DataFrame({"index": range(start, start + n), "url": ["u"] * n, "status": ["ok"] * n})
        parts.append(pixels)
        out.write(ImagePartition(start, pixels, np.ones(n, bool), meta))
    stored = zarr.open_array(str(tmp_path / "o.zarr"), path="images", mode="r")
    np.testing.assert_array_equal(stored[:], np.concatenate(parts))
    assert out.done_chunks().all()


@pytest.mark.parametrize("fmt", ["zarr", "npy"])
def test_a_partial_output_keeps_rows_in_place(tmp_path: Path, server: FaultServer, client: Client, fmt: str) -> None:
    urls = [server.url(f"/img/{GOOD[i % len(GOOD)]}?partial-open={i}") for i in range(20)]
    j = job(urls, chunk=8)
    j.run(str(tmp_path / "out"), format=fmt, client=client, progress=False, chunks=[2])  # type: ignore[arg-type]
    images, meta = daskimg.open(str(tmp_path / "out"))
    assert images.shape == (20, 32, 32, 3)
    pixels = images.compute()
    assert (pixels[:16] == 0).all()
    assert (pixels[16:].reshape(4, -1).max(axis=1) > 0).all()
    assert meta["index"].tolist() == [16, 17, 18, 19]


def test_a_write_error_leaves_the_chunk_undone_and_the_next_run_redoes_it(
    tmp_path: Path, server: FaultServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from distributed import LocalCluster

    from daskimg.output import Output

    real_put = Output._put

    def disk_full_for_chunk_1(self: Output, relpath: str, data: bytes) -> None:
        if relpath == "metadata/part-00000001.parquet":
            raise OSError(28, "No space left on device")
        real_put(self, relpath, data)

    urls = [server.url(f"/img/{GOOD[i % len(GOOD)]}?disk-full={i}") for i in range(20)]
    out = str(tmp_path / "out.zarr")
    # Threads in this process, so the simulated full disk reaches the writer.
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster, \
            Client(cluster) as threads:
        monkeypatch.setattr(Output, "_put", disk_full_for_chunk_1)
        first = job(urls, chunk=8).to_zarr(out, client=threads, progress=False)
        assert not first.complete
        assert set(first.failed_chunks) == {1}
        assert "No space left on device" in first.failed_chunks[1]
        assert "NOT written" in str(first)
        monkeypatch.setattr(Output, "_put", real_put)
        hits = sum(server.hits.values())
        second = job(urls, chunk=8).to_zarr(out, client=threads, progress=False)
    assert second.complete
    assert second.processed == 8  # only the chunk that was not done
    assert sum(server.hits.values()) - hits == 8
    _, meta = daskimg.open(out)
    assert meta["index"].tolist() == list(range(20))


_KILLED_MID_WRITE = """
import os, signal, sys
from distributed import Client, LocalCluster
from fsspec.implementations.local import LocalFileSystem
import daskimg

real_mv = LocalFileSystem.mv

def killed_before_the_rename(self, path1, path2, **kwargs):
    if path2.endswith("metadata/part-00000001.parquet"):  # the file is written, not yet in place
        os.kill(os.getpid(), signal.SIGKILL)
    return real_mv(self, path1, path2, **kwargs)

LocalFileSystem.mv = killed_before_the_rename
urls, out = sys.argv[1].split(","), sys.argv[2]
with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster, \
        Client(cluster) as client:
    (daskimg.read_urls(urls, chunk=8).fetch(allow_private_network=True).preprocess(size=32)
     .to_zarr(out, client=client, progress=False))
"""


@pytest.mark.slow
def test_what_a_writer_killed_mid_write_leaves_is_removed_by_the_next_run(
    tmp_path: Path, server: FaultServer, client: Client
) -> None:
    urls = [server.url(f"/img/{GOOD[i % len(GOOD)]}?killed-mid-write={i}") for i in range(20)]
    out = tmp_path / "out.zarr"
    killed = subprocess.run([sys.executable, "-c", _KILLED_MID_WRITE, ",".join(urls), str(out)],
                            capture_output=True, text=True, timeout=120)
    assert killed.returncode == -9, killed.stderr
    assert len(os.listdir(out / ".daskimg-tmp")) == 1  # the metadata part of chunk 1, never renamed
    summary = job(urls, chunk=8).fetch(timeout=10.0, deadline=30.0).to_zarr(str(out), client=client, progress=False)
    assert summary.complete
    assert not (out / ".daskimg-tmp").exists()
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    _, meta = daskimg.open(str(out))
    assert meta["index"].tolist() == list(range(20))
    assert (meta["status"] == "ok").all()


@pytest.mark.parametrize("fmt", ["zarr", "npy"])
def test_an_object_store_error_leaves_the_chunk_undone_and_the_next_run_redoes_it(
    server: FaultServer, monkeypatch: pytest.MonkeyPatch, fmt: str
) -> None:
    from distributed import LocalCluster
    from fsspec.implementations.memory import MemoryFileSystem

    real_pipe = MemoryFileSystem.pipe_file

    def slow_down_on_chunk_2(self: MemoryFileSystem, path: str, value: bytes, **kwargs: object) -> None:
        if path.endswith("part-00000002.parquet"):
            raise OSError("PutObject: 503 SlowDown (reduce your request rate)")
        real_pipe(self, path, value, **kwargs)

    urls = [server.url(f"/img/{GOOD[i % len(GOOD)]}?object-store={i}") for i in range(20)]
    out = f"memory://object-store-{fmt}/out"
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster, \
            Client(cluster) as threads:  # threads in this process: they share its memory:// store
        monkeypatch.setattr(MemoryFileSystem, "pipe_file", slow_down_on_chunk_2)
        first = job(urls, chunk=8).run(out, format=fmt, client=threads, progress=False)
        assert set(first.failed_chunks) == {2}
        assert "503 SlowDown" in first.failed_chunks[2]
        assert not MemoryFileSystem().exists(f"object-store-{fmt}/out/metadata/_done/00000002")
        monkeypatch.setattr(MemoryFileSystem, "pipe_file", real_pipe)
        hits = sum(server.hits.values())
        second = job(urls, chunk=8).run(out, format=fmt, client=threads, progress=False)
    assert second.complete
    assert second.processed == 4  # chunk 2 holds rows 16-19
    assert sum(server.hits.values()) - hits == 4
    images, meta = daskimg.open(out)
    assert meta["index"].tolist() == list(range(20))
    assert (meta["status"] == "ok").all()
    # read here: memory:// lives in this process, not in the workers of another test's cluster
    assert (images[16:].compute(scheduler="sync").reshape(4, -1).max(axis=1) > 0).all()


def test_overwriting_with_another_shape_on_the_same_cluster(
    tmp_path: Path, server: FaultServer, client: Client
) -> None:
    # Workers keep outputs open between runs; a replaced output must be opened afresh.
    urls = [server.url(f"/img/{GOOD[i % len(GOOD)]}?reshape={i}") for i in range(12)]
    out = str(tmp_path / "out.zarr")
    job(urls, chunk=8).to_zarr(out, client=client, progress=False)
    again = job(urls, chunk=8).preprocess(size=20, dtype="float32").to_zarr(out, client=client, progress=False,
                                                                           overwrite=True)
    assert again.complete
    images, _ = daskimg.open(out)
    assert images.shape == (12, 20, 20, 3)
    assert images.dtype == np.float32
    pixels = images.compute()
    assert 0 < float(pixels.max()) <= 1.0
    assert (pixels.reshape(12, -1).max(axis=1) > 0).all()


def test_chunks_are_sized_by_output_bytes_unless_given(tmp_path: Path, server: FaultServer, client: Client) -> None:
    urls = [server.url(f"/img/{n}") for n in GOOD] * 20  # 120 rows
    assert job(urls).rows_per_chunk == 256  # 32 px: small images, the most rows a chunk takes
    wide = daskimg.read_urls(urls).preprocess(size=256)
    assert wide.rows_per_chunk == 64  # 192 KiB an image: 64 of them make 12 MiB
    assert wide.preprocess(size=256, dtype="float32").rows_per_chunk == 16
    assert daskimg.read_urls(urls, chunk=50).preprocess(size=256).rows_per_chunk == 50  # a given chunk stays
    with pytest.raises(ConfigError):
        daskimg.read_urls(urls, chunk=0)  # refused, not taken for "choose for me"
    out = tmp_path / "wide.zarr"
    summary = wide.fetch(allow_private_network=True).to_zarr(str(out), client=client, progress=False)
    assert summary.counts == {"ok": 120}
    images = zarr.open_group(str(out), mode="r")["images"]
    assert images.chunks == (64, 256, 256, 3)
    assert [p.name for p in (out / "metadata").glob("part-*.parquet")] == ["part-00000000-00000001.parquet"]


@pytest.mark.parametrize("fmt", ["zarr", "npy"])
def test_rows_a_chunk_stopped_waiting_for_are_fetched_again_and_written_in(
    tmp_path: Path, server: FaultServer, client: Client, fmt: str
) -> None:
    good = [server.url(f"/img/{GOOD[i % len(GOOD)]}?late={fmt}{i}") for i in range(11)]
    late, silent = server.url("/delay/photo.jpg?ms=2000"), server.url("/slow")
    urls = [*good[:3], late, *good[3:9], silent, *good[9:]]  # chunks of 8: the second one is partial
    table = pd.DataFrame({"url": urls, "caption": [f"c{i}" for i in range(len(urls))]})
    j = job(table, chunk=8).fetch(timeout=3.0, deadline=10.0, retries=0, defer_after=1.0)
    before = server.hits["/delay/photo.jpg"]
    out = str(tmp_path / f"out.{fmt}")
    summary = j.run(out, format=fmt, client=client, progress=False)
    assert summary.complete
    assert "deferred" not in summary.counts
    assert server.hits["/delay/photo.jpg"] - before == 2  # given up on once, then fetched on its own
    assert j.counted().prepare(out, format=fmt).done_chunks().tolist() == [True, True]
    images, meta = daskimg.open(out)
    assert meta["status"].tolist() == ["ok"] * 10 + ["timeout"] + ["ok"] * 2
    assert meta["caption"].tolist() == table["caption"].tolist()
    columns = ["width", "height", "format", "bytes", "sha256"]
    assert meta.loc[3, columns].tolist() == meta.loc[0, columns].tolist()  # the same photo as row 0
    pixels = images.compute()
    np.testing.assert_array_equal(pixels[3], pixels[0])
    assert pixels[3].max() > 0
    assert (pixels[10] == 0).all()


def test_a_misspelt_option_is_a_config_error_naming_the_closest_one() -> None:
    job = daskimg.read_urls(["http://example.com/a.jpg"])
    with pytest.raises(ConfigError, match=r"FetchOptions has no option 'timout'; did you mean 'timeout'\?"):
        job.fetch(timout=3)  # type: ignore[call-arg]
    with pytest.raises(ConfigError, match=r"PreprocessOptions has no option 'heigth'; did you mean 'height'\?"):
        job.preprocess(heigth=32)  # type: ignore[call-arg]
    with pytest.raises(ConfigError, match="has no option 'resize_mode'; options are height, width, mode, resample"):
        job.preprocess(resize_mode="pad")  # type: ignore[call-arg]
    with pytest.raises(ConfigError, match="mode must be one of center_crop, pad, stretch"):
        job.preprocess(mode="squash")  # type: ignore[arg-type]
    assert job.preprocess(size=32, mode="pad").preprocess_options.mode == "pad"


@pytest.mark.parametrize(("changes", "options"), [(FetchChanges, FetchOptions), (PreprocessChanges, PreprocessOptions)])
def test_the_option_methods_take_exactly_the_options_fields(changes: type, options: type) -> None:
    hints = typing.get_type_hints(options)
    assert typing.get_type_hints(changes) == {f.name: hints[f.name] for f in dataclasses.fields(options)}
