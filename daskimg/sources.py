"""URL tables as numbered rows, read block by block where the rows are.

Accepted: ``.txt`` (one URL per line), ``.csv``, ``.tsv``, ``.jsonl``, ``.parquet``, each
optionally ``.gz``; a file, a glob or a directory of shards; any fsspec URL. Python
callers may also pass a list of URLs or a pandas / Dask DataFrame.

A table is split into **blocks** that a task reads on its own: a byte range of a text file
(lines stay whole), a whole ``.gz`` file (gzip streams cannot be split), a parquet row
group, a slice of an in-memory table, or a partition of a Dask DataFrame. Three steps, so
that the client never reads a row:

1. :func:`plan_source` (client): list the files and read one header or schema, to check
   the URL column. Nothing is counted yet.
2. :func:`count_block` (a task per file or byte range, on the cluster): how many rows each
   block holds; parquet row groups are counted from the file's footer alone.
3. :func:`read_rows` (inside each chunk's fetch task): the chunk's rows, taken from the
   blocks it spans and numbered globally. A worker process keeps the last blocks it read
   (``CACHED_BLOCKS``), so the chunks of a block that land on one worker read it once.

So a chunk's first task depends on no other task: the scheduler gives it to whichever
worker has a free thread, as it does with any root task, and a worker that joins gets
chunks at once. The price is that each worker reads the blocks of the chunks it takes:
the input is read ``min(workers, chunks in a block)`` times over.

Row ``i`` of the table (files in sorted order, rows in file order) keeps number ``i``
through every stage, so output row ``i`` is input row ``i``.
"""

from __future__ import annotations

import dataclasses
import io
import json
import posixpath
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import fsspec
import fsspec.utils
import numpy as np
import pandas as pd
import pyarrow as pa

from ._storage import missing_bucket
from .errors import InputError, cause, one_line
from .options import INPUT_FORMATS

__all__ = ["BLOCKSIZE", "Block", "Piece", "Source", "count_block", "plan_source", "read_block", "read_rows"]

