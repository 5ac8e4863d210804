"""How the worker processes of the local clusters daskimg starts begin: their environment, and the
command's fork server.

**The environment.** Dask's nannies set ``distributed.nanny.pre-spawn-environ`` in this process's
environment as they start each worker, so that the worker's C libraries read it as they load.
:func:`pre_spawn_environ` is Dask's, with daskimg's changes (``daskimg.local-cluster.pre-spawn-environ``,
see :mod:`daskimg.cluster`), less the variables the caller has set; :func:`environ_kept` puts this
process's environment back as it was once a cluster is closed.

**The fork server** (the command's own process only). Dask spawns each worker as a fresh
interpreter that imports Dask, pandas, zarr, OpenCV and daskimg's stages on its own: about a second
of CPU a worker before it runs a task, while the command imports the same on the other cores. With
multiprocessing's ``forkserver`` start method (Dask's ``distributed.worker.multiprocessing-method``),
one server process imports all that once (:mod:`daskimg._worker_imports`) and forks each worker from
itself, ready to work and sharing those pages. :func:`start_fork_server` starts it first thing, so
that it imports while the command imports ``distributed``.

A process has one fork server, and its preload is process-wide: every later ``forkserver`` pool of
that process would fork from the same server. So only the command starts one, in a process of its
own (:func:`daskimg.cli.entry_point`); the clusters a library caller's run starts spawn their workers
as Dask does, and so does the command where there is no ``forkserver`` (Windows) or with
``daskimg.command.fork-server: false``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import multiprocessing
import multiprocessing.forkserver
import os
from collections.abc import Iterator
from pathlib import Path

import dask.config
import yaml

from . import _config
from ._compat import HAS_FORK_SERVER
from ._signals import ignoring_stop_signals

__all__ = ["FORK_SERVER", "LOCAL_PRE_SPAWN_ENVIRON", "WORKER_MODULES", "environ_kept", "freezes_imports",
           "ignores_stop_signals", "pre_spawn_environ", "shipped_default", "start_fork_server"]

FORK_SERVER = "forkserver"  # the multiprocessing start method
# What a worker imports to run daskimg's tasks (see daskimg._worker_imports).
WORKER_MODULES = ("distributed", "daskimg._refetch", "daskimg._stages", "daskimg.output", "daskimg.sources",
                  "pyarrow.parquet")

# daskimg.local-cluster.pre-spawn-environ: see daskimg.cluster; null removes a variable Dask would set.
LOCAL_PRE_SPAWN_ENVIRON: dict[str, str | None] = {
    "MALLOC_MMAP_THRESHOLD_": str(32 * 2**20),  # glibc's largest
    "MALLOC_TRIM_THRESHOLD_": str(256 * 2**20),
    "MALLOC_ARENA_MAX": "1",
}
_PRE_SPAWN_ENVIRON = "distributed.nanny.pre-spawn-environ"
# What Dask's nanny gives a worker it spawns when the pre-spawn environment sets no other
# (consistent string hashes across workers).
_DASK_HASH_SEED = "6640"


def ignores_stop_signals() -> bool:
    """``daskimg.worker.ignore-stop-signals`` (default true): workers ignore SIGINT and SIGTERM."""
    return _config.flag("daskimg.worker.ignore-stop-signals", True)


def freezes_imports() -> bool:
    """``daskimg.worker.freeze-imports`` (default true): workers import :mod:`daskimg._worker_imports`."""
    return _config.flag("daskimg.worker.freeze-imports", True)


def pre_spawn_environ() -> dict[str, object]:
    """Dask's ``distributed.nanny.pre-spawn-environ`` with daskimg's changes, less the caller's own variables."""
    environ = _dask_pre_spawn_environ()
    changes = _config.mapping("daskimg.local-cluster.pre-spawn-environ",
                              "a mapping of variable names to values (null removes one)")
    own = {**LOCAL_PRE_SPAWN_ENVIRON, **changes}
    for key, value in own.items():
        if value is None:
            environ.pop(key, None)
        else:
            environ[key] = value
    return {k: v for k, v in environ.items() if k not in os.environ}


def shipped_default(key: str) -> object:
    """The default of Dask's config key ``key`` as its package ships it (None before the package that
    declares it is imported)."""
    return dask.config.get(key, None, config=dask.config.merge(*dask.config.defaults))


def _dask_pre_spawn_environ() -> dict[str, object]:
    """Dask's ``distributed.nanny.pre-spawn-environ``, also before ``distributed`` is imported.

    Its defaults (``OMP_NUM_THREADS=1`` and others) ship in ``distributed``'s ``distributed.yaml``,
    and reach Dask's config only as ``distributed`` is imported; the command starts its fork server
    before that. Until then they are read from the same file, under what the caller has set.
    """
    environ: dict[str, object] = dict(dask.config.get(_PRE_SPAWN_ENVIRON, {}))
    if shipped_default(_PRE_SPAWN_ENVIRON) is not None:
        return environ  # distributed's defaults are in the config already
    spec = importlib.util.find_spec("distributed")  # (a top-level package: found, not imported)
    if spec is None or spec.origin is None:
        return environ
    shipped = yaml.load(Path(spec.origin).with_name("distributed.yaml").read_text(),
                        Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    return {**shipped["distributed"]["nanny"]["pre-spawn-environ"], **environ}


@contextlib.contextmanager
def environ_kept() -> Iterator[None]:
    """This process's environment as it was, once the block (a local cluster's life) is over.

    A local cluster's nannies run in this process, and set the variables their workers
    should start with in its environment (Dask's pre-spawn environment, ``PYTHONHASHSEED``
    ...). Each variable set, changed or removed during the block is put back as it was.
    """
    before = dict(os.environ)
    try:
        yield
    finally:
        for key in os.environ.keys() - before.keys():
            del os.environ[key]
        for key, value in before.items():
            if os.environ.get(key) != value:
                os.environ[key] = value


def start_fork_server() -> bool:
    """Start this process's fork server now, unless the platform has none or
    ``daskimg.command.fork-server`` is false; whether it runs. For a process daskimg owns (see the module).

    The server starts with the environment a spawned worker would (:func:`pre_spawn_environ`, and
    the hash seed Dask's nanny sets), and ignoring SIGINT and SIGTERM
    (``daskimg.worker.ignore-stop-signals``): the workers forked from it inherit both, and leave
    stop signals to the command. It then imports what a worker needs (:mod:`daskimg._worker_imports`,
    or its modules unfrozen with ``daskimg.worker.freeze-imports: false``). A cluster uses it once
    Dask's ``distributed.worker.multiprocessing-method`` is ``forkserver``.
    """
    if not HAS_FORK_SERVER or not _config.flag("daskimg.command.fork-server", True):
        return False
    environ = {k: str(v) for k, v in pre_spawn_environ().items() if v is not None}  # (Dask's config: None unsets)
    if environ.get("PYTHONHASHSEED") in (None, "0"):
        environ["PYTHONHASHSEED"] = _DASK_HASH_SEED
    preload = ["daskimg._worker_imports"] if freezes_imports() else list(WORKER_MODULES)
    with ignoring_stop_signals() if ignores_stop_signals() else contextlib.nullcontext(), environ_kept():
        os.environ.update(environ)
        multiprocessing.get_context(FORK_SERVER).set_forkserver_preload(preload)
        multiprocessing.forkserver.ensure_running()
    return True
