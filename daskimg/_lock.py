"""An output's lock, ``OUTPUT/.daskimg-lock``: one run at a time on an output in a file system.

A run holds the lock from the moment its output is prepared to its end, and an overwrite takes it
before it deletes anything. The system releases it when its holder closes it or ends, however it
ends (SIGKILL included), so a killed run never leaves a stale lock. The file names its holder.
Object stores have no such lock; two runs there write the same bytes.

This module needs only the standard library: the command asks whether its output is busy
before it starts anything else.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Iterator

from ._compat import try_lock
from .errors import OutputError

__all__ = ["LOCK", "holding", "refuse_busy", "refuse_busy_folder"]

LOCK = ".daskimg-lock"


def _busy(path: str, fd: int) -> OutputError:
    try:  # as its holder wrote it (Windows keeps a locked byte from others)
        os.lseek(fd, 0, os.SEEK_SET)
        holder = os.read(fd, 200).decode(errors="replace").strip() or "a process that has just started"
    except OSError:
        holder = "another process"
    return OutputError(f"{path} is being written by another run ({holder}); "
                       "wait for it to end, or stop it and run again to resume")


@contextlib.contextmanager
def holding(root: str, path: str) -> Iterator[None]:
    """Hold the lock of the output in the local folder ``root`` (named ``path`` in errors) while the block runs.

    Raises
    ------
    OutputError
        When another process holds it: another run is writing this output.
    """
    fd = os.open(os.path.join(root, LOCK), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if not try_lock(fd):
            raise _busy(path, fd)
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        since = time.strftime("%Y-%m-%d %H:%M:%S")
        os.write(fd, f"process {os.getpid()} on {socket.gethostname()} since {since}".encode())
        yield
    finally:
        os.close(fd)


def refuse_busy(path: str) -> None:
    """Raise :class:`~daskimg.errors.OutputError` when another run holds the lock of the output at ``path``,
    given as the command's user wrote it (see :func:`refuse_busy_folder`).

    Only a path on the local file system can be held; any other path passes.
    """
    root = _local_root(path)
    if root is not None:
        refuse_busy_folder(root, path)


def refuse_busy_folder(root: str, path: str) -> None:
    """Raise :class:`~daskimg.errors.OutputError` when another run holds the lock of the output in the local
    folder ``root`` (named ``path`` in errors); a new output and a free one pass.

    The lock is taken for an instant to tell (no portable call tests a lock without taking it), so a
    second run that starts at that very instant may be refused in this one's place; one of them runs.
    """
    try:
        fd = os.open(os.path.join(root, LOCK), os.O_RDWR)
    except OSError:  # no lock file yet; a folder that cannot be opened is reported when the output is prepared
        return
    try:
        if not try_lock(fd):
            raise _busy(path, fd)
    finally:
        os.close(fd)


def _local_root(path: str) -> str | None:
    """The folder of an output on the local file system, as fsspec spells one (a plain path, ``file://``
    or ``local://``); None for any other store, chained URLs (``simplecache::s3://...``) included.

    fsspec's own parser is not used: importing fsspec takes a tenth of a second, which the command
    would spend before its fork server starts.
    """
    if "::" in path:
        return None
    protocol, sep, rest = path.partition("://")
    if not sep:
        return path
    return rest if protocol in ("file", "local") else None
