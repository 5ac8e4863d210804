"""Where the worker processes of daskimg's local clusters come from: one fork server.

Dask spawns each worker as a fresh interpreter that imports Dask, pandas, Pillow, zarr ...
on its own: about 1.2 s of CPU a worker, before it runs a task. Instead, a fork server
(``multiprocessing``'s ``forkserver`` method) imports all that once and forks every worker
from itself, ready to work and sharing those pages. The CLI starts it first thing, so it
imports on one core while the client imports on the other.

The server starts with SIGINT and SIGTERM ignored, and so does every worker forked from it
(also one the nanny restarts): Ctrl-C in a terminal, and a job scheduler's SIGTERM (Slurm),
reach the whole process group, and only the client should act on them, by finishing the
chunks it can and closing the cluster (the nanny stops its worker through a queue, and
with SIGKILL if that fails).

This module imports only the standard library, so starting the server costs nothing
before it.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.forkserver
import signal
import threading
from collections.abc import Iterator

__all__ = ["METHOD", "WORKER_IMPORTS", "ignoring_stop_signals", "pids", "start"]

METHOD = "forkserver"
# What a worker needs to run daskimg's tasks, imported by the server before it forks any worker.
WORKER_IMPORTS = ["daskimg.worker_imports"]


def start() -> None:
    """Start the fork server now (a no-op if it runs already), importing ``WORKER_IMPORTS``."""
    with ignoring_stop_signals():
        multiprocessing.get_context(METHOD).set_forkserver_preload(WORKER_IMPORTS)
        multiprocessing.forkserver.ensure_running()


def pids() -> list[int]:
    """The fork server's process id, if this process started one that runs still."""
    pid = getattr(multiprocessing.forkserver._forkserver, "_forkserver_pid", None)  # no public accessor
    return [pid] if isinstance(pid, int) else []


@contextlib.contextmanager
def ignoring_stop_signals() -> Iterator[None]:
    """Ignore SIGINT and SIGTERM in this process meanwhile, so that processes started here inherit that."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
