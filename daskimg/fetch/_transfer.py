"""Bytes from URLs, safely, many at a time: libcurl's multi interface driven from one thread.

Every failure is returned as a :class:`FetchResult` with a :class:`~daskimg.Status` and a
message, never raised. One thread keeps up to ``concurrency`` transfers in flight on pooled
keep-alive connections, so a far-away server's round trip is hidden without a thread
per request, and the HTTP work itself runs in C (about a sixth of urllib3's CPU time
per image). Safety rules, enforced here
with the refusals of :mod:`._policy`:

* only ``http`` and ``https``, for the first request and every redirect, at most
  ``max_redirects`` hops;
* the address of every new connection is checked *after* DNS resolution, as libcurl
  opens the socket, so neither odd spellings (``2130706433``, ``0x7f.1``) nor DNS
  rebinding reach a loopback, private or link-local host unless allowed (link-local
  never is); proxies from the environment are not used, so the check sees the real peer;
* a connect timeout, a stall timeout (no byte for ``timeout`` seconds), a total
  deadline per URL and a cap on the body size; no compressed transfer encodings;
* retries with exponential backoff and jitter for connection errors, timeouts, 429
  and 5xx only, honouring ``Retry-After`` up to a cap.

A batch fetched with ``defer=True`` (a chunk of the pipeline) stops waiting for its slowest
URLs once the rest are done (see ``FetchOptions.defer_after``): those come back as
``deferred``, to be fetched again on their own.
"""

from __future__ import annotations

import contextlib
import hashlib
import heapq
import io
import ipaddress
import math
import random
import socket
import threading
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import pycurl

from .._types import Status
from ..options import FetchOptions
from ._policy import address_refusal, opted_out, retry_after, url_refusal

__all__ = ["FetchResult", "fetch_batch", "fetch_one"]

# A deferring batch whose DONE_SHARE of URLs took t seconds waits for the rest until PATIENCE * t (at
# least MIN_PATIENCE s, at most defer_after). Once they have taken STALL * t more, it is stalled: it
# waits inside its caller's `stalled()` (a Dask task leaves its worker's thread pool meanwhile).
DONE_SHARE, PATIENCE, MIN_PATIENCE, STALL = 0.9, 3.0, 0.25, 0.25

_RETRY_CURL = frozenset({
    pycurl.E_COULDNT_CONNECT, pycurl.E_OPERATION_TIMEDOUT, pycurl.E_GOT_NOTHING, pycurl.E_RECV_ERROR,
    pycurl.E_SEND_ERROR, pycurl.E_PARTIAL_FILE,
})
_PROTOCOLS = pycurl.PROTO_HTTP | pycurl.PROTO_HTTPS
# libcurl >= 8.4 stops a body of unannounced length at MAXFILESIZE; older ones only check Content-Length.
_CURL_CAPS_STREAMS = pycurl.version_info()[2] >= 0x080400


@dataclass(frozen=True, slots=True)
class FetchResult:
    """What happened to one URL: ``data`` is set exactly when ``status == "ok"``."""

    status: Status
    error: str | None = None
    http_status: int | None = None
    data: bytes | None = None
    sha256: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == Status.OK


@dataclass(eq=False)
class _Transfer:
    """One URL's journey: attempts, and what the current attempt has received."""

    index: int
    url: str
    deadline: float
    host: str = ""
    attempt: int = 0
    blocked: str | None = None
    body: io.BytesIO = field(default_factory=io.BytesIO)
    headers: list[bytes] = field(default_factory=list)

    def reset(self) -> None:
        self.blocked = None
        self.body = io.BytesIO()
        self.headers = []

    def final_headers(self) -> list[bytes]:
        """Header lines of the last response (libcurl hands over those of every redirect hop too)."""
        starts = [i for i, line in enumerate(self.headers) if line.startswith(b"HTTP/")]
        return self.headers[starts[-1]:] if starts else self.headers

    def status_line(self) -> str:
        """``HTTP 404 Not Found`` from the final response's status line."""
        headers = self.final_headers()
        if not headers:
            return ""
        _, _, rest = headers[0].decode("latin-1").strip().partition(" ")
        return f"HTTP {rest}"[:200]

    def header_values(self, name: bytes) -> list[str]:
        prefix = name.lower() + b":"
        return [h[len(prefix):].strip().decode("latin-1") for h in self.final_headers()
                if h[: len(prefix)].lower() == prefix]


