"""The page-cache hints: read the imports ahead (and the pages the last run used), do not keep output cached."""

from __future__ import annotations

import ctypes
import json
import mmap
import os
import subprocess
import sys
import threading
from collections.abc import Callable
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
def test_a_run_records_what_it_loaded_in_load_order_and_the_next_start_asks_for_just_that(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    done = subprocess.run([sys.executable, "-c", _RUN_AND_RECORD], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    files = json.loads(pages.cache_file().read_text())["files"]
    order = list(files)

    def first(predicate: Callable[[str], bool]) -> int:
        return next(i for i, path in enumerate(order) if predicate(path))

    # Libraries by the pages used, inside the file; compiled modules whole.
    opencv = order[first(lambda p: os.path.basename(p).startswith("cv2.") and p.endswith(".so"))]
    size = -(-files[opencv]["size"] // mmap.PAGESIZE)
    assert all(start >= 0 and start + n <= size for start, n in files[opencv]["ranges"])
    recorded = sum(n for entry in files.values() for _, n in entry["ranges"])
    assert recorded * mmap.PAGESIZE < sum(entry["size"] for entry in files.values()) / 2  # pages, not whole files
    compiled = f"{os.sep}numpy{os.sep}__pycache__{os.sep}__init__.{sys.implementation.cache_tag}.pyc"
    numpy_init = order[first(lambda p: p.endswith(compiled))]
    assert files[numpy_init]["ranges"] == [[0, -(-files[numpy_init]["size"] // mmap.PAGESIZE)]]
    # In the order they were loaded: numpy before OpenCV (which imports it), and the libraries
    # OpenCV's module brought in right after it, before the next extension module.
    assert order.index(numpy_init) < order.index(opencv)
    assert first(lambda p: "opencv_python" in p and ".libs" in p) == order.index(opencv) + 1

    asked = []
    monkeypatch.setattr(os, "posix_fadvise", lambda fd, offset, length, advice: asked.append((offset, length)))
    assert pages.read_ahead() == recorded
    assert sum(length for _, length in asked) == recorded * mmap.PAGESIZE


@linux_only
def test_the_pages_another_process_touched_are_found() -> None:
    """How the fork server's pages are recorded: it runs library set-up code that its workers never run again."""
    child = subprocess.Popen([sys.executable, "-c", "import sys, numpy; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        for _ in range(100):
            touched = pages.touched(child.pid)
            if any("numpy" in path for path in touched):
                break
            threading.Event().wait(0.1)
    finally:
        child.communicate(b"")
    umath = next(path for path in touched if os.path.basename(path).startswith("_multiarray_umath"))
    assert 0 < sum(n for _, n in touched[umath]) <= -(-os.path.getsize(umath) // mmap.PAGESIZE)
    assert pages.touched(child.pid) == {}  # gone: nothing, and no error


def test_records_of_processes_that_started_together_are_interleaved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    names = [tmp_path / name for name in ("a", "b", "c", "d", "e", "f")]
    for path in names:
        path.write_bytes(b"\0" * mmap.PAGESIZE)
    a, b, c, d, e, f = (str(path) for path in names)
    client = {a: [(0, 1)], b: [(0, 1)], c: [(0, 1)], d: [(0, 1)]}
    worker = {a: [(0, 1)], e: [(0, 1)]}  # e came halfway through the worker's loading, b a quarter into the client's
    server = {f: [(0, 1)], a: [(0, 1)]}  # unordered: f joins at the end
    pages.save([client, worker], unordered=[server])
    assert list(json.loads(pages.cache_file().read_text())["files"]) == [a, b, c, e, d, f]


@linux_only
def test_a_record_is_made_again_when_it_is_missing_old_or_of_changed_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    library = tmp_path / "lib.so"
    library.write_bytes(b"\0" * mmap.PAGESIZE)
    assert pages.wanted()  # none yet
    pages.save([{str(library): [(0, 1)]}])
    assert not pages.wanted()
    old = pages.cache_file().stat().st_mtime - pages.REFRESH - 1
    os.utime(pages.cache_file(), (old, old))
    assert pages.wanted()
    pages.save([{str(library): [(0, 1)]}])
    library.write_bytes(b"\0" * 2 * mmap.PAGESIZE)  # an upgrade
    assert pages.wanted()


def test_with_a_record_the_read_ahead_asks_for_nothing_else(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pages, "read_ahead", lambda: 12)
    monkeypatch.setattr(warmup, "_files", lambda: pytest.fail("walked the packages despite a record"))
    warmup._read_ahead()


@linux_only
def test_a_changed_library_or_a_damaged_record_is_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    library = tmp_path / "libbig.so"
    library.write_bytes(b"\0" * (8 * mmap.PAGESIZE))
    pages.save([{str(library): [(0, 2)]}, {str(library): [(3, 1)]}])
    saved = json.loads(pages.cache_file().read_text())["files"][str(library)]
    assert saved["ranges"] == [[0, 4]]  # the union, ranges two pages apart asked for as one
    assert pages.read_ahead() == 4
    os.utime(library, ns=(1, 1))  # an upgrade: other bytes where the pages were
    assert pages.read_ahead() == 0
    pages.cache_file().write_text("{not json")
    assert pages.read_ahead() == 0
