"""Features of a frozen tower, kept per distinct input row.

A frozen text tower is a fixed function of its input: in fine-tuning every question is seen once per
epoch, so after the first epoch its features can be looked up instead of recomputed. On a CPU the
tower's forward pass is the largest part of a fine-tuning step with a small fusion (docs/learning.md),
so the lookup is what lets many epochs fit a short budget. Exact: a row's key is its token ids and
attention mask up to its last real token, so the same key always means the same features.
"""
from __future__ import annotations

from collections.abc import Callable

import torch


class FrozenFeatureCache:
    """Row-wise memo of `compute(input_ids, attention_mask) -> [B, L, H]`, bounded in bytes.

    Rows are evicted oldest first once `max_bytes` is reached. Positions after a row's last real
    token are zeros in the returned tensor (they are padding: masked out of attention and pooling).

    Args:
        max_mb: memory bound of the stored features in MiB (> 0).
    """

    def __init__(self, max_mb: float) -> None:
        if max_mb <= 0:
            raise ValueError(f"max_mb must be > 0, got {max_mb}")
        self.max_bytes = int(max_mb * 2**20)
        self.rows: dict[bytes, torch.Tensor] = {}
        self.bytes = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self.rows)

    @staticmethod
    def _keys(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[list[bytes], list[int]]:
        """Per row: the key bytes and the length up to (and including) its last real token."""
        real = attention_mask.bool()
        positions = torch.arange(real.shape[1], device=real.device)
        ends = (torch.where(real, positions, -1).amax(dim=1) + 1).tolist()  # [B]
        ids, mask = input_ids.cpu(), attention_mask.cpu()
        keys = [ids[i, :n].numpy().tobytes() + b"|" + mask[i, :n].numpy().tobytes() for i, n in enumerate(ends)]
        return keys, ends

    def __call__(self, compute: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                 input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Features [B, L, H] of the batch, computing only the rows not seen before."""
        keys, ends = self._keys(input_ids, attention_mask)
        rows: list[torch.Tensor | None] = [self.rows.get(k) for k in keys]  # before any eviction
        missing = [i for i, row in enumerate(rows) if row is None]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        if missing:
            index = torch.tensor(missing, device=input_ids.device)
            fresh = compute(input_ids[index], attention_mask[index]).detach().float()  # [M, L, H]
            for j, i in enumerate(missing):
                rows[i] = fresh[j, : ends[i]].clone()
                self._store(keys[i], rows[i])
        out = rows[0].new_zeros(*input_ids.shape, rows[0].shape[-1])  # [B, L, H]
        for i, row in enumerate(rows):
            out[i, : ends[i]] = row
        return out

    def _store(self, key: bytes, value: torch.Tensor) -> None:
        size = value.numel() * value.element_size()
        if size > self.max_bytes:
            return
        while self.rows and self.bytes + size > self.max_bytes:
            oldest = next(iter(self.rows))
            self.bytes -= self.rows[oldest].numel() * self.rows[oldest].element_size()
            del self.rows[oldest]
        self.rows[key] = value
        self.bytes += size
