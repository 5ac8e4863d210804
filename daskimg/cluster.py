"""Attach to a Dask cluster, or start a local one for a run; and what tasks ask of the worker they run on.

A run uses the client it is given, else a client to the scheduler it is given, else the
active client, else a ``LocalCluster`` that it starts and closes. daskimg changes nothing on a
cluster it did not start. The clusters it starts are Dask's own (Dask's start method, profiler
and environment) with :class:`WorkerTuning` registered, whose settings are Dask config keys:

``daskimg.worker.opencv-threads`` (default 1)
    OpenCV's threads per worker process. A worker already runs one image per thread; OpenCV's
    own pool on top of that would oversubscribe the cores. ``null`` leaves OpenCV's default.
``daskimg.worker.ignore-stop-signals`` (default true)
    Workers ignore SIGINT and SIGTERM. Ctrl-C in a terminal, and a batch scheduler's SIGTERM
    (Slurm), reach the whole process group; only the client should act on them, by finishing
    the chunks it can, then closing the cluster (the nanny stops its workers through a queue,
    and with SIGKILL if that fails).

The same plugin can be registered on a cluster of your own:
``client.register_plugin(daskimg.cluster.WorkerTuning())``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import warnings
from collections.abc import Iterator
from typing import Any

import dask
from distributed import Client, LocalCluster, WorkerPlugin, get_worker, rejoin, secede
from distributed.core import Status

from ._compat import usable_cpus
from .errors import ConfigError

__all__ = ["WorkerTuning", "default_workers", "ignoring_stop_signals", "lost_a_worker", "only_waiting",
           "run_client", "stalled_fetch"]


def default_workers() -> int:
    """One worker process per core this process may use."""
    return usable_cpus()


class _FromConfig:
    """The default of an argument that may also be None: read it from Dask's config."""


_FROM_CONFIG = _FromConfig()


class WorkerTuning(WorkerPlugin):
    """Per-worker settings for image work; registered on the clusters daskimg starts (see the module).

    Parameters
    ----------
    opencv_threads
        ``cv2.setNumThreads`` in each worker; None leaves OpenCV's default. By default the
        ``daskimg.worker.opencv-threads`` config key (1).
    ignore_stop_signals
        Workers ignore SIGINT and SIGTERM; by default the ``daskimg.worker.ignore-stop-signals``
        config key (true).

    Two messages are kept out of the worker's log: the ``UserWarning`` Pillow's EXIF reader
    emits for each image with malformed EXIF (common in scraped images; daskimg keeps such an
    image, unrotated), and the error a worker logs when a heartbeat was in flight as it closed
    (distributed#7105: a race inside the closing worker, not a failure).
    """

    name = "daskimg-worker-tuning"

    def __init__(self, opencv_threads: int | _FromConfig | None = _FROM_CONFIG,
                 ignore_stop_signals: bool | None = None) -> None:
        self.opencv_threads: int | None = (dask.config.get("daskimg.worker.opencv-threads", 1)
                                           if isinstance(opencv_threads, _FromConfig) else opencv_threads)
        self.ignore_stop_signals = (bool(dask.config.get("daskimg.worker.ignore-stop-signals", True))
                                    if ignore_stop_signals is None else ignore_stop_signals)

    def setup(self, worker: Any) -> None:
        if self.opencv_threads is not None:
            import cv2

            cv2.setNumThreads(int(self.opencv_threads))
        warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.TiffImagePlugin")
        logging.getLogger("distributed.worker").addFilter(_HeartbeatAtClose(worker))
        if self.ignore_stop_signals and threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                signal.signal(s, signal.SIG_IGN)


class _HeartbeatAtClose(logging.Filter):
    """Drops the heartbeat error of a worker that is closing (see :class:`WorkerTuning`)."""

    def __init__(self, worker: Any) -> None:
        super().__init__()
        self.worker = worker

    def filter(self, record: logging.LogRecord) -> bool:
        closing = self.worker.status in (Status.closing, Status.closed, Status.closing_gracefully)
        return not (closing and record.getMessage().startswith("Failed to communicate with scheduler during heartbeat"))


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
    decodes) with :class:`WorkerTuning`, started here and closed on exit.
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
    tuning = WorkerTuning()
    with _environ_kept(), dask.config.set(_local_cluster_config()):
        # Workers started now inherit the ignored signals before they could act on one; a worker the
        # nanny restarts later ignores them from the plugin's setup on.
        with ignoring_stop_signals() if tuning.ignore_stop_signals else contextlib.nullcontext():
            cluster = LocalCluster(
                n_workers=workers or default_workers(),
                threads_per_worker=threads_per_worker,
                processes=True,
                dashboard_address=dashboard_address,
                # Without a dashboard the scheduler still serves /health and /metrics, by default on
                # port 8787, which may be taken (another cluster's dashboard): any free port then.
                scheduler_kwargs=None if dashboard_address else {"dashboard_address": ":0"},
                silence_logs=logging.ERROR,
            )
        with cluster, Client(cluster) as local:
            local.register_plugin(tuning)
            yield local


def _local_cluster_config() -> dict[str, object]:
    """Dask's ``distributed.nanny.pre-spawn-environ`` for a cluster daskimg starts, less what the caller set.

    Those variables must be in a worker's environment as its C libraries start
    (``MALLOC_TRIM_THRESHOLD_``, ``OMP_NUM_THREADS`` ...). A variable the caller has set
    in this process's environment is left out, so that the workers inherit the caller's value.
    """
    configured = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}))
    return {"distributed.nanny.pre-spawn-environ": {k: v for k, v in configured.items() if k not in os.environ}}


@contextlib.contextmanager
def _environ_kept() -> Iterator[None]:
    """This process's environment as it was, once the block (a local cluster's life) is over.

    A local cluster's nannies run in this process, and set the variables their workers
    should start with in its environment (Dask's pre-spawn environment, ``PYTHONHASHSEED``
    ...). Each variable set or changed during the block is put back.
    """
    before = dict(os.environ)
    try:
        yield
    finally:
        for key, value in list(os.environ.items()):
            if before.get(key) != value:
                if key in before:
                    os.environ[key] = before[key]
                else:
                    del os.environ[key]


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


_STALLED = threading.BoundedSemaphore(2)


@contextlib.contextmanager
def stalled_fetch() -> Iterator[None]:
    """Where a fetch task waits for its chunk's slowest URLs: out of the worker's thread pool, unless two
    stalled fetches of this process already are (each holds its chunk's bodies)."""
    if not _STALLED.acquire(blocking=False):
        yield
        return
    try:
        with only_waiting():
            yield
    finally:
        _STALLED.release()
