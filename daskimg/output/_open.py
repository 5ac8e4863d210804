"""Open an output, finished or not: a Dask array of its images and its metadata table."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pandas as pd
import zarr

from .._types import META_SCHEMA
from ..errors import OutputError, cause
from ._store import NPY_SETTINGS, Output, load_npy

__all__ = ["LAZY_ROWS", "open_output"]

LAZY_ROWS = 2**22  # open() gives the metadata as a Dask DataFrame beyond this many rows


def open_output(path: str, *, lazy: bool | None = None,
                storage_options: Mapping[str, Any] | None = None) -> tuple[Any, Any]:
    """Open a finished (or partial) output: a Dask array of images and the metadata table.

    Parameters
    ----------
    path
        The output, local or any fsspec URL.
    lazy
        Give the metadata as a Dask DataFrame (True) or a pandas DataFrame (False); by
        default lazily beyond ``LAZY_ROWS`` (4,194,304) rows.
    storage_options
        fsspec's options for ``path`` (credentials, endpoint ...), as for :meth:`daskimg.Job.run`.

    Returns
    -------
    images : dask.array.Array
        ``(N, H, W, 3)`` (or channels-first), chunked like the output; rows of chunks not
        written yet are zeros, as are failed rows.
    meta : pandas.DataFrame or dask.dataframe.DataFrame
        One row per input row that has been written, in row order (column ``index``).
    """
    try:
        return _open(path, lazy, storage_options)
    except OutputError:
        raise
    except Exception as e:  # a store's own errors (botocore's are no OSError): the path and the cause, one line
        raise OutputError(f"cannot open {path}: {cause(e)}") from None


def _open(path: str, lazy: bool | None, storage_options: Mapping[str, Any] | None) -> tuple[Any, Any]:
    import dask.array as da

    probe = Output(path, "zarr", 1, 0, storage_options=storage_options)
    fs, root = probe._fs
    if fs.exists(f"{root}/{NPY_SETTINGS}"):
        settings = json.loads(fs.cat_file(f"{root}/{NPY_SETTINGS}"))["settings"]
        out = Output(path, "npy", settings["chunk"], settings["rows"], storage_options=storage_options)
        images = _npy_images(out, settings)
    else:
        try:
            array = zarr.open_array(path, path="images", mode="r", **probe.zarr_options)
        except FileNotFoundError:
            raise OutputError(f"{path} is not a daskimg output") from None
        images = da.from_zarr(array)
        out = Output(path, "zarr", array.chunks[0], array.shape[0], storage_options=storage_options)
    files = out.listing().files()
    if lazy or (lazy is None and out.n_rows > LAZY_ROWS):
        import dask.dataframe as dd

        return images, dd.read_parquet([fs.unstrip_protocol(f) for f in files],
                                       storage_options=dict(storage_options or {}))
    meta = pd.concat([pd.read_parquet(f, filesystem=fs) for f in files], ignore_index=True) if files else (
        pd.DataFrame({name: pd.Series(dtype=t.to_pandas_dtype()) for name, t in zip(
            META_SCHEMA.names, META_SCHEMA.types, strict=True)}))
    return images, meta


def _npy_images(out: Output, settings: dict[str, Any]) -> Any:
    """The npy chunks as one Dask array; chunks not written yet read as zeros, as in zarr."""
    import dask.array as da

    from ..options import PreprocessOptions

    prep = PreprocessOptions(**settings["preprocess"])
    fs, root = out._fs
    done = out.done_chunks()
    blocks = []
    for k in range(out.n_chunks):
        if done[k]:
            blocks.append(da.from_array(load_npy(fs, f"{root}/images/{k:08d}.npy"), chunks=-1))
        else:
            rows = min(out.chunk, out.n_rows - k * out.chunk)
            blocks.append(da.zeros((rows, *prep.shape), dtype=prep.dtype, chunks=-1))
    return da.concatenate(blocks)
