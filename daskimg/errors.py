"""The small exception tree of daskimg.

Only misconfiguration raises; a URL that cannot be fetched or decoded is data (a status
and a message in the metadata table), never an exception::

    DaskimgError
     ├── ConfigError(ValueError)        a setting that cannot work (size 0, unknown mode)
     ├── InputError(OSError)            the URL table cannot be read or has no URL column
     └── OutputError(OSError)           the output exists with other settings, or cannot be written

    Interrupted(KeyboardInterrupt)      a run stopped on SIGINT or SIGTERM; run again to resume
"""

from __future__ import annotations

__all__ = ["ConfigError", "DaskimgError", "InputError", "Interrupted", "OutputError"]


class DaskimgError(Exception):
    """Base of every error daskimg raises on purpose."""


class ConfigError(DaskimgError, ValueError):
    """A setting is invalid; the message says which and what is allowed."""


class InputError(DaskimgError, OSError):
    """The URL table cannot be read, or lacks the URL column."""


class OutputError(DaskimgError, OSError):
    """The output cannot be created, or exists with different settings."""


class Interrupted(KeyboardInterrupt):
    """A run stopped on SIGINT or SIGTERM (``signum``); the next run with the same settings resumes it.

    A ``KeyboardInterrupt``, so that code which stops on Ctrl-C stops on it too.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum
