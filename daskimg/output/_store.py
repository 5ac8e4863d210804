"""Create the output, write one aligned chunk and its metadata, mark it done.

Two layouts share everything but the pixel files::

    OUTPUT/ (zarr v3 group)              OUTPUT/ (--format npy)
      zarr.json      attrs["daskimg"]       daskimg.json
      images/        (N, H, W, 3)           images/00000000.npy ... (B, H, W, 3) each
      ok/            (N,) bool              ok/00000000.npy ...
      status/        (N,) uint8 codes       (in the metadata only)
      metadata/part-00000000-00001023.parquet   (a group of chunks, compacted)
      metadata/part-00001024.parquet ...        (one chunk)
      metadata/_done/00001024 ...               (one chunk done)

A chunk is done once its marker exists, and the marker is written last, after the pixels,
the ok flags and the metadata part are all in place; on a file system every file is written
under a temporary name in ``OUTPUT/.daskimg-tmp/`` and renamed into place (an object store
puts each object whole), so a killed run never leaves a chunk marked done that is incomplete.
What a killed writer leaves in that folder is removed by the next run (:meth:`Output.remove_leftovers`).
On a file system a run also holds a lock on ``OUTPUT/.daskimg-lock`` (:meth:`Output.locked`), so that a
second run on the same output stops with an error instead of removing the first one's files.

Once every chunk of a group (``GROUP_ROWS`` rows) is done, :meth:`Output.compact` merges
their metadata parts into one file named by its chunk range, which also marks them done;
it then deletes the parts and markers. A 10M-row output so has about 40 metadata files,
not 40,000, and a resumed run learns what is done from two listings. Each metadata file
keeps its rows' counts by status in its footer (``daskimg.counts``), so counting a whole
output reads footers, not rows.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import json
import re
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

import fsspec
import numcodecs
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import zarr
import zarr.codecs
from fsspec.implementations.local import LocalFileSystem

from .._lock import holding
from .._types import META_SCHEMA, STATUS_CODES, ImagePartition, Status
from ..errors import OutputError

__all__ = ["GROUP_ROWS", "ChunkCodec", "ChunkReport", "Listing", "Output", "OutputFormat", "chunk_codec",
           "compressor", "load_npy", "total_counts", "write_times"]

OutputFormat = Literal["zarr", "npy"]
NPY_SETTINGS = "daskimg.json"
_ATTR = "daskimg"
GROUP_ROWS = 2**18  # rows of metadata compacted into one file
_COUNTS_KEY = b"daskimg.counts"
_CHUNKS_KEY = b"daskimg.chunks"  # per chunk of the file: [chunk, rows, ok rows, unix time it was written]
_PART = re.compile(r"part-(\d+)(?:-(\d+))?\.parquet")
STAGING = ".daskimg-tmp"  # on a file system, where files are written before they are renamed into place


@dataclass(frozen=True)
class Listing:
    """The metadata files of an output: compacted groups (first chunk, last chunk, path), and one-chunk parts
    that no group covers, in chunk order; and the chunks marked done one by one."""

    groups: list[tuple[int, int, str]]
    parts: dict[int, str]
    stale: list[str]  # parts a group already covers (a compaction stopped before deleting them)
    markers: list[int]

    def files(self) -> list[str]:
        """Every metadata file once, in row order."""
        keyed = [(a, path) for a, _, path in self.groups] + list(self.parts.items())
        return [path for _, path in sorted(keyed)]


@dataclass(frozen=True, slots=True)
class ChunkReport:
    """What writing one chunk did: its number, its rows and their counts by status."""

    chunk: int
    rows: int
    counts: dict[str, int]


def compressor(name: str) -> Any:
    """The zarr codec for a ``--compression`` name: lz4 is fast and gains little on photos; zstd with bit
    shuffling gains more for more CPU (docs/benchmarks.md); byte shuffling is free for uint8 and helps float32."""
    if name == "zstd":
        return zarr.codecs.BloscCodec(cname="zstd", clevel=1, shuffle=zarr.codecs.BloscShuffle.bitshuffle)
    if name == "lz4":
        return zarr.codecs.BloscCodec(cname="lz4", clevel=5, shuffle=zarr.codecs.BloscShuffle.shuffle)
    return None


@dataclass(frozen=True)
class Output:
    """A prepared output; picklable, so workers write to it directly."""

    path: str
    format: OutputFormat
    chunk: int
    n_rows: int
    id: str = ""  # made anew each time the output is created: tells a reopened output from a replaced one
    group_rows: int = dataclasses.field(default_factory=lambda: GROUP_ROWS)  # rows a compacted metadata file holds
    # fsspec's storage options for ``path`` (credentials, endpoint ...): shipped with the tasks, never shown
    storage_options: Mapping[str, Any] | None = dataclasses.field(default=None, repr=False, compare=False)

    @functools.cached_property
    def _fs(self) -> tuple[fsspec.AbstractFileSystem, str]:
        fs, root = fsspec.core.url_to_fs(self.path, **(self.storage_options or {}))
        return fs, root.rstrip("/")

    @property
    def zarr_options(self) -> dict[str, Any]:
        """What zarr's ``open_*`` functions need besides the path (zarr refuses storage options for a local path)."""
        local = isinstance(self._fs[0], LocalFileSystem)
        return {"storage_options": dict(self.storage_options)} if self.storage_options and not local else {}

    def _put(self, relpath: str, data: bytes | memoryview) -> None:
        """Write ``data`` so that readers see all of it or nothing."""
        fs, root = self._fs
        final = f"{root}/{relpath}"
        if isinstance(fs, LocalFileSystem):  # object stores are atomic per object; files need a rename
            tmp = f"{root}/{STAGING}/{uuid.uuid4().hex}"
            fs.makedirs(final.rsplit("/", 1)[0], exist_ok=True)
            fs.makedirs(f"{root}/{STAGING}", exist_ok=True)
            try:
                with fs.open(tmp, "wb") as f:
                    f.write(data)
                fs.mv(tmp, final)
            finally:
                if fs.exists(tmp):
                    fs.rm(tmp)
        else:
            fs.pipe_file(final, bytes(data))

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """This output for one run at a time: the block runs while this process holds the output's lock
        (:mod:`daskimg._lock`), on a file system; object stores have none.

        Raises
        ------
        OutputError
            When another process holds the lock: another run is writing this output.
        """
        fs, root = self._fs
        if not isinstance(fs, LocalFileSystem):
            yield
            return
        with holding(root, self.path):
            yield

    def remove_leftovers(self) -> None:
        """Remove what writers killed mid-write left (their temporary files): call it while no task writes here."""
        fs, root = self._fs
        if isinstance(fs, LocalFileSystem):
            with contextlib.suppress(FileNotFoundError):
                fs.rm(f"{root}/{STAGING}", recursive=True)

    @property
    def n_chunks(self) -> int:
        return -(-self.n_rows // self.chunk)

    def listing(self) -> Listing:
        """The metadata files and done markers, from one listing of each folder."""
        fs, root = self._fs
        groups: list[tuple[int, int, str]] = []
        parts: dict[int, str] = {}
        try:
            names = fs.ls(f"{root}/metadata", detail=False, refresh=True)
        except FileNotFoundError:
            names = []
        for name in names:
            match = _PART.fullmatch(name.rsplit("/", 1)[-1])
            if match is None:
                continue
            first, last = int(match[1]), int(match[2] or match[1])
            if match[2] is None:
                parts[first] = name
            else:
                groups.append((first, last, name))
        try:
            names = fs.ls(f"{root}/metadata/_done", detail=False, refresh=True)
        except FileNotFoundError:
            names = []
        markers = [int(n.rsplit("/", 1)[-1]) for n in names if n.rsplit("/", 1)[-1].isdigit()]
        covered = np.zeros(self.n_chunks + 1, dtype=bool)
        for first, last, _ in groups:
            covered[first : last + 1] = True
        stale = [path for k, path in parts.items() if k < len(covered) and covered[k]]
        loose = {k: path for k, path in sorted(parts.items()) if not (k < len(covered) and covered[k])}
        return Listing(sorted(groups), loose, stale, markers)

    def done_chunks(self, listing: Listing | None = None) -> np.ndarray:
        """A bool per chunk: its pixels, flags and metadata are all written."""
        listing = listing or self.listing()
        done = np.zeros(self.n_chunks, dtype=bool)
        for first, last, _ in listing.groups:
            done[first : last + 1] = True
        markers = np.array([k for k in listing.markers if k < self.n_chunks], dtype=np.int64)
        done[markers] = True
        return done

    @property
    def chunks_per_group(self) -> int:
        return max(1, self.group_rows // self.chunk)

    def group_of(self, k: int) -> int:
        return k // self.chunks_per_group

    def _group_range(self, group: int) -> range:
        g = self.chunks_per_group
        return range(group * g, min((group + 1) * g, self.n_chunks))

    def group_done(self, group: int, done: np.ndarray) -> bool:
        chunks = self._group_range(group)
        return bool(done[chunks.start : chunks.stop].all())

    def groups_to_compact(self, done: np.ndarray, listing: Listing | None = None) -> list[int]:
        """Groups whose chunks are all done but whose metadata is not one file yet; stale parts are removed."""
        listing = listing or self.listing()
        if listing.stale:
            self._fs[0].rm(listing.stale)
        compacted = {self.group_of(first) for first, _, _ in listing.groups}
        n_groups = -(-self.n_chunks // self.chunks_per_group)
        return [g for g in range(n_groups) if g not in compacted and self.group_done(g, done)]

    def compact(self, group: int) -> int:
        """Merge the metadata parts of a group whose chunks are all done into one file, then delete
        the parts and their done markers; returns the group's rows."""
        fs, root = self._fs
        chunks = self._group_range(group)
        if len(chunks) == 1 and self.chunks_per_group == 1:
            return self._rows(chunks.start)  # one chunk a group: its part is the group
        # (ParquetFile reads one file; read_table would first import pyarrow.dataset, which workers lack)
        tables = [pq.ParquetFile(io.BytesIO(fs.cat_file(f"{root}/metadata/part-{k:08d}.parquet"))).read()
                  for k in chunks]
        records = [r for t in tables for r in json.loads((t.schema.metadata or {}).get(_CHUNKS_KEY, b"[]"))]
        table = pa.concat_tables(tables, promote_options="permissive")
        counts = Counter(table.column("status").to_pylist())
        self._put(f"metadata/part-{chunks.start:08d}-{chunks.stop - 1:08d}.parquet",
                  _table_bytes(table, counts, records))
        fs.rm([f"{root}/metadata/part-{k:08d}.parquet" for k in chunks])
        markers = [f"{root}/metadata/_done/{k:08d}" for k in chunks]
        with contextlib.suppress(FileNotFoundError):
            fs.rm(markers)
        return int(table.num_rows)

    def write(self, part: ImagePartition) -> ChunkReport:
        """Write one partition's chunk, then its metadata part, then its done marker.

        A chunk with rows still ``deferred`` (URLs fetched again on their own) gets no done
        marker until :meth:`rewrite` has put those rows in.
        """
        k = part.start // self.chunk
        if part.start % self.chunk or len(part.images) != self._rows(k):
            raise OutputError(f"partition at row {part.start} is not aligned with chunk {k}")
        self._store(k, part.images, part.ok, part.meta)
        return ChunkReport(k, len(part.images), dict(Counter(part.meta["status"])))

    def rewrite(self, k: int, part: ImagePartition) -> ChunkReport:
        """Put the rows of ``part`` (some rows of written chunk ``k``, by ``index``) into that chunk.

        The chunk is read back, changed and written again whole. The report counts no new
        rows; its counts are the change: the rows' new statuses, minus their old ones.
        """
        start = k * self.chunk
        images, ok, meta = self._read(k)
        at = part.meta["index"].to_numpy() - start
        if len(at) and (at.min() < 0 or at.max() >= len(images)):
            raise OutputError(f"rows {part.meta['index'].tolist()} are not all in chunk {k}")
        changes = Counter(part.meta["status"])
        changes.subtract(Counter(meta["status"].iloc[at]))
        images[at], ok[at] = part.images, part.ok
        for column in META_SCHEMA.names:
            if column not in ("index", "url"):
                meta.iloc[at, meta.columns.get_loc(column)] = part.meta[column].to_numpy()
        self._store(k, images, ok, meta)
        return ChunkReport(k, 0, {status: n for status, n in changes.items() if n})

    def _rows(self, k: int) -> int:
        return min(self.chunk, self.n_rows - k * self.chunk)

    def _store(self, k: int, images: np.ndarray, ok: np.ndarray, meta: pd.DataFrame) -> None:
        """Pixels and flags of chunk ``k``, its metadata part, and its done marker unless a row is deferred."""
        start = k * self.chunk
        if self.format == "zarr":
            arrays = _open_arrays(self)
            values = [images, ok]
            if len(arrays) == 3:  # outputs made before daskimg 0.2 have no status array
                values.append(meta["status"].map(STATUS_CODES).to_numpy(dtype=np.uint8))
            for (name, array, codec), chunk in zip(arrays, values, strict=True):
                if codec is not None and len(chunk) == self.chunk:  # a whole chunk: its bytes, straight to the store
                    self._put(f"{name}/{codec.key(k)}", codec.encode(chunk))
                else:
                    array[start : start + len(chunk)] = chunk
        else:
            self._put(f"images/{k:08d}.npy", _npy_bytes(images))
            self._put(f"ok/{k:08d}.npy", _npy_bytes(ok))
        written = [k, len(meta), int((meta["status"] == Status.OK).sum()), round(time.time(), 3)]
        self._put(f"metadata/part-{k:08d}.parquet", _parquet_bytes(meta, written))
        if not (meta["status"] == Status.DEFERRED).any():
            self._put(f"metadata/_done/{k:08d}", b"")

    def read_meta(self, k: int) -> pd.DataFrame:
        """The metadata part of written chunk ``k``."""
        fs, root = self._fs
        return pd.read_parquet(io.BytesIO(fs.cat_file(f"{root}/metadata/part-{k:08d}.parquet")))

    def _read(self, k: int) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
        """Chunk ``k`` as written: pixels and flags (writable copies), and its metadata part."""
        fs, root = self._fs
        if self.format == "zarr":
            (_, array, _), (_, flags, _), *_ = _open_arrays(self)
            start = k * self.chunk
            stop = start + self._rows(k)
            images, ok = np.asarray(array[start:stop]), np.asarray(flags[start:stop])
        else:
            images = np.array(load_npy(fs, f"{root}/images/{k:08d}.npy"))
            ok = np.array(load_npy(fs, f"{root}/ok/{k:08d}.npy"))
        return images, ok, self.read_meta(k)

    def read_settings(self) -> dict[str, Any] | None:
        """The settings an existing daskimg output was made with, or None."""
        fs, root = self._fs
        if self.format == "npy":
            try:
                return json.loads(fs.cat_file(f"{root}/{NPY_SETTINGS}"))  # type: ignore[no-any-return]
            except FileNotFoundError:
                return None
        try:
            attrs = zarr.open_group(self.path, mode="r", **self.zarr_options).attrs.asdict()
        except (FileNotFoundError, zarr.errors.NodeTypeValidationError, ValueError):
            return None
        record = attrs.get(_ATTR)
        return dict(record) if isinstance(record, dict) else None

    def write_settings(self, record: dict[str, Any]) -> None:
        if self.format == "npy":
            self._put(NPY_SETTINGS, json.dumps(record, indent=2).encode())
        else:
            zarr.open_group(self.path, mode="r+", **self.zarr_options).attrs[_ATTR] = record

    def status_counts(self, listing: Listing | None = None) -> dict[str, int]:
        """Counts by status over every written metadata file, from their footers."""
        return total_counts(self.footers(listing))

    def footers(self, listing: Listing | None = None) -> Footers:
        """Each metadata file's counts by status and its chunks' write records, read from its footer."""
        fs, _ = self._fs
        files = (listing or self.listing()).files()
        with ThreadPoolExecutor(16) as pool:  # object stores answer slowly, but many at once
            return list(pool.map(lambda path: _footer(fs, path), files))


Footers = list[tuple[dict[str, int], list[list[float]]]]  # per metadata file: counts by status, chunk records


def total_counts(footers: Footers) -> dict[str, int]:
    """Counts by status over the metadata files whose footers these are (:meth:`Output.footers`)."""
    total: Counter[str] = Counter()
    for counts, _ in footers:
        total.update(counts)
    return dict(total)


def write_times(footers: Footers) -> np.ndarray:
    """Rows of (chunk, rows, ok rows, unix time written), in time order, from the metadata files' footers
    (:meth:`Output.footers`; files written before daskimg 0.2 have no such records)."""
    table = np.array([r for _, chunks in footers for r in chunks], dtype=np.float64).reshape(-1, 4)
    return table[np.argsort(table[:, 3], kind="stable")]


def _footer(fs: fsspec.AbstractFileSystem, path: str) -> tuple[dict[str, int], list[list[float]]]:
    """The counts and chunk records a metadata file keeps in its footer; for files written before they
    did, the counts of its status column."""
    with fs.open(path, "rb") as f:
        parquet = pq.ParquetFile(f)
        metadata = parquet.schema_arrow.metadata or {}
        chunks = json.loads(metadata.get(_CHUNKS_KEY, b"[]"))
        if _COUNTS_KEY in metadata:
            return dict(json.loads(metadata[_COUNTS_KEY])), chunks
        return dict(Counter(parquet.read(columns=["status"]).column("status").to_pylist())), chunks


@functools.lru_cache(maxsize=8)
def _open_arrays(out: Output) -> tuple[tuple[str, zarr.Array[Any], ChunkCodec | None], ...]:
    """The output's arrays (images, ok, and status if it has one), each with its name and chunk codec,
    made once per worker process and output (an overwritten output at the same path has a new id, so
    its new shape and dtype are read again).

    ``write_empty_chunks``: every chunk is written whole, so zarr's check for an all-zero chunk
    (a full comparison of megabytes of pixels) is pure cost.
    """
    config = {"write_empty_chunks": True}
    arrays = []
    for name in ("images", "ok", "status"):
        try:
            array = zarr.open_array(out.path, path=name, mode="r+", config=config, **out.zarr_options)
        except FileNotFoundError:
            if name != "status":
                raise
            continue
        arrays.append((name, array, chunk_codec(array)))
    return tuple(arrays)  # cached: shared by every caller


_SHUFFLE = {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}


@dataclass(frozen=True)
class ChunkCodec:
    """Whole chunks of one array to and from their stored bytes, exactly as the array's codecs say.

    zarr copies a chunk several times on its way to and from the store: a third of a 128 px
    image's write cost and two thirds at 256 px, and a third of a whole-chunk read. The arrays
    this package creates have the chain bytes -> (blosc | zstd)?, which numcodecs encodes and
    decodes in one call; the bytes live under the chunk's key, where zarr reads them as its own.
    """

    array: zarr.Array[Any]
    compressor: Any
    byteorder: Literal["<", ">"]

    def key(self, k: int) -> str:
        """The store key of the ``k``-th chunk along the first axis, below the array's folder."""
        return str(self.array.metadata.encode_chunk_key((k,) + (0,) * (self.array.ndim - 1)))

    def encode(self, chunk: np.ndarray) -> bytes | memoryview:
        raw = np.ascontiguousarray(chunk, dtype=chunk.dtype.newbyteorder(self.byteorder))
        return bytes(self.compressor.encode(raw)) if self.compressor is not None else memoryview(raw.data).cast("B")

    @property
    def stored(self) -> np.dtype[Any]:
        """The dtype of a chunk's bytes."""
        return self.array.dtype.newbyteorder(self.byteorder)

    def buffer(self) -> np.ndarray:
        """An uninitialised whole chunk, for :meth:`decode` to decode into."""
        return np.empty(self.array.chunks, dtype=self.stored)

    def decode(self, data: bytes, rows: int, out: np.ndarray | None = None) -> np.ndarray:
        """A whole stored chunk of ``rows`` rows (the last chunk is stored padded to full size),
        decoded into ``out`` when it is given (a :meth:`buffer`, reused)."""
        if self.compressor is None:
            chunk = np.frombuffer(data, dtype=self.stored).reshape(self.array.chunks)
        else:
            reuse = out is not None and out.shape == self.array.chunks and out.dtype == self.stored
            chunk = out if reuse else self.buffer()  # type: ignore[assignment]
            self.compressor.decode(data, out=chunk)
        return chunk[:rows].astype(self.array.dtype, copy=False)


def chunk_codec(array: zarr.Array[Any]) -> ChunkCodec | None:
    """The :class:`ChunkCodec` of ``array``, or None for codec chains other than bytes -> (blosc | zstd)?."""
    codecs = getattr(array.metadata, "codecs", None)  # zarr v3 metadata only
    if not codecs or not isinstance(codecs[0], zarr.codecs.BytesCodec) or len(codecs) > 2:
        return None
    order: Literal["<", ">"] = ">" if codecs[0].endian is not None and codecs[0].endian.value == "big" else "<"
    compressor: Any = None
    if len(codecs) == 2:
        c = codecs[1]
        if isinstance(c, zarr.codecs.BloscCodec):
            compressor = numcodecs.Blosc(cname=c.cname.value, clevel=c.clevel, shuffle=_SHUFFLE[c.shuffle.value],
                                         blocksize=c.blocksize)
        elif isinstance(c, zarr.codecs.ZstdCodec):
            compressor = numcodecs.Zstd(level=c.level, checksum=c.checksum)
        else:
            return None
    return ChunkCodec(array, compressor, order)


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def _parquet_bytes(meta: pd.DataFrame, written: list[float]) -> bytes:
    table = pa.Table.from_pandas(meta, preserve_index=False)
    fields = [META_SCHEMA.field(f.name) if f.name in META_SCHEMA.names else _carried(f) for f in table.schema]
    table = table.cast(pa.schema(fields, metadata=table.schema.metadata))  # keep pandas' dtypes (Int32 ...)
    return _table_bytes(table, Counter(meta["status"]), [written])


def _table_bytes(table: pa.Table, counts: Counter[str], chunks: list[list[float]]) -> bytes:
    """Parquet bytes of ``table``, with its counts by status and its chunks' write records in the footer."""
    metadata = {**(table.schema.metadata or {}), _COUNTS_KEY: json.dumps(dict(counts)).encode(),
                _CHUNKS_KEY: json.dumps(chunks).encode()}
    buf = io.BytesIO()
    pq.write_table(table.replace_schema_metadata(metadata), buf)
    return buf.getvalue()


def _carried(f: pa.Field) -> pa.Field:
    # A carried column that is all-null in one part must not change type between parts.
    return pa.field(f.name, pa.string()) if pa.types.is_null(f.type) or pa.types.is_large_string(f.type) else f


def load_npy(fs: fsspec.AbstractFileSystem, path: str) -> np.ndarray:
    if isinstance(fs, LocalFileSystem):
        return np.asarray(np.load(path, mmap_mode="r"))
    return np.asarray(np.load(io.BytesIO(fs.cat_file(path))))
