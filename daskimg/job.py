"""The lazy, chainable job: what to run, checked before anything runs.

    read_urls(table) -> Job --.fetch(...)--> Job --.preprocess(...)--> Job --.to_zarr(path)--> Summary

A job is a plan of the input (:func:`daskimg.sources.plan_source`: files and blocks, no
rows read) and the options of each stage. :meth:`Job.run` counts the input's rows on the
cluster, creates or reopens the output, and streams the chunks not done yet through the
cluster (:mod:`daskimg._runner`, the one place that builds the Dask graph).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Unpack

import numpy as np
import pandas as pd
from dask.base import tokenize
from distributed import Client

from ._runner import Stop, Window, chunks_per_thread, count_rows, stream_chunks
from .cluster import run_client
from .errors import ConfigError
from .options import (
    DEFAULT_COMPRESSION,
    FetchChanges,
    FetchOptions,
    PreprocessChanges,
    PreprocessOptions,
    options_dict,
    replace_options,
)
from .output import Output, OutputFormat, check_output_location, prepare_output
from .progress import Progress, Summary
from .sources import Source, plan_source

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
    table: str | Sequence[str] | pd.DataFrame | Any,
    *,
    url_col: str = "url",
    chunk: int | None = None,
    input_format: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> Job:
    """Start a job from a URL table: a path, glob or directory (any fsspec URL), a list, or a DataFrame.

    Only the file listing and the first file's header or schema are read here; the rows
    are counted and read by tasks on the cluster when the job runs.

    Parameters
    ----------
    table
        ``.txt`` / ``.csv`` / ``.tsv`` / ``.jsonl`` / ``.parquet`` (optionally ``.gz``) files,
        a list of URLs, or a pandas / Dask DataFrame.
    url_col
        Column holding the URLs; every other column is carried into the metadata.
    chunk
        Rows per output chunk; by default :func:`auto_chunk` sizes it to the output shape
        (set later with :meth:`Job.preprocess`).
    input_format
        Override the format guessed from the file suffix.
    storage_options
        fsspec's options for the files of ``table`` (credentials, endpoint ...: for S3,
        e.g. ``{"key": ..., "secret": ..., "endpoint_url": ...}``). They go with the tasks
        to every worker, also of a cluster started elsewhere, and are never shown.
    """
    if chunk is not None and chunk <= 0:
        raise ConfigError(f"chunk must be a positive number of rows, got {chunk}")
    source = plan_source(table, url_col=url_col, input_format=input_format, storage_options=storage_options)
    return Job(source, chunk=chunk)


@dataclass(frozen=True)
class Job:
    """A lazy description of a run; each method returns a new job, nothing runs until ``to_zarr`` / ``to_npy``."""

    source: Source
    fetch_options: FetchOptions = field(default_factory=FetchOptions)
    preprocess_options: PreprocessOptions = field(default_factory=PreprocessOptions)
    chunk: int | None = None  # rows per chunk; None: auto_chunk(preprocess_options)

    @property
    def rows_per_chunk(self) -> int:
        """Rows per output chunk: the one given, else :func:`auto_chunk` of the output shape."""
        return auto_chunk(self.preprocess_options) if self.chunk is None else self.chunk

    def __repr__(self) -> str:
        p, source = self.preprocess_options, self.source
        rows = f"{source.n_rows} rows in {-(-source.n_rows // self.rows_per_chunk)} chunks" if source.counted else (
            f"{len(source.blocks)} input blocks, in chunks")
        return (f"<daskimg.Job {rows} of {self.rows_per_chunk} from {source.name} -> "
                f"{p.height}x{p.width} {p.mode} {p.dtype}>")

    def fetch(self, **options: Unpack[FetchChanges]) -> Job:
        """Set download options (see :class:`daskimg.FetchOptions`).

        Raises
        ------
        ConfigError
            For a name that is not an option, or a value out of range.
        """
        return dataclasses.replace(self, fetch_options=replace_options(self.fetch_options, options))

    def preprocess(self, size: int | None = None, **options: Unpack[PreprocessChanges]) -> Job:
        """Set decode/resize options (see :class:`daskimg.PreprocessOptions`); ``size`` sets height and width.

        Raises
        ------
        ConfigError
            For a name that is not an option, or a value out of range.
        """
        if size is not None:
            options.setdefault("height", size)
            options.setdefault("width", size)
        return dataclasses.replace(self, preprocess_options=replace_options(self.preprocess_options, options))

    def settings(self, format: OutputFormat, compression: str) -> dict[str, Any]:
        """What the output depends on; a re-run resumes only when these match (the rows must be counted)."""
        return {
            "input": self.source.name,
            "url_col": self.source.url_col,
            "rows": self.source.n_rows,
            "chunk": self.rows_per_chunk,
            "format": format,
            "compression": compression,
            "preprocess": options_dict(self.preprocess_options),
        }

    def prepare(self, path: str, *, format: OutputFormat = "zarr", compression: str = DEFAULT_COMPRESSION,
                overwrite: bool = False, storage_options: Mapping[str, Any] | None = None) -> Output:
        """Create (or reopen, to resume) the output at ``path``; the job's rows must be counted."""
        p = self.preprocess_options
        dims = ("channel", "y", "x") if p.channels_first else ("y", "x", "channel")
        return prepare_output(
            path, format=format, n_rows=self.source.n_rows, chunk=self.rows_per_chunk, shape=p.shape, dtype=p.dtype,
            dim_names=dims, compression=compression, settings=self.settings(format, compression), overwrite=overwrite,
            storage_options=storage_options,
        )

    def counted(self) -> Job:
        """This job with its input's rows counted here, in this process (a run counts them on the cluster)."""
        return dataclasses.replace(self, source=self.source.count())

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
        chunks: Sequence[int] | None = None,
        storage_options: Mapping[str, Any] | None = None,
    ) -> Summary:
        """Run the job: count the rows, then fetch, preprocess and write every chunk not yet done.

        Uses ``client``, else a client to ``scheduler``, else the active client, else a
        local cluster started (and closed) for this run. Chunks already done in an
        existing output with the same settings are skipped; ``chunks`` limits the run to
        those chunk numbers. Returns a :class:`Summary`; chunks that could not be written
        are listed in ``Summary.failed_chunks``. ``on_client`` is called with the client
        once it is connected (the CLI prints the dashboard link from there).
        ``storage_options`` are fsspec's options for ``path`` (see :func:`read_urls`).

        Raises
        ------
        daskimg.errors.Interrupted
            On SIGINT or SIGTERM (in the main thread): the first lets the chunks whose
            bytes are fetched be written, a second stops at once. Run again to resume.
        """
        if threads_per_worker < 1:
            raise ConfigError(f"threads_per_worker must be >= 1, got {threads_per_worker}")
        per_thread = chunks_per_thread()
        # Before a cluster starts for nothing (the command's own cluster is already starting by now: it
        # imports daskimg while the workers spawn).
        check_output_location(path, storage_options)
        start = time.monotonic()
        stop = Stop()
        with stop.handling(), run_client(scheduler, client=client, workers=workers,
                                         threads_per_worker=threads_per_worker,
                                         dashboard_address=dashboard_address) as c:
            if on_client is not None:
                on_client(c)
            job = dataclasses.replace(self, source=count_rows(c, self.source, stop))
            output = job.prepare(path, format=format, compression=compression, overwrite=overwrite,
                                 storage_options=storage_options)
            with output.locked():  # one run at a time: a second one would remove this one's files
                output.remove_leftovers()  # of writers killed in an earlier run
                listing = output.listing()
                done = output.done_chunks(listing)
                resumed = int(done.sum())
                only = None if chunks is None else np.isin(np.arange(output.n_chunks),
                                                           np.asarray(chunks, dtype=np.int64))
                bar = Progress(output.n_rows, enabled=progress)
                if resumed:  # a resumed run starts the bar where the last one stopped
                    bar.resume(_rows_in(output, done), output.status_counts(listing))
                outcome = stream_chunks(
                    c, job.source, chunk=output.chunk, output=output, done=done, fetch=self.fetch_options,
                    preprocess=self.preprocess_options, token=job._token(output), bar=bar, stop=stop, only=only,
                    listing=listing, window=Window(c, per_thread),
                )
                bar.draw(final=True)
                stop.check()
                counts = _count_statuses(output)
                output.remove_leftovers()  # of workers lost during this run; every write has come back
            dashboard = c.dashboard_link
        return Summary(path, output.n_rows, counts, time.monotonic() - start, outcome.processed, resumed,
                       outcome.failed, dashboard)

    def _token(self, output: Output) -> str:
        return tokenize(self.source.name, self.source.n_rows, output.chunk, self.fetch_options,
                        self.preprocess_options, output.path, output.id)


def _rows_in(output: Output, done: np.ndarray) -> int:
    """Rows of the chunks marked in ``done`` (the last chunk may be short)."""
    rows = int(done.sum()) * output.chunk
    return rows - (output.n_chunks * output.chunk - output.n_rows if done[-1] else 0)


def _count_statuses(output: Output) -> dict[str, int]:
    """Rows per status over the whole output, also kept in its settings."""
    counts = output.status_counts()
    record = output.read_settings() or {}
    output.write_settings({**record, "counts": counts})
    return counts
