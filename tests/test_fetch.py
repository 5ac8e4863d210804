"""Fetching against a real local server: retries, redirects, caps, refusals, politeness."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import replace

import pytest

from daskimg.fetch import fetch_batch, fetch_one
from daskimg.options import FetchOptions

from .server import FaultServer

LOCAL = FetchOptions(allow_private_network=True, timeout=1.0, deadline=3.0, backoff=0.01)


def test_an_image_is_fetched_with_its_hash(server: FaultServer, images: dict[str, bytes]) -> None:
    result = fetch_one(server.url("/img/photo.jpg"), LOCAL)
    assert result.status == "ok"
    assert result.data == images["photo.jpg"]
    assert result.http_status == 200
    assert result.sha256 is not None
    assert len(result.sha256) == 64
    assert any(ua.startswith("daskimg/") for ua in server.user_agents)


@pytest.mark.parametrize(("path", "code"), [("/missing", 404), ("/forbidden", 403), ("/gone", 410)])
def test_client_errors_are_recorded_and_not_retried(server: FaultServer, path: str, code: int) -> None:
    before = server.hits[path]
    result = fetch_one(server.url(path), LOCAL)
    assert (result.status, result.http_status) == ("http_error", code)
    assert str(code) in (result.error or "")
    assert server.hits[path] - before == 1


def test_server_errors_are_retried_a_bounded_number_of_times(server: FaultServer) -> None:
    before = server.hits["/error500"]
    result = fetch_one(server.url("/error500"), LOCAL)
    assert (result.status, result.http_status) == ("http_error", 500)
    assert server.hits["/error500"] - before == 1 + LOCAL.retries


def test_a_server_that_fails_twice_then_answers_ends_ok(server: FaultServer) -> None:
    result = fetch_one(server.url("/flaky/photo.jpg?key=twice"), LOCAL)
    assert result.status == "ok"


@pytest.mark.parametrize(("target", "status"), [
    ("ftp://127.0.0.1/photo.jpg", "blocked_redirect"),
    ("data:image/png;base64,iVBORw0KGgo=", "blocked_redirect"),
    ("file:///etc/passwd", "blocked_redirect"),
    ("http://169.254.169.254/latest/meta-data/", "blocked_address"),  # even with private networks allowed
    ("http://[fe80::1]/", "blocked_address"),
])
def test_redirects_to_other_schemes_and_to_metadata_services_are_refused(
    server: FaultServer, target: str, status: str
) -> None:
    from urllib.parse import quote

    result = fetch_one(server.url(f"/redirect-to?url={quote(target, safe='')}"), LOCAL)
    assert result.status == status, result.error
    assert result.data is None


def test_redirects_are_followed_and_bounded(server: FaultServer) -> None:
    assert fetch_one(server.url("/redirect/photo.jpg"), LOCAL).status == "ok"
    loop = fetch_one(server.url("/loop"), LOCAL)
    assert loop.status == "too_many_redirects"
    to_file = fetch_one(server.url("/to-file"), LOCAL)
    assert to_file.status == "blocked_redirect"
    assert "file" in (to_file.error or "")


def test_size_cap_refuses_without_reading(server: FaultServer) -> None:
    result = fetch_one(server.url("/big"), LOCAL)
    assert result.status == "too_large"
    small = fetch_one(server.url("/img/big.jpg"), FetchOptions(allow_private_network=True, max_bytes=10_000))
    assert small.status == "too_large"


def test_a_body_without_length_stops_at_the_cap(server: FaultServer) -> None:
    result = fetch_one(server.url("/endless"), FetchOptions(allow_private_network=True, max_bytes=1_000_000))
    assert result.status == "too_large"  # not a timeout: the endless body was cut at the cap
    assert result.data is None


def test_a_silent_server_costs_at_most_the_deadline(server: FaultServer) -> None:
    t = time.monotonic()
    result = fetch_one(server.url("/slow"), FetchOptions(allow_private_network=True, timeout=3.0, deadline=1.5,
                                                         retries=5, backoff=0.01))
    assert result.status == "timeout"
    assert time.monotonic() - t < 10  # six attempts of 3 s each, without the deadline: 18 s


def test_noai_opt_out_is_respected_unless_turned_off(server: FaultServer) -> None:
    assert fetch_one(server.url("/noai/photo.jpg"), LOCAL).status == "opted_out"
    off = FetchOptions(allow_private_network=True, respect_noai=False)
    assert fetch_one(server.url("/noai/photo.jpg"), off).status == "ok"


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "localhost", "127.1", "2130706433", "0177.0.0.1", "0x7f.0.0.1", "[::1]",
             "[::ffff:127.0.0.1]"],
)
def test_loopback_in_any_spelling_is_refused_by_default(server: FaultServer, host: str) -> None:
    before = server.hits["/img/photo.jpg"]
    result = fetch_one(f"http://{host}:{server.port}/img/photo.jpg", FetchOptions())
    assert result.status == "blocked_address", result
    assert "--allow-private-network" in (result.error or "")
    assert server.hits["/img/photo.jpg"] == before  # no request reached the server


@pytest.mark.parametrize("host", ["10.1.2.3", "172.16.0.1", "192.168.1.1", "100.64.0.1", "[fc00::1]"])
def test_private_ranges_are_refused_before_connecting(host: str) -> None:
    result = fetch_one(f"http://{host}/x.jpg", FetchOptions(timeout=0.5))
    assert result.status == "blocked_address"


def test_link_local_stays_refused_even_when_private_is_allowed() -> None:
    result = fetch_one("http://169.254.169.254/latest/meta-data", LOCAL)
    assert result.status == "blocked_address"
    assert "link-local" in (result.error or "")


@pytest.mark.parametrize(
    "url", ["", "not a url", "file:///etc/passwd", "ftp://example.com/a.jpg", "javascript:alert(1)",
            "http://" + "a" * 9000 + ".com/", "http://example.com/a\x00.jpg", "http://example.com/\ufffd.jpg"],
)
def test_invalid_urls_are_recorded(url: str) -> None:
    assert fetch_one(url, LOCAL).status == "invalid_url"


def test_spaces_in_a_url_are_encoded_as_browsers_do(server: FaultServer) -> None:
    result = fetch_one(server.url("/img/photo.jpg?caption=a cat "), LOCAL)
    assert result.status == "ok"
    assert any(path.endswith("caption=a%20cat") for _, path in server.log)


def test_a_batch_keeps_input_order(server: FaultServer) -> None:
    urls: list[object] = [server.url("/img/photo.jpg"), server.url("/missing"), None, server.url("/img/photo.png")]
    results = fetch_batch(urls, LOCAL)
    assert [r.status for r in results] == ["ok", "http_error", "invalid_url", "http_error"]


def test_failed_responses_give_their_connection_back(server: FaultServer) -> None:
    # Two connections per host: if error answers leaked their pool slot the last fetch would starve.
    tight = FetchOptions(allow_private_network=True, per_host=2, timeout=1.0, deadline=2.0, retries=0)
    for path in ["/missing", "/html", "/error500", "/loop", "/big", "/gone"]:
        fetch_one(server.url(path), tight)
    assert fetch_one(server.url("/img/photo.jpg"), tight).status == "ok"


def test_a_batch_that_fails_leaves_nothing_for_the_next(server: FaultServer, monkeypatch: pytest.MonkeyPatch) -> None:
    import daskimg.fetch._transfer

    real = daskimg.fetch._transfer._Fetcher._finish
    calls = iter(range(1000))

    def failing_once(self, c, t, errno, message):  # type: ignore[no-untyped-def]
        if next(calls) == 0:
            raise RuntimeError("a bug while a batch is in flight")
        return real(self, c, t, errno, message)

    monkeypatch.setattr(daskimg.fetch._transfer._Fetcher, "_finish", failing_once)
    urls = [server.url(f"/delay/photo.jpg?ms=100&leftover={i}") for i in range(8)]
    with pytest.raises(RuntimeError):
        fetch_batch(urls, LOCAL)
    after = fetch_batch([server.url("/missing"), server.url("/img/photo.jpg")], LOCAL)
    assert [r.status for r in after] == ["http_error", "ok"]


def test_a_deferring_batch_stops_waiting_for_its_slowest_url_and_says_so(server: FaultServer) -> None:
    urls = [server.url(f"/img/photo.jpg?defer={i}") for i in range(20)] + [server.url("/slow")]
    stalls = []

    @contextlib.contextmanager
    def stalled() -> Iterator[None]:
        stalls.append(1)
        yield

    results = fetch_batch(urls, LOCAL, defer=True, stalled=stalled)
    assert [r.status for r in results[:-1]] == ["ok"] * 20
    assert results[-1].status == "deferred"
    assert "fetched again" in (results[-1].error or "")
    assert stalls == [1]  # it waited for the last one outside its caller's thread pool, once
    # Not deferring, or with defer_after 0, the batch waits for every URL: /slow times out.
    once = replace(LOCAL, retries=0)
    assert fetch_batch(urls[-1:], once)[0].status == "timeout"
    assert fetch_batch(urls[-1:], replace(once, defer_after=0), defer=True)[0].status == "timeout"


def test_a_batch_whose_urls_all_hang_defers_them_all_after_defer_after(server: FaultServer) -> None:
    opts = replace(LOCAL, timeout=3.0, deadline=10.0, defer_after=0.5)
    results = fetch_batch([server.url(f"/slow?all={i}") for i in range(3)], opts, defer=True)
    assert [r.status for r in results] == ["deferred"] * 3
