"""Bytes from one URL, safely; a batch of URLs on a thread pool.

Every failure is returned as a :class:`FetchResult` with a short ``status`` and a
message, never raised. Safety rules, all enforced here:

* only ``http`` and ``https``, at most ``max_redirects`` hops, each hop checked again;
* the address a connection goes to is checked *after* DNS resolution, at connect time,
  so neither odd spellings (``2130706433``, ``0x7f.1``) nor DNS rebinding reach a
  loopback, private or link-local host unless allowed (link-local never is);
* a connect/read timeout, a total deadline per URL and a cap on the body size;
* retries with exponential backoff and jitter for connection errors, 429 and 5xx only,
  honouring ``Retry-After`` up to a cap.
"""

from __future__ import annotations

import email.utils
import functools
import hashlib
import ipaddress
import random
import socket
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import cast
from urllib.parse import urljoin, urlsplit

import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    LocationParseError,
    NameResolutionError,
    NewConnectionError,
    ReadTimeoutError,
)

from .config import FetchOptions

__all__ = ["FetchResult", "fetch_batch", "fetch_one"]

REDIRECTS = frozenset({301, 302, 303, 307, 308})
_CHUNK = 256 * 1024
_MAX_URL = 8192


@dataclass(frozen=True, slots=True)
class FetchResult:
    """What happened to one URL: ``data`` is set exactly when ``status == "ok"``."""

    status: str
    error: str | None = None
    http_status: int | None = None
    data: bytes | None = None
    sha256: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"


class BlockedAddress(Exception):
    """A connection would reach an address the policy refuses (raised inside urllib3)."""


def address_refusal(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, allow_private: bool) -> str | None:
    """Why ``ip`` may not be contacted, or ``None`` when it may."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_link_local:
        return f"{ip} is link-local (cloud metadata lives there); refused always"
    if ip.is_multicast or ip.is_unspecified:
        return f"{ip} is not a unicast address"
    if ip.is_global or allow_private:
        return None
    return f"{ip} is a private or loopback address; pass --allow-private-network to allow it"


class _GuardedConnection(HTTPConnection):
    """Resolves the host itself and connects only to addresses the policy allows."""

    allow_private = False

    def _new_conn(self) -> socket.socket:
        try:
            infos = socket.getaddrinfo(self._dns_host, self.port, 0, socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as e:
            raise NameResolutionError(self.host, self, e) from e  # type: ignore[arg-type]
        refusal = None
        last_error: OSError | None = None
        for family, kind, proto, _, sockaddr in infos:
            ip = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
            refusal = address_refusal(ip, self.allow_private)
            if refusal:
                continue
            sock = socket.socket(family, kind, proto)
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if self.timeout is not None:
                    sock.settimeout(self.timeout)
                sock.connect(sockaddr)
                return sock
            except TimeoutError as e:
                sock.close()
                raise ConnectTimeoutError(self, f"connect to {self.host} timed out") from e
            except OSError as e:
                sock.close()
                last_error = e
        if last_error is not None:
            raise NewConnectionError(self, f"cannot connect to {self.host}: {last_error}")
        raise BlockedAddress(refusal or f"{self.host} resolved to no address")


class _GuardedHTTPSConnection(_GuardedConnection, HTTPSConnection):
    pass


@functools.cache
def _pool_manager(allow_private: bool, per_host: int) -> urllib3.PoolManager:
    """One pool manager per worker process and policy, shared by all fetch threads."""
    http_conn = type("Conn", (_GuardedConnection,), {"allow_private": allow_private})
    https_conn = type("TLSConn", (_GuardedHTTPSConnection,), {"allow_private": allow_private})
    manager = urllib3.PoolManager(num_pools=256, maxsize=per_host, block=True)
    manager.pool_classes_by_scheme = {
        "http": type("Pool", (HTTPConnectionPool,), {"ConnectionCls": http_conn}),
        "https": type("TLSPool", (HTTPSConnectionPool,), {"ConnectionCls": https_conn}),
    }
    return manager


def url_refusal(url: object) -> str | None:
    """Why a table cell is not a fetchable URL, or ``None``."""
    if not isinstance(url, str) or not url.strip():
        return "empty or missing URL"
    if len(url) > _MAX_URL:
        return f"URL longer than {_MAX_URL} characters"
    try:
        parts = urlsplit(url.strip())
    except ValueError as e:
        return f"not a URL: {e}"
    if parts.scheme.lower() not in ("http", "https"):
        return f"scheme {parts.scheme or '(none)'!r} refused; only http and https are fetched"
    if not parts.hostname:
        return "URL has no host"
    return None


def _retry_after(value: str | None, cap: float) -> float | None:
    """Seconds asked by a ``Retry-After`` header (seconds or HTTP date), capped; None if unparsable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), cap)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return min(max(0.0, when.timestamp() - time.time()), cap)


def _opted_out(headers: urllib3.HTTPHeaderDict) -> bool:
    """True when ``X-Robots-Tag`` says noai/noimageai to everyone or to daskimg."""
    for value in headers.getlist("X-Robots-Tag"):
        for token in value.split(","):
            agent, _, directive = token.rpartition(":")
            if agent.strip().lower() not in ("", "daskimg"):
                continue
            if directive.strip().lower() in ("noai", "noimageai"):
                return True
    return False


