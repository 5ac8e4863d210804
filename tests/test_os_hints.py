"""The page-cache hints: read the imports ahead (and the pages the last run used), do not keep output cached."""

from __future__ import annotations

import ctypes
import json
import mmap
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from daskimg import pages, warmup, writeback

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="posix_fadvise / mincore")


def _resident_pages(path: Path) -> int:
    """How many of ``path``'s pages are in the page cache (mincore over a shared mapping)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    size = path.stat().st_size
    vec = (ctypes.c_ubyte * ((size + mmap.PAGESIZE - 1) // mmap.PAGESIZE))()
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        assert addr not in (None, ctypes.c_void_p(-1).value), os.strerror(ctypes.get_errno())
        try:
            assert libc.mincore(addr, size, vec) == 0, os.strerror(ctypes.get_errno())
        finally:
            libc.munmap(addr, size)
    finally:
        os.close(fd)
    return sum(v & 1 for v in vec)


def test_read_ahead_lists_what_a_run_imports_and_no_test_suites() -> None:
    files = list(warmup._files())
    libraries = [f for f in files if not f.endswith((".py", ".pyc"))]
    assert all(os.path.isfile(f) for f in files)
    assert any(f"{os.sep}pandas{os.sep}" in f for f in libraries)  # pandas' compiled core
    assert any(f"{os.sep}pyarrow{os.sep}" in f for f in libraries)
    assert any(f"{os.sep}pandas{os.sep}" in f and f.endswith(".pyc") for f in files)
    assert any(f"{os.sep}daskimg{os.sep}" in f and f.endswith((".py", ".pyc")) for f in files)
    assert all(os.path.getsize(f) <= warmup.SMALL_LIBRARY for f in libraries)  # big ones page in on demand
    assert not any(f"{os.sep}tests{os.sep}" in f for f in files)


def test_read_ahead_starts_one_background_thread_per_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(warmup, "_started", threading.Event())  # as in a fresh process
    release = threading.Event()
    monkeypatch.setattr(warmup, "_read_ahead", lambda: release.wait(60))  # stays alive until counted
    before = set(threading.enumerate())
    warmup.start()
    warmup.start()
    started = [t for t in threading.enumerate() if t not in before and t.name == "daskimg-warmup"]
    release.set()
    assert len(started) == 1
    started[0].join(timeout=60)
    assert not started[0].is_alive()


@linux_only
def test_written_files_leave_the_page_cache_once_the_window_has_passed(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(writeback, "WINDOW", 1 << 20)
    monkeypatch.setattr(writeback, "_recent", type(writeback._recent)())
    monkeypatch.setattr(writeback, "_pending", 0)
    data = os.urandom(512 << 10)
    first, *later = [tmp_path / f"chunk-{i}" for i in range(4)]
    first.write_bytes(data)
    writeback.written(str(first), len(data))  # its pages are dirty: writeback starts, they stay
    with first.open("rb") as f:
        os.fsync(f.fileno())  # now clean, and only daskimg's second hint would drop them
    assert _resident_pages(first) > 0
    for p in later:
        p.write_bytes(data)
        writeback.written(str(p), len(data))
    assert _resident_pages(first) == 0  # 1.5 MiB were written after it: dropped
    assert first.read_bytes() == data  # and all of it still on disk


def test_written_tolerates_a_file_that_is_already_gone(tmp_path: Path) -> None:
    writeback.written(str(tmp_path / "never-written"), 10)


_RUN_AND_RECORD = """
from daskimg.cluster import run_client
if __name__ == "__main__":
    with run_client(workers=1, threads_per_worker=1, dashboard_address=None) as client:
        client.submit(sum, [1, 2]).result()
"""


@linux_only
def test_a_run_records_the_pages_of_large_libraries_it_used_and_the_next_start_asks_for_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    done = subprocess.run([sys.executable, "-c", _RUN_AND_RECORD], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    files = json.loads(pages.cache_file().read_text())["files"]
    opencv = next(path for path in files if os.path.basename(path).startswith("cv2"))
    ranges = files[opencv]["ranges"]
    assert ranges
    assert all(first >= 0 and first + n <= files[opencv]["size"] // mmap.PAGESIZE + 1 for first, n in ranges)
    recorded = sum(n for entry in files.values() for _, n in entry["ranges"])
    assert recorded * mmap.PAGESIZE < sum(entry["size"] for entry in files.values()) / 2  # pages, not whole files

    asked = []
    monkeypatch.setattr(os, "posix_fadvise", lambda fd, offset, length, advice: asked.append((offset, length)))
    assert pages.read_ahead() == recorded
    assert sum(length for _, length in asked) == recorded * mmap.PAGESIZE


@linux_only
def test_a_changed_library_or_a_damaged_record_is_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    library = tmp_path / "libbig.so"
    library.write_bytes(b"\0" * (pages.LARGE + 4 * mmap.PAGESIZE))
    pages.save([{str(library): [(0, 2)]}, {str(library): [(3, 1)]}])
    saved = json.loads(pages.cache_file().read_text())["files"][str(library)]
    assert saved["ranges"] == [[0, 4]]  # the union, ranges two pages apart asked for as one
    assert pages.read_ahead() == 4
    os.utime(library, ns=(1, 1))  # an upgrade: other bytes where the pages were
    assert pages.read_ahead() == 0
    pages.cache_file().write_text("{not json")
    assert pages.read_ahead() == 0
