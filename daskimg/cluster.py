"""Attach to a Dask cluster, or start a local one for a run; and what tasks ask of the worker they run on.

A run uses the client it is given, else a client to the scheduler it is given, else the
active client, else a ``LocalCluster`` that it starts and closes. daskimg changes nothing on a
cluster it did not start. The clusters it starts are Dask's own (Dask's start method, except for
the command's fork server; Dask's environment, profiler and event loop checks, with the changes
below) with :class:`WorkerTuning` registered and a dashboard built on its first visit (see
:mod:`daskimg._dashboard`); each setting is a Dask config key:

``daskimg.worker.opencv-threads`` (default 1)
    OpenCV's threads per worker process. A worker already runs one image per thread; OpenCV's
    own pool on top of that would oversubscribe the cores. ``null`` leaves OpenCV's default.
``daskimg.worker.ignore-stop-signals`` (default true)
    Workers ignore SIGINT and SIGTERM. Ctrl-C in a terminal, and a batch scheduler's SIGTERM
    (Slurm), reach the whole process group; only the client should act on them, by finishing
    the chunks it can, then closing the cluster (the nanny stops its workers through a queue,
    and with SIGKILL if that fails).
``daskimg.worker.freeze-imports`` (default true)
    Each worker imports daskimg's stages as it starts, with the garbage collector paused, then
    freezes what it has imported (``gc.freeze``): the collector's full collections no longer
    walk those millions of long-lived objects (:mod:`daskimg._worker_imports`).
``daskimg.local-cluster.pre-spawn-environ``
    (default ``{MALLOC_MMAP_THRESHOLD_: 33554432, MALLOC_TRIM_THRESHOLD_: 268435456, MALLOC_ARENA_MAX: 1}``)
    Changes to Dask's ``distributed.nanny.pre-spawn-environ`` for the workers of the clusters
    daskimg starts (null removes a variable). A variable set in this process's environment
    always wins, and this process's environment is left as it was. glibc reads them (other C
    libraries ignore them).

    * Dask sets ``MALLOC_TRIM_THRESHOLD_=65536`` so that glibc hands freed memory back to the
      system at once, and maps every buffer over 128 KiB afresh. Image work frees and allocates
      large buffers all the time: each decoded image, each chunk's pixels (12 MiB) and its
      compressed copy. Each fresh mapping is page-faulted in and zeroed by the kernel, then
      unmapped again. With buffers up to 32 MiB taken from the heap, and up to 256 MiB of free
      heap kept, a chunk reuses the memory of the one before (a worker holds a few chunks).
    * ``MALLOC_ARENA_MAX=1``: by default glibc gives each busy thread an arena of its own, and
      each keeps the free memory of its thread's last big chunk (the fetching thread's bodies,
      the decoding thread's pixels). Shared, the free memory of one chunk serves the next.
``daskimg.local-cluster.profile-interval`` (default ``100ms``)
    Dask's ``distributed.worker.profile.interval`` for the workers of the clusters daskimg
    starts, unless that key is set to something other than Dask's default (10 ms): then the
    caller's value stays. ``null`` leaves Dask's. At 10 ms, each worker's event loop walks the
    stacks of its busy threads a hundred times a second, about 3% of a run's CPU (with
    daskimg's short, busy tasks); every tenth sample still fills the dashboard's Profile page.
``daskimg.local-cluster.tick-interval`` (default ``500ms``)
    Dask's ``distributed.admin.tick.interval`` for the scheduler, nannies and workers of the
    clusters daskimg starts, on the same terms as the profile interval. Every Dask server wakes
    its event loop at this interval only to time it (the dashboard's event loop panel, and the
    "event loop was unresponsive" warning after ``distributed.admin.tick.limit``, 3 s). At
    Dask's 20 ms, the five event loops of a two-worker cluster take about 0.07 s of CPU a
    second, idle or busy: 3-4% of a run on two cores. 500 ms is what Dask's own test clusters use.
``daskimg.command.fork-server`` (default true)
    The command, in a process of its own, forks its local cluster's workers from one server
    process that has imported their code (:mod:`daskimg._worker_start`); elsewhere, or with
    ``false``, workers are spawned as Dask does.

The same plugin can be registered on a cluster of your own:
``client.register_plugin(daskimg.cluster.WorkerTuning())``.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import multiprocessing
import signal
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import dask
from distributed import Client, LocalCluster, WorkerPlugin, get_worker, rejoin, secede
from distributed.core import Status

from . import _config
from ._compat import usable_cpus
from ._dashboard import build_on_first_visit, quiet_disconnects
from ._signals import ignoring_stop_signals, stop_signals_to
from ._worker_start import (
    FORK_SERVER,
    environ_kept,
    freezes_imports,
    ignores_stop_signals,
    pre_spawn_environ,
    shipped_default,
)
from .errors import ClusterError, ConfigError, Interrupted

__all__ = ["Starting", "WorkerTuning", "default_workers", "lost_a_worker", "only_waiting", "run_client",
           "stalled_fetch", "start_client"]


START_TIMEOUT = 120.0  # seconds Starting.ready() waits for the workers to join, then for their nannies
SPAWN_WAIT = 10.0  # seconds start_client waits at most, stop signals ignored, for the workers' processes
STOP_PATIENCE = 5.0  # seconds Starting.ready() still waits for the workers after a stop signal
CLOSE_PATIENCE = 20.0  # seconds a local cluster may take to close before its workers' processes are killed


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
    freeze_imports
        Import daskimg's stages, then ``gc.freeze()``; by default the ``daskimg.worker.freeze-imports``
        config key (true).

    Two messages are kept out of the worker's log: the ``UserWarning`` Pillow's EXIF reader
    emits for each image with malformed EXIF (common in scraped images; daskimg keeps such an
    image, unrotated), and the error a worker logs when a heartbeat was in flight as it closed
    (distributed#7105: a race inside the closing worker, not a failure).
    """

    name = "daskimg-worker-tuning"

    def __init__(self, opencv_threads: int | _FromConfig | None = _FROM_CONFIG,
                 ignore_stop_signals: bool | None = None, freeze_imports: bool | None = None) -> None:
        self.opencv_threads: int | None = (
            _config.count("daskimg.worker.opencv-threads", 1, none="null leaves OpenCV's default")
            if isinstance(opencv_threads, _FromConfig) else opencv_threads)
        self.ignore_stop_signals = ignores_stop_signals() if ignore_stop_signals is None else ignore_stop_signals
        self.freeze_imports = freezes_imports() if freeze_imports is None else freeze_imports

    def setup(self, worker: Any) -> None:
        if self.opencv_threads is not None:
            import cv2

            cv2.setNumThreads(self.opencv_threads)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.TiffImagePlugin")
        logger = logging.getLogger("distributed.worker")
        for old in [f for f in logger.filters if isinstance(f, _HeartbeatAtClose)]:  # registered again
            logger.removeFilter(old)
        logger.addFilter(_HeartbeatAtClose(worker))
        if self.freeze_imports:
            importlib.import_module("daskimg._worker_imports")  # once a process (a fork server's workers: done)
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


