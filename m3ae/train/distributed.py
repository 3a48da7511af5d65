"""Re-exports `m3ae.distributed` (data parallelism moved to the base floor so that task
evaluation, below `m3ae.train`, can gather across ranks); kept for old imports."""
from __future__ import annotations

from m3ae.distributed import (  # noqa: F401
    BUCKET_NUMEL,
    DistInfo,
    _reduce_bucket,
    all_reduce_mean,
    any_rank,
    average_gradients,
    barrier,
    broadcast_parameters,
    dist,
    dist_info,
    gather_objects,
    init_distributed,
    shard_indices,
)
