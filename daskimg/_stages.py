"""A chunk's two stages: its rows fetched, then preprocessed.

:func:`fetch_partition` and :func:`preprocess_partition` are plain functions of a pandas
partition, callable without Dask; the runner (:mod:`daskimg._runner`) calls them in its tasks.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

import numpy as np
import pandas as pd

from . import _isolate as isolation
from ._types import META_SCHEMA, ImagePartition, Status
from .fetch import FetchResult, fetch_batch
from .image import DecodeError, decode, fit, srgb_converter, to_array
from .options import FetchOptions, PreprocessOptions

__all__ = ["FetchedPartition", "fetch_partition", "preprocess_partition"]

_Outcome = tuple[tuple[Status, str] | None, tuple[int | None, int | None, str | None]]


def _preprocess_one(data: bytes, opts: PreprocessOptions, out: np.ndarray) -> _Outcome:
    """Pixels of one image into ``out``; (status, message) on failure, and the original's size and format."""
    try:
        decoded = decode(data, opts)
        out[...] = to_array(fit(decoded.pixels, opts, srgb_converter(decoded.icc_profile)), opts)
    except DecodeError as e:
        return (e.status, str(e)), (None, None, None)
    except Exception as e:  # one image must never cost its whole chunk; the message keeps the cause
        return (Status.PREPROCESS_ERROR, f"{type(e).__name__}: {e}"), (None, None, None)
    return None, (decoded.width, decoded.height, decoded.format)


def _crashed(why: str) -> _Outcome:
    return (Status.DECODER_CRASHED, why), (None, None, None)


@dataclass(frozen=True, slots=True)
class FetchedPartition:
    """One partition of input rows (global row numbers as index) and a fetch result per row."""

    rows: pd.DataFrame
    url_col: str
    results: list[FetchResult]


def fetch_partition(
    rows: pd.DataFrame, url_col: str, opts: FetchOptions, *, defer: bool = False,
    stalled: Callable[[], AbstractContextManager[None]] | None = None,
) -> FetchedPartition:
    """Download every URL of ``rows``, in order.

    With ``defer``, the slowest may come back ``deferred``; while the batch waits for them
    it is inside ``stalled()`` (the runner leaves the worker's thread pool meanwhile).
    """
    results = fetch_batch(rows[url_col].tolist(), opts, defer=defer, stalled=stalled)
    return FetchedPartition(rows, url_col, results)


def preprocess_partition(
    fetched: FetchedPartition, opts: PreprocessOptions, *, isolate: bool = False
) -> ImagePartition:
    """Decode and resize every fetched body; failures become zeros plus a status and message.

    With ``isolate`` each image is preprocessed in a forked child (see :mod:`daskimg._isolate`):
    for a chunk whose task already lost a worker, so that the image that crashed it costs its row.
    """
    rows, results = fetched.rows, fetched.results
    n = len(rows)
    isolate = isolate and isolation.AVAILABLE
    # Every row is written below (pixels, or zeros): no need to clear the whole chunk first.
    images = (isolation.shared_zeros if isolate else np.empty)((n, *opts.shape), dtype=opts.dtype)
    status, error = [r.status for r in results], [r.error for r in results]
    width: list[int | None] = [None] * n
    height: list[int | None] = [None] * n
    fmt: list[str | None] = [None] * n
    for i, result in enumerate(results):
        data = result.data
        out = images[i]
        if data is None:
            out[...] = 0
            continue
        if isolate:
            outcome = isolation.run_isolated(functools.partial(_preprocess_one, data, opts, out), _crashed)
        else:
            outcome = _preprocess_one(data, opts, out)
        failure, (width[i], height[i], fmt[i]) = outcome
        if failure is not None:
            status[i], error[i] = failure
            out[...] = 0  # a child may have died after writing some pixels
    if isolate:
        images = np.array(images)  # out of the shared mapping
    ok = np.array([s == Status.OK for s in status], dtype=bool)
    meta = pd.DataFrame(
        {
            "index": rows.index.to_numpy(dtype=np.int64),
            "url": [u if isinstance(u, str) else None for u in rows[fetched.url_col]],
            "status": status,
            "error": error,
            "http_status": pd.array([r.http_status for r in results], dtype="Int32"),
            "width": pd.array(width, dtype="Int32"),
            "height": pd.array(height, dtype="Int32"),
            "format": fmt,
            "bytes": pd.array([len(r.data) if r.data is not None else None for r in results], dtype="Int64"),
            "sha256": [r.sha256 for r in results],
        }
    )
    extra = rows.drop(columns=[fetched.url_col]).reset_index(drop=True)
    extra = extra.rename(columns={c: f"input_{c}" for c in extra.columns if c in META_SCHEMA.names})
    start = int(rows.index[0]) if n else 0
    return ImagePartition(start, images, ok, pd.concat([meta, extra], axis=1))
