"""Start a local Dask cluster for one run, or attach to an existing one."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Iterator

import dask
from distributed import Client, LocalCluster

from .errors import ConfigError

__all__ = ["default_workers", "run_client"]


def default_workers() -> int:
    """One worker process per core this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


@contextlib.contextmanager
def run_client(
    scheduler: str | None = None,
    *,
    client: Client | None = None,
    workers: int | None = None,
    threads_per_worker: int = 2,
    dashboard_address: str | None = ":8787",
) -> Iterator[Client]:
    """Yield the client a run uses, closing only what this function started.

    Order of choice: ``client`` if given; a new client to ``scheduler`` if given; the
    active client of this process if there is one; else a fresh ``LocalCluster`` of
    process workers (one per core, each with a thread for fetching while another
    decodes), started here and closed on exit.
    """
    if client is not None:
        yield client
        return
    if scheduler:
        try:
            remote = Client(scheduler, timeout="10s")
        except OSError as e:
            raise ConfigError(f"cannot reach the Dask scheduler at {scheduler}: {e}") from None
        with remote:
            yield remote
        return
    with contextlib.suppress(ValueError):
        yield Client.current()
        return
    # The workers' statistical profiler samples every thread 100 times a second: a few percent of
    # the CPU that decoding needs. Switched off for the clusters daskimg starts (not for others').
    with _workers_ignore_sigint(), dask.config.set({"distributed.worker.profile.enabled": False}):
        cluster = LocalCluster(
            n_workers=workers or default_workers(),
            threads_per_worker=threads_per_worker,
            processes=True,
            dashboard_address=dashboard_address,
            silence_logs=logging.ERROR,
        )
    with cluster, Client(cluster) as local:
        yield local


@contextlib.contextmanager
def _workers_ignore_sigint() -> Iterator[None]:
    """Start worker processes with SIGINT ignored (they inherit it).

    Ctrl-C in a terminal reaches the whole process group; only this process should act on
    it, by cancelling the run and closing the cluster, not every worker with a traceback.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
