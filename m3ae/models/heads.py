"""Task heads on the joint feature `cls_feats` = [text pooled, image pooled] (width 2D)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from m3ae.models.config import ModelConfig
from m3ae.models.decoders import MLMHead, PixelDecoder


POOLINGS = ("cls", "mean")


def summarise(x: torch.Tensor, mode: str, mask: torch.Tensor | None = None) -> torch.Tensor:
    """One vector per example: the first token ("cls") or the mean of the real tokens ("mean"; ``mask``
    [B, N], 1 = real token, None = all real). [B, N, D] -> [B, D]. The poolers and ITC both use it."""
    if mode == "cls":
        return x[:, 0]
    if mask is None:
        return x.mean(dim=1)
    weights = mask.to(x.dtype).unsqueeze(-1)  # [B, N, 1]
    return (x * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)


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
        return torch.tanh(self.dense(summarise(x, self.mode, mask)))


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


ITC_INIT_TEMPERATURE = 0.07
"""CLIP's and ALBEF's starting temperature of the contrastive logits."""


class ITCHead(nn.Module):
    """Dual-encoder projections for image-text contrastive learning (ALBEF's ITC).

    Maps the CLS token of each stream *before* fusion to a shared space, so that images and
    texts can be embedded independently and compared by a dot product; the cross-encoder
    (``irtr`` on ``cls_feats``) then only re-ranks the best candidates. Only built when asked
    (``"itc"`` in the heads), so checkpoints without it load strictly.
    """

    def __init__(self, width: int) -> None:
        super().__init__()
        self.image_proj = nn.Linear(width, width)
        self.text_proj = nn.Linear(width, width)
        # learned temperature in log space, as CLIP (a 0-dim tensor: never weight-decayed)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / ITC_INIT_TEMPERATURE)))

    def forward(self, cls_token: torch.Tensor, stream: str) -> torch.Tensor:
        """[B, D] CLS token of the "image" or "text" stream -> [B, D] unit-norm embedding."""
        proj = self.image_proj if stream == "image" else self.text_proj
        return F.normalize(proj(cls_token).float(), dim=-1)


def build_heads(cfg: ModelConfig) -> nn.ModuleDict:
    """The task heads named in `cfg.heads`, in a ModuleDict keyed by name."""
    d = cfg.width
    makers = {
        "mlm": lambda: MLMHead(d, cfg.text.vocab_size,
                               depth=cfg.mlm_decoder_depth if cfg.mlm_decoder == "transformer" else 0,
                               heads=cfg.fusion.heads),
        "mim": lambda: PixelDecoder(cfg.pixel_decoder, cfg.vision, d),
        "itm": lambda: nn.Linear(2 * d, 2),
        "vqa": lambda: ClassifierHead(2 * d, cfg.num_answers),
        "cls": lambda: ClassifierHead(2 * d, cfg.num_classes),
        "irtr": lambda: nn.Linear(2 * d, 1),
        "itc": lambda: ITCHead(d),
    }
    return nn.ModuleDict({name: makers[name]() for name in cfg.heads})


ITM_MATCH_ROW = 1
"""Row of the ITM head's output that scores "the image and text match" (row 0 = mismatch)."""


@torch.no_grad()
def init_irtr_from_itm(heads: nn.ModuleDict, state_dict: dict[str, torch.Tensor]) -> None:
    """Zero-shot retrieval: score = ITM "match" logit, so irtr starts as a copy of that ITM row.

    Args:
        heads: a model's heads, with an ``irtr`` head.
        state_dict: a checkpoint under our names with ``heads.itm.weight`` / ``heads.itm.bias``.
    """
    row = slice(ITM_MATCH_ROW, ITM_MATCH_ROW + 1)
    heads["irtr"].weight.copy_(state_dict["heads.itm.weight"][row])
    heads["irtr"].bias.copy_(state_dict["heads.itm.bias"][row])
