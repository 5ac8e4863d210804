"""What a run reads as it starts, in the order it reads it: recorded after one run, read ahead by the next.

A cold start reads about 150 MB of compiled modules and libraries. Read as the imports ask
for them, on a VM whose disk reads 8 MiB around each page fault, that came to 310 MB, one
fault after another. After a run on a local cluster, :func:`record` lists what the client
and each worker loaded, in the order they loaded it: each imported module's compiled file
whole, each mapped file by the pages the process touched (``/proc/self/pagemap``);
:func:`touched` adds the pages the fork server touched, whose imports ran library set-up
code that the workers forked from it never run again. :func:`save` keeps the union, in load
order, in the user's cache folder. The next start asks for exactly that, in that order,
and for nothing else (:func:`read_ahead`): the reads are queued at once, those the imports
need first come first, and the imports' page faults find their pages in memory or on their
way instead of reading around them. This is how systemd-readahead replayed a boot.

A file whose size or modification time changed since (an upgrade) is skipped, and read when
imported; the next run then records again (:func:`wanted`), as it does once a day anyway.

Measured with reads held to 25 MB/s and the page cache dropped, a 20-URL run (1.4-1.7 s
warm) took 5.5-7.6 s and read 100-157 MB, against 12.6-12.9 s and 307-313 MB with the
record this replaced (pages of the libraries over 4 MiB only, other files read whole).

Linux only; anywhere else, and on any error, these do nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import json
import mmap
import os
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["REFRESH", "cache_file", "read_ahead", "record", "save", "touched", "wanted"]

_GAP = 16  # pages: ranges closer than this are asked for as one
_NOT_FILES = ("/dev/", "/proc/", "/sys/")
REFRESH = 24 * 3600  # seconds: a younger record of unchanged files is kept as it is
Ranges = list[tuple[int, int]]  # (first page, number of pages)


def cache_file() -> Path:
    """``$XDG_CACHE_HOME/daskimg/pages.json`` (``~/.cache`` by default)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "daskimg" / "pages.json"


