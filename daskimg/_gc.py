"""The garbage collector around a process's long-lived imports: for processes daskimg owns only
(the command's own process, the workers of the clusters it starts), never a library caller's."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

__all__ = ["imports_frozen"]


@contextlib.contextmanager
def imports_frozen() -> Iterator[None]:
    """No collection while the block imports (a full one would walk the growing heap of modules only to
    free nothing), then what it made is frozen (``gc.freeze``): later full collections skip it."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()
