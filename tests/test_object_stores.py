"""URL tables and outputs in an object store (a real S3 API: moto's server), with storage options only."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pandas as pd
import pytest

import daskimg

from .s3 import S3
from .server import FaultServer

GOOD = ["photo.jpg", "big.jpg", "tall.png", "photo.webp", "photo.gif", "photo.bmp"]


def _environment_without_aws() -> dict[str, str]:
    """No credentials, endpoint or profile from the environment: only the storage options carry them."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "FSSPEC_", "BOTO"))} | {
        "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull}


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
    first = subprocess.run(command, capture_output=True, text=True, timeout=300, env=_environment_without_aws())
    assert first.returncode == 0, first.stderr
    assert f"ok {len(urls) - 1}, failed 1 (http_error 1)" in first.stdout
    again = subprocess.run(command, capture_output=True, text=True, timeout=300, env=_environment_without_aws())
    assert again.returncode == 0, again.stderr
    assert "0 rows processed" in again.stdout
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
    _, meta = daskimg.open(out, storage_options=s3.options)
    assert meta["label"].tolist() == list(range(len(GOOD)))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing input bucket", "no input file matches s3://no-such-input/urls.parquet: bucket 'no-such-input' does "
                                 "not exist"),
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
                          capture_output=True, text=True, timeout=300, env=_environment_without_aws(), cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if not line.startswith(("daskimg: <", "daskimg: dashboard"))]
    assert errors == [errors[0]]
    assert errors[0].startswith(f"daskimg: error: {message.replace('BUCKET', bucket)}"), errors[0]
    assert "Traceback" not in done.stderr
    assert s3.options["secret"] not in done.stderr
    assert sorted(fs.invalidate_cache() or fs.ls("")) == before  # never a bucket made
    assert not (tmp_path / "out.zarr").exists()
