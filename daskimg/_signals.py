"""SIGINT and SIGTERM, redirected for a while: to the runner's handler, or ignored while worker processes
start (processes started meanwhile inherit that)."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

__all__ = ["ignoring_stop_signals", "stop_signals_to"]


@contextlib.contextmanager
def stop_signals_to(handler: Any) -> Iterator[None]:
    """SIGINT and SIGTERM go to ``handler`` meanwhile, then to what they went to before.

    On the main thread only: elsewhere signals do not reach Python code, and nothing changes.
    A signal this process ignores stays ignored (so does a background job of a shell script:
    its Ctrl-C is the script's).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    stops = [s for s in (signal.SIGINT, signal.SIGTERM) if signal.getsignal(s) is not signal.SIG_IGN]
    previous = {s: signal.signal(s, handler) for s in stops}
    try:
        yield
    finally:
        for s, before in previous.items():
            signal.signal(s, before)


def ignoring_stop_signals() -> contextlib.AbstractContextManager[None]:
    """Ignore SIGINT and SIGTERM in this process meanwhile, so that processes started here inherit that."""
    return stop_signals_to(signal.SIG_IGN)
