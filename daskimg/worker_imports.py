"""Everything a worker of daskimg's local clusters imports, imported once by the fork server.

The fork server (see :mod:`daskimg.forkserver`) imports this module, then forks every
worker from itself. The garbage collector is off while the imports run (they make
millions of objects, none of them garbage), and the result is frozen: a worker's
collections never walk these objects, so they cost no CPU and the pages stay shared with
the server instead of being copied into each worker.

The workers also inherit one malloc arena (glibc's ``M_ARENA_MAX``), set here while the server
has its one thread. By default glibc gives each busy thread an arena of its own, and each
arena keeps the free memory of its thread's last big chunk: the fetching thread's bodies,
the decoding thread's pixels. Shared, the free memory of one chunk serves the next, whatever
thread it lands on. Measured over 40k URLs, the process tree's PSS had a median of 681 MiB and
a peak of 766 MiB, against 789 and 851 MiB; one worker had grown to 328 MiB, now none passes
250. Speed did not move beyond the noise (10k URLs, three interleaved runs each: 804-873 img/s,
against 821-855): the decoders and libcurl allocate little per image, so the threads seldom
wait on the arena's lock.
"""

import atexit
import contextlib
import ctypes
import gc
import os

_M_ARENA_MAX = -8  # glibc's malloc.h


def _one_malloc_arena() -> None:
    """All threads of this process and of its forks allocate from one arena (glibc only; elsewhere nothing)."""
    with contextlib.suppress(AttributeError, OSError):  # no mallopt (macOS), or no C library to ask
        ctypes.CDLL(None).mallopt(_M_ARENA_MAX, 1)


_one_malloc_arena()
gc.disable()

import distributed  # noqa: E402, F401
import pyarrow.parquet  # noqa: E402, F401  (the tasks that read input blocks)

from daskimg import batch, sources, store  # noqa: E402, F401

gc.freeze()
gc.enable()

# The fork server ends when the command that started it does. Its exit would tear down these
# imports and run the destructors of their libraries, reading code that nothing ran before
# (about 2 s after a cold start on a disk read at 25 MB/s) while it still holds the command's
# output open. The workers it forks do not inherit this: multiprocessing clears their atexit.
atexit.register(os._exit, 0)
