"""The reader as a PyTorch ``IterableDataset``; imported only by :meth:`ImageReader.to_torch`."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
from torch.utils.data import IterableDataset

from .reader import Batch, _torch_worker

if TYPE_CHECKING:
    from .reader import ImageReader

__all__ = ["TorchImages"]


# (torch may be absent when type-checking: subclassing Any)
class TorchImages(IterableDataset[Batch]):  # type: ignore[misc, unused-ignore]
    """Tensor batches of an :class:`~daskimg.ImageReader`; each DataLoader worker and rank reads its own chunks.

    The epoch lives in shared memory, so that :meth:`set_epoch` in the training process reaches
    DataLoader workers that persist across epochs (``persistent_workers=True``) as well as new ones.
    """

    def __init__(self, reader: ImageReader) -> None:
        self.reader = reader
        self._epoch = torch.tensor(reader.epoch, dtype=torch.int64).share_memory_()

    def set_epoch(self, epoch: int) -> None:
        self._epoch.fill_(epoch)

    def __iter__(self) -> Iterator[Batch]:
        worker, workers = _torch_worker()
        for images, index in self.reader.batches(int(self._epoch), worker=worker, workers=workers):
            yield Batch(torch.from_numpy(images), torch.from_numpy(index))
