"""Ask the kernel for the files a run is about to import, all at once, before the imports do.

A run imports about 1,400 modules (pandas, dask, distributed, numpy, pyarrow, zarr ...) and
loads about 170 shared libraries. When those files have left the page cache (the first run
after a boot, or after the kernel reclaimed file pages left idle), every import waits for its
own small read, one after another. :func:`start` starts a background thread that asks for
them with ``posix_fadvise(WILLNEED)``: the reads are queued together, and the imports that
follow find the files in memory or already on their way.

What it asks for: when the last run was recorded (:mod:`daskimg.pages`), exactly what that
run loaded, in the order it loaded it. Otherwise (the first run, or after an upgrade of
everything) it walks the packages' folders and asks for every compiled module and every
library up to :data:`SMALL_LIBRARY` (about 140 MB); the big libraries then page in as used.
Measured without a record, a 20-URL run from a dropped cache while another process kept the
disk busy writing: 3.2-3.3 s with the walk, 4.3-5.8 s without (about 2.3 s warm). Asking for
the big libraries whole too (500 MB in all) was no faster there, and when the disk was slow
(45 MB/s) it queued 11 s of reads ahead of the imports. On a warm cache either costs about
30 ms of a background thread. Where ``posix_fadvise`` does not exist it does nothing.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import threading
from collections.abc import Iterator

from . import pages
from .writeback import advise

__all__ = ["PACKAGES", "SMALL_LIBRARY", "start"]

# Without a record, libraries up to this size are read whole; bigger ones (OpenCV, Arrow, OpenBLAS:
# 300 MB, of which a run touches about 70 MB) page in as used.
SMALL_LIBRARY = 4 << 20

# What the command line, its fork server and its workers import (one missing is skipped), and the
# folders where wheels keep the libraries they vendor.
PACKAGES = (
    "daskimg", "dask", "distributed", "pandas", "numpy", "pyarrow", "zarr", "numcodecs", "tornado",
    "toolz", "tlz", "jinja2", "markupsafe", "yaml", "fsspec", "dateutil", "importlib_metadata", "zipp", "packaging",
    "click", "zict", "PIL", "cv2", "psutil", "google_crc32c", "msgpack", "sortedcontainers", "donfig", "cloudpickle",
    "tblib", "locket", "simplejpeg", "pyspng", "pycurl", "pywuffs",
)
_VENDORED = ("numpy.libs", "pillow.libs", "opencv_python_headless.libs", "opencv_python.libs", "pycurl.libs",
             "simplejpeg.libs", "pyspng.libs", "pyarrow.libs", "google_crc32c.libs")
_SKIP = frozenset({"tests", "testing", "test", "include", "examples", "docs", "sampledata", "__pyinstaller"})
_started = threading.Event()


def start() -> None:
    """Start the read-ahead (once per process); returns at once."""
    if _started.is_set() or not hasattr(os, "posix_fadvise"):
        return
    _started.set()
    threading.Thread(target=_read_ahead, name="daskimg-warmup", daemon=True).start()


def _read_ahead() -> None:
    if pages.read_ahead():  # what the last run loaded, in order, if it was recorded
        return
    for path in _files():
        advise(path, os.POSIX_FADV_WILLNEED)


def _files() -> Iterator[str]:
    """Compiled modules and shared libraries of :data:`PACKAGES`, in that order, found without importing them."""
    tag = f".{sys.implementation.cache_tag}.pyc"
    roots: dict[str, None] = {}
    for name in PACKAGES:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            continue
        if spec is None or not spec.origin:
            continue
        if not spec.submodule_search_locations:
            yield spec.origin  # a single-file module
        for root in spec.submodule_search_locations or []:
            roots[root] = None
            site = os.path.dirname(root)
            roots.update((os.path.join(site, d), None) for d in _VENDORED if os.path.isdir(os.path.join(site, d)))
    for root in roots:
        for folder, dirs, files in os.walk(root):
            dirs[:] = [d for d in dirs if d not in _SKIP]
            compiled = "__pycache__" in dirs  # else (no bytecode written) the sources are what imports read
            for f in files:
                path = os.path.join(folder, f)
                if (f.endswith(tag) or (not compiled and f.endswith(".py"))
                        or ((f.endswith(".so") or ".so." in f) and _size(path) <= SMALL_LIBRARY)):
                    yield path


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0
