"""Read an output for training: batches of usable rows, shuffled, sharded, a whole chunk at a time.

The pixels are stored decoded and of one shape, so training reads them without decoding
anything. Reading a row alone would decompress its whole chunk; this reader reads whole
chunks, in an order shuffled per epoch, mixes the rows of several chunks in a shuffle
buffer, drops failed rows, and hands out batches::

    reader = daskimg.ImageReader("out.zarr", batch_size=256, seed=0)
    for epoch in range(10):
        reader.set_epoch(epoch)
        for images, index in reader:          # numpy: (256, H, W, 3) uint8, (256,) row numbers
            ...

Sharding is by chunk: in each epoch the shuffled chunks are dealt out to every (rank, worker)
pair, so across all of them each usable row is seen exactly once. With PyTorch,
:meth:`ImageReader.to_torch` gives an ``IterableDataset`` that finds its DataLoader worker and
its distributed rank itself; torch is never needed otherwise.
"""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from queue import Empty, SimpleQueue
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from .errors import ConfigError
from .output import locate_output

if TYPE_CHECKING:
    from torch.utils.data import IterableDataset

__all__ = ["Batch", "ImageReader"]


class Batch(NamedTuple):
    """Images of usable rows and their row numbers in the input (to join captions, labels ...)."""

    images: Any  # numpy.ndarray, or torch.Tensor from to_torch()
    index: Any


