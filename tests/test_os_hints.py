"""The two page-cache hints: read the imports ahead, and do not keep written output cached."""

from __future__ import annotations

import ctypes
import mmap
import os
import sys
import threading
from pathlib import Path

import pytest

from daskimg import warmup, writeback

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
