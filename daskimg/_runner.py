"""The only place that builds the Dask graph: chunks streamed through a cluster, a window at a time.

Per output chunk ``k`` the run submits three named tasks, so the dashboard's task stream
shows each stage::

    fetch-<token>-k  -->  preprocess-<token>-k  -->  write-<token>-k

``fetch`` reads the chunk's rows from the input blocks it spans (each worker keeps the last
blocks it read, see :mod:`daskimg.sources`) and keeps many requests in flight inside one
task; it depends on no other task, so the scheduler hands it to whichever worker has a
free thread. ``preprocess`` decodes and resizes in the same worker, where the bytes
already are; ``write`` stores the chunk from there. Only chunk reports (counts) come back.

**Streaming.** The run never holds more than a window of chunks: about
``daskimg.chunks-per-thread`` (2) per worker thread of the cluster *now*, read again every
second, so workers that join get chunks at once and workers that leave shrink it. The
next chunk is submitted as one is written. So client memory, the scheduler's task count
and the time to the first written chunk do not depend on the length of the table.

**Deferred rows.** A chunk written with rows ``deferred`` (a fetch stopped waiting for its
slowest URLs) gets a ``refetch`` task that fetches them again and writes them in (see
:mod:`daskimg._refetch`), outside the window: it only waits on the network.

**Compaction.** Once every chunk of a group of chunks is done, a ``compact`` task merges
their metadata parts into one file (see :meth:`daskimg.output.Output.compact`).

**Stopping.** The first SIGINT or SIGTERM stops submitting chunks: chunks still fetching
are cancelled, chunks whose bytes are fetched are decoded and written (for at most
``GRACE`` seconds). A second signal aborts at once. Either way the run raises
:class:`daskimg.errors.Interrupted`, and the next run with the same settings resumes.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import numpy as np
from dask.typing import Key
from distributed import Client, Future, as_completed

from . import _config
from ._refetch import refetch_deferred
from ._signals import stop_signals_to
from ._stages import FetchedPartition, fetch_partition, preprocess_partition
from ._types import ImagePartition, Status
from .cluster import lost_a_worker, stalled_fetch
from .errors import Interrupted
from .options import FetchOptions, PreprocessOptions
from .output import ChunkReport, Listing, Output
from .progress import Progress
from .sources import Block, Source, read_rows

__all__ = ["GRACE", "Stop", "Window", "chunks_per_thread", "count_rows", "stream_chunks"]

log = logging.getLogger(__name__)

GRACE = 10.0  # seconds a stopping run waits for chunks whose bytes are fetched
_POLL = 0.02  # seconds between looks at the futures (signals land in between)


class Stop:
    """SIGINT and SIGTERM during a run: the first asks it to finish, the second to abort.

    The handlers are installed only while :meth:`handling` is entered, on the main thread
    (elsewhere signals do not reach Python code), and the previous ones are put back after.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self.abort = False
        self.streaming = False  # before the chunks stream, a signal interrupts at once: nothing to save

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            self.abort = True
            return
        self.signum = signum
        if not self.streaming:
            raise Interrupted(signum)

    @contextlib.contextmanager
    def handling(self) -> Iterator[Stop]:
        with stop_signals_to(self._handle):
            yield self

    def check(self) -> None:
        """Raise :class:`Interrupted` if a signal came."""
        if self.signum is not None:
            raise Interrupted(self.signum)


def chunks_per_thread() -> float:
    """``daskimg.chunks-per-thread`` (default 2): the chunks in flight per worker thread (see the module)."""
    return _config.positive("daskimg.chunks-per-thread", 2)


class Window:
    """How many chunks may be in flight: ``per_thread`` per worker thread of the cluster, read again every second."""

    def __init__(self, client: Client, per_thread: float | None = None, every: float = 1.0) -> None:
        self.client = client
        self.per_thread = chunks_per_thread() if per_thread is None else per_thread
        self.every = every
        self._size = 0
        self._checked = -math.inf

    def size(self) -> int:
        now = time.monotonic()
        if now - self._checked >= self.every:
            self._checked = now
            threads = sum(self.client.nthreads().values())
            self._size = max(1, math.ceil(self.per_thread * threads))
        return self._size


def _poll(running: as_completed) -> list[tuple[Future[Any], Any]]:
    """What completed since the last look; sleeps a little when nothing did."""
    batch: list[tuple[Future[Any], Any]] = running.next_batch(block=False)
    if not batch:
        time.sleep(_POLL)  # a signal ends the sleep; its handler has run by the next look
    return batch


