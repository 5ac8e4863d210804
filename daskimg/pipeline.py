"""The lazy, chainable job and the one place that builds the Dask graph.

    read_urls(table) -> Job --.fetch(...)--> Job --.preprocess(...)--> Job --.to_zarr(path)--> Summary

Per output chunk k the graph holds three named tasks, so the dashboard's task stream
shows each stage::

    source partition k --> fetch-<token>, k --> preprocess-<token>, k --> write-<token>, k

``fetch`` keeps many requests in flight on a thread pool inside the worker process;
``preprocess`` decodes and resizes (CPU) in the same worker, where the fetched bytes
already are; ``write`` stores the chunk from there, so pixels never travel between
processes. Only chunk reports (counts) come back to the client.

A fetch stops waiting for its chunk's slowest URLs (``FetchOptions.defer_after``); for a
chunk written with such ``deferred`` rows, the run adds a ``refetch-<token>-k`` task that
fetches them again and writes them in (see :mod:`daskimg.refetch`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import dask.dataframe as dd
import pandas as pd
from dask.base import tokenize
from dask.delayed import Delayed, delayed
from distributed import Client, as_completed

from .batch import FetchedPartition, ImagePartition, fetch_partition, preprocess_partition
from .cluster import lost_a_worker, run_client
from .config import DEFAULT_COMPRESSION, FetchOptions, PreprocessOptions, options_dict
from .errors import ConfigError
from .fetch import DEFERRED
from .refetch import refetch_deferred
from .report import Progress, Summary
from .sources import Source, read_source
from .store import ChunkReport, Output, OutputFormat, prepare_output

__all__ = ["CHUNK_BYTES", "Job", "auto_chunk", "read_urls"]

log = logging.getLogger(__name__)


# A chunk is the unit of work and of memory: a worker holds a few at once (bodies, pixels, the
# compressed copy). Sized by bytes, not rows, so that 256 px or float32 outputs stay in bounds.
CHUNK_BYTES = 12 * 2**20
CHUNK_ROWS = (16, 256)


def auto_chunk(opts: PreprocessOptions) -> int:
    """Rows per chunk when none is given: a power of two whose output pixels come to about 12 MiB, 16 to 256.

    256 rows at 128 px, 64 at 224 px and 256 px, 16 at 224 px float32.
    """
    per_image = math.prod(opts.shape) * (4 if opts.dtype == "float32" else 1)
    rows: int = 2 ** int(math.log2(max(1, CHUNK_BYTES // per_image)))
    return min(max(rows, CHUNK_ROWS[0]), CHUNK_ROWS[1])


def read_urls(
    table: str | Sequence[str] | pd.DataFrame | dd.DataFrame,
    *,
    url_col: str = "url",
    chunk: int | None = None,
    input_format: str | None = None,
) -> Job:
    """Start a job from a URL table: a path, glob or directory (any fsspec URL), a list, or a DataFrame.

    Parameters
    ----------
    table
        ``.txt`` / ``.csv`` / ``.tsv`` / ``.jsonl`` / ``.parquet`` (optionally ``.gz``) files,
        a list of URLs, or a pandas / Dask DataFrame.
    url_col
        Column holding the URLs; every other column is carried into the metadata.
    chunk
        Rows per partition and per output chunk; by default :func:`auto_chunk` sizes it to
        the output shape (set later with :meth:`Job.preprocess`).
    input_format
        Override the format guessed from the file suffix.
    """
    source = read_source(table, url_col=url_col, chunk=auto_chunk(PreprocessOptions()) if chunk is None else chunk,
                         input_format=input_format)
    return Job(source, chunk=chunk)


def _preprocess(fetched: FetchedPartition, opts: PreprocessOptions) -> ImagePartition:
    """The preprocess task: one forked child per image if this chunk already cost a worker its life."""
    return preprocess_partition(fetched, opts, isolate=lost_a_worker())


@dataclass(frozen=True)
class Job:
    """A lazy description of a run; each method returns a new job, nothing runs until ``to_zarr`` / ``to_npy``."""

    source: Source
    fetch_options: FetchOptions = field(default_factory=FetchOptions)
    preprocess_options: PreprocessOptions = field(default_factory=PreprocessOptions)
    chunk: int | None = None  # rows per chunk; None: auto_chunk(preprocess_options)

    @functools.cached_property
    def parts(self) -> Source:
        """The source split into this job's chunks."""
        return self.source.rechunk(auto_chunk(self.preprocess_options) if self.chunk is None else self.chunk)

    def __repr__(self) -> str:
        p = self.preprocess_options
        return (f"<daskimg.Job {self.parts.n_rows} rows from {self.parts.name} in {self.parts.n_chunks} chunks "
                f"of {self.parts.chunk} -> {p.height}x{p.width} {p.mode} {p.dtype}>")

    def fetch(self, **options: Any) -> Job:
        """Set download options (see :class:`daskimg.FetchOptions`)."""
        return dataclasses.replace(self, fetch_options=dataclasses.replace(self.fetch_options, **options))

    def preprocess(self, size: int | None = None, **options: Any) -> Job:
        """Set decode/resize options (see :class:`daskimg.PreprocessOptions`); ``size`` sets height and width."""
        if size is not None:
            options.setdefault("height", size)
            options.setdefault("width", size)
        return dataclasses.replace(self, preprocess_options=dataclasses.replace(self.preprocess_options, **options))

    def settings(self, format: OutputFormat, compression: str) -> dict[str, Any]:
        """What the output depends on; a re-run resumes only when these match."""
        return {
            "input": self.parts.name,
            "url_col": self.parts.url_col,
            "rows": self.parts.n_rows,
            "chunk": self.parts.chunk,
            "format": format,
            "compression": compression,
            "preprocess": options_dict(self.preprocess_options),
        }

    def prepare(self, path: str, *, format: OutputFormat = "zarr", compression: str = DEFAULT_COMPRESSION,
                overwrite: bool = False) -> Output:
        """Create (or reopen, to resume) the output at ``path``."""
        p = self.preprocess_options
        dims = ("channel", "y", "x") if p.channels_first else ("y", "x", "channel")
        return prepare_output(
            path, format=format, n_rows=self.parts.n_rows, chunk=self.parts.chunk, shape=p.shape, dtype=p.dtype,
            dim_names=dims, compression=compression, settings=self.settings(format, compression), overwrite=overwrite,
        )

    def _token(self, output: Output) -> str:
        source = self.parts
        return tokenize(source.name, source.n_rows, source.chunk, self.fetch_options, self.preprocess_options,
                        output.path)

    def graph(self, output: Output, chunks: Sequence[int] | None = None) -> list[Delayed]:
        """One ``write`` task per chunk (all chunks by default), each returning a ChunkReport.

        A chunk whose report counts ``deferred`` rows is not done until
        :func:`daskimg.refetch.refetch_deferred` has run for it, as :meth:`run` does.
        """
        source = self.parts
        chunks = range(source.n_chunks) if chunks is None else chunks
        parts = source.frame.to_delayed()
        token = self._token(output)
        writes = []
        for k in chunks:
            fetched = delayed(fetch_partition, pure=True)(
                parts[k], source.url_col, self.fetch_options, defer=True, dask_key_name=(f"fetch-{token}", k))
            images = delayed(_preprocess, pure=True)(
                fetched, self.preprocess_options, dask_key_name=(f"preprocess-{token}", k))
            writes.append(delayed(output.write, pure=True)(images, dask_key_name=(f"write-{token}", k)))
        return writes

    def to_zarr(self, path: str, **kwargs: Any) -> Summary:
        """Run the job into a zarr v3 group at ``path``; see :meth:`run` for the options."""
        return self.run(path, format="zarr", **kwargs)

    def to_npy(self, path: str, **kwargs: Any) -> Summary:
        """Run the job into chunked ``.npy`` files under ``path``; see :meth:`run` for the options."""
        return self.run(path, format="npy", **kwargs)

    def run(
        self,
        path: str,
        *,
        format: OutputFormat = "zarr",
        compression: str = DEFAULT_COMPRESSION,
        overwrite: bool = False,
        client: Client | None = None,
        scheduler: str | None = None,
        workers: int | None = None,
        threads_per_worker: int = 2,
        dashboard_address: str | None = ":8787",
        progress: bool = True,
        on_client: Callable[[Client], None] | None = None,
    ) -> Summary:
        """Run the job: fetch, preprocess and write every chunk not yet done.

        Uses ``client``, else a client to ``scheduler``, else the active client, else a
        local cluster started (and closed) for this run. Chunks already done in an
        existing output with the same settings are skipped. Returns a :class:`Summary`;
        chunks that could not be written are listed in ``Summary.failed_chunks``.
        ``on_client`` is called with the client once it is connected (the CLI prints the
        dashboard link from there).
        """
        if threads_per_worker < 1:
            raise ConfigError(f"threads_per_worker must be >= 1, got {threads_per_worker}")
        output = self.prepare(path, format=format, compression=compression, overwrite=overwrite)
        done = output.done_chunks()
        todo = [k for k in range(self.parts.n_chunks) if k not in done]
        start = time.monotonic()
        bar = Progress(self.parts.n_rows, enabled=progress)
        if done:  # a resumed run starts the bar where the last one stopped
            bar.update(sum(min(self.parts.chunk, self.parts.n_rows - k * self.parts.chunk) for k in done),
                       output.status_counts())
        failed: dict[int, str] = {}
        dashboard = None
        processed = 0
        # With nothing to do, no cluster. Else the final count runs inside the cluster's block: a local
        # cluster's record of the pages a run uses (daskimg.pages) then covers its metadata reading.
        cluster = run_client(scheduler, client=client, workers=workers, threads_per_worker=threads_per_worker,
                             dashboard_address=dashboard_address) if todo else contextlib.nullcontext()
        with cluster as c:
            if c is not None:
                dashboard = c.dashboard_link
                if on_client is not None:
                    on_client(c)
                futures = c.compute(self.graph(output, todo))
                keys = {f.key: k for f, k in zip(futures, todo, strict=True)}
                token = self._token(output)
                try:
                    # Results come with the iteration: this thread then waits only inside as_completed,
                    # where Ctrl-C is clean. Interrupted inside Future.result(), distributed's sync()
                    # can log a NameError traceback from its cancel callback (distributed 2026.8).
                    running = as_completed(futures, with_results=True, raise_errors=False)
                    for future, result in running:
                        if future.status == "error":
                            error = future.exception()
                            failed[keys[future.key]] = f"{type(error).__name__}: {error}"
                            continue
                        if isinstance(result, BaseException):  # cancelled from elsewhere
                            raise result
                        report: ChunkReport = result
                        processed += report.rows
                        bar.update(report.rows, report.counts)
                        if report.rows and report.counts.get(DEFERRED):
                            late = c.submit(refetch_deferred, output, report.chunk, self.fetch_options,
                                            self.preprocess_options, key=f"refetch-{token}-{report.chunk}")
                            keys[late.key] = report.chunk
                            futures.append(late)
                            running.add(late)
                finally:
                    c.cancel(futures)
            bar.draw(final=True)
            counts = _count_statuses(output)
        return Summary(path, self.parts.n_rows, counts, time.monotonic() - start, processed,
                       len(done), failed, dashboard)


def _count_statuses(output: Output) -> dict[str, int]:
    """Rows per status over the whole output, also kept in its settings."""
    counts = output.status_counts()
    record = output.read_settings() or {}
    output.write_settings({**record, "counts": counts})
    return counts
