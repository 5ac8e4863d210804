"""Everything a worker of daskimg's local clusters imports, imported once by the fork server.

The fork server (see :mod:`daskimg.forkserver`) imports this module, then forks every
worker from itself. The garbage collector is off while the imports run (they make
millions of objects, none of them garbage), and the result is frozen: a worker's
collections never walk these objects, so they cost no CPU and the pages stay shared with
the server instead of being copied into each worker.
"""

import atexit
import gc
import os

gc.disable()

import dask.dataframe  # noqa: E402, F401  (the tasks that read input partitions)
import distributed  # noqa: E402, F401

from daskimg import batch, store  # noqa: E402, F401

gc.freeze()
gc.enable()

# The fork server ends when the command that started it does. Its exit would tear down these
# imports and run the destructors of their libraries, reading code that nothing ran before
# (about 2 s after a cold start on a disk read at 25 MB/s) while it still holds the command's
# output open. The workers it forks do not inherit this: multiprocessing clears their atexit.
atexit.register(os._exit, 0)