def record() -> dict[str, Ranges]:
    """What this process loaded, in load order: modules' files whole, libraries by the pages touched."""
    try:
        mapped = _Mapped("self")
        order = _load_order(mapped)
    except (OSError, ValueError):
        return {}
    recorded: dict[str, Ranges] = {}
    for path in order:
        if path in mapped.pages:
            recorded[path] = mapped.ranges(path)
        elif path.endswith((".pyc", ".py")):
            try:
                recorded[path] = [(0, -(-os.path.getsize(path) // mmap.PAGESIZE))]
            except OSError:
                continue
    recorded.update((path, mapped.ranges(path)) for path in mapped.pages if path not in recorded)  # data files
    return {path: ranges for path, ranges in recorded.items() if ranges}


def touched(pid: int) -> dict[str, Ranges]:
    """The pages of files that process ``pid`` has mapped and touched, in no particular order.

    For a process whose imports cannot be listed from here: the fork server, whose imports
    run code (library constructors, module set-up) that the workers forked from it never run
    again, so that those pages are missing from the workers' own records.
    """
    try:
        mapped = _Mapped(str(pid))
    except (OSError, ValueError):
        return {}
    return {path: ranges for path in mapped.pages if (ranges := mapped.ranges(path))}


class _Mapped:
    """The files a process has mapped, and which of their pages it touched (``/proc/PID/maps`` and ``pagemap``)."""

    def __init__(self, pid: str) -> None:
        import numpy as np  # (loaded in every process that records: a run's client and workers)

        self.pages: dict[str, list[np.ndarray]] = {}
        self.by_inode: dict[tuple[int, int], str] = {}
        maps = Path(f"/proc/{pid}/maps").read_text().splitlines()
        fd = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY)
        try:
            for line in maps:
                fields = line.split(maxsplit=5)  # address perms offset dev inode [path]
                if len(fields) < 6 or not fields[5].startswith("/") or fields[5].startswith(_NOT_FILES):
                    continue  # anonymous memory, or shared memory and devices (/dev/shm ...): nothing to read
                path = fields[5]
                major, minor = (int(x, 16) for x in fields[3].split(":"))
                self.by_inode[os.makedev(major, minor), int(fields[4])] = path
                start, end = (int(x, 16) for x in fields[0].split("-"))
                entries = np.frombuffer(
                    os.pread(fd, (end - start) // mmap.PAGESIZE * 8, start // mmap.PAGESIZE * 8), dtype="<u8"
                )
                present = np.flatnonzero(entries >> np.uint64(63)) + int(fields[2], 16) // mmap.PAGESIZE
                self.pages.setdefault(path, []).append(present)
        finally:
            os.close(fd)

    def ranges(self, path: str) -> Ranges:
        import numpy as np

        return _ranges(np.unique(np.concatenate(self.pages[path])).tolist())

    def path_of(self, file: str) -> str | None:
        """The path under which ``file`` (any name of it) is mapped, if it is."""
        try:
            st = os.stat(file)
        except OSError:
            return None
        return self.by_inode.get((st.st_dev, st.st_ino))


def _load_order(mapped: _Mapped) -> list[str]:
    """Imported modules' files and mapped libraries, interleaved in the order this process loaded them.

    ``sys.modules`` keeps the import order; the dynamic linker's list keeps the order of the
    libraries, each extension module followed by the libraries it brought in.
    """
    libraries = [path for name in _libraries() if (path := mapped.path_of(name))]
    position = {path: i for i, path in enumerate(libraries)}
    files = [f for m in list(sys.modules.values()) if isinstance(f := getattr(m, "__file__", None), str)]
    loaded = {f: position.get(mapped.path_of(f) or "") for f in files if f.endswith(".so")}
    extensions = sorted(i for i in loaded.values() if i is not None)
    order: list[str] = []
    for file in files:
        at = loaded.get(file)
        if at is None:
            order.append(_compiled(file))
        else:  # this extension module, and the libraries loaded after it, up to the next one
            order.extend(libraries[at:next((i for i in extensions if i > at), len(libraries))])
    order.extend(libraries)  # those loaded before any extension module (the interpreter's own)
    return list(dict.fromkeys(order))


class _LinkMap(ctypes.Structure):
    pass


_LinkMap._fields_ = [
    ("addr", ctypes.c_void_p),
    ("name", ctypes.c_char_p),
    ("dynamic", ctypes.c_void_p),
    ("next", ctypes.POINTER(_LinkMap)),
    ("prev", ctypes.POINTER(_LinkMap)),
]


class _RDebug(ctypes.Structure):
    _fields_ = [("version", ctypes.c_int), ("map", ctypes.POINTER(_LinkMap))]


def _libraries() -> list[str]:
    """The shared libraries of this process in load order (the dynamic linker's ``_r_debug`` list)."""
    try:
        link = _RDebug.in_dll(ctypes.CDLL(None), "_r_debug").map
    except (OSError, ValueError, AttributeError):
        return []
    names = []
    while link:
        name = link.contents.name
        if name and name.startswith(b"/"):
            names.append(os.fsdecode(name))
        link = link.contents.next
    return names


def _compiled(source: str) -> str:
    """The file an import of ``source`` read: its bytecode in ``__pycache__`` when there is one."""
    if source.endswith(".py"):
        with contextlib.suppress(NotImplementedError):  # (an interpreter that writes no bytecode)
            cached = importlib.util.cache_from_source(source)
            if os.path.exists(cached):
                return cached
    return source


def _ranges(pages: Iterable[int]) -> Ranges:
    ranges: list[list[int]] = []
    for p in sorted(pages):
        if ranges and p - ranges[-1][1] <= _GAP:
            ranges[-1][1] = p + 1
        else:
            ranges.append([p, p + 1])
    return [(a, b - a) for a, b in ranges]


def save(records: Sequence[dict[str, Ranges]], unordered: Sequence[dict[str, Ranges]] = ()) -> None:
    """Keep the union of ``records`` (from :func:`record` in several processes) for the next start.

    The files keep their load order: each file goes where it came earliest, as a share of
    the record it came in, so that processes that started together are interleaved. Pages
    from ``unordered`` records (:func:`touched`) join their files wherever those are, or the end.
    """
    union: dict[str, set[int]] = {}
    first: dict[str, float] = {}
    for ordered, group in ((True, records), (False, unordered)):
        for rec in group:
            for i, (path, ranges) in enumerate(rec.items()):
                union.setdefault(path, set()).update(p for a, n in ranges for p in range(a, a + n))
                first[path] = min(first.get(path, 1.0), i / len(rec) if ordered else 1.0)
    files = {}
    for path in sorted(union, key=first.__getitem__):
        try:
            st = os.stat(path)
        except OSError:
            continue
        files[path] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ranges": _ranges(union[path])}
    target = cache_file()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}")
        tmp.write_text(json.dumps({"version": 2, "files": files}))
        os.replace(tmp, target)
    except OSError:  # a read-only home: no record, no harm
        pass


def wanted() -> bool:
    """Whether a run should record: no record, one older than :data:`REFRESH`, or one of changed files.

    Recording costs about 0.15 s of a run (the client's record, the workers', the fork
    server's), for a record that changes little from one run to the next.
    """
    try:
        if time.time() - cache_file().stat().st_mtime > REFRESH:
            return True
        files = _saved()
        if not all(_unchanged(os.stat(path), entry) for path, entry in files.items()):
            return True
    except (OSError, TypeError, KeyError):
        return True
    return not files


def _unchanged(st: os.stat_result, entry: dict[str, Any]) -> bool:
    """Whether the file behind ``st`` is the one recorded in ``entry`` (same size and modification time)."""
    return (st.st_size, st.st_mtime_ns) == (entry["size"], entry["mtime_ns"])


def _saved() -> dict[str, dict[str, Any]]:
    try:
        saved = json.loads(cache_file().read_text())
        return saved["files"] if saved.get("version") == 2 and isinstance(saved["files"], dict) else {}
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return {}


def read_ahead() -> int:
    """Ask for the recorded pages of files that have not changed since, in order; returns the pages asked for."""
    files = _saved()
    asked = 0
    for path, entry in files.items():
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            if not _unchanged(os.fstat(fd), entry):
                continue
            for first, count in entry["ranges"]:
                os.posix_fadvise(fd, first * mmap.PAGESIZE, count * mmap.PAGESIZE, os.POSIX_FADV_WILLNEED)
                asked += count
        except (OSError, KeyError, TypeError, ValueError):
            continue
        finally:
            os.close(fd)
    return asked
