"""Read URL tables into a Dask DataFrame of B-row partitions indexed by global row number.

Accepted: ``.txt`` (one URL per line), ``.csv``, ``.tsv``, ``.jsonl``, ``.parquet``, each
optionally ``.gz``; a file, a glob or a directory of shards; any fsspec URL. Python
callers may also pass a list of URLs or a pandas / Dask DataFrame.

Row ``i`` of the table (files in sorted order, lines in file order) keeps index ``i``
through every stage, so output row ``i`` is input row ``i``.
"""

from __future__ import annotations

import dataclasses
import functools
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import dask.bag as db
import dask.dataframe as dd
import fsspec
import numpy as np
import pandas as pd

from .config import INPUT_FORMATS
from .errors import InputError

__all__ = ["Source", "read_source"]

BLOCKSIZE = 64 * 2**20  # bytes of an uncompressed text table per input partition
_SUFFIXES = {".txt": "txt", ".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}


@dataclass(frozen=True)
class Source:
    """A URL table split into partitions of ``chunk`` rows; partition k holds rows kB .. kB+B-1."""

    rows: dd.DataFrame  # indexed by global row number, with known divisions
    url_col: str
    n_rows: int
    chunk: int
    name: str

    @functools.cached_property
    def frame(self) -> dd.DataFrame:
        frame: dd.DataFrame = self.rows.repartition(divisions=(*range(0, self.n_rows, self.chunk), self.n_rows - 1))
        return frame

    @property
    def n_chunks(self) -> int:
        return -(-self.n_rows // self.chunk)

    def rechunk(self, chunk: int) -> Source:
        """The same rows in partitions of ``chunk`` rows (lazy: nothing is read)."""
        if chunk <= 0:
            raise InputError(f"chunk must be a positive number of rows, got {chunk}")
        return self if chunk == self.chunk else dataclasses.replace(self, chunk=chunk)


def _format_of(path: str) -> str:
    base = path[:-3] if path.endswith(".gz") else path
    fmt = _SUFFIXES.get(posixpath.splitext(base)[1].lower())
    if fmt is None:
        raise InputError(f"cannot tell the format of {path!r}; pass input_format= one of {', '.join(INPUT_FORMATS)}")
    return fmt


def _expand(path: str) -> list[str]:
    """Files behind a path, glob or directory, sorted, with their protocol kept."""
    try:
        fs, _, paths = fsspec.get_fs_token_paths(path)
        files: list[str] = []
        for p in sorted(paths):
            if not fs.exists(p):
                continue
            if fs.isdir(p):
                files.extend(sorted(f for f in fs.find(p) if not posixpath.basename(f).startswith((".", "_"))))
            else:
                files.append(p)
    except (OSError, ValueError, ImportError) as e:
        raise InputError(f"cannot read {path}: {_one_line(e)}") from None
    if not files:
        raise InputError(f"no input file matches {path}")
    return [fs.unstrip_protocol(f) for f in files]


def _read(files: list[str], fmt: str, url_col: str) -> Any:
    compression = "gzip" if files[0].endswith(".gz") else None
    # Text files are split into byte blocks (lines stay whole), so one huge file is not one huge
    # partition; gzip streams cannot be split, so a .gz file is read whole by one task.
    blocksize = None if compression else BLOCKSIZE
    if fmt == "txt":
        # errors="replace": a byte that is not UTF-8 spoils its own row (recorded as invalid), not the run.
        lines = db.read_text(files, compression=compression or "infer", blocksize=blocksize, errors="replace")
        return lines.map(lambda line: {url_col: line.rstrip("\r\n")}).to_dataframe(meta={url_col: "object"})
    if fmt in ("csv", "tsv"):
        sep = "," if fmt == "csv" else "\t"
        return dd.read_csv(files, sep=sep, blocksize=blocksize, compression=compression, dtype={url_col: "object"},
                           keep_default_na=False, na_values=[], encoding_errors="replace")
    if fmt == "jsonl":
        return dd.read_json(files, lines=True, blocksize=blocksize, compression=compression or "infer", dtype=False,
                            errors="replace")
    return dd.read_parquet(files)


def _from_memory(table: Sequence[str] | pd.DataFrame, url_col: str) -> Any:
    frame = table.reset_index(drop=True) if isinstance(table, pd.DataFrame) else pd.DataFrame({url_col: list(table)})
    parts = max(1, min(64, len(frame) // 100_000))
    return dd.from_pandas(frame, npartitions=parts, sort=False)


def read_source(
    table: str | Sequence[str] | pd.DataFrame | dd.DataFrame,
    *,
    url_col: str = "url",
    chunk: int = 256,
    input_format: str | None = None,
) -> Source:
    """Turn ``table`` into a :class:`Source` of ``chunk``-row partitions.

    One pass over the input counts the rows of each file or partition (needed to give
    every row its global number); nothing is gathered into one process.
    """
    if chunk <= 0:
        raise InputError(f"chunk must be a positive number of rows, got {chunk}")
    if isinstance(table, str):
        files = _expand(table)
        fmt = input_format or _format_of(files[0])
        if fmt not in INPUT_FORMATS:
            raise InputError(f"input_format must be one of {', '.join(INPUT_FORMATS)}, got {fmt!r}")
        try:
            frame = _read(files, fmt, url_col)
        except (OSError, ValueError) as e:
            raise InputError(f"cannot read {table}: {_one_line(e)}") from None
        name = table
    elif isinstance(table, dd.DataFrame):
        frame, name = table.clear_divisions(), "dask DataFrame"
    else:
        frame = _from_memory(table, url_col)
        name = "pandas DataFrame" if isinstance(table, pd.DataFrame) else "list of URLs"
    if url_col not in frame.columns:
        cols = ", ".join(map(str, frame.columns))
        raise InputError(f"no column {url_col!r} in {name} (columns: {cols}); choose one with url_col / --url-col")
    frame = frame.clear_divisions()
    try:
        lengths = frame.map_partitions(len).compute(scheduler="threads").tolist()
    except Exception as e:  # parser errors from pandas/pyarrow differ per format; all mean "unreadable"
        raise InputError(f"cannot read {name}: {type(e).__name__}: {_one_line(e)}") from None
    keep = [i for i, n in enumerate(lengths) if n > 0]
    if not keep:
        raise InputError(f"{name} holds no rows")
    frame = frame.partitions[keep]
    offsets = np.concatenate([[0], np.cumsum([lengths[i] for i in keep])]).tolist()
    n_rows = offsets[-1]
    numbered = frame.map_partitions(
        _number_rows, offsets, meta=frame._meta.assign(_row=np.array([], dtype="int64"))
    )
    indexed = numbered.set_index("_row", sorted=True, divisions=[*offsets[:-1], n_rows - 1])
    return Source(indexed, url_col, n_rows, chunk, name)


def _number_rows(part: pd.DataFrame, offsets: list[int], partition_info: dict[str, int] | None = None) -> pd.DataFrame:
    start = offsets[partition_info["number"]] if partition_info else 0
    return part.assign(_row=np.arange(start, start + len(part), dtype=np.int64))


def _one_line(error: BaseException) -> str:
    """Library errors can span lines (dask wraps them); the user gets one."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1].removeprefix("Original Message: ") if lines else type(error).__name__