class ImageReader:
    """Batches of an output's usable rows, for training.

    Parameters
    ----------
    path
        A daskimg output (zarr or npy), local or any fsspec URL; it may still be being written:
        chunks not written yet have no usable rows.
    batch_size
        Rows a batch; the last batch of an epoch may be smaller unless ``drop_last``.
    shuffle
        Shuffle the chunk order per epoch, and the rows within a buffer of ``shuffle_chunks`` chunks.
    shuffle_chunks
        Chunks mixed at once. Memory: about twice ``shuffle_chunks`` x rows a chunk x bytes an image.
    seed
        The same seed, epoch and sharding give the same batches.
    dtype, mean, std
        ``"float32"`` scales uint8 pixels to [0, 1]; ``mean`` and ``std`` (one value or one per
        channel, on that scale) then normalise them. Default: the pixels as stored.
    channels_first
        Give (N, C, H, W) batches (PyTorch's layout). Default: as stored.
    rank, world_size
        This process's place among distributed training processes. Default: torch.distributed's,
        when torch is imported and a process group is initialised; otherwise 0 of 1.
    storage_options
        fsspec's options for ``path`` (credentials, endpoint ...).
    read_ahead
        Chunks being read while the current buffer is handed out, on as many threads (object
        stores answer slowly, but many at once).
    """

    def __init__(
        self,
        path: str,
        *,
        batch_size: int = 256,
        shuffle: bool = True,
        shuffle_chunks: int = 8,
        seed: int = 0,
        drop_last: bool = False,
        dtype: str | None = None,
        mean: float | Sequence[float] | None = None,
        std: float | Sequence[float] | None = None,
        channels_first: bool | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        storage_options: Mapping[str, Any] | None = None,
        read_ahead: int = 4,
    ) -> None:
        if batch_size < 1 or shuffle_chunks < 1 or read_ahead < 1:
            raise ConfigError("batch_size, shuffle_chunks and read_ahead must be at least 1")
        if dtype not in (None, "uint8", "float32"):
            raise ConfigError(f"dtype must be uint8 or float32, got {dtype!r}")
        if (mean is not None or std is not None) and dtype == "uint8":
            raise ConfigError("mean/std normalisation needs dtype='float32'")
        if (rank is None) != (world_size is None):
            raise ConfigError("rank and world_size go together")
        if rank is not None and world_size is not None and not 0 <= rank < world_size:
            raise ConfigError(f"rank must be in 0 .. world_size - 1, got rank {rank} of {world_size}")
        self.path = path
        self.batch_size, self.shuffle, self.shuffle_chunks = batch_size, shuffle, shuffle_chunks
        self.seed, self.drop_last, self.read_ahead = seed, drop_last, read_ahead
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self._out, self._chunks = locate_output(path, storage_options)
        stored = self._chunks.dtype
        self._float = dtype == "float32" or mean is not None or std is not None
        self._scale = 1 / 255 if stored == np.uint8 else None  # float outputs are stored in [0, 1] already
        self._mean = None if mean is None else np.asarray(mean, dtype=np.float32)
        self._std = None if std is None else np.asarray(std, dtype=np.float32)
        self._stored_channels_first = self._chunks.channels_first
        self.channels_first = self._stored_channels_first if channels_first is None else channels_first

    @property
    def rows(self) -> int:
        """Rows of the output, usable or not."""
        return self._out.n_rows

    def usable_rows(self) -> int:
        """Rows with status ``ok`` written so far (from the metadata files' footers: no row is read)."""
        return self._out.status_counts().get("ok", 0)

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch the next iteration gives (as ``DistributedSampler.set_epoch``)."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[Batch]:
        worker, workers = _torch_worker()
        return self.batches(self.epoch, worker=worker, workers=workers)

    def to_torch(self) -> IterableDataset[Batch]:
        """This reader as a ``torch.utils.data.IterableDataset`` of tensor batches.

        Use it with ``DataLoader(dataset, batch_size=None, num_workers=N)``: the batches are
        made here. Each DataLoader worker and each rank reads its own chunks.
        """
        from ._torch import TorchImages

        return TorchImages(self)

    def shard_chunks(self, epoch: int, worker: int = 0, workers: int = 1) -> np.ndarray:
        """The chunks this rank's ``worker`` (of ``workers``) reads in ``epoch``, in reading order."""
        rank, world = self._rank()
        if not 0 <= worker < workers:
            raise ConfigError(f"worker must be in 0 .. workers - 1, got {worker} of {workers}")
        order = np.arange(self._out.n_chunks)
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(order)
        return order[rank * workers + worker :: world * workers]

    def batches(self, epoch: int | None = None, *, worker: int = 0, workers: int = 1) -> Iterator[Batch]:
        """The batches of one epoch for this rank's ``worker`` of ``workers``."""
        epoch = self.epoch if epoch is None else epoch
        chunks = self.shard_chunks(epoch, worker, workers)
        rank, world = self._rank()
        rng = np.random.default_rng([self.seed, epoch, rank * workers + worker, world * workers])
        carry: list[tuple[np.ndarray, np.ndarray]] = []
        spare: SimpleQueue[np.ndarray] = SimpleQueue()  # decode buffers of windows handed out, to use again

        def read(k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
            buffer: np.ndarray | None
            try:
                buffer = spare.get_nowait()
            except Empty:
                buffer = self._chunks.buffer()
            return (*self._chunks.read(k, buffer), buffer)

        with ThreadPoolExecutor(self.read_ahead, thread_name_prefix="daskimg-read") as pool:
            for window in _windows(read, pool, chunks, self.shuffle_chunks, self.read_ahead):
                buffer = _Buffer(carry + [(images, index) for images, index, _ in window if len(index)])
                order = rng.permutation(buffer.rows) if self.shuffle else np.arange(buffer.rows)
                full = buffer.rows - buffer.rows % self.batch_size
                for i in range(0, full, self.batch_size):
                    yield self._batch(*buffer.take(order[i : i + self.batch_size]))
                carry = [buffer.take(order[full:])] if full < buffer.rows else []  # mixed into the next buffer
                del buffer  # every row is copied out: the window's decode buffers are free
                for _, _, spent in window:
                    if spent is not None:
                        spare.put(spent)
        if carry and not self.drop_last:
            yield self._batch(*carry[0])

    def _rank(self) -> tuple[int, int]:
        if self.world_size is not None:
            return self.rank or 0, self.world_size
        return _torch_rank()

    def _batch(self, images: np.ndarray, index: np.ndarray) -> Batch:
        return Batch(self._convert(images), index)

    def _convert(self, images: np.ndarray) -> np.ndarray:
        if self.channels_first != self._stored_channels_first:
            images = np.moveaxis(images, -1, 1) if self.channels_first else np.moveaxis(images, 1, -1)
        if not self._float:
            return np.ascontiguousarray(images)
        out = np.empty(images.shape, dtype=np.float32)
        scale, shift = self._affine(images.shape)
        np.multiply(images, scale, out=out)
        if shift is not None:
            out += shift
        return out

    def _affine(self, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray | None]:
        """``x * scale + shift``, the float conversion and normalisation in two passes over a batch.

        Per channel, the factors are laid out to broadcast over long rows of pixels: over the
        last axis of (N, H, W, C) numpy would loop three values at a time, several times slower.
        """
        channels = shape[1] if self.channels_first else shape[-1]
        scale = np.full(channels, 1.0 if self._scale is None else self._scale, dtype=np.float32)
        shift = None
        if self._mean is not None:
            shift = -np.broadcast_to(self._mean, (channels,)).astype(np.float32)
        if self._std is not None:
            std = np.broadcast_to(self._std, (channels,)).astype(np.float32)
            scale, shift = scale / std, None if shift is None else shift / std
        if self.channels_first:  # one factor per (C, 1, 1): broadcast over whole planes
            return scale.reshape(-1, 1, 1), None if shift is None else shift.reshape(-1, 1, 1)
        width = shape[-2]  # a row of pixels: W x C values, the factors repeated W times
        return (np.tile(scale, (width, 1)),
                None if shift is None else np.tile(shift, (width, 1)))


_Read = tuple[np.ndarray, np.ndarray, np.ndarray | None]  # usable rows' images, their row numbers, the buffer


def _windows(
    read: Callable[[int], _Read], pool: ThreadPoolExecutor, chunks: np.ndarray, size: int, ahead: int
) -> Iterator[list[_Read]]:
    """The chunks' usable rows, ``size`` chunks at a time, with up to ``ahead`` more chunks being read."""
    pending: deque[Future[_Read]] = deque()
    todo = iter(chunks.tolist())
    window: list[_Read] = []
    while True:
        while len(pending) < ahead + size - len(window):
            k = next(todo, None)
            if k is None:
                break
            pending.append(pool.submit(read, k))
        if not pending:
            break
        window.append(pending.popleft().result())
        if len(window) == size:
            yield window
            window = []
    if window:
        yield window


class _Buffer:
    """The usable rows of a few chunks, as if they were one array, without copying them into one."""

    def __init__(self, parts: list[tuple[np.ndarray, np.ndarray]]) -> None:
        self.parts = parts
        self.starts = np.cumsum([0] + [len(index) for _, index in parts])
        self.rows = int(self.starts[-1])

    def take(self, picks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Images and row numbers of rows ``picks`` of the buffer, in a new batch array.

        The rows come out grouped by chunk, in chunk order: a batch is a set of rows, and each
        chunk's rows then go into one slice of the batch, without the buffer ever being one array.
        """
        picks = np.sort(picks)
        images = np.empty((len(picks), *self.parts[0][0].shape[1:]), dtype=self.parts[0][0].dtype)
        index = np.empty(len(picks), dtype=np.int64)
        bounds = np.searchsorted(picks, self.starts)
        for (chunk, rows), start, lo, hi in zip(self.parts, self.starts, bounds, bounds[1:], strict=False):
            if hi > lo:  # fancy indexing copies rows several times faster than np.take(..., out=)
                images[lo:hi] = chunk[picks[lo:hi] - start]
                index[lo:hi] = rows[picks[lo:hi] - start]
        return images, index


def _torch_worker() -> tuple[int, int]:
    """This DataLoader worker and their number, when torch is in use; else 0 of 1."""
    torch = sys.modules.get("torch")
    if torch is None:
        return 0, 1
    info = torch.utils.data.get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


def _torch_rank() -> tuple[int, int]:
    """This process's rank and the world size of an initialised torch.distributed process group; else 0 of 1."""
    torch = sys.modules.get("torch")
    dist = getattr(torch, "distributed", None) if torch is not None else None
    if dist is not None and dist.is_available() and dist.is_initialized():
        return int(dist.get_rank()), int(dist.get_world_size())
    return 0, 1
