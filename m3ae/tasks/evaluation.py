"""What every task's evaluation shares: (model, dataset) -> metrics, correct under data parallelism.

Each rank scores a contiguous, disjoint slice of the examples (no padded duplicates, unlike a
DistributedSampler), the per-example results are gathered, and every rank computes the same
metrics from the full set. The evaluations themselves live with their tasks.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from m3ae import distributed as D
from m3ae.hardware import to_device


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def shard_loader(dataset: Dataset, batch_size: int, num_workers: int = 0) -> DataLoader:
    """A loader over this rank's disjoint slice of ``dataset``, in order, with its collate_fn."""
    info = D.dist_info()
    indices = D.shard_indices(len(dataset), info.rank, info.world_size)
    collate = getattr(dataset, "collate_fn", None)
    return DataLoader(Subset(dataset, list(indices)), batch_size=batch_size, shuffle=False,
                      num_workers=num_workers, collate_fn=collate)


def _progress(iterable: Any, total: int, desc: str, enabled: bool) -> Any:
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """``model.eval()`` and no_grad inside; restores the previous mode after."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _batches(model: nn.Module, dataset: Dataset, batch_size: int, desc: str, progress: bool):
    loader = shard_loader(dataset, batch_size)
    show = progress and D.dist_info().is_main
    for batch in _progress(loader, len(loader), desc, show):
        yield to_device(batch, _device_of(model))


def _cat(parts: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)


def _gather_cat(local: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Concatenates each rank's tensors in rank order (= dataset order, shards are contiguous)."""
    gathered = D.gather_objects({k: v.cpu() for k, v in local.items()})
    return {k: torch.cat([g[k] for g in gathered]) for k in local}