class _Fetcher:
    """A libcurl multi handle and its easy handles, reused by one thread across batches (keep-alive)."""

    def __init__(self, opts: FetchOptions) -> None:
        self.opts = opts
        self.multi = pycurl.CurlMulti()
        self.multi.setopt(pycurl.M_MAX_HOST_CONNECTIONS, opts.per_host)
        self.multi.setopt(pycurl.M_MAX_TOTAL_CONNECTIONS, opts.concurrency)
        self.idle: list[Any] = []  # easy handles between transfers
        self.busy: dict[Any, _Transfer] = {}  # easy handle -> its transfer
        self.paused: dict[str, float] = {}  # host -> monotonic time before which it gets no request

    def _open_socket(self, transfer: _Transfer) -> Any:
        allow = self.opts.allow_private_network

        def open_socket(purpose: int, address: Any) -> Any:
            ip = ipaddress.ip_address(str(address.addr[0]).split("%", 1)[0])
            refusal = address_refusal(ip, allow)
            if refusal:
                transfer.blocked = refusal
                return pycurl.SOCKET_BAD
            return socket.socket(address.family, address.socktype, address.protocol)

        return open_socket

    def _handle(self) -> Any:
        """A new easy handle with the options every transfer shares (a handle keeps them from one to the next)."""
        o = self.opts
        c = pycurl.Curl()
        c.setopt(pycurl.PROTOCOLS, _PROTOCOLS)
        c.setopt(pycurl.REDIR_PROTOCOLS, _PROTOCOLS)
        c.setopt(pycurl.FOLLOWLOCATION, 1)
        c.setopt(pycurl.MAXREDIRS, o.max_redirects)
        c.setopt(pycurl.PROXY, "")
        c.setopt(pycurl.NOSIGNAL, 1)
        c.setopt(pycurl.USERAGENT, o.user_agent)
        c.setopt(pycurl.HTTPHEADER, ["Accept: image/*,*/*;q=0.5"])
        c.setopt(pycurl.LOW_SPEED_LIMIT, 1)
        c.setopt(pycurl.LOW_SPEED_TIME, max(1, math.ceil(o.timeout)))
        c.setopt(pycurl.MAXFILESIZE_LARGE, o.max_bytes)
        return c

    def _start(self, transfer: _Transfer) -> None:
        o = self.opts
        c = self.idle.pop() if self.idle else self._handle()
        transfer.reset()
        remaining = max(0.001, transfer.deadline - time.monotonic())
        self.busy[c] = transfer
        c.setopt(pycurl.URL, transfer.url)
        c.setopt(pycurl.CONNECTTIMEOUT_MS, int(1000 * min(o.timeout, remaining)))
        c.setopt(pycurl.TIMEOUT_MS, int(1000 * remaining))
        # Built-in methods as callbacks: no Python frame per header line or body chunk.
        c.setopt(pycurl.HEADERFUNCTION, transfer.headers.append)
        if _CURL_CAPS_STREAMS:
            c.setopt(pycurl.WRITEDATA, transfer.body)
        else:
            c.setopt(pycurl.WRITEFUNCTION, _capped_writer(transfer.body, o.max_bytes))
        c.setopt(pycurl.OPENSOCKETFUNCTION, self._open_socket(transfer))
        self.multi.add_handle(c)

    def _finish(self, c: Any, t: _Transfer, errno: int, message: str) -> FetchResult:
        """What one attempt came to."""
        code = int(c.getinfo(pycurl.RESPONSE_CODE)) or None
        redirected = int(c.getinfo(pycurl.REDIRECT_COUNT)) > 0
        o = self.opts
        if errno == 0:
            if o.respect_noai and opted_out(t.header_values(b"x-robots-tag")):
                return FetchResult(Status.OPTED_OUT, "X-Robots-Tag forbids AI use (noai/noimageai)", code)
            if code != 200:
                return FetchResult(Status.HTTP_ERROR, t.status_line() or f"HTTP {code}", code)
            data = t.body.getvalue()
            if not data:
                return FetchResult(Status.EMPTY_BODY, "the server answered with an empty body", code)
            return FetchResult(Status.OK, None, code, data, hashlib.sha256(data).hexdigest())
        if t.blocked:
            return FetchResult(Status.BLOCKED_ADDRESS, t.blocked)
        if errno in (pycurl.E_FILESIZE_EXCEEDED, pycurl.E_WRITE_ERROR):
            return FetchResult(Status.TOO_LARGE, f"body exceeds the {o.max_bytes} byte cap", code)
        if errno == pycurl.E_TOO_MANY_REDIRECTS:
            return FetchResult(Status.TOO_MANY_REDIRECTS, f"more than {o.max_redirects} redirects", code)
        if errno == pycurl.E_UNSUPPORTED_PROTOCOL and redirected:
            return FetchResult(Status.BLOCKED_REDIRECT, f"redirect refused: {message}; only http and https", code)
        if errno in (pycurl.E_URL_MALFORMAT, pycurl.E_UNSUPPORTED_PROTOCOL):
            return FetchResult(Status.INVALID_URL, message)
        if errno == pycurl.E_COULDNT_RESOLVE_HOST:
            return FetchResult(Status.DNS_ERROR, message)
        kind = Status.TIMEOUT if errno == pycurl.E_OPERATION_TIMEDOUT else Status.CONNECTION_ERROR
        return FetchResult(kind, message, code)

    def _retry_at(self, t: _Transfer, errno: int, result: FetchResult) -> float | None:
        """When to try ``t`` again, or None when ``result`` is final. Pauses the host on 429 / Retry-After.

        Retried: connection errors and timeouts (never a refused address), 429 and 5xx answers.
        """
        o = self.opts
        now = time.monotonic()
        code = result.http_status or 0
        server_busy = result.status == Status.HTTP_ERROR and (code == 429 or code >= 500)
        retryable = server_busy or (errno in _RETRY_CURL and not t.blocked)
        after = None
        if server_busy:
            after = retry_after(next(iter(t.header_values(b"retry-after")), None), o.max_retry_after)
        if result.http_status == 429 or (result.http_status == 503 and after is not None):
            # Retry-After (or a 429 without it) speaks for the whole host, not just this URL.
            pause = after if after is not None else o.backoff
            self.paused[t.host] = max(self.paused.get(t.host, 0.0), now + pause)
        if not retryable or t.attempt >= o.retries:
            return None
        t.attempt += 1
        wait = after if after is not None else o.backoff * 2 ** (t.attempt - 1) * random.uniform(0.5, 1.5)
        return now + wait if now + wait < t.deadline else None

    def run(self, urls: list[object], defer: bool = False,
            stalled: Callable[[], AbstractContextManager[object]] | None = None) -> list[FetchResult]:
        """One result per URL, in order. Transfers never outlive the call, even when it fails."""
        try:
            with contextlib.ExitStack() as stack:
                return self._run(urls, defer, lambda: stack.enter_context(stalled()) if stalled else None)
        finally:
            for c in self.busy:  # stopped waiting for them, or an error: nothing may answer into the next batch
                self.multi.remove_handle(c)
                c.close()
            self.busy.clear()

    def _patience(self, start: float, done_at: float | None) -> float:
        """When a deferring batch stops waiting: ``defer_after`` s after its start, or sooner once most are done."""
        cap = self.opts.defer_after
        if done_at is None:
            return start + cap
        return start + min(cap, max(MIN_PATIENCE, PATIENCE * (done_at - start)))

    def _run(self, urls: list[object], defer: bool, stall: Callable[[], object]) -> list[FetchResult]:
        o = self.opts
        results: list[FetchResult | None] = [None] * len(urls)
        start = time.monotonic()
        defer = defer and o.defer_after > 0
        ready: list[_Transfer] = []
        for i, url in enumerate(urls):
            refusal = url_refusal(url)
            if refusal:
                results[i] = FetchResult(Status.INVALID_URL, refusal)
            else:
                clean = str(url).strip().replace(" ", "%20")  # as browsers do; scraped lists have raw spaces
                ready.append(_Transfer(i, clean, start + o.deadline, urlsplit(clean).netloc.lower()))
        ready.reverse()  # pop() from the end keeps input order
        waiting: list[tuple[float, int, _Transfer]] = []  # (when, index, transfer): retries after backoff
        active = 0
        left, most = len(ready), len(ready) - math.ceil(DONE_SHARE * len(ready))  # most are done when `left` <= `most`
        done_at: float | None = None  # when they were
        stalled = False
        while ready or waiting or active:
            now = time.monotonic()
            while waiting and waiting[0][0] <= now:
                ready.append(heapq.heappop(waiting)[2])
            while ready and active < o.concurrency:
                t = ready.pop()
                resume = self.paused.get(t.host, 0.0)
                if resume > now:  # the host asked us to slow down: wait without spending an attempt
                    if resume >= t.deadline:
                        results[t.index] = FetchResult(Status.TIMEOUT, "deadline reached while the host asked to wait "
                                                       "(429 / Retry-After)")
                        left -= 1
                    else:
                        heapq.heappush(waiting, (resume, t.index, t))
                    continue
                self._start(t)
                active += 1
            while self.multi.perform()[0] == pycurl.E_CALL_MULTI_PERFORM:
                pass
            while True:
                queued, ok, failed = self.multi.info_read()
                for c, errno, message in [(c, 0, "") for c in ok] + failed:
                    active -= 1
                    self.multi.remove_handle(c)
                    t = self.busy.pop(c)
                    result = self._finish(c, t, errno, message)
                    self.idle.append(c)
                    retry_at = self._retry_at(t, errno, result)
                    if retry_at is None:
                        results[t.index] = result
                        left -= 1
                    else:
                        heapq.heappush(waiting, (retry_at, t.index, t))
                if not queued:
                    break
            wait = 0.05 if waiting else 1.0
            if defer and left:
                now = time.monotonic()
                if done_at is None and left <= most:
                    done_at = now
                give_up = self._patience(start, done_at)
                if now >= give_up:
                    return self._deferred(results, now - start)
                stall_at = done_at + STALL * (done_at - start) if done_at else (start + give_up) / 2
                if not stalled and now >= stall_at:
                    stalled = True
                    stall()
                wait = min(wait, (give_up if stalled else stall_at) - now)
            if active:
                self.multi.select(wait)
            elif waiting and not ready:
                time.sleep(max(0.0, min(waiting[0][0] - time.monotonic(), wait)))
        return [r if r is not None else FetchResult(Status.CONNECTION_ERROR, "no result") for r in results]

    def _deferred(self, results: list[FetchResult | None], waited: float) -> list[FetchResult]:
        """The results, with every URL not done yet marked deferred (:meth:`run` stops their transfers)."""
        late = FetchResult(Status.DEFERRED, f"not done after {waited:.1f} s, when the rest of its chunk was; "
                           "fetched again on its own")
        return [r if r is not None else late for r in results]


