"""The reader as a PyTorch ``IterableDataset``; imported only by :meth:`ImageReader.to_torch`."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
from torch.utils.data import IterableDataset

from .reader import Batch

if TYPE_CHECKING:
    from .reader import ImageReader

__all__ = ["TorchImages"]


class TorchImages(IterableDataset[Batch]):  # type: ignore[misc]  # torch may be absent when type-checking
    """Tensor batches of an :class:`~daskimg.ImageReader`; each DataLoader worker and rank reads its own chunks."""

    def __init__(self, reader: ImageReader) -> None:
        self.reader = reader

    def set_epoch(self, epoch: int) -> None:
        self.reader.set_epoch(epoch)

    def __iter__(self) -> Iterator[Batch]:
        for images, index in self.reader:
            yield Batch(torch.from_numpy(images), torch.from_numpy(index))
