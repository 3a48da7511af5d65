"""Task heads on the joint feature `cls_feats` = [text pooled, image pooled] (width 2D)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from m3ae.models.config import ModelConfig
from m3ae.models.decoders import MLMHead, PixelDecoder


class Pooler(nn.Module):
    """tanh(Linear(token 0)): BERT's pooler, one per stream."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.dense = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, N, D] -> [B, D]."""
        return torch.tanh(self.dense(x[:, 0]))


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
