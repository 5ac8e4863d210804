"""daskimg's own Dask config keys (``daskimg.*``), each read and checked here.

A value of the wrong kind is a :class:`~daskimg.errors.ConfigError` that names the key, raised in the
process that reads it (the caller's, before a cluster starts), never a traceback in a worker's log and
a setting silently left out. What each key does is documented where it acts: :mod:`daskimg.cluster`
and :mod:`daskimg._runner`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import dask.config
from dask.utils import parse_timedelta

from .errors import ConfigError

__all__ = ["count", "flag", "interval", "mapping", "positive"]


def _wrong(key: str, expected: str, value: object) -> ConfigError:
    return ConfigError(f"the Dask config key {key} must be {expected}, got {value!r}")


def flag(key: str, default: bool) -> bool:
    """A key that is true or false."""
    value = dask.config.get(key, default)
    if not isinstance(value, bool):
        raise _wrong(key, "true or false", value)
    return value


def positive(key: str, default: float) -> float:
    """A key that is a number above zero."""
    value = dask.config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise _wrong(key, "a number above 0", value)
    return float(value)


def count(key: str, default: int | None, *, none: str) -> int | None:
    """A key that is a whole number >= 0, or null (``none`` says what null does)."""
    value = dask.config.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _wrong(key, f"a whole number >= 0 ({none})", value)
    return value


def interval(key: str, default: str) -> str | int | float | None:
    """A key that is a time as Dask reads one (``'500ms'``; a bare number is milliseconds), or null."""
    value = dask.config.get(key, default)
    if value is None:
        return None
    wrong = _wrong(key, f"a time such as {default!r} (null leaves Dask's)", value)
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise wrong
    try:
        parse_timedelta(value, default="ms")
    except (TypeError, ValueError, KeyError):
        raise wrong from None
    return value


def mapping(key: str, expected: str) -> Mapping[str, object]:
    """A key that is a mapping (empty by default); ``expected`` says of what."""
    value = dask.config.get(key, {})
    if not isinstance(value, Mapping):
        raise _wrong(key, expected, value)
    return value
