"""A distributed-aware sampler and ``make_loader``.

Training (shuffle): every rank sees an equal share of one seeded permutation per epoch, padded
by wrapping around as torch's DistributedSampler does. Evaluation (no shuffle): the indices are
split without duplicates, so ranks may differ by one example and every example counts once.
``start_index`` resumes mid-epoch: the number of this rank's examples already consumed.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Sampler

from m3ae.errors import M3AEError


class DistributedSampler(Sampler[int]):
    """Indices for one rank of ``world_size``; ``set_epoch`` reshuffles and re-seeds the dataset.

    Args:
        dataset: anything with ``len``; if it has ``set_epoch`` it is kept in step with the sampler.
        rank, world_size: this process and the number of processes.
        shuffle: one permutation per epoch, seeded by ``seed + epoch``.
        seed: base seed.
        pad: repeat indices so every rank gets the same count (default: ``shuffle``).
        start_index: skip this many of this rank's indices (resume).
    """

    def __init__(
        self,
        dataset: Any,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        seed: int = 0,
        pad: bool | None = None,
        start_index: int = 0,
    ) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise M3AEError(f"rank {rank} is not in [0, world_size={world_size})")
        if start_index < 0:
            raise M3AEError(f"start_index must be >= 0 (got {start_index})")
        self.dataset, self.rank, self.world_size = dataset, rank, world_size
        self.shuffle, self.seed, self.epoch = shuffle, seed, 0
        self.pad = shuffle if pad is None else pad
        self.start_index = start_index

    def set_epoch(self, epoch: int, start_index: int = 0) -> None:
        """Start epoch ``epoch`` (from ``start_index`` of this rank's share) and tell the dataset."""
        self.epoch, self.start_index = int(epoch), start_index
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(self.epoch)

    def rank_indices(self) -> list[int]:
        """All indices of this rank for the current epoch, before ``start_index`` is applied."""
        n = len(self.dataset)
        if self.shuffle:
            order = torch.randperm(
                n, generator=torch.Generator().manual_seed(self.seed + self.epoch)
            ).tolist()
        else:
            order = list(range(n))
        if self.pad and n:
            total = math.ceil(n / self.world_size) * self.world_size
            order += (order * math.ceil(total / n))[: total - n]  # wrap around, like torch's sampler
        return order[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self.rank_indices()[self.start_index :])

    def __len__(self) -> int:
        n = len(self.dataset)
        share = math.ceil(n / self.world_size) if self.pad else len(range(self.rank, n, self.world_size))
        return max(0, share - self.start_index)


def make_loader(
    dataset: Any,
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 0,
    start_index: int = 0,
    drop_last: bool = False,
    pad: bool | None = None,
) -> DataLoader:
    """A DataLoader over ``dataset`` with the distributed sampler and the dataset's collator.

    Call ``loader.sampler.set_epoch(epoch)`` at the start of each epoch (this also re-seeds the
    dataset's per-example draws). Workers are not persistent, so each epoch's workers receive the
    dataset with the current epoch; each opens the memory-mapped files once, lazily.
    """
    sampler = DistributedSampler(dataset, rank, world_size, shuffle, seed, pad, start_index)
    if num_workers > 0:  # Rust tokenizer threads and fork do not mix; workers tokenise one text at a time
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(sampler.epoch)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=getattr(dataset, "collate_fn", None),
        drop_last=drop_last,
        persistent_workers=False,
    )
