"""Servers that misbehave: each URL ends with a status and a message, within its time and size bounds."""

from __future__ import annotations

import email.utils
import time
from urllib.parse import quote

import pytest

from daskimg.fetch import fetch_batch, fetch_one
from daskimg.image import DecodeError, decode
from daskimg.options import FetchOptions, PreprocessOptions

from .server import FaultServer, gzip_bomb

QUICK = FetchOptions(allow_private_network=True, timeout=1.0, deadline=2.0, backoff=0.01, retries=1)


def timed(server: FaultServer, path: str, opts: FetchOptions = QUICK) -> tuple[str, str, float]:
    start = time.monotonic()
    result = fetch_one(server.url(path), opts)
    assert (result.error is None) == result.ok  # a message exactly when it failed
    return result.status, result.error or "", time.monotonic() - start


def test_a_dripping_body_is_cut_at_the_deadline(server: FaultServer) -> None:
    status, _, seconds = timed(server, "/drip")
    assert status == "timeout"
    assert seconds < QUICK.deadline + 10  # the body alone would take 500 s


def test_a_body_shorter_than_its_length_is_a_connection_error(server: FaultServer) -> None:
    status, error, _ = timed(server, "/short")
    assert status == "connection_error"
    assert error


def test_a_reset_connection_is_a_connection_error(server: FaultServer) -> None:
    status, error, _ = timed(server, "/reset")
    assert status == "connection_error"
    assert error


def test_a_gzip_bomb_is_never_unpacked(server: FaultServer) -> None:
    gzip_bomb()  # built once, before the clock of the request starts
    result = fetch_one(server.url("/gzip-bomb"), QUICK)
    assert result.data is not None
    assert len(result.data) < 2 * 1024 * 1024  # the wire bytes, not the GiB behind them
    with pytest.raises(DecodeError) as info:
        decode(result.data, PreprocessOptions())
    assert info.value.status == "not_image"


def test_stacked_content_encodings_are_not_unpacked(server: FaultServer) -> None:
    result = fetch_one(server.url("/encodings"), QUICK)
    assert result.data is not None
    assert len(result.data) < 2000
    with pytest.raises(DecodeError):
        decode(result.data, PreprocessOptions())


@pytest.mark.parametrize(
    ("after", "waits"),
    [("1", 1.0), (email.utils.formatdate(time.time() + 1, usegmt=True), 0.0), ("soon", 0.0), ("3600", 1.0)],
    ids=["seconds", "http-date", "garbage", "capped"],
)
def test_429_honours_retry_after_with_a_cap(server: FaultServer, after: str, waits: float) -> None:
    opts = FetchOptions(allow_private_network=True, backoff=0.01, max_retry_after=1.0, deadline=5.0)
    start = time.monotonic()
    result = fetch_one(server.url(f"/r429?after={quote(after)}&key={time.monotonic()}"), opts)
    seconds = time.monotonic() - start
    assert result.status == "ok"
    assert seconds >= waits * 0.9  # and an hour's Retry-After, capped at max_retry_after, fits the 5 s deadline


def test_retry_after_pauses_that_host_only(server: FaultServer) -> None:
    key = f"host-pause-{time.monotonic()}"
    urls = [server.url(f"/r429?after=1&key={key}"), server.url(f"/img/photo.jpg?{key}=same-host"),
            f"http://localhost:{server.port}/img/photo.jpg?{key}=other-host"]
    opts = FetchOptions(allow_private_network=True, concurrency=1, deadline=5.0, max_retry_after=2.0)
    results = fetch_batch(urls, opts)
    assert [r.status for r in results] == ["ok", "ok", "ok"]
    sent = {path: t for t, path in server.log if key in path}
    told = min(t for t, path in server.log if key in path and path.startswith("/r429"))  # the 429 itself
    assert sent[f"/img/photo.jpg?{key}=same-host"] - told >= 0.9  # waited for the host's Retry-After
    assert sent[f"/img/photo.jpg?{key}=other-host"] < sent[f"/img/photo.jpg?{key}=same-host"]  # another did not
