"""The small exception tree of daskimg.

Only misconfiguration raises; a URL that cannot be fetched or decoded is data (a status
and a message in the metadata table), never an exception::

    DaskimgError
     ├── ConfigError(ValueError)        a setting that cannot work (size 0, unknown mode)
     ├── InputError(OSError)            the URL table cannot be read or has no URL column
     ├── OutputError(OSError)           the output exists with other settings, is being written by
     │                                  another run, or cannot be written
     └── ClusterError(RuntimeError)     the local cluster's workers did not start

    Interrupted(KeyboardInterrupt)      a run stopped on SIGINT or SIGTERM; run again to resume
"""

from __future__ import annotations

__all__ = ["ClusterError", "ConfigError", "DaskimgError", "InputError", "Interrupted", "OutputError", "cause",
           "one_line"]


class DaskimgError(Exception):
    """Base of every error daskimg raises on purpose."""


class ConfigError(DaskimgError, ValueError):
    """A setting is invalid; the message says which and what is allowed."""


class InputError(DaskimgError, OSError):
    """The URL table cannot be read, or lacks the URL column."""


class OutputError(DaskimgError, OSError):
    """The output cannot be created, exists with different settings, or another run is writing it."""


class ClusterError(DaskimgError, RuntimeError):
    """The workers of the local cluster started for a run did not all join (Dask's log says why)."""


class Interrupted(KeyboardInterrupt):
    """A run stopped on SIGINT or SIGTERM (``signum``); the next run with the same settings resumes it.

    A ``KeyboardInterrupt``, so that code which stops on Ctrl-C stops on it too.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def one_line(error: BaseException) -> str:
    """Library errors can span lines (dask wraps them); the user gets one."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1].removeprefix("Original Message: ") if lines else type(error).__name__


_NO_CREDENTIALS = frozenset({"NoCredentialsError", "PartialCredentialsError", "DefaultCredentialsError"})


def cause(error: BaseException) -> str:
    """What a storage library's error means, in one line for the user (botocore's errors, among others,
    are no ``OSError`` and name themselves by their type)."""
    name, text = type(error).__name__, one_line(error)
    if name in _NO_CREDENTIALS:
        return (f"no credentials for the store ({text}); pass them with --storage-options (storage_options=) "
                "or the store's own environment variables")
    if isinstance(error, PermissionError):  # s3fs's word for a 403: wrong credentials, or no right to the path
        return f"access denied ({text}): check the credentials and what they may read and write there"
    if isinstance(error, OSError) and not type(error).__module__.startswith(("botocore", "aiobotocore")):
        return text
    return f"{name}: {text}"
