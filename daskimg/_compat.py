"""Platform differences, in one place (as in ``distributed.compatibility``).

daskimg runs on Linux, macOS and Windows. Three features depend on the platform:

* **Decoder isolation** (:mod:`daskimg._isolate`) forks a child per image, so it needs
  ``os.fork`` (Linux, macOS). Without it (Windows) a chunk that crashed a worker is retried
  in process, and after Dask's ``allowed-failures`` it is reported as not written.
* **The memory cap of an isolated decoder** is an address-space limit on top of what the
  child inherits, read from ``/proc/self/statm``: Linux only. Elsewhere the child runs
  with its time limit alone.
* **The command's fork server** (:mod:`daskimg._worker_start`) needs multiprocessing's
  ``forkserver`` start method (Linux, macOS). Without it (Windows) the command's workers are
  spawned, as Dask does by default.

One more differs in how, not whether: the lock that keeps a local output to one run at a time
(:func:`try_lock`) is ``flock`` on POSIX and ``msvcrt.locking`` on Windows.
"""

from __future__ import annotations

import multiprocessing
import os
import sys

__all__ = ["CAN_FORK", "HAS_FORK_SERVER", "LINUX", "address_space_in_use", "try_lock", "usable_cpus"]

LINUX = sys.platform.startswith("linux")
CAN_FORK = hasattr(os, "fork")
HAS_FORK_SERVER = "forkserver" in multiprocessing.get_all_start_methods()


def usable_cpus() -> int:
    """Cores this process may run on: its CPU affinity where the platform has one, else all cores."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def address_space_in_use() -> int | None:
    """Bytes of virtual memory this process maps (Linux), or None where the platform does not say."""
    if not LINUX:
        return None
    import mmap

    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * mmap.PAGESIZE


def try_lock(fd: int) -> bool:
    """Lock the open file ``fd`` for this process, without waiting: False when another process holds it.

    The lock belongs to the open file: closing it releases it, and so does the end of the process,
    however it ends (SIGKILL included). POSIX ``flock`` (on NFS, Linux maps it to a byte-range lock the
    server sees); on Windows, the file's first byte with ``msvcrt.locking``.
    """
    if sys.platform == "win32":
        import msvcrt

        os.lseek(fd, 0, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True
