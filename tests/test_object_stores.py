"""URL tables and outputs in an object store (a real S3 API: moto's server), with storage options only."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import daskimg

from .conftest import HandMadeCluster, without_aws_settings
from .s3 import S3
from .server import FaultServer

GOOD = ["photo.jpg", "big.jpg", "tall.png", "photo.webp", "photo.gif", "photo.bmp"]


@pytest.fixture
def bucket(s3: S3, request: pytest.FixtureRequest) -> str:
    name = f"{request.node.originalname.replace('_', '-')[5:40].strip('-')}-{uuid.uuid4().hex[:8]}"
    s3.filesystem().mkdir(name)
    return name


@pytest.mark.slow
def test_a_bucket_to_bucket_run_with_storage_options_only(
    s3: S3, bucket: str, server: FaultServer, tmp_path: Path
) -> None:
    fs = s3.filesystem()
    urls = [server.url(f"/img/{n}?s3={i}") for i in range(4) for n in GOOD] + [server.url("/missing")]
    for shard in range(2):  # two shards of a parquet table, with a column to carry
        part = pd.DataFrame({"url": urls[shard::2], "caption": [f"c{shard}-{i}" for i in range(len(urls[shard::2]))]})
        with fs.open(f"{bucket}/tables/urls-{shard}.parquet", "wb") as f:
            part.to_parquet(f)
    command = [sys.executable, "-m", "daskimg", f"s3://{bucket}/tables/urls-*.parquet", f"s3://{bucket}/out.zarr",
               "--size", "32", "--chunk", "8", "--allow-private-network", "--no-progress", "--dashboard-address", ":0",
               "--storage-options", json.dumps(s3.options)]
    first = subprocess.run(command, capture_output=True, text=True, timeout=300, env=without_aws_settings())
    assert first.returncode == 0, first.stderr
    assert f"ok {len(urls) - 1}, failed 1 (http_error 1)" in first.stdout
    hits = sum(server.hits.values())
    again = subprocess.run(command, capture_output=True, text=True, timeout=300, env=without_aws_settings())
    assert again.returncode == 0, again.stderr
    assert "0 rows processed" in again.stdout
    assert sum(server.hits.values()) == hits  # nothing fetched again
    assert f"ok {len(urls) - 1}, failed 1 (http_error 1)" in again.stdout  # the resumed run counts every row
    for text in (first.stdout, first.stderr, again.stdout, again.stderr):
        assert s3.options["secret"] not in text
    attributes = json.loads(fs.cat_file(f"{bucket}/out.zarr/zarr.json"))["attributes"]["daskimg"]
    assert attributes["counts"] == {"ok": len(urls) - 1, "http_error": 1}
    assert s3.options["secret"] not in json.dumps(attributes)

    images, meta = daskimg.open(f"s3://{bucket}/out.zarr", storage_options=s3.options)
    assert images.shape == (len(urls), 32, 32, 3)
    expected = pd.concat([pd.read_parquet(fs.open(f"{bucket}/tables/urls-{s}.parquet")) for s in range(2)])
    assert meta["url"].tolist() == expected["url"].tolist()
    assert meta["caption"].tolist() == expected["caption"].tolist()
    assert int((images.compute().reshape(len(urls), -1).max(axis=1) > 0).sum()) == len(urls) - 1


@pytest.mark.parametrize("fmt", ["zarr", "npy"])
def test_python_runs_take_input_and_output_options_apart(
    s3: S3, bucket: str, server: FaultServer, client: object, tmp_path: Path, fmt: str
) -> None:
    """A local table, an output in the bucket: the output's options reach the workers of the test's cluster."""
    table = tmp_path / "urls.jsonl.gz"
    frame = pd.DataFrame({"url": [server.url(f"/img/{n}?py={fmt}") for n in GOOD], "label": range(len(GOOD))})
    frame.to_json(table, orient="records", lines=True, compression="gzip")
    job = daskimg.read_urls(str(table)).fetch(allow_private_network=True).preprocess(size=24)
    out = f"s3://{bucket}/out.{fmt}"
    summary = job.run(out, format=fmt, client=client, progress=False, storage_options=s3.options)  # type: ignore[arg-type]
    assert summary.counts == {"ok": len(GOOD)}
    images, meta = daskimg.open(out, storage_options=s3.options)
    assert meta["label"].tolist() == list(range(len(GOOD)))
    # Training reads the bucket too, and the report is made from it.
    batches = list(daskimg.ImageReader(out, batch_size=4, storage_options=s3.options))
    assert sorted(i for b in batches for i in b.index.tolist()) == list(range(len(GOOD)))
    for b in batches:
        np.testing.assert_array_equal(b.images, images.compute()[b.index])
    report = daskimg.report(out, storage_options=s3.options, samples=4)
    assert report.counts == {"ok": len(GOOD)}
    assert len(report.thumbnails) == 4
    assert len(report.chunk_times) == 1


@pytest.mark.slow
@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing input bucket", "no input file matches s3://no-such-input/urls.parquet: bucket 'no-such-input' does "
                                 "not exist"),
        ("missing input key", "no input file matches s3://BUCKET/missing-*.parquet"),
        ("missing output bucket", "cannot create s3://no-such-output/out.zarr: bucket 'no-such-output' does not exist"),
        ("missing output bucket, npy", "cannot create s3://no-such-npy/out: bucket 'no-such-npy' does not exist"),
        ("no credentials for the input", "cannot read s3://BUCKET/urls.parquet: no credentials for the store"),
        ("no credentials for the output",
         "cannot use s3://BUCKET/out.zarr as the output: no credentials for the store"),
        ("endpoint unreachable", 'cannot read s3://BUCKET/urls.parquet: EndpointConnectionError: Could not connect to '
                                 'the endpoint URL'),
    ],
)
def test_a_store_that_cannot_be_used_is_one_line_and_exit_2_and_no_bucket_is_made(
    s3: S3, bucket: str, tmp_path: Path, case: str, message: str
) -> None:
    fs = s3.filesystem()
    with fs.open(f"{bucket}/urls.parquet", "wb") as f:
        pd.DataFrame({"url": ["http://127.0.0.1:9/a.jpg"]}).to_parquet(f)
    (tmp_path / "urls.txt").write_text("http://127.0.0.1:9/a.jpg\n")
    options = json.dumps(s3.options)
    unreachable = json.dumps({**s3.options, "endpoint_url": "http://127.0.0.1:9"})
    args = {
        "missing input bucket": ["s3://no-such-input/urls.parquet", "out.zarr", "--storage-options", options],
        "missing input key": [f"s3://{bucket}/missing-*.parquet", "out.zarr", "--storage-options", options],
        "missing output bucket": [f"s3://{bucket}/urls.parquet", "s3://no-such-output/out.zarr",
                                  "--storage-options", options],
        "missing output bucket, npy": [f"s3://{bucket}/urls.parquet", "s3://no-such-npy/out", "--format", "npy",
                                       "--storage-options", options],
        "no credentials for the input": [f"s3://{bucket}/urls.parquet", "out.zarr"],
        "no credentials for the output": [str(tmp_path / "urls.txt"), f"s3://{bucket}/out.zarr"],
        "endpoint unreachable": [f"s3://{bucket}/urls.parquet", "out.zarr", "--storage-options", unreachable],
    }[case]
    before = sorted(fs.ls(""))
    done = subprocess.run([sys.executable, "-m", "daskimg", *args, "--no-progress", "--dashboard-address", ":0"],
                          capture_output=True, text=True, timeout=300, env=without_aws_settings(), cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    errors = done.stderr.splitlines()
    assert len(errors) == 1, done.stderr  # refused before the run began: nothing else was said
    assert errors[0].startswith(f"daskimg: error: {message.replace('BUCKET', bucket)}"), errors[0]
    if case == "missing input key":  # the bucket is there: the line says no more than that no file matches
        assert errors[0] == f"daskimg: error: {message.replace('BUCKET', bucket)}"
    assert "Traceback" not in done.stderr
    assert s3.options["secret"] not in done.stderr
    assert sorted(fs.invalidate_cache() or fs.ls("")) == before  # never a bucket made
    assert not (tmp_path / "out.zarr").exists()


@pytest.mark.slow
@pytest.mark.cluster
def test_on_a_cluster_started_by_hand_the_options_carry_the_credentials(
    s3: S3, bucket: str, server: FaultServer, hand_made_cluster: HandMadeCluster
) -> None:
    """Neither the command nor the workers (see hand_made_cluster) have any AWS setting: the options reach them."""
    fs = s3.filesystem()
    with fs.open(f"{bucket}/urls.jsonl.gz", "wb", compression="gzip") as f:
        f.write("".join(json.dumps({"url": server.url(f"/img/{n}?hand={i}"), "n": i}) + "\n"
                        for i, n in enumerate(GOOD * 3)).encode())
    done = subprocess.run(
        [sys.executable, "-m", "daskimg", f"s3://{bucket}/urls.jsonl.gz", f"s3://{bucket}/out", "--format", "npy",
         "--size", "24", "--chunk", "4", "--allow-private-network", "--no-progress", "--storage-options",
         json.dumps(s3.options), "--scheduler", hand_made_cluster.address],
        capture_output=True, text=True, timeout=300, env=without_aws_settings())
    assert done.returncode == 0, done.stderr
    assert f"ok {len(GOOD) * 3}, failed 0" in done.stdout
    images, meta = daskimg.open(f"s3://{bucket}/out", storage_options=s3.options)
    assert meta["n"].tolist() == list(range(len(GOOD) * 3))
    assert images.shape == (len(GOOD) * 3, 24, 24, 3)


@pytest.mark.slow
def test_ctrl_c_then_the_same_command_completes_the_output_in_the_bucket(
    s3: S3, bucket: str, server: FaultServer, tmp_path: Path
) -> None:
    urls = tmp_path / "urls.txt"
    urls.write_text("".join(server.url(f"/delay/photo.jpg?ms=300&s3stop={i}\n") for i in range(96)))
    out = f"s3://{bucket}/out.zarr"
    command = [sys.executable, "-m", "daskimg", str(urls), out, "--size", "24", "--chunk", "8", "--concurrency", "2",
               "--allow-private-network", "--no-progress", "--dashboard-address", ":0",
               "--output-storage-options", json.dumps(s3.options)]
    fs = s3.filesystem()
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # (an ignored SIGINT would stay ignored)
    try:
        run = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True, env=without_aws_settings())
    finally:
        signal.signal(signal.SIGINT, previous)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(fs.ls(f"{bucket}/out.zarr/metadata/_done", refresh=True)
                                               if fs.exists(f"{bucket}/out.zarr/metadata/_done") else []) < 2:
        time.sleep(0.2)
    os.killpg(run.pid, signal.SIGINT)
    _, stderr = run.communicate(timeout=120)
    assert run.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert "leaked" not in stderr, stderr
    assert "Warning" not in stderr, stderr
    assert stderr.strip().splitlines()[-1] == "daskimg: interrupted; run the same command again to resume"
    again = subprocess.run(command, capture_output=True, text=True, timeout=300, env=without_aws_settings())
    assert again.returncode == 0, again.stderr
    assert "ok 96, failed 0" in again.stdout  # every row counted, those of the first run included
    _, meta = daskimg.open(out, storage_options=s3.options)
    assert meta["index"].tolist() == list(range(96))


@pytest.mark.slow
@pytest.mark.parametrize("side", ["input", "output"])
def test_wrong_credentials_are_one_line_and_exit_2(s3: S3, bucket: str, tmp_path: Path, side: str) -> None:
    fs = s3.filesystem()
    with fs.open(f"{bucket}/urls.parquet", "wb") as f:
        pd.DataFrame({"url": ["http://127.0.0.1:9/a.jpg"]}).to_parquet(f)
    (tmp_path / "urls.txt").write_text("http://127.0.0.1:9/a.jpg\n")
    wrong = json.dumps({**s3.options, "key": "AKIAWRONGWRONGWRONG1", "secret": "not-the-secret"})
    args = ([f"s3://{bucket}/urls.parquet", "out.zarr", "--storage-options", wrong] if side == "input"
            else [str(tmp_path / "urls.txt"), f"s3://{bucket}/out.zarr", "--output-storage-options", wrong])
    with s3.checking_credentials():
        done = subprocess.run([sys.executable, "-m", "daskimg", *args, "--no-progress", "--dashboard-address", ":0"],
                              capture_output=True, text=True, timeout=300, env=without_aws_settings(), cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    errors = done.stderr.splitlines()
    assert len(errors) == 1, done.stderr  # refused before the run began
    where = f"cannot read s3://{bucket}/urls.parquet" if side == "input" else f"cannot use s3://{bucket}/out.zarr"
    assert errors[0].startswith(f"daskimg: error: {where}"), errors[0]
    assert ": access denied (" in errors[0]
    assert errors[0].endswith("check the credentials and what they may read and write there")
    assert "not-the-secret" not in done.stderr


def test_opening_without_credentials_or_an_output_is_one_clear_error(s3: S3, bucket: str) -> None:
    fs = s3.filesystem()
    fs.pipe_file(f"{bucket}/not-an-output/file.txt", b"x")
    with pytest.raises(daskimg.OutputError, match=f"s3://{bucket}/not-an-output is not a daskimg output"):
        daskimg.open(f"s3://{bucket}/not-an-output", storage_options=s3.options)
    unreachable = {**s3.options, "endpoint_url": "http://127.0.0.1:9"}
    with pytest.raises(daskimg.OutputError, match=rf"cannot open s3://{bucket}/out: EndpointConnectionError: "):
        daskimg.open(f"s3://{bucket}/out", storage_options=unreachable)


def test_storage_options_are_never_shown(s3: S3, tmp_path: Path) -> None:
    from daskimg.output import Output
    from daskimg.sources import Block

    secret = s3.options["secret"]
    assert secret not in repr(Output("s3://b/out.zarr", "zarr", 8, 16, storage_options=s3.options))
    assert secret not in repr(Block("parquet", "s3://b/t.parquet", storage_options=s3.options))
    table = tmp_path / "urls.txt"
    table.write_text("http://example.com/a.jpg\n")
    assert secret not in repr(daskimg.read_urls(str(table), storage_options=s3.options))


def test_an_output_on_an_unknown_store_is_one_clear_error() -> None:
    from daskimg.output import check_output_location

    message = r"cannot use nosuch://b/out\.zarr as the output: ValueError: Protocol not known: nosuch"
    with pytest.raises(daskimg.OutputError, match=message):
        check_output_location("nosuch://b/out.zarr")