def _read_body(resp: urllib3.HTTPResponse, opts: FetchOptions, deadline: float) -> FetchResult | bytes:
    length = resp.headers.get("Content-Length")
    if length and length.isdigit() and int(length) > opts.max_bytes:
        return FetchResult("too_large", f"Content-Length {length} exceeds the {opts.max_bytes} byte cap", resp.status)
    body = bytearray()
    while True:
        if time.monotonic() > deadline:
            return FetchResult("timeout", f"body not received within the {opts.deadline:g} s deadline", resp.status)
        chunk = resp.read1(_CHUNK)
        if not chunk:
            return bytes(body)
        body += chunk
        if len(body) > opts.max_bytes:
            return FetchResult("too_large", f"body exceeds the {opts.max_bytes} byte cap", resp.status)


def fetch_one(url: str, opts: FetchOptions) -> FetchResult:
    """Download one URL under ``opts``; never raises for a bad URL, server or network."""
    refusal = url_refusal(url)
    if refusal:
        return FetchResult("invalid_url", refusal)
    manager = _pool_manager(opts.allow_private_network, opts.per_host)
    headers = {"User-Agent": opts.user_agent, "Accept": "image/*,*/*;q=0.5", "Accept-Encoding": "identity"}
    deadline = time.monotonic() + opts.deadline
    current = url.strip()
    hops = 0
    attempt = 0
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return FetchResult("timeout", f"no answer within the {opts.deadline:g} s deadline")
        wait: float | None = None
        timeout = urllib3.Timeout(connect=min(opts.timeout, remaining), read=min(opts.timeout, remaining))
        try:
            answer = manager.urlopen(
                "GET", current, headers=headers, redirect=False, retries=False,
                preload_content=False, timeout=timeout, pool_timeout=remaining,
            )
            resp = cast(urllib3.HTTPResponse, answer)  # what a pool returns for http(s)
        except BlockedAddress as e:
            return FetchResult("blocked_address", str(e))
        except LocationParseError as e:
            return FetchResult("invalid_url", f"not a URL: {e}")
        except NameResolutionError as e:
            return FetchResult("dns_error", f"cannot resolve host: {e.__cause__ or e}")
        except NewConnectionError as e:  # before its base class ConnectTimeoutError
            result = FetchResult("connection_error", str(e))
        except (ConnectTimeoutError, ReadTimeoutError, TimeoutError) as e:
            result = FetchResult("timeout", f"timed out: {e}")
        except (HTTPError, OSError) as e:
            result = FetchResult("connection_error", f"{type(e).__name__}: {e}")
        else:
            try:
                status = resp.status
                if status in REDIRECTS and resp.headers.get("Location"):
                    hops += 1
                    if hops > opts.max_redirects:
                        return FetchResult("too_many_redirects", f"more than {opts.max_redirects} redirects", status)
                    current = urljoin(current, resp.headers["Location"])
                    refusal = url_refusal(current)
                    if refusal:
                        return FetchResult("blocked_redirect", f"redirect to {current[:200]}: {refusal}", status)
                    continue
                if opts.respect_noai and _opted_out(resp.headers):
                    return FetchResult("opted_out", "X-Robots-Tag forbids AI use (noai/noimageai)", status)
                if status == 429 or status >= 500:
                    result = FetchResult("http_error", f"HTTP {status} {resp.reason or ''}".strip(), status)
                    wait = _retry_after(resp.headers.get("Retry-After"), opts.max_retry_after)
                elif status != 200:
                    return FetchResult("http_error", f"HTTP {status} {resp.reason or ''}".strip(), status)
                else:
                    body = _read_body(resp, opts, deadline)
                    if isinstance(body, FetchResult):
                        return body
                    if not body:
                        return FetchResult("empty_body", "the server answered with an empty body", status)
                    return FetchResult("ok", None, status, body, hashlib.sha256(body).hexdigest())
            except (ReadTimeoutError, TimeoutError) as e:
                result = FetchResult("timeout", f"body read timed out: {e}", resp.status)
            except (HTTPError, OSError) as e:
                result = FetchResult("connection_error", f"body read failed: {type(e).__name__}: {e}", resp.status)
            finally:
                if not resp.isclosed():  # unread body: this connection cannot serve another request
                    resp.close()
                resp.release_conn()  # give the slot back to the pool (a closed connection reconnects)
        if attempt >= opts.retries:
            return result
        attempt += 1
        if wait is None:
            wait = opts.backoff * 2 ** (attempt - 1) * random.uniform(0.5, 1.5)
        if time.monotonic() + wait > deadline:
            return result
        time.sleep(wait)


def fetch_batch(urls: Iterable[object], opts: FetchOptions) -> list[FetchResult]:
    """Fetch every URL of a partition with up to ``opts.concurrency`` requests in flight.

    Results come back in input order, one per URL.
    """
    items: Sequence[object] = list(urls)
    if not items:
        return []

    def one(url: object) -> FetchResult:
        if not isinstance(url, str):
            return FetchResult("invalid_url", "empty or missing URL")
        return fetch_one(url, opts)

    with ThreadPoolExecutor(min(opts.concurrency, len(items)), thread_name_prefix="daskimg-fetch") as pool:
        return list(pool.map(one, items))