BLOCKSIZE = 8 * 2**20  # bytes of an uncompressed text table per block
CACHED_BLOCKS = 2  # blocks a worker process keeps after reading them
MEMORY_BLOCK_ROWS = 2**16  # rows of an in-memory table per block
_TEXT = ("txt", "csv", "tsv", "jsonl")
_SUFFIXES = {".txt": "txt", ".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}
BlockKind = Literal["txt", "csv", "tsv", "jsonl", "parquet", "memory", "dask"]


@dataclass(frozen=True, slots=True)
class Block:
    """One piece of the input that a task reads on its own.

    ``start`` is a byte offset (text), a row group (parquet) or a partition (Dask);
    ``length`` the bytes of a text block (None: the whole file, as for ``.gz``). A parquet
    block with ``start=-1`` stands for the whole file until :func:`count_block` splits it
    into row groups.
    """

    kind: BlockKind
    path: str = ""
    start: int = 0
    length: int | None = None
    first: bool = True  # the block starts the file (csv / tsv: its first line is the header)
    dtypes: tuple[tuple[str, str], ...] = ()  # csv / tsv: column types, from the first file's head
    data: pd.DataFrame | None = None  # memory: the rows themselves
    # fsspec's storage options for ``path`` (credentials, endpoint ...): the same dict in every block of
    # a source, shipped with the tasks so that they reach every worker; never shown
    storage_options: Mapping[str, Any] | None = field(default=None, repr=False, compare=False)

    def filesystem(self) -> tuple[fsspec.AbstractFileSystem, str]:
        """The file system and path of this block's file."""
        fs, path = fsspec.core.url_to_fs(self.path, **(self.storage_options or {}))
        return fs, str(path)


Piece = tuple[Block, int, int, int]  # a block, the rows counted in it, and a range of them


@dataclass(frozen=True)
class Source:
    """A URL table as blocks; once counted, ``offsets[b]`` is the number of block ``b``'s first row.

    What the client holds grows with the number of blocks (one per 8 MiB of text, parquet
    row group or ``.gz`` file), never with the number of rows.
    """

    name: str
    url_col: str
    blocks: tuple[Block, ...]
    offsets: np.ndarray | None = None  # len(blocks) + 1 row numbers; None until counted
    frame: Any = None  # the Dask DataFrame, for a Dask DataFrame input

    @property
    def counted(self) -> bool:
        return self.offsets is not None

    @property
    def n_rows(self) -> int:
        if self.offsets is None:
            raise InputError(f"the rows of {self.name} are not counted yet")
        return int(self.offsets[-1])

    def count(self, mapper: Callable[[Callable[[Block], list[tuple[Block, int]]], Sequence[Block]], Iterable[Any]]
              = map) -> Source:
        """This source with every block counted; ``mapper(count_block, blocks)`` does the reading
        (the builtin ``map`` here, tasks on a cluster in a run)."""
        if self.counted:
            return self
        try:
            if self.frame is not None:  # partition lengths, on the cluster of the active client if any
                lengths = self.frame.map_partitions(len).compute().tolist()
                counted = list(zip(self.blocks, lengths, strict=True))
            else:
                counted = [pair for pairs in mapper(count_block, self.blocks) for pair in pairs]
        except InputError:
            raise
        except Exception as e:  # parser errors from pandas/pyarrow differ per format; all mean "unreadable"
            raise InputError(f"cannot read {self.name}: {type(e).__name__}: {one_line(e)}") from None
        kept = [(b, n) for b, n in counted if n > 0]
        if not kept:
            raise InputError(f"{self.name} holds no rows")
        offsets = np.concatenate([[0], np.cumsum([n for _, n in kept])]).astype(np.int64)
        return dataclasses.replace(self, blocks=tuple(b for b, _ in kept), offsets=offsets)

    def pieces(self, start: int, stop: int) -> list[Piece]:
        """What rows ``start .. stop - 1`` are: (block, rows counted in it, first row, end row) for each
        block they span; an in-memory block comes as just those rows."""
        assert self.offsets is not None
        pieces = []
        for b, lo, end in self.spans(start, stop):
            block, counted = self.blocks[b], int(self.offsets[b + 1] - self.offsets[b])
            if block.kind == "memory":
                assert block.data is not None
                block = dataclasses.replace(block, data=block.data.iloc[lo:end])
                counted, lo, end = end - lo, 0, end - lo
            pieces.append((block, counted, lo, end))
        return pieces

    def rows(self, start: int = 0, stop: int | None = None) -> pd.DataFrame:
        """Rows ``start .. stop - 1`` read here, in this process, as a chunk's task reads them (counted sources)."""
        stop = self.n_rows if stop is None else min(stop, self.n_rows)
        pieces: list[Any] = self.pieces(start, stop)
        if self.frame is not None:  # a Dask DataFrame's partitions, computed here
            pieces = [(self.frame.partitions[block.start].compute(), n, lo, end) for block, n, lo, end in pieces]
        return read_rows(pieces, start, self.url_col)

    def spans(self, start: int, stop: int) -> list[tuple[int, int, int]]:
        """The blocks holding rows ``start .. stop - 1``: (block, first row, end row) within each block."""
        assert self.offsets is not None
        offsets = self.offsets
        b = int(np.searchsorted(offsets, start, side="right")) - 1
        spans = []
        while start < stop:
            end = min(stop, int(offsets[b + 1]))
            spans.append((b, start - int(offsets[b]), end - int(offsets[b])))
            start, b = end, b + 1
        return spans


def _format_of(path: str) -> str:
    base = path[:-3] if path.endswith(".gz") else path
    fmt = _SUFFIXES.get(posixpath.splitext(base)[1].lower())
    if fmt is None:
        raise InputError(f"cannot tell the format of {path!r}; pass input_format= one of {', '.join(INPUT_FORMATS)}")
    return fmt


def _expand(path: str, storage_options: Mapping[str, Any] | None
            ) -> tuple[fsspec.AbstractFileSystem, list[tuple[str, int]]]:
    """Files behind a path, glob or directory, sorted, with their sizes from the listing."""
    try:
        fs, _, paths = fsspec.get_fs_token_paths(path, storage_options=dict(storage_options or {}))
        files: dict[str, int] = {}
        for p in sorted(paths):
            try:
                info = fs.info(p)
            except FileNotFoundError:
                continue
            if info["type"] == "directory":
                for f, entry in sorted(fs.find(p, detail=True).items()):
                    if not posixpath.basename(f).startswith((".", "_")):
                        files[f] = int(entry.get("size") or 0)
            else:
                files[p] = int(info.get("size") or 0)
    except Exception as e:  # botocore's and gcsfs's errors are no OSError: any failure here means "unreadable"
        raise InputError(f"cannot read {path}: {cause(e)}") from None
    if not files:
        bucket = missing_bucket(fs, path)
        raise InputError(f"no input file matches {path}" + (f": bucket {bucket!r} does not exist" if bucket else ""))
    return fs, sorted(files.items())


def _text_blocks(fs: fsspec.AbstractFileSystem, files: list[tuple[str, int]], fmt: str,
                 dtypes: tuple[tuple[str, str], ...], storage_options: Mapping[str, Any] | None) -> list[Block]:
    blocks = []
    for path, size in files:
        url = fs.unstrip_protocol(path)
        if path.endswith(".gz"):
            blocks.append(Block(fmt, url, 0, None, True, dtypes,  # type: ignore[arg-type]
                                storage_options=storage_options))
            continue
        for start in range(0, max(size, 1), BLOCKSIZE):
            blocks.append(Block(fmt, url, start, BLOCKSIZE, start == 0, dtypes,  # type: ignore[arg-type]
                                storage_options=storage_options))
    return blocks


def _first_line(fs: fsspec.AbstractFileSystem, path: str) -> bytes:
    with fs.open(path, "rb", compression="gzip" if path.endswith(".gz") else None) as f:
        return bytes(f.readline())


def _columns(fs: fsspec.AbstractFileSystem, path: str, fmt: str) -> tuple[list[str], tuple[tuple[str, str], ...]]:
    """The first file's columns (and, for csv / tsv, their types, from its first 64 KiB): the client's only read."""
    compression = "gzip" if path.endswith(".gz") else None
    if fmt == "parquet":
        import pyarrow.parquet as pq

        with fs.open(path, "rb") as f:
            return list(pq.read_schema(f).names), ()
    with fs.open(path, "rb", compression=compression) as f:
        head = f.read(2**16)
    if fmt == "jsonl":
        line = next((ln for ln in head.split(b"\n") if ln.strip()), b"{}")
        try:
            record = json.loads(line)
        except ValueError:
            record = None  # a truncated first line is the reader's to report, with its row
        return (list(record) if isinstance(record, dict) else []), ()
    if len(head) == 2**16:  # the last line may be cut
        head = head[: head.rfind(b"\n") + 1] or head
    sample = _parse_csv(head, fmt, ())
    return [str(c) for c in sample.columns], tuple((str(c), str(t)) for c, t in sample.dtypes.items())


def plan_source(
    table: str | Sequence[str] | pd.DataFrame | Any,
    *,
    url_col: str = "url",
    input_format: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> Source:
    """Plan the blocks of ``table`` without reading its rows; see the module. ``storage_options`` go to
    fsspec for the files of ``table``, here and in every task that reads them.

    Raises
    ------
    InputError
        No file matches, the format is unknown, or there is no column ``url_col``.
    """
    if isinstance(table, str):
        fs, files = _expand(table, storage_options)
        fmt = input_format or _format_of(files[0][0])
        if fmt not in INPUT_FORMATS:
            raise InputError(f"input_format must be one of {', '.join(INPUT_FORMATS)}, got {fmt!r}")
        try:
            columns, dtypes = ([url_col], ()) if fmt == "txt" else _columns(fs, files[0][0], fmt)
            if fmt == "parquet":
                blocks = [Block("parquet", fs.unstrip_protocol(p), -1, storage_options=storage_options)
                          for p, _ in files]
            else:
                dtypes = tuple((c, t) for c, t in dtypes if c != url_col)
                blocks = _text_blocks(fs, files, fmt, dtypes, storage_options)
        except (OSError, ValueError, EOFError) as e:
            raise InputError(f"cannot read {table}: {one_line(e)}") from None
        source = Source(table, url_col, tuple(blocks))
    elif _is_dask_frame(table):
        assert not isinstance(table, Sequence)
        columns = list(table.columns)
        source = Source("dask DataFrame", url_col, tuple(Block("dask", start=i) for i in range(table.npartitions)),
                        frame=table)
    else:
        frame = (table.reset_index(drop=True) if isinstance(table, pd.DataFrame)
                 else pd.DataFrame({url_col: list(table)}))
        columns = list(frame.columns)
        name = "pandas DataFrame" if isinstance(table, pd.DataFrame) else "list of URLs"
        if frame.empty:
            raise InputError(f"{name} holds no rows")
        starts = range(0, len(frame), MEMORY_BLOCK_ROWS)
        slices = tuple(Block("memory", data=frame.iloc[i : i + MEMORY_BLOCK_ROWS]) for i in starts)
        offsets = np.array([*starts, len(frame)], dtype=np.int64)  # counted already: the rows are here
        source = Source(name, url_col, slices, offsets)
    if url_col not in columns:
        raise InputError(f"no column {url_col!r} in {source.name} (columns: {', '.join(map(str, columns))}); "
                         "choose one with url_col / --url-col")
    return source


def _is_dask_frame(table: object) -> bool:
    module = type(table).__module__
    return module.startswith(("dask.dataframe", "dask_expr")) and hasattr(table, "npartitions")


def count_block(block: Block) -> list[tuple[Block, int]]:
    """The rows of a file's block: itself and its count, or for a parquet file each row group and its count."""
    if block.kind == "parquet":
        import pyarrow.parquet as pq

        fs, path = block.filesystem()
        with fs.open(path, "rb") as f:
            meta = pq.ParquetFile(f).metadata
        return [(dataclasses.replace(block, start=g), meta.row_group(g).num_rows) for g in range(meta.num_row_groups)]
    data = _block_bytes(block)
    if block.kind == "jsonl":
        return [(block, sum(1 for line in data.split(b"\n") if line.strip()))]  # as pandas, blank lines are no rows
    lines = data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)
    return [(block, lines - 1 if block.first and block.kind in ("csv", "tsv") and lines else lines)]


def _block_bytes(block: Block) -> bytes:
    """A text block's bytes: its lines whole (they belong to the block they start in), or the whole file."""
    fs, path = block.filesystem()
    if block.length is None:
        with fs.open(path, "rb", compression="gzip" if path.endswith(".gz") else None) as f:
            return bytes(f.read())
    with fs.open(path, "rb") as f:
        return bytes(fsspec.utils.read_block(f, block.start, block.length, delimiter=b"\n"))


def read_block(block: Block, url_col: str) -> pd.DataFrame | pa.Table:
    """The rows of a file's block: a DataFrame with a 0-based index, or an Arrow table (parquet); a text
    row that is not UTF-8 stays a row."""
    if block.kind == "parquet":
        import pyarrow.parquet as pq

        fs, path = block.filesystem()
        with fs.open(path, "rb") as f:
            return pq.ParquetFile(f).read_row_group(block.start)  # Arrow: compact while cached
    data = _block_bytes(block)
    if block.kind in ("csv", "tsv") and not block.first:  # the file's header line names the columns
        fs, path = block.filesystem()
        data = _first_line(fs, path) + data
    if block.kind == "txt":
        lines = data.decode("utf-8", errors="replace").split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        return pd.DataFrame({url_col: [line.removesuffix("\r") for line in lines]}, dtype=object)
    if block.kind == "jsonl":
        if not data.strip():
            return pd.DataFrame({url_col: []}, dtype=object)
        frame = pd.read_json(io.BytesIO(data), lines=True, dtype=False, encoding_errors="replace")
    else:
        frame = _parse_csv(data, block.kind, block.dtypes, url_col)
    return frame


def _parse_csv(data: bytes, fmt: str, dtypes: tuple[tuple[str, str], ...], url_col: str | None = None) -> pd.DataFrame:
    types: dict[str, Any] = dict(dtypes)
    if url_col is not None:
        types[url_col] = "object"
    return pd.read_csv(io.BytesIO(data), sep="," if fmt == "csv" else "\t", dtype=types or None,
                       keep_default_na=False, na_values=[], skip_blank_lines=False, encoding_errors="replace")


class _BlockCache:
    """The blocks this process read last; a block that several threads ask for at once is read once."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._lock = threading.Lock()
        self._blocks: OrderedDict[tuple[Any, ...], pd.DataFrame | pa.Table] = OrderedDict()
        self._reading: dict[tuple[Any, ...], threading.Lock] = {}

    def get(self, block: Block, url_col: str) -> pd.DataFrame | pa.Table:
        key = (block.kind, block.path, block.start, block.length, url_col)
        with self._lock:
            if key in self._blocks:
                self._blocks.move_to_end(key)
                return self._blocks[key]
            reading = self._reading.setdefault(key, threading.Lock())
        with reading:
            with self._lock:
                if key in self._blocks:
                    return self._blocks[key]
            rows = read_block(block, url_col)
            with self._lock:
                self._blocks[key] = rows
                while len(self._blocks) > self.size:
                    self._blocks.popitem(last=False)
                self._reading.pop(key, None)
        return rows


_CACHE = _BlockCache(CACHED_BLOCKS)


def read_rows(pieces: Sequence[tuple[Block | pd.DataFrame, int, int, int]], start: int, url_col: str) -> pd.DataFrame:
    """A chunk's rows, numbered ``start, start + 1, ...``: rows ``lo .. end - 1`` of each piece's block.

    A block is read through this process's cache of recent blocks; a piece may also carry
    the block's rows themselves (a Dask DataFrame partition). A block that now holds
    another number of rows than was counted (a quoted line break in a csv field, a file
    changed since the run started) is an error: its rows would land in the wrong place.
    """
    parts = []
    for source, counted, lo, end in pieces:
        if isinstance(source, Block):
            whole = source.data if source.kind == "memory" else _CACHE.get(source, url_col)
            where = f"{source.path} (from byte {source.start})" if source.kind in _TEXT else source.path
        else:
            whole, where = source, "a Dask DataFrame partition"
        assert whole is not None
        if len(whole) != counted:
            raise InputError(f"{where or 'an input block'} holds {len(whole)} rows where {counted} were counted "
                             "(a quoted line break in a csv field, or a file changed since the run started)")
        if isinstance(whole, pa.Table):
            parts.append(whole.slice(lo, end - lo).to_pandas().reset_index(drop=True))
        else:
            parts.append(whole.iloc[lo:end])
    rows = parts[0] if len(parts) == 1 else pd.concat(parts, ignore_index=True)
    return rows.set_axis(pd.RangeIndex(start, start + len(rows), name="index"))