class Starting:
    """The client of a cluster that may still be starting: :meth:`ready` waits until it can run tasks."""

    def __init__(self, client: Client, workers: int = 0, until_ready: contextlib.ExitStack | None = None,
                 heard: Sequence[tuple[int, float]] = ()) -> None:
        self.client = client
        self._workers = workers  # workers of a cluster started here, still to join
        self._until_ready = until_ready or contextlib.ExitStack()  # what lasts until then (kept stop signals)
        self._heard = heard  # the stop signals kept meanwhile, and when they came (time.monotonic)

    def ready(self) -> Client:
        """The client, once a cluster started here has all its workers, each with a nanny that has
        finished starting it (only then does the nanny restart a worker that dies).

        Raises :class:`~daskimg.errors.Interrupted` then if SIGINT or SIGTERM came meanwhile (see
        :func:`start_client`), or ``STOP_PATIENCE`` seconds after one if the workers are not up by then;
        :class:`~daskimg.errors.ClusterError` as soon as a worker has failed in its start-up, or if they are not
        up after ``START_TIMEOUT`` seconds.
        """
        with self._until_ready:
            if self._workers:
                workers, self._workers = self._workers, 0
                self._wait_for_workers(workers, timeout=START_TIMEOUT)
                self._wait_for_nannies(workers, deadline=time.monotonic() + START_TIMEOUT)
        if self._heard:
            raise Interrupted(self._heard[0][0])
        return self.client

    def _wait_for_workers(self, workers: int, timeout: float) -> None:
        """Until ``workers`` workers have joined, a second at a time: workers that are still not up
        ``STOP_PATIENCE`` s after a stop signal may never be. :class:`~daskimg.errors.ClusterError` as soon as
        a nanny has failed to start its worker (Dask starts no other in its place), or after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.client.wait_for_workers(workers, timeout=max(0.1, min(1.0, deadline - time.monotonic())))
                return
            except TimeoutError:
                failed = self._failed_nannies()
                if self._heard and (failed or time.monotonic() - self._heard[0][1] >= STOP_PATIENCE):
                    raise Interrupted(self._heard[0][0]) from None
                if failed:
                    raise ClusterError(f"the local cluster's workers did not start: {failed} of {workers} failed in "
                                       "their start-up (Dask's log says why)") from None
                if time.monotonic() >= deadline:
                    raise ClusterError(f"the local cluster's workers did not start: {len(self.client.nthreads())} of "
                                       f"{workers} joined in {timeout:g} s (Dask's log says why)") from None

    def _failed_nannies(self) -> int:
        """How many nannies of the cluster started here failed to start their worker (a worker process
        that died in its start-up: a broken installation, a preload that exits)."""
        cluster = self.client.cluster
        nannies = list(cluster.workers.values()) if cluster is not None else []
        return sum(1 for nanny in nannies if getattr(nanny, "status", None) == Status.failed)

    def _wait_for_nannies(self, workers: int, deadline: float) -> None:
        """Until the cluster counts every nanny as started. A worker joins the scheduler a moment before
        its nanny hears from it, and one that dies in between is never restarted (its nanny's start
        fails instead). The cluster adds its nannies once all have started; if a worker is lost
        meanwhile, that will not happen, and waiting stops."""
        cluster = self.client.cluster  # the LocalCluster start_client started
        while cluster is not None and len(cluster.workers) < workers and time.monotonic() < deadline:
            if len(self.client.nthreads()) < workers:
                break
            time.sleep(0.01)


@contextlib.contextmanager
def start_client(
    scheduler: str | None = None,
    *,
    client: Client | None = None,
    workers: int | None = None,
    threads_per_worker: int = 2,
    dashboard_address: str | None = ":8787",
    fork_server: bool = False,
) -> Iterator[Starting]:
    """Choose the cluster a run uses, or start one without waiting for it; closes only what it started.

    Order of choice: ``client`` if given; a new client to ``scheduler`` if given; the
    active client of this process if there is one; else a fresh ``LocalCluster`` of
    process workers (one per core, each with a thread for fetching while another
    decodes) with :class:`WorkerTuning`. The caller can import and prepare while those
    workers start, then call :meth:`Starting.ready`. With ``fork_server`` (the command, which has
    started this process's fork server: :func:`daskimg._worker_start.start_fork_server`) they are
    forked from it, else spawned.

    Ctrl-C reaches every process of the terminal's foreground group (and a batch scheduler's
    SIGTERM every process of the job): only the caller should act on it, by closing the cluster.
    So this process ignores SIGINT and SIGTERM while it spawns the workers' processes, which
    inherit that (a worker the nanny restarts later ignores them from the plugin's setup on; a
    fork server ignores them already).
    One that comes before or after that, until :meth:`Starting.ready` returns, is kept, and
    ready() raises it as :class:`~daskimg.errors.Interrupted` once the workers have joined: a
    cluster closed while its workers join makes Dask log errors of its own (its view of them is
    behind). A local cluster that takes over ``CLOSE_PATIENCE`` seconds to close has its workers'
    processes killed (see :func:`_close_within`).
    """
    if client is not None:
        yield Starting(client)
        return
    if scheduler:
        try:
            remote = Client(scheduler, timeout="10s")
        except OSError as e:
            raise ConfigError(f"cannot reach the Dask scheduler at {scheduler}: {e}") from None
        with remote:
            yield Starting(remote)
        return
    try:
        current = Client.current()
    except ValueError:  # no active client
        current = None
    if current is not None:  # (a ValueError raised in the caller's block must not land in the except above)
        yield Starting(current)
        return
    tuning = WorkerTuning()
    with contextlib.ExitStack() as stack:
        heard: list[tuple[int, float]] = []
        until_ready = stack.enter_context(contextlib.ExitStack())  # the caller may never get to ready()
        if tuning.ignore_stop_signals:
            until_ready.enter_context(stop_signals_to(lambda signum, frame: heard.append((signum, time.monotonic()))))
        stack.enter_context(environ_kept())
        stack.enter_context(quiet_disconnects())
        stack.enter_context(dask.config.set(_local_cluster_config(fork_server)))
        before = _child_processes()  # this process's children before the cluster's (n_workers=0: none yet)
        cluster = LocalCluster(
            n_workers=0,
            threads_per_worker=threads_per_worker,
            processes=True,
            # The scheduler serves /health and /metrics there even without a dashboard (then on any
            # free port: Dask's default, 8787, may be another cluster's).
            dashboard_address=dashboard_address or ":0",
            scheduler_kwargs={"dashboard": False},  # built on its first visit (see daskimg._dashboard)
            silence_logs=logging.ERROR,
        )
        stack.callback(_close_within, cluster, CLOSE_PATIENCE, before)
        local = stack.enter_context(Client(cluster))
        local.register_plugin(tuning)  # each worker sets it up as it joins
        if dashboard_address:
            local.run_on_scheduler(build_on_first_visit)
        n_workers = workers or default_workers()
        if fork_server or not tuning.ignore_stop_signals:  # (workers forked from the server inherit its signals)
            cluster.scale(n_workers)
        else:
            with ignoring_stop_signals():
                cluster.scale(n_workers)
                _wait_for_spawn(local, n_workers, before, deadline=time.monotonic() + SPAWN_WAIT)
        yield Starting(local, n_workers, until_ready=until_ready, heard=heard)


@contextlib.contextmanager
def run_client(
    scheduler: str | None = None,
    *,
    client: Client | None = None,
    workers: int | None = None,
    threads_per_worker: int = 2,
    dashboard_address: str | None = ":8787",
) -> Iterator[Client]:
    """Yield the client a run uses, ready to run tasks (the choice is :func:`start_client`'s); closes
    only what it started."""
    with start_client(scheduler, client=client, workers=workers, threads_per_worker=threads_per_worker,
                      dashboard_address=dashboard_address) as starting:
        yield starting.ready()


def _close_within(cluster: LocalCluster, patience: float, before: frozenset[int]) -> None:
    """Close a cluster started here; after ``patience`` seconds, kill what is left of its workers' processes.

    Dask's close waits for each nanny to finish starting its worker, and a worker stuck in its
    start-up (a preload or an import that hangs) never lets it: the caller would hang after the
    start-up timeout or a stop signal. Killing the stuck processes (which ignore SIGTERM, see
    :func:`start_client`) lets their nannies fail, and the close finish. ``before`` are the
    processes that were this process's children already, which are left alone.
    """

    def kill_workers() -> None:
        left = [p for p in multiprocessing.active_children() if p.pid not in before]
        logging.getLogger(__name__).warning("the local cluster did not close in %g s; killing its %d worker "
                                            "process(es)", patience, len(left))
        for process in left:
            process.kill()

    timer = threading.Timer(patience, kill_workers)
    timer.daemon = True
    timer.start()
    try:
        cluster.close()
    finally:
        timer.cancel()


def _wait_for_spawn(client: Client, workers: int, before: frozenset[int], deadline: float) -> None:
    """Until this process has spawned the processes of ``workers`` workers, or one of them has joined."""
    while time.monotonic() < deadline:
        # (multiprocessing's own list: Dask's nannies start their workers as multiprocessing processes)
        if len(_child_processes() - before) >= workers or client.nthreads():
            return
        time.sleep(0.005)


def _child_processes() -> frozenset[int]:
    """The process ids of this process's live multiprocessing children (which Dask's nannies start)."""
    return frozenset(p.pid for p in multiprocessing.active_children() if p.pid is not None)


# daskimg.local-cluster.<name>: (the Dask key it sets for the clusters daskimg starts, its default); see the module
_INTERVALS = {
    "profile-interval": ("distributed.worker.profile.interval", "100ms"),
    "tick-interval": ("distributed.admin.tick.interval", "500ms"),
}


def _local_cluster_config(fork_server: bool = False) -> dict[str, object]:
    """The Dask config of a cluster daskimg starts: the pre-spawn environment and two intervals.

    The variables of ``distributed.nanny.pre-spawn-environ`` must be in a worker's environment
    as its C libraries start. Dask's are updated with ``daskimg.local-cluster.pre-spawn-environ``
    (see the module); then a variable the caller has set in this process's environment is left
    out, so that the workers inherit the caller's value. The profiler's and the event loops'
    intervals are ``daskimg.local-cluster.profile-interval`` and ``tick-interval``, each unless
    the caller set Dask's own key.
    """
    config: dict[str, object] = {"distributed.nanny.pre-spawn-environ": pre_spawn_environ()}
    if fork_server:
        config["distributed.worker.multiprocessing-method"] = FORK_SERVER
    for name, (key, default) in _INTERVALS.items():
        interval = _config.interval(f"daskimg.local-cluster.{name}", default)
        if interval is not None and not _set_by_caller(key):
            config[key] = interval
    return config


def _set_by_caller(key: str) -> bool:
    """Whether Dask's config key ``key`` differs from the default Dask ships for it."""
    return bool(dask.config.get(key, None) != shipped_default(key))


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
