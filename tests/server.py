"""A local HTTP server for the tests: real images, and the failures the web throws at daskimg.

Routes (query strings are ignored except where said):

/img/NAME            an image from ``images`` (bytes as given)
/missing             404
/gone                410
/forbidden           403
/html                an HTML page with status 200
/truncated.jpg       the first half of a JPEG
/slow                headers, then nothing for ``slow_seconds``
/error500            always 500
/flaky/NAME?key=K    503 twice per key K, then the image NAME
/redirect/NAME       302 to /img/NAME
/loop                302 to itself
/to-file             302 to file:///etc/passwd
/noai/NAME           the image with X-Robots-Tag: noai
/big                 Content-Length larger than any sane cap, no body
/delay/NAME?ms=M     the image NAME after M milliseconds
/endless             a body with no length that never ends (until the client hangs up)
/drip                Content-Length 1000, then one byte every half second
/short               Content-Length 10000, 100 bytes, then the connection closes
/reset               the connection is reset (RST) instead of an answer
/gzip-bomb           1 GiB of zeros as Content-Encoding: gzip (about 1 MiB on the wire)
/encodings           Content-Encoding: gzip, br, gzip over a few bytes
/r429?after=V&key=K  429 with Retry-After: V the first time per key K, then the image photo.jpg

Every request is counted in ``hits`` (by path, without the query) and its User-Agent kept.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import gzip
import http.server
import socket
import struct
import threading
import time
import zlib
from urllib.parse import parse_qs, urlsplit


@functools.cache
def gzip_bomb() -> bytes:
    """1 GiB of zeros, gzip-compressed (about 1 MiB), built once."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: gzip container
    zeros = bytes(1 << 20)
    return b"".join(packer.compress(zeros) for _ in range(1024)) + packer.flush()


class FaultServer:
    def __init__(self, images: dict[str, bytes], slow_seconds: float = 5.0) -> None:
        self.images = images
        self.slow_seconds = slow_seconds
        self.hits: collections.Counter[str] = collections.Counter()
        self.user_agents: set[str] = set()
        self.log: list[tuple[float, str]] = []  # (monotonic time, path with query) of every request
        self.lock = threading.Lock()
        self._flaky: collections.Counter[str] = collections.Counter()
        self._gates: dict[str, threading.Event] = {}
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                with server.lock:
                    server.hits[parts.path] += 1
                    server.user_agents.add(self.headers.get("User-Agent", ""))
                    server.log.append((time.monotonic(), self.path))
                server.route(self, parts.path, parse_qs(parts.query))

        class Server(http.server.ThreadingHTTPServer):
            request_queue_size = 256  # a client opens up to 64 connections at once; the default backlog is 5

            def handle_error(self, request: object, client_address: object) -> None:
                pass  # clients hanging up on /slow and /big are the point, not an error

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.base = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> FaultServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def url(self, path: str) -> str:
        return self.base + path

    def gate(self, key: str) -> threading.Event:
        """What ``/held/NAME?key=KEY`` waits for before it answers: set it to let them through."""
        with self.lock:
            return self._gates.setdefault(key, threading.Event())

    @staticmethod
    def send(h: http.server.BaseHTTPRequestHandler, status: int, body: bytes = b"",
             headers: dict[str, str] | None = None, ctype: str = "application/octet-stream") -> None:
        h.send_response(status)
        h.send_header("Content-Type", ctype)
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        if "Content-Length" not in (headers or {}):
            h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if body:
            h.wfile.write(body)

    def route(self, h: http.server.BaseHTTPRequestHandler, path: str, query: dict[str, list[str]]) -> None:
        head, _, name = path[1:].partition("/")
        if head == "img" and name in self.images:
            self.send(h, 200, self.images[name])
        elif head == "redirect":
            self.send(h, 302, headers={"Location": f"/img/{name}"})
        elif head == "loop":
            self.send(h, 302, headers={"Location": "/loop"})
        elif head == "to-file":
            self.send(h, 302, headers={"Location": "file:///etc/passwd"})
        elif head == "redirect-to":  # anywhere the query says: other schemes, other hosts
            self.send(h, 302, headers={"Location": query.get("url", ["/"])[0]})
        elif head == "noai" and name in self.images:
            self.send(h, 200, self.images[name], headers={"X-Robots-Tag": "noai"})
        elif head == "flaky" and name in self.images:
            key = query.get("key", [name])[0]
            with self.lock:
                self._flaky[key] += 1
                n = self._flaky[key]
            if n <= 2:
                self.send(h, 503, b"busy", headers={"Retry-After": "0"})
            else:
                self.send(h, 200, self.images[name])
        elif head == "held" and name in self.images:
            self.gate(query.get("key", [name])[0]).wait(240)  # at most: a failed test must not hang its server
            self.send(h, 200, self.images[name])
        elif head == "delay" and name in self.images:
            time.sleep(float(query.get("ms", ["300"])[0]) / 1000)
            self.send(h, 200, self.images[name])
        elif head == "html":
            self.send(h, 200, b"<!doctype html><html><body>not an image</body></html>", ctype="text/html")
        elif head == "truncated.jpg":
            data = self.images["photo.jpg"]
            self.send(h, 200, data[: len(data) // 2], ctype="image/jpeg")
        elif head == "slow":
            h.send_response(200)
            h.send_header("Content-Length", "1000")
            h.end_headers()
            h.wfile.flush()
            time.sleep(self.slow_seconds)
            h.close_connection = True
        elif head == "error500":
            self.send(h, 500, b"oops")
        elif head == "big":
            self.send(h, 200, headers={"Content-Length": str(10 * 1024**3)})
            h.close_connection = True
        elif head == "endless":
            h.send_response(200)
            h.send_header("Content-Type", "image/jpeg")
            h.send_header("Connection", "close")
            h.end_headers()
            block = b"\xff" * 65536
            with contextlib.suppress(OSError):
                for _ in range(100_000):  # bounded: 6.5 GB at most, the client hangs up long before
                    h.wfile.write(block)
            h.close_connection = True
        elif head == "drip":
            h.send_response(200)
            h.send_header("Content-Length", "1000")
            h.end_headers()
            with contextlib.suppress(OSError):
                for _ in range(1000):
                    h.wfile.write(b"x")
                    h.wfile.flush()
                    time.sleep(0.5)
            h.close_connection = True
        elif head == "short":
            h.send_response(200)
            h.send_header("Content-Length", "10000")
            h.end_headers()
            h.wfile.write(b"x" * 100)
            h.close_connection = True
        elif head == "reset":
            h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            h.close_connection = True
        elif head == "gzip-bomb":
            self.send(h, 200, gzip_bomb(), headers={"Content-Encoding": "gzip"}, ctype="image/jpeg")
        elif head == "encodings":
            self.send(h, 200, gzip.compress(b"not an image" * 100), headers={"Content-Encoding": "gzip, br, gzip"})
        elif head == "r429":
            key = query.get("key", ["r429"])[0]
            with self.lock:
                self._flaky[key] += 1
                n = self._flaky[key]
            if n == 1:
                self.send(h, 429, b"slow down", headers={"Retry-After": query.get("after", ["0"])[0]})
            else:
                self.send(h, 200, self.images["photo.jpg"])
        elif head == "gone":
            self.send(h, 410)
        elif head == "forbidden":
            self.send(h, 403)
        else:
            self.send(h, 404, b"not found")


def free_port() -> int:
    """A loopback port nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
