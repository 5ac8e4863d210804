"""Open an output, finished or not: a Dask array of its images and its metadata table, or its
chunks one by one (:class:`Chunks`, what :class:`daskimg.ImageReader` reads)."""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import zarr

from .._types import META_SCHEMA
from ..errors import OutputError, cause
from ._store import NPY_SETTINGS, Output, chunk_codec, load_npy

__all__ = ["LAZY_ROWS", "Chunks", "locate_output", "open_output"]

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


@dataclass(frozen=True)
class Chunks:
    """An output's pixels chunk by chunk: the usable rows of one chunk at a time. Picklable (to
    DataLoader workers); each process opens the arrays once."""

    out: Output
    shape: tuple[int, ...]  # one image's
    dtype: np.dtype[Any]
    channels_first: bool

    @functools.cached_property
    def _arrays(self) -> tuple[Any, Any]:
        options = self.out.zarr_options
        return (zarr.open_array(self.out.path, path="images", mode="r", **options),
                zarr.open_array(self.out.path, path="ok", mode="r", **options))

    @functools.cached_property
    def _codecs(self) -> tuple[Any, Any]:
        return chunk_codec(self._arrays[0]), chunk_codec(self._arrays[1])

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("_arrays", "_codecs")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def buffer(self) -> np.ndarray | None:
        """A new buffer for :meth:`read` to decode a chunk into, or None where pixels are not decoded here."""
        codec = self._codecs[0] if self.out.format == "zarr" else None
        return None if codec is None else codec.buffer()

    def read(self, k: int, buffer: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The images of chunk ``k``'s usable rows and their row numbers; none for a chunk not written yet.

        ``buffer``, an array of one whole chunk's shape, may receive the pixels (a reader reuses
        its buffers: a fresh one is cleared by the kernel page by page, which costs as much as
        decompressing into it).
        """
        start = k * self.out.chunk
        stop = min(start + self.out.chunk, self.out.n_rows)
        if self.out.format == "npy":
            fs, root = self.out._fs
            try:
                ok = load_npy(fs, f"{root}/ok/{k:08d}.npy")
            except FileNotFoundError:
                ok = np.zeros(0, dtype=bool)
            images = load_npy(fs, f"{root}/images/{k:08d}.npy") if ok.any() else None
        else:
            ok = self._read(1, k, start, stop)
            images = self._read(0, k, start, stop, buffer) if ok.any() else None
        if images is None:
            return np.empty((0,), dtype=self.dtype), np.empty((0,), dtype=np.int64)
        if ok.all():
            return images, np.arange(start, stop, dtype=np.int64)
        rows = np.flatnonzero(ok)
        return images[rows], rows + start

    def _read(self, which: int, k: int, start: int, stop: int, buffer: np.ndarray | None = None) -> np.ndarray:
        """Rows ``start:stop`` (chunk ``k``) of the images (0) or ok (1) array: the chunk's stored bytes
        decoded in one call when the codecs allow, else through zarr."""
        codec = self._codecs[which]
        if codec is None:
            return np.asarray(self._arrays[which][start:stop])
        fs, root = self.out._fs
        try:
            data = fs.cat_file(f"{root}/{('images', 'ok')[which]}/{codec.key(k)}")
        except FileNotFoundError:  # never written: the fill value, as zarr reads it
            return np.asarray(self._arrays[which][start:stop])
        return codec.decode(data, stop - start, buffer)  # type: ignore[no-any-return]


def locate_output(path: str, storage_options: Mapping[str, Any] | None = None) -> tuple[Output, Chunks]:
    """The output at ``path`` (its format, rows and chunking) and its chunks.

    Raises
    ------
    OutputError
        ``path`` is not a daskimg output, or cannot be read; in one line.
    """
    try:
        return _locate(path, storage_options)
    except OutputError:
        raise
    except Exception as e:  # a store's own errors (botocore's are no OSError): the path and the cause, one line
        raise OutputError(f"cannot open {path}: {cause(e)}") from None


def _locate(path: str, storage_options: Mapping[str, Any] | None) -> tuple[Output, Chunks]:
    probe = Output(path, "zarr", 1, 0, storage_options=storage_options)
    fs, root = probe._fs
    if fs.exists(f"{root}/{NPY_SETTINGS}"):
        from ..options import PreprocessOptions

        settings = json.loads(fs.cat_file(f"{root}/{NPY_SETTINGS}"))["settings"]
        out = Output(path, "npy", settings["chunk"], settings["rows"], storage_options=storage_options)
        prep = PreprocessOptions(**settings["preprocess"])
        return out, Chunks(out, prep.shape, np.dtype(prep.dtype), prep.channels_first)
    try:
        array = zarr.open_array(path, path="images", mode="r", **probe.zarr_options)
    except FileNotFoundError:
        raise OutputError(f"{path} is not a daskimg output") from None
    out = Output(path, "zarr", array.chunks[0], array.shape[0], storage_options=storage_options)
    dims = tuple(getattr(array.metadata, "dimension_names", None) or ())
    return out, Chunks(out, tuple(array.shape[1:]), np.dtype(array.dtype), dims[1:2] == ("channel",))


def _open(path: str, lazy: bool | None, storage_options: Mapping[str, Any] | None) -> tuple[Any, Any]:
    import dask.array as da

    out, chunks = _locate(path, storage_options)
    fs, _ = out._fs
    images = _npy_images(chunks) if out.format == "npy" else da.from_zarr(chunks._arrays[0])
    files = out.listing().files()
    if lazy or (lazy is None and out.n_rows > LAZY_ROWS):
        import dask.dataframe as dd

        return images, dd.read_parquet([fs.unstrip_protocol(f) for f in files],
                                       storage_options=dict(storage_options or {}))
    meta = pd.concat([pd.read_parquet(f, filesystem=fs) for f in files], ignore_index=True) if files else (
        pd.DataFrame({name: pd.Series(dtype=t.to_pandas_dtype()) for name, t in zip(
            META_SCHEMA.names, META_SCHEMA.types, strict=True)}))
    return images, meta


def _npy_images(chunks: Chunks) -> Any:
    """The npy chunks as one Dask array; chunks not written yet read as zeros, as in zarr."""
    import dask.array as da

    out = chunks.out
    fs, root = out._fs
    done = out.done_chunks()
    blocks = []
    for k in range(out.n_chunks):
        if done[k]:
            blocks.append(da.from_array(load_npy(fs, f"{root}/images/{k:08d}.npy"), chunks=-1))
        else:
            rows = min(out.chunk, out.n_rows - k * out.chunk)
            blocks.append(da.zeros((rows, *chunks.shape), dtype=chunks.dtype, chunks=-1))
    return da.concatenate(blocks)
