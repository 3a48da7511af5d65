"""Data parallelism over `torch.distributed` (torchrun): set-up, gradient averaging, gathering.

We average gradients with explicit bucketed all-reduces after the accumulation window rather than
wrapping the model in `DistributedDataParallel`: the pre-training task calls several model methods
per step (`embed_image`, `encode`, heads) and back-propagates each pass as soon as its loss
exists, which DDP's forward-hook bookkeeping does not support. The result is the same update as
DDP (the mean over ranks of the summed micro-batch gradients).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

# elements per all-reduce bucket (25M float32 = 100 MB, DDP's default bucket size)
BUCKET_NUMEL = 25_000_000


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 logs, saves and prints."""
        return self.rank == 0


def init_distributed(device: str = "auto") -> DistInfo:
    """Joins the process group when launched by torchrun (WORLD_SIZE > 1); no-op otherwise.

    Uses NCCL on CUDA and gloo on CPU.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        use_cuda = device != "cpu" and torch.cuda.is_available()
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank)


def dist_info() -> DistInfo:
    """The current rank/world (0/1 outside a process group)."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    return DistInfo()


def barrier() -> None:
    """Waits for all ranks (no-op outside a process group)."""
    if dist_info().world_size > 1:
        dist.barrier()


def broadcast_parameters(model: torch.nn.Module) -> None:
    """Copies rank 0's parameters and buffers to every rank, so all start identical."""
    if dist_info().world_size <= 1:
        return
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            dist.broadcast(t.data, src=0)


def average_gradients(params: list[torch.nn.Parameter]) -> None:
    """All-reduces the gradients (mean over ranks) in flat buckets.

    A parameter without a gradient on this rank counts as zeros, so ranks stay in lock-step even
    when a micro-batch leaves some head unused.
    """
    world = dist_info().world_size
    if world <= 1:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    by_dtype: dict[torch.dtype, list[torch.nn.Parameter]] = {}
    for p in params:
        by_dtype.setdefault(p.grad.dtype, []).append(p)
    for group in by_dtype.values():
        bucket: list[torch.nn.Parameter] = []
        size = 0
        for p in group:
            bucket.append(p)
            size += p.numel()
            if size >= BUCKET_NUMEL:
                _reduce_bucket(bucket, world)
                bucket, size = [], 0
        if bucket:
            _reduce_bucket(bucket, world)


def _reduce_bucket(bucket: list[torch.nn.Parameter], world: int) -> None:
    flat = torch.cat([p.grad.reshape(-1) for p in bucket])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= world
    offset = 0
    for p in bucket:
        n = p.numel()
        p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
        offset += n


def all_reduce_mean(values: dict[str, float]) -> dict[str, float]:
    """Mean of scalar metrics over ranks (for logging)."""
    if dist_info().world_size <= 1 or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    t /= dist_info().world_size
    return dict(zip(keys, t.tolist()))


def any_rank(flag: bool) -> bool:
    """True when ``flag`` is true on at least one rank (e.g. a non-finite loss)."""
    if dist_info().world_size <= 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0])
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (a one-element list outside a process group)."""
    info = dist_info()
    if info.world_size <= 1:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def shard_indices(n: int, rank: int, world_size: int) -> range:
    """A contiguous, disjoint slice of ``range(n)`` for this rank; together they cover it exactly once.

    Used for evaluation, where (unlike a padded DistributedSampler) no sample may be counted twice.
    """
    per, extra = divmod(n, world_size)
    start = rank * per + min(rank, extra)
    return range(start, start + per + (1 if rank < extra else 0))