def _capped_writer(body: io.BytesIO, cap: int) -> Any:
    """A body writer that aborts the transfer past ``cap`` bytes (for libcurl < 8.4)."""

    def write(chunk: bytes) -> int | None:
        if body.tell() + len(chunk) > cap:
            return 0  # libcurl reports a write error, recorded as too_large
        body.write(chunk)
        return None

    return write


_local = threading.local()


def _fetcher(opts: FetchOptions) -> _Fetcher:
    """This thread's fetcher for ``opts``: its connections stay open between batches."""
    cached: _Fetcher | None = getattr(_local, "fetcher", None)
    if cached is None or cached.opts != opts:
        cached = _local.fetcher = _Fetcher(opts)
    return cached


def fetch_batch(urls: Iterable[object], opts: FetchOptions, *, defer: bool = False,
                stalled: Callable[[], AbstractContextManager[object]] | None = None) -> list[FetchResult]:
    """Fetch every URL with up to ``opts.concurrency`` transfers in flight; results in input order.

    With ``defer``, the URLs still going when the batch stops waiting (``opts.defer_after``)
    come back with status ``Status.DEFERRED``, for the caller to fetch again; the batch waits
    for its last URLs inside ``stalled()``, if given (a Dask task leaves its worker's thread
    pool there).
    """
    items = list(urls)
    return _fetcher(opts).run(items, defer, stalled) if items else []


def fetch_one(url: str, opts: FetchOptions) -> FetchResult:
    """Download one URL under ``opts``; never raises for a bad URL, server or network."""
    return fetch_batch([url], opts)[0]
