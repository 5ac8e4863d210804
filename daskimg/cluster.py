"""Start a local Dask cluster for one run, or attach to an existing one."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any

import dask
from distributed import Client, LocalCluster, get_worker, rejoin, secede

from . import dashboard, forkserver, pages
from .errors import ConfigError

__all__ = ["default_workers", "lost_a_worker", "only_waiting", "run_client"]


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
    decodes), started here and closed on exit. That cluster's dashboard is set up on its
    first visit (see :mod:`daskimg.dashboard`); after a run that ended normally, what the
    processes loaded is recorded for the next cold start, when a record is due (see
    :mod:`daskimg.pages`).
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
    try:
        current = Client.current()
    except ValueError:  # no active client
        current = None
    if current is not None:  # (a ValueError raised in the caller's block must not land in the except above)
        yield current
        return
    forkserver.start()
    # The settings stay in effect while the cluster lives: a worker the nanny restarts is forked too.
    with dask.config.set(_local_worker_config()):
        with forkserver.ignoring_stop_signals():
            cluster = LocalCluster(
                n_workers=workers or default_workers(),
                threads_per_worker=threads_per_worker,
                processes=True,
                dashboard_address=dashboard_address,
                scheduler_kwargs={"dashboard": False},  # set up on the first visit, off the way to the first task
                silence_logs=logging.ERROR,
            )
        with cluster, Client(cluster) as local:
            if dashboard_address is not None:
                local.run_on_scheduler(dashboard.build_on_first_visit)
            yield local
            _remember_pages(local)


def _remember_pages(client: Client) -> None:
    """What the client, the workers and the fork server loaded, for the next cold start (when due)."""
    if not pages.wanted():
        return
    try:
        records = [pages.record(), *client.run(pages.record).values()]
    except Exception as e:  # only a hint for the next start: never fail a finished run for it
        logging.getLogger(__name__).debug("could not record the pages this run used: %s", e)
        return
    pages.save(records, unordered=[pages.touched(pid) for pid in forkserver.pids()])


def lost_a_worker() -> bool:
    """Whether the Dask task running in this thread already ran on a worker that died under it.

    The scheduler counts, per task, the workers lost while running it (``suspicious``; at
    ``distributed.scheduler.allowed-failures`` it gives up with ``KilledWorker``). Outside a
    Dask worker, or if the scheduler cannot be asked, the answer is no.
    """
    try:
        worker = get_worker()
    except ValueError:  # not in a task on a worker
        return False
    key = worker.get_current_task()
    try:
        return bool(worker.client.run_on_scheduler(_suspicious, key))
    except Exception as e:  # the answer only chooses the safer, slower path: never fail the task for it
        logging.getLogger(__name__).warning("could not ask the scheduler about task %s: %s", key, e)
        return False


@contextlib.contextmanager
def only_waiting() -> Iterator[None]:
    """Leave the Dask worker's thread pool meanwhile, for a task that only waits on the network.

    The worker starts another task in the freed slot (``distributed.secede``); on leaving,
    this task waits for a slot again (``rejoin``). Outside a worker there is nothing to leave.
    """
    try:
        get_worker()
    except ValueError:
        yield
        return
    secede()
    try:
        yield
    finally:
        rejoin()


def _suspicious(key: object, dask_scheduler: Any = None) -> int:
    task = dask_scheduler.tasks.get(key)
    return int(task.suspicious) if task is not None else 0


def _local_worker_config() -> dict[str, object]:
    """Dask settings for the clusters daskimg starts, set while such a cluster lives (a run waits on it meanwhile).

    * Workers are forked from daskimg's fork server (see :mod:`daskimg.forkserver`).
    * The statistical profiler samples every thread 100 times a second: a few percent of
      the CPU that decoding needs.
    * Dask starts workers with ``MALLOC_TRIM_THRESHOLD_=65536``, which also switches off
      glibc's adaptive mmap threshold: every buffer over 128 KiB (each decoded image) is then
      a fresh mmap, page-faulted in and unmapped again, about 150 page faults and 0.35 ms of
      CPU an image. Without it glibc reuses those buffers; memory stays bounded by the
      images in flight.
    """
    environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ"))
    environ.pop("MALLOC_TRIM_THRESHOLD_", None)
    return {
        "distributed.worker.multiprocessing-method": forkserver.METHOD,
        "distributed.worker.profile.enabled": False,
        "distributed.nanny.pre-spawn-environ": environ,
    }
