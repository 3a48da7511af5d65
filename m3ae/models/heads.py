"""Task heads on the joint feature `cls_feats` = [text pooled, image pooled] (width 2D)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from m3ae.models.config import ModelConfig
from m3ae.models.decoders import MLMHead, PixelDecoder


POOLINGS = ("cls", "mean")


class Pooler(nn.Module):
    """tanh(Linear(summary token)): BERT's pooler, one per stream.

    ``cls`` (the paper) summarises a stream by its first token; ``mean`` by the mean of its real
    tokens. Both have the same parameters, so a checkpoint loads either way. With a few epochs of
    fine-tuning, ``mean`` learns much faster (docs/learning.md).
    """

    def __init__(self, width: int, mode: str = "cls") -> None:
        super().__init__()
        if mode not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {mode!r}")
        self.dense = nn.Linear(width, width)
        self.mode = mode

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """[B, N, D] (mask [B, N], 1 = real token, or None = all real) -> [B, D]."""
        if self.mode == "cls":
            summary = x[:, 0]
        elif mask is None:
            summary = x.mean(dim=1)
        else:
            weights = mask.to(x.dtype).unsqueeze(-1)  # [B, N, 1]
            summary = (x * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)
        return torch.tanh(self.dense(summary))


class ClassifierHead(nn.Module):
    """Linear(2D, 2D) -> LayerNorm(eps 1e-5) -> GELU -> Linear(2D, n): the VQA / cls head."""

    def __init__(self, in_width: int, num_outputs: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_width, in_width)
        self.norm = nn.LayerNorm(in_width, eps=1e-5)
        self.fc2 = nn.Linear(in_width, num_outputs)

    def forward(self, cls_feats: torch.Tensor) -> torch.Tensor:
        """[B, 2D] -> [B, n] logits."""
        return self.fc2(F.gelu(self.norm(self.fc1(cls_feats))))


def build_heads(cfg: ModelConfig) -> nn.ModuleDict:
    """The task heads named in `cfg.heads`, in a ModuleDict keyed by name."""
    d = cfg.width
    makers = {
        "mlm": lambda: MLMHead(d, cfg.text.vocab_size),
        "mim": lambda: PixelDecoder(cfg.pixel_decoder, cfg.vision, d),
        "itm": lambda: nn.Linear(2 * d, 2),
        "vqa": lambda: ClassifierHead(2 * d, cfg.num_answers),
        "cls": lambda: ClassifierHead(2 * d, cfg.num_classes),
        "irtr": lambda: nn.Linear(2 * d, 1),
    }
    return nn.ModuleDict({name: makers[name]() for name in cfg.heads})
