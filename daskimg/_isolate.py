"""Run one image's preprocessing in a forked child, so that a decoder crash costs that row only.

Decoders are C code fed untrusted bytes: one may segfault, or allocate without end, on a
file built for it. In the worker process that takes the whole worker down, with every chunk it
held; Dask then retries the chunk elsewhere, and after a few deaths gives up on it
(``KilledWorker``). So a chunk whose task already lost a worker is redone here, one image per
child process: a child shares the worker's memory copy-on-write, writes its pixels straight
into a shared buffer, and runs under an address-space limit, so a memory bomb becomes a
``MemoryError`` in the child instead of the out-of-memory killer in the worker (Linux; see
:mod:`daskimg._compat` for other platforms). A child that dies by a signal or runs past the
time limit costs its row, recorded as ``decoder_crashed``. Forking a worker-sized process costs
far more than decoding a small image, which is why only such chunks pay it.
"""

from __future__ import annotations

import contextlib
import faulthandler
import mmap
import os
import pickle
import select
import signal
import time
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

from ._compat import CAN_FORK, address_space_in_use

__all__ = ["AVAILABLE", "MEMORY_HEADROOM", "TIME_LIMIT", "run_isolated", "shared_zeros"]

AVAILABLE = CAN_FORK
MEMORY_HEADROOM = 4 << 30  # address space a child may add to what it inherits
TIME_LIMIT = 60.0  # seconds for one image

T = TypeVar("T")


def shared_zeros(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """A zeroed array in memory that forked children write into and the parent sees."""
    nbytes = max(1, int(np.prod(shape)) * np.dtype(dtype).itemsize)
    return np.frombuffer(mmap.mmap(-1, nbytes), dtype=dtype, count=int(np.prod(shape))).reshape(shape)


def run_isolated(fn: Callable[[], T], crashed: Callable[[str], T]) -> T:
    """``fn()`` in a forked child (its return value comes back pickled), or ``crashed(why)`` if the child dies."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no Python-level cleanup, no return into the worker's code
        code = 1
        try:
            os.close(read)
            faulthandler.disable()  # a crash here is expected and recorded: no traceback dump on stderr
            _limit_resources()
            payload = pickle.dumps(fn())
            with os.fdopen(write, "wb") as out:
                out.write(payload)
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    payload, timed_out = _read_all(read, TIME_LIMIT)
    if timed_out:
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    if timed_out:
        return crashed(f"the decoder ran past {TIME_LIMIT:g} s on this image and was stopped")
    if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0 and payload:
        result: T = pickle.loads(payload)
        return result
    if os.WIFSIGNALED(status):
        return crashed(f"the decoder crashed on this image ({signal.Signals(os.WTERMSIG(status)).name})")
    return crashed(f"the decoder's process exited with status {os.WEXITSTATUS(status)} on this image")


def _read_all(fd: int, limit: float) -> tuple[bytes, bool]:
    """Everything written to ``fd`` until EOF, and whether ``limit`` seconds ran out first."""
    chunks: list[bytes] = []
    deadline = time.monotonic() + limit
    with os.fdopen(fd, "rb", buffering=0) as f:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([f], [], [], left)[0]:
                return b"".join(chunks), True
            chunk = f.read(65536)
            if not chunk:
                return b"".join(chunks), False
            chunks.append(chunk)


def _limit_resources() -> None:
    """No core file from a crash; address space: what the child inherits plus MEMORY_HEADROOM (Linux)."""
    import resource  # POSIX, as fork is

    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    inherited = address_space_in_use()
    if inherited is None:  # no way to know the base: the time limit alone applies (see daskimg._compat)
        return
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    soft = inherited + MEMORY_HEADROOM
    with contextlib.suppress(OSError, ValueError):  # a limit the system refuses: decode under the hard one
        resource.setrlimit(resource.RLIMIT_AS, (soft if hard == resource.RLIM_INFINITY else min(soft, hard), hard))