def count_rows(client: Client, source: Source, stop: Stop) -> Source:
    """``source`` counted on the cluster, one task per file or text block, a window of them at a time."""

    token = uuid.uuid4().hex[:12]

    def mapper(fn: Callable[[Block], Any], blocks: Sequence[Block]) -> Iterable[Any]:
        results: list[Any] = [None] * len(blocks)
        window = Window(client, per_thread=4)
        pending = iter(enumerate(blocks))
        keys: dict[Key, int] = {}
        running = as_completed(with_results=True, raise_errors=False)
        try:
            while True:
                while running.count() < window.size():
                    i, block = next(pending, (-1, None))
                    if block is None:
                        break
                    future = client.submit(fn, block, pure=False, key=f"count-{token}-{i}")
                    keys[future.key] = i
                    running.add(future)
                if running.is_empty():
                    return results
                for future, result in _poll(running):
                    if future.status == "error":
                        raise result[1]
                    results[keys[future.key]] = result
                stop.check()
        finally:
            _cancel(client, list(running.futures))  # count tasks have no dependents

    return source.count(mapper)


@dataclass
class _Chunk:
    """A chunk in flight: its write, and its fetch until that is done (then its bytes are in, and a
    stop lets the chunk be written). The fetch is let go of as soon as it is done, so that the
    bodies are freed once preprocessed, as if the client had never held them."""

    k: int
    write: Future[Any]
    fetch: Future[Any] | None

    def __post_init__(self) -> None:
        assert self.fetch is not None
        self.fetch.add_done_callback(self._fetched)

    def _fetched(self, future: Future[Any]) -> None:  # on the client's event loop thread
        self.fetch = None

    @property
    def fetching(self) -> bool:
        return self.fetch is not None


@dataclass
class Outcome:
    """What streaming did: rows written, and chunks not written with the reason."""

    processed: int = 0
    failed: dict[int, str] = field(default_factory=dict)


def _preprocess(fetched: FetchedPartition, opts: PreprocessOptions) -> ImagePartition:
    """The preprocess task: one forked child per image if this chunk already cost a worker its life."""
    return preprocess_partition(fetched, opts, isolate=lost_a_worker())


def _fetch(pieces: list[Any], start: int, url_col: str, opts: FetchOptions) -> FetchedPartition:
    """The fetch task: read a chunk's rows (see :func:`daskimg.sources.read_rows`), then fetch their URLs;
    its slowest ones may come back deferred."""
    return fetch_partition(read_rows(pieces, start, url_col), url_col, opts, defer=True, stalled=stalled_fetch)


class _Graph:
    """Submits chunks' tasks, in one message per batch of chunks."""

    def __init__(self, client: Client, source: Source, chunk: int, output: Output, fetch: FetchOptions,
                 preprocess: PreprocessOptions, token: str) -> None:
        self.client, self.source, self.chunk, self.output = client, source, chunk, output
        self.fetch_options, self.preprocess_options, self.token = fetch, preprocess, token
        self.partitions: dict[int, Future[Any]] = {}  # a Dask DataFrame input's partitions, computed as needed

    def _pieces(self, start: int, stop: int) -> list[Any]:
        pieces: list[Any] = self.source.pieces(start, stop)
        if self.source.frame is None:
            return pieces  # the task reads its rows itself: it depends on no other task
        first = pieces[0][0].start
        for p in [p for p in self.partitions if p < first]:
            del self.partitions[p]  # no later chunk needs it
        for block, _, _, _ in pieces:
            if block.start not in self.partitions:
                self.partitions[block.start] = self.client.compute(self.source.frame.partitions[block.start])
        return [(self.partitions[block.start], n, lo, end) for block, n, lo, end in pieces]

    def _add(self, k: int, dsk: dict[str, Any]) -> tuple[str, str]:
        """Chunk ``k``'s three tasks into ``dsk``; returns the keys of its fetch and its write."""
        start = k * self.chunk
        pieces = self._pieces(start, min(start + self.chunk, self.source.n_rows))
        fetch, images, write = (f"{stage}-{self.token}-{k}" for stage in ("fetch", "preprocess", "write"))
        dsk[fetch] = (_fetch, pieces, start, self.source.url_col, self.fetch_options)
        dsk[images] = (_preprocess, fetch, self.preprocess_options)
        dsk[write] = (self.output.write, images)
        return fetch, write

    def submit(self, chunks: Sequence[int]) -> list[_Chunk]:
        """The tasks of ``chunks`` in one graph: one message to the scheduler."""
        dsk: dict[str, Any] = {}
        keys = [self._add(k, dsk) for k in chunks]
        wanted = [key for pair in keys for key in pair]
        futures = dict(zip(wanted, self.client.get(dsk, wanted, sync=False), strict=True))
        return [_Chunk(k, futures[write], futures[fetch]) for k, (fetch, write) in zip(chunks, keys, strict=True)]

    def refetch(self, k: int) -> Future[Any]:
        return self.client.submit(refetch_deferred, self.output, k, self.fetch_options, self.preprocess_options,
                                  key=f"refetch-{self.token}-{k}")

    def compact(self, group: int) -> Future[Any]:
        return self.client.submit(self.output.compact, group, key=f"compact-{self.token}-{group}")


