"""MNIST as in-memory tensors: reading with torchvision, the lab's split, and fast batches.

Images stay uint8 until a batch is taken: one index gathers the batch, and ``uint8 / 255``
gives exactly what ``ToTensor()`` gives, without a PIL image per sample.
"""

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from mnistlab.errors import DataError
from mnistlab.idx import decode_idx
from mnistlab.splitfiles import load_arrays, save_arrays

CLASSES = tuple(range(10))


@dataclass(frozen=True)
class Split:
    """One part of MNIST: uint8 images (N, 28, 28), int64 labels (N,), and their original indices."""

    images: Tensor
    labels: Tensor
    indices: Tensor

    def __len__(self) -> int:
        return len(self.labels)


def read_mnist(root: Path, train: bool) -> tuple[Tensor, Tensor]:
    """The canonical training (60,000) or test (10,000) images and labels from ``root/MNIST/raw``.

    What ``torchvision.datasets.MNIST(root, train)`` gives (``.data``, ``.targets``; tests/test_data.py
    checks it), read with ``mnistlab.idx``: importing torchvision would cost this stage ~2 s.
    """
    prefix = "train" if train else "t10k"
    arrays = []
    for kind in ("images-idx3", "labels-idx1"):
        path = root / "MNIST" / "raw" / f"{prefix}-{kind}-ubyte"
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise DataError(f"{path} not found: run the download stage first") from None
        arrays.append(torch.from_numpy(decode_idx(data, path.name).copy()))
    images, labels = arrays
    return images, labels.long()


def split_indices(num_samples: int, validation_fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """The indices the lab's SimpleDataModule picks: ``random_split`` with a seeded generator."""
    num_validation = int(validation_fraction * num_samples)
    lengths = [num_samples - num_validation, num_validation]
    train, validation = torch.utils.data.random_split(
        range(num_samples), lengths, generator=torch.Generator().manual_seed(seed)
    )
    return torch.tensor(train.indices, dtype=torch.int64), torch.tensor(validation.indices, dtype=torch.int64)


def take(images: Tensor, labels: Tensor, indices: Tensor | None = None) -> Split:
    """The samples at ``indices`` (all of them when None) as a Split."""
    indices = torch.arange(len(labels)) if indices is None else indices
    return Split(images[indices].clone(), labels[indices].clone(), indices.clone())


def save_split(split: Split, folder: Path) -> None:
    """A Split as ``.npy`` files in ``folder`` (``mnistlab.splitfiles``)."""
    save_arrays(folder, split.images.numpy(), split.labels.numpy(), split.indices.numpy())


def load_split(folder: Path) -> Split:
    """A part written by ``save_split``, as tensors that share the arrays' memory."""
    images, labels, indices = load_arrays(folder)
    return Split(torch.from_numpy(images), torch.from_numpy(labels), torch.from_numpy(indices))


def in_index_order(split: Split) -> Split:
    """The split's rows sorted by their canonical index: what is computed from it no longer depends on row order."""
    order = torch.argsort(split.indices, stable=True)
    return Split(split.images[order], split.labels[order], split.indices[order])


def to_float(images: Tensor) -> Tensor:
    """uint8 (N, 28, 28) -> float32 (N, 1, 28, 28) in [0, 1], bit-identical to ``ToTensor()``."""
    return images.unsqueeze(1).to(torch.float32).div(255)


def describe(train: Split, validation: Split, test: Split) -> dict:
    """The lab's description of the data (sizes, image shape, labels) plus per-class counts."""

    def part(split: Split) -> dict:
        counts = torch.bincount(split.labels, minlength=len(CLASSES)).tolist()
        return {
            "samples": len(split),
            "class_counts": {str(label): count for label, count in zip(CLASSES, counts, strict=True)},
        }

    return {
        "image_shape": [1, *train.images.shape[1:]],
        "labels": sorted(set(train.labels.tolist()) | set(test.labels.tolist())),
        "train": part(train),
        "validation": part(validation),
        "test": part(test),
    }


class TensorBatches:
    """Batches of (images, labels) from tensors already in memory, on the device they live on.

    ``shuffle`` draws a new order each epoch from its own seeded generator, so the batch order
    does not depend on anything else that consumes random numbers. With ``world_size > 1`` each
    rank takes every ``world_size``-th sample of that order: every sample once per epoch across
    ranks. Where the count does not divide, the short ranks repeat a sample, as DistributedSampler
    does, so that every rank runs the same number of steps.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.images, self.labels = images, labels
        self.batch_size, self.shuffle = batch_size, shuffle
        self.rank, self.world_size = rank, world_size
        self.generator = torch.Generator().manual_seed(seed)
        self.samples_per_rank = math.ceil(len(labels) / world_size)

    def __len__(self) -> int:
        return math.ceil(self.samples_per_rank / self.batch_size)

    def order(self) -> Tensor:
        """This rank's sample indices for the next epoch."""
        total = len(self.labels)
        order = torch.randperm(total, generator=self.generator) if self.shuffle else torch.arange(total)
        mine = order[self.rank :: self.world_size]
        if len(mine) < self.samples_per_rank:  # pad like DistributedSampler so ranks stay in step
            mine = torch.cat([mine, order[: self.samples_per_rank - len(mine)]])
        return mine.to(self.labels.device)

    def batch_indices(self) -> Iterator[Tensor]:
        """The next epoch's batches as index tensors into ``images`` and ``labels``."""
        order = self.order()
        for start in range(0, len(order), self.batch_size):
            yield order[start : start + self.batch_size]

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        for batch in self.batch_indices():
            yield gather(self.images, self.labels, batch)


def gather(images: Tensor, labels: Tensor, batch: Tensor) -> tuple[Tensor, Tensor]:
    """The float images and labels at the indices ``batch``."""
    # index_select, not images[batch]: 10x faster on uint8 rows on a CPU (bench/)
    return to_float(images.index_select(0, batch)), labels.index_select(0, batch)


@dataclass  # not frozen: Lightning rebuilds it to move its tensors to the device
class Chunk:
    """Consecutive batches for one training_step: the resident tensors and each batch's indices."""

    images: Tensor
    labels: Tensor
    batches: list[Tensor]


class Chunks:
    """Consecutive batches in Chunks of ``size`` (the last may be shorter): one per training_step."""

    def __init__(self, batches: TensorBatches, size: int) -> None:
        self.batches, self.size = batches, size

    def __len__(self) -> int:
        return math.ceil(len(self.batches) / self.size)

    def __iter__(self) -> Iterator[Chunk]:
        images, labels = self.batches.images, self.batches.labels
        indices = list(self.batches.batch_indices())
        for start in range(0, len(indices), self.size):
            yield Chunk(images, labels, indices[start : start + self.size])
