"""Batch loader: whole batches sliced from a (memory-mapped) split and augmented at once.

A per-sample Dataset + collate would spend its time in Python; slicing the
array for a batch and transforming the batch as one tensor keeps the loader
far ahead of the model. Each batch carries each sample's index in the split,
which the memory bank needs (cached query, self-exclusion).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from .split import PointSplit
from .transforms import Subsample, Transform


@dataclass
class Batch:
    points: torch.Tensor  # (B, n, 3) float32
    labels: torch.Tensor  # (B,) int64
    index: torch.Tensor  # (B,) int64: rows in the split

    def to(self, device) -> "Batch":
        """On the device; to a GPU from pinned memory, so the copy does not block the host
        (a non-blocking copy from pageable memory is a synchronous one)."""
        device = torch.device(device)
        pin = device.type == "cuda" and not self.points.is_cuda
        moved = [(t.pin_memory() if pin else t).to(device, non_blocking=True)
                 for t in (self.points, self.labels, self.index)]
        return Batch(*moved)


class BatchLoader:
    def __init__(
        self,
        split: PointSplit,
        batch_size: int,
        *,
        shuffle: bool = False,
        drop_last: bool = False,
        seed: int = 0,
        num_points: int | None = None,
        subsample: str = "random",
        augment: Transform | None = None,
        rank: int = 0,
        world_size: int = 1,
        pad_shards: bool = True,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self.split = split
        self.batch_size = batch_size
        self.shuffle, self.drop_last, self.seed = shuffle, drop_last, seed
        self.subsample = Subsample(num_points, subsample) if num_points is not None else None
        self.augment = augment
        self.rank, self.world_size = rank, world_size
        # Training needs equal shards (every rank takes the same number of DDP steps);
        # evaluation must count each sample exactly once, so its shards are not padded.
        self.pad_shards = pad_shards
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Shuffles and augmentation draws depend on (seed, epoch): reruns repeat them."""
        self.epoch = epoch

    def _rank_order(self) -> np.ndarray:
        count = len(self.split)
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(count)
        else:
            order = np.arange(count)
        if self.pad_shards:
            # Equal shards for every rank (wrapping around), as DistributedSampler does.
            order = np.resize(order, math.ceil(count / self.world_size) * self.world_size)
        return order[self.rank::self.world_size]

    def __len__(self) -> int:
        count = len(self._rank_order())
        return count // self.batch_size if self.drop_last else math.ceil(count / self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        order = self._rank_order()
        gen = torch.Generator().manual_seed(hash((self.seed, self.epoch, self.rank)) & 0x7FFFFFFF)
        for start in range(0, len(order), self.batch_size):
            index = order[start:start + self.batch_size]
            if self.drop_last and len(index) < self.batch_size:
                break
            yield self._batch(np.sort(index), gen)

    def _batch(self, index: np.ndarray, gen: torch.Generator) -> Batch:
        # Sorted rows read the memory map front to back.
        points = torch.from_numpy(np.take(self.split.points, index, axis=0))
        if self.subsample is not None:
            points = self.subsample(points, gen)
        if self.augment is not None:
            points = self.augment(points, gen)
        labels = torch.from_numpy(np.take(self.split.labels, index))
        return Batch(points.contiguous(), labels, torch.from_numpy(index.astype(np.int64)))