def stream_chunks(
    client: Client,
    source: Source,
    *,
    chunk: int,
    output: Output,
    done: np.ndarray,
    fetch: FetchOptions,
    preprocess: PreprocessOptions,
    token: str,
    bar: Progress,
    stop: Stop,
    window: Window,
    only: np.ndarray | None = None,
    listing: Listing | None = None,
) -> Outcome:
    """Fetch, preprocess and write every chunk not ``done`` (a bool per chunk, updated here), or of those
    the ones ``only`` marks, keeping ``window`` chunks in flight; ``listing`` is the output's, if the caller has
    it. See the module."""
    graph = _Graph(client, source, chunk, output, fetch, preprocess, token)
    todo: Iterator[int] = (int(k) for k in np.flatnonzero(~done if only is None else ~done & only))
    outcome = Outcome()
    inflight: dict[Key, _Chunk] = {}  # write key -> chunk
    side: dict[Key, tuple[str, int]] = {}  # refetch / compact key -> (what, chunk or group)
    running = as_completed(with_results=True, raise_errors=False)
    compacting = set(output.groups_to_compact(done, listing))
    for g in compacting:
        _add(running, side, graph.compact(g), "compact", g)
    exhausted = False
    finishing_until: float | None = None
    stop.streaming = True
    try:
        while True:
            if stop.abort:
                break
            if stop.requested and finishing_until is None:
                finishing_until = time.monotonic() + GRACE
                still_fetching = [key for key, c in inflight.items() if c.fetching]
                refetching = [f for f in running.futures if side.get(f.key, ("",))[0] == "refetch"]
                for f in refetching:
                    del side[f.key]  # their chunks stay undone: the next run redoes them
                _cancel(client, [inflight.pop(key).write for key in still_fetching] + refetching)
                bar.finishing(len(inflight))
            if finishing_until is not None:
                if time.monotonic() > finishing_until:
                    break
            elif not exhausted:
                room = window.size() - len(inflight)
                batch = list(itertools.islice(todo, max(0, room)))
                exhausted = len(batch) < room
                for c in graph.submit(batch) if batch else ():
                    inflight[c.write.key] = c
                    running.add(c.write)
            if running.is_empty():
                break
            for future, result in _poll(running):
                key = future.key
                if key in side:
                    what, n = side.pop(key)
                    if what == "refetch":
                        _chunk_result(future, result, n, outcome, bar, done, refetch=True)
                        _maybe_compact(graph, output, done, n, running, side, compacting, stop)
                    elif future.status == "error":
                        log.warning("could not compact the metadata of chunk group %d: %s", n, result[1])
                    continue
                written = inflight.pop(key, None)
                if written is None:
                    continue
                report = _chunk_result(future, result, written.k, outcome, bar, done)
                if report is not None and report.counts.get(Status.DEFERRED) and not stop.requested:
                    _add(running, side, graph.refetch(written.k), "refetch", written.k)
                elif report is not None:
                    _maybe_compact(graph, output, done, written.k, running, side, compacting, stop)
    finally:
        stop.streaming = False
        _cancel(client, list(running.futures))
        running.clear()
        inflight.clear()
    return outcome


def _cancel(client: Client, leaves: list[Future[Any]]) -> None:
    """Cancel futures that no other task depends on (writes, refetches, compactions).

    Their dependencies are released with them once the client holds no future of theirs
    (a task running on a worker finishes there, and its result is dropped). Cancelling a
    future whose dependents the client has let go of trips an assertion in the scheduler
    (``stimulus_cancel``, distributed 2026.8), so no inner future is cancelled directly.
    """
    if leaves:
        client.cancel(leaves)


def _add(running: as_completed, side: dict[Key, tuple[str, int]], future: Future[Any], what: str, n: int) -> None:
    side[future.key] = (what, n)
    running.add(future)


def _chunk_result(future: Future[Any], result: Any, k: int, outcome: Outcome, bar: Progress, done: np.ndarray,
                  *, refetch: bool = False) -> ChunkReport | None:
    """Count a finished write or refetch; a failed one is listed, and so is one cancelled from elsewhere
    (the run's own cancellations are no longer in flight when they come back).

    A refetch fetches without deferring, so the chunk is done after it; a write is done
    unless rows of it were deferred.
    """
    if future.status == "error":
        error = result[1]
        outcome.failed[k] = f"{type(error).__name__}: {error}"
        return None
    if not isinstance(result, ChunkReport):  # cancelled: the chunk is not written
        outcome.failed[k] = f"{type(result).__name__}: cancelled"
        return None
    outcome.processed += result.rows
    bar.update(result.rows, result.counts)
    done[k] = refetch or not result.counts.get(Status.DEFERRED)
    return result


def _maybe_compact(graph: _Graph, output: Output, done: np.ndarray, k: int, running: as_completed,
                   side: dict[Key, tuple[str, int]], compacting: set[int], stop: Stop) -> None:
    group = output.group_of(k)
    if stop.requested or group in compacting or not output.group_done(group, done):
        return
    compacting.add(group)
    _add(running, side, graph.compact(group), "compact", group)
