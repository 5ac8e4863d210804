"""A built-in demo: sample photos shipped with the package, served from a local HTTP server.

>>> with demo_server() as urls:                        # doctest: +SKIP
...     daskimg.read_urls(urls).fetch(allow_private_network=True).preprocess(size=128).to_zarr("demo.zarr")
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

__all__ = ["IMAGES", "demo_server", "demo_table"]

IMAGES = Path(__file__).resolve().parent / "demo_images"
_SUFFIXES = (".jpg", ".png", ".webp")


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real image hosts do

    def log_message(self, format: str, *args: object) -> None:
        pass


def demo_table(base_url: str) -> pd.DataFrame:
    """Every demo image once, plus one missing file to show how a failure is recorded."""
    names = sorted(p.name for p in IMAGES.iterdir() if p.suffix in _SUFFIXES)
    rows = [{"url": f"{base_url}/{n}", "caption": Path(n).stem.replace("_", " ")} for n in names]
    rows.append({"url": f"{base_url}/missing.jpg", "caption": "a URL that answers 404"})
    return pd.DataFrame(rows)


@contextlib.contextmanager
def demo_server() -> Iterator[pd.DataFrame]:
    """Serve the demo images on 127.0.0.1 (a free port) and yield the URL table for them."""
    handler = functools.partial(_QuietHandler, directory=str(IMAGES))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, name="daskimg-demo-server", daemon=True)
    thread.start()
    try:
        yield demo_table(f"http://127.0.0.1:{server.server_address[1]}")
    finally:
        server.shutdown()
        server.server_close()
