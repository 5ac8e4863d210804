"""From output to training: the reader's batches, sharding and epochs; xarray's view; the metadata's readers."""

from __future__ import annotations

import json
import multiprocessing
import pickle
import shutil
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow.dataset
import pytest
import xarray as xr
from distributed import Client

import daskimg
from daskimg._types import ImagePartition
from daskimg.errors import ConfigError, OutputError
from daskimg.output import Output

from .server import FaultServer

ROWS, CHUNK = 100, 8


def build(path: Path, server: FaultServer, client: Client, dtype: str = "uint8", **run: object) -> pd.DataFrame:
    """An output of ROWS rows in chunks of CHUNK: images, with 404s and a web page among them; its metadata."""
    urls = [server.url("/missing") if i % 7 == 3 else server.url("/html") if i % 11 == 5
            else server.url(f"/img/{['photo.jpg', 'tall.png', 'photo.webp'][i % 3]}?row={i}") for i in range(ROWS)]
    summary = (daskimg.read_urls(urls, chunk=CHUNK).fetch(allow_private_network=True)
               .preprocess(size=16, dtype=dtype).run(str(path), client=client, progress=False, **run))  # type: ignore[arg-type]
    assert summary.complete
    return daskimg.open(str(path))[1]


@pytest.fixture(scope="module")
def output(tmp_path_factory: pytest.TempPathFactory, server: FaultServer, client: Client) -> tuple[Path, np.ndarray]:
    """The output, and the row numbers of its usable rows."""
    path = tmp_path_factory.mktemp("reading") / "out.zarr"
    meta = build(path, server, client)
    usable = meta.loc[meta["status"] == "ok", "index"].to_numpy()
    assert 0 < len(usable) < ROWS
    return path, usable


def _shard(args: tuple[bytes, int, int]) -> list[list[int]]:
    """In a process of its own, as a DataLoader worker: the batches of one worker of one rank's reader."""
    reader, epoch, worker = pickle.loads(args[0]), args[1], args[2]
    return [batch.index.tolist() for batch in reader.batches(epoch, worker=worker, workers=3)]


def test_two_epochs_on_two_ranks_of_three_worker_processes_see_every_usable_row_once_each(
    output: tuple[Path, np.ndarray],
) -> None:
    path, usable = output
    spawn = multiprocessing.get_context("spawn")
    seen: dict[tuple[int, int], list[list[list[int]]]] = {}  # (seed, epoch) -> batches of every worker
    with ProcessPoolExecutor(3, mp_context=spawn) as pool:
        for seed in (7, 7, 8):
            for epoch in (0, 1):
                readers = [pickle.dumps(daskimg.ImageReader(str(path), batch_size=5, shuffle_chunks=3, seed=seed,
                                                            rank=rank, world_size=2)) for rank in (0, 1)]
                work = [(reader, epoch, worker) for reader in readers for worker in range(3)]
                batches = list(pool.map(_shard, work))
                rows = [i for worker in batches for batch in worker for i in batch]
                assert sorted(rows) == sorted(usable.tolist())  # every usable row, once, across all six
                if (seed, epoch) in seen:
                    assert batches == seen[seed, epoch]  # the same seed: the same batches, in the same order
                seen[seed, epoch] = batches
    order = {key: [i for worker in batches for batch in worker for i in batch] for key, batches in seen.items()}
    assert order[7, 0] != order[7, 1]  # another epoch, another order
    assert order[7, 0] != order[8, 0]  # another seed, another order
    assert all(len(b) == 5 for worker in seen[7, 0] for b in worker[:-1])  # only a worker's last batch is short


