"""Importing this module imports what a worker needs to run daskimg's tasks, then freezes it.

Imported by each worker of the clusters daskimg starts as it joins (``WorkerTuning``, with
``daskimg.worker.freeze-imports``), or once by the command's fork server, before it forks any
worker (:mod:`daskimg._worker_start`). The garbage collector is paused meanwhile, and what the
imports made is then frozen (``gc.freeze``): full collections no longer walk those millions of
long-lived objects, and workers forked from the server leave those pages shared.
"""

from __future__ import annotations

import importlib

from ._gc import imports_frozen
from ._worker_start import WORKER_MODULES

with imports_frozen():
    for _module in WORKER_MODULES:
        importlib.import_module(_module)
