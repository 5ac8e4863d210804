"""A built-in demo: sample photos shipped with the package, served from a local HTTP server.

>>> with DemoServer() as server:                                         # doctest: +SKIP
...     job = daskimg.read_urls(server.table).fetch(allow_private_network=True)
...     job.preprocess(size=128).to_zarr("demo.zarr")
"""

from __future__ import annotations

import functools
import http.server
import threading
from pathlib import Path

import pandas as pd

__all__ = ["IMAGES", "DemoServer"]

IMAGES = Path(__file__).resolve().parent / "demo_images"
_SUFFIXES = (".jpg", ".png", ".webp")


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real image hosts do

    def log_message(self, format: str, *args: object) -> None:
        pass


class _Server(http.server.ThreadingHTTPServer):
    request_queue_size = 256  # daskimg opens many connections at once; the default backlog of 5 drops some


class DemoServer:
    """Serves the demo images (or ``directory``) on 127.0.0.1, a free port, from a thread until closed.

    ``table`` lists every image once, with a caption, plus one missing file to show how a
    failure is recorded.
    """

    def __init__(self, directory: Path = IMAGES) -> None:
        self.directory = directory
        handler = functools.partial(_QuietHandler, directory=str(directory))
        self._httpd = _Server(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        threading.Thread(target=self._httpd.serve_forever, name="daskimg-demo-server", daemon=True).start()

    @property
    def table(self) -> pd.DataFrame:
        names = sorted(p.name for p in self.directory.iterdir() if p.suffix in _SUFFIXES)
        rows = [{"url": f"{self.url}/{n}", "caption": Path(n).stem.replace("_", " ")} for n in names]
        rows.append({"url": f"{self.url}/missing.jpg", "caption": "a URL that answers 404"})
        return pd.DataFrame(rows)

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> DemoServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