def test_batches_hold_the_rows_they_name_and_drop_last_drops_only_the_short_batch(
    output: tuple[Path, np.ndarray],
) -> None:
    path, usable = output
    images = daskimg.open(str(path))[0].compute()
    batches = list(daskimg.ImageReader(str(path), batch_size=16, seed=1))
    assert sorted(np.concatenate([b.index for b in batches]).tolist()) == usable.tolist()
    for b in batches:
        assert b.images.dtype == np.uint8
        assert b.images.flags.c_contiguous
        np.testing.assert_array_equal(b.images, images[b.index])
    assert [len(b.index) for b in batches] == [16] * (len(usable) // 16) + [len(usable) % 16]
    kept = list(daskimg.ImageReader(str(path), batch_size=16, seed=1, drop_last=True))
    assert [len(b.index) for b in kept] == [16] * (len(usable) // 16)
    in_order = np.concatenate([b.index for b in daskimg.ImageReader(str(path), batch_size=16, shuffle=False)])
    assert in_order.tolist() == usable.tolist()


def test_float_batches_are_normalised_per_channel_in_either_layout(output: tuple[Path, np.ndarray]) -> None:
    path, _ = output
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    for channels_first in (False, True):
        reader = daskimg.ImageReader(str(path), batch_size=32, shuffle=False, dtype="float32", mean=mean, std=std,
                                     channels_first=channels_first)
        plain = daskimg.ImageReader(str(path), batch_size=32, shuffle=False)
        for got, raw in zip(reader, plain, strict=True):
            expected = (raw.images / 255 - np.array(mean)) / np.array(std)
            if channels_first:
                expected = expected.transpose(0, 3, 1, 2)
            assert got.images.dtype == np.float32
            assert got.images.shape == expected.shape
            np.testing.assert_allclose(got.images, expected, atol=1e-5)
    scaled = next(iter(daskimg.ImageReader(str(path), batch_size=8, shuffle=False, dtype="float32")))
    raw = next(iter(daskimg.ImageReader(str(path), batch_size=8, shuffle=False)))
    np.testing.assert_allclose(scaled.images, raw.images / 255, atol=1e-7)


def test_a_float_output_is_normalised_as_stored_in_0_1(tmp_path: Path, server: FaultServer, client: Client) -> None:
    build(tmp_path / "float.zarr", server, client, dtype="float32")
    stored = next(iter(daskimg.ImageReader(str(tmp_path / "float.zarr"), batch_size=8, shuffle=False)))
    assert stored.images.dtype == np.float32
    assert stored.images.min() >= 0
    assert stored.images.max() <= 1
    normalised = next(iter(daskimg.ImageReader(str(tmp_path / "float.zarr"), batch_size=8, shuffle=False,
                                               mean=0.5, std=0.25)))
    np.testing.assert_allclose(normalised.images, (stored.images - 0.5) / 0.25, atol=1e-5)


def test_the_reader_refuses_what_it_cannot_do(output: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    path, _ = output
    with pytest.raises(ConfigError, match="rank must be"):
        daskimg.ImageReader(str(path), rank=2, world_size=2)
    with pytest.raises(ConfigError, match="dtype must be"):
        daskimg.ImageReader(str(path), dtype="float16")
    with pytest.raises(ConfigError, match="needs dtype='float32'"):
        daskimg.ImageReader(str(path), dtype="uint8", mean=0.5)
    with pytest.raises(OutputError, match="is not a daskimg output"):
        daskimg.ImageReader(str(tmp_path))


def test_the_reader_reads_an_npy_output_and_an_output_still_being_written(
    tmp_path: Path, output: tuple[Path, np.ndarray], server: FaultServer, client: Client
) -> None:
    path, usable = output
    meta = build(tmp_path / "out.npy", server, client, format="npy")
    assert sorted(np.concatenate([b.index for b in daskimg.ImageReader(str(tmp_path / "out.npy"))]).tolist()) == (
        meta.loc[meta["status"] == "ok", "index"].tolist())
    partial = tmp_path / "partial.zarr"  # chunks 0 and 2 not written yet: a run still going, or stopped
    shutil.copytree(path, partial)
    for k in (0, 2):
        shutil.rmtree(partial / "images" / "c" / str(k))
        (partial / "ok" / "c" / str(k)).unlink()
    rows = np.concatenate([b.index for b in daskimg.ImageReader(str(partial))])
    assert sorted(rows.tolist()) == [i for i in usable.tolist() if i // CHUNK not in (0, 2)]


@pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")  # 3 workers on a 2-core machine
def test_the_reader_is_a_torch_iterable_dataset_for_a_data_loader(output: tuple[Path, np.ndarray]) -> None:
    torch = pytest.importorskip("torch")
    path, usable = output
    reader = daskimg.ImageReader(str(path), batch_size=8, seed=3)
    expected = {epoch: sorted(i for b in reader.batches(epoch) for i in b.index.tolist()) for epoch in (0, 1)}
    for persistent in (False, True):  # set_epoch reaches workers that live across epochs too
        dataset = reader.to_torch()
        assert isinstance(dataset, torch.utils.data.IterableDataset)
        loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=3, persistent_workers=persistent,
                                             multiprocessing_context="spawn")
        orders = []
        for epoch in (0, 1):
            dataset.set_epoch(epoch)
            batches = list(loader)
            assert all(isinstance(b.images, torch.Tensor) and b.images.dtype == torch.uint8 for b in batches)
            rows = torch.cat([b.index for b in batches]).tolist()
            assert sorted(rows) == expected[epoch] == usable.tolist()
            orders.append(sorted(tuple(b.index.tolist()) for b in batches))
        assert orders[0] != orders[1]  # the workers read epoch 1's chunks and buffers, not epoch 0's again


def test_xarray_opens_a_fresh_output_without_a_warning(output: tuple[Path, np.ndarray]) -> None:
    path, _ = output
    meta = daskimg.open(str(path))[1]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = xr.open_zarr(path)
    assert ds["images"].dims == ("image", "y", "x", "channel")
    assert ds["ok"].dims == ("image",)
    assert "status" in ds.coords
    assert ds["status"].dims == ("image",)
    meanings = ds["status"].attrs["flag_meanings"].split()
    names = dict(zip(ds["status"].attrs["flag_values"], meanings, strict=True))
    assert [names[int(code)] for code in ds["status"].values] == meta["status"].tolist()
    assert (ds["ok"].values == (meta["status"] == "ok").to_numpy()).all()
    usable = ds["images"].isel(image=(ds["status"] == meanings.index("ok") + 1).values)
    assert usable.sizes["image"] == int((meta["status"] == "ok").sum())


def test_the_metadata_reads_in_pandas_pyarrow_and_duckdb(output: tuple[Path, np.ndarray]) -> None:
    path, usable = output
    meta = daskimg.open(str(path))[1]
    folder = path / "metadata"
    assert pd.read_parquet(folder).sort_values("index")["status"].tolist() == meta["status"].tolist()
    assert pyarrow.dataset.dataset(folder).count_rows() == ROWS
    counts = dict(duckdb.sql(f"select status, count(*) from '{folder}/*.parquet' group by status").fetchall())
    assert counts == meta["status"].value_counts().to_dict()
    assert counts["ok"] == len(usable)


def test_an_output_from_before_the_status_array_still_opens_reads_and_resumes(
    tmp_path: Path, output: tuple[Path, np.ndarray], server: FaultServer, client: Client
) -> None:
    path, usable = output
    old = tmp_path / "old.zarr"
    shutil.copytree(path, old)
    shutil.rmtree(old / "status")  # the layout of daskimg 0.1: no status array, no consolidated metadata
    root = json.loads((old / "zarr.json").read_text())
    del root["consolidated_metadata"]
    (old / "zarr.json").write_text(json.dumps(root))
    for array in ("images", "ok"):
        meta_file = old / array / "zarr.json"
        record = json.loads(meta_file.read_text())
        record["attributes"] = {}
        meta_file.write_text(json.dumps(record))
    images, meta = daskimg.open(str(old))
    assert images.shape[0] == ROWS
    assert (meta["status"] == "ok").sum() == len(usable)
    assert sorted(np.concatenate([b.index for b in daskimg.ImageReader(str(old))]).tolist()) == usable.tolist()
    with warnings.catch_warnings(record=True) as caught:  # xarray still opens it, and says why it is slower
        warnings.simplefilter("always")
        assert xr.open_zarr(old)["images"].shape[0] == ROWS
    assert any("consolidated metadata" in str(w.message) for w in caught)
    out = Output(str(old), "zarr", CHUNK, ROWS)  # a resumed run writes into it as before: no status array
    rows = meta.iloc[CHUNK : 2 * CHUNK].reset_index(drop=True)
    pixels = images[CHUNK : 2 * CHUNK].compute()
    report = out.write(ImagePartition(CHUNK, pixels, (rows["status"] == "ok").to_numpy(), rows))
    assert report.counts == rows["status"].value_counts().to_dict()
    assert not (old / "status").exists()
    np.testing.assert_array_equal(daskimg.open(str(old))[0].compute(), images.compute())
