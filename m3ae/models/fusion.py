"""Two-stream co-attention fusion (METER/M3AE `BertCrossLayer`), post-LN BERT style.

Each stream has its own stack of layers. In layer i both streams are updated simultaneously
from the previous layer's outputs: self-attention over the stream, cross-attention whose keys
and values come from the *other* stream's previous output, then an exact-GELU FFN; every
sub-block is followed by dropout, a residual and LayerNorm (eps 1e-12).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from m3ae.models.config import FusionConfig


def key_padding_mask(mask: torch.Tensor | None) -> torch.Tensor | None:
    """[B, L] with 1 = attend -> boolean SDPA mask [B, 1, 1, L] (True = attend), or None.

    A boolean mask gives padded keys exactly zero weight, which is what upstream's additive
    -10000 gives in float32 too.
    """
    if mask is None:
        return None
    return mask.bool()[:, None, None, :]


class MultiHeadAttention(nn.Module):
    """BERT attention with separate q/k/v projections, followed by the output dense + LN."""

    def __init__(self, width: int, heads: int, dropout: float, eps: float) -> None:
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.query = nn.Linear(width, width)
        self.key = nn.Linear(width, width)
        self.value = nn.Linear(width, width)
        self.out = nn.Linear(width, width)
        self.norm = nn.LayerNorm(width, eps=eps)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        return x.reshape(b, n, self.heads, d // self.heads).transpose(1, 2)  # [B, h, N, d/h]

    def forward(
        self, x: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """Queries from x [B, N, D]; keys/values from context [B, M, D]; mask [B, 1, 1, M] or None."""
        q, k, v = self._split(self.query(x)), self._split(self.key(context)), self._split(self.value(context))
        drop = self.dropout if self.training else 0.0
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=context_mask, dropout_p=drop)
        attn = attn.transpose(1, 2).reshape(x.shape)  # [B, h, N, d/h] -> [B, N, D]
        return self.norm(x + F.dropout(self.out(attn), self.dropout, self.training))


class FusionLayer(nn.Module):
    """One co-attention layer of one stream."""

    def __init__(self, cfg: FusionConfig) -> None:
        super().__init__()
        self.self_attn = MultiHeadAttention(cfg.width, cfg.heads, cfg.dropout, cfg.layer_norm_eps)
        self.cross_attn = MultiHeadAttention(cfg.width, cfg.heads, cfg.dropout, cfg.layer_norm_eps)
        self.fc1 = nn.Linear(cfg.width, cfg.mlp_width)
        self.fc2 = nn.Linear(cfg.mlp_width, cfg.width)
        self.norm = nn.LayerNorm(cfg.width, eps=cfg.layer_norm_eps)
        self.dropout = cfg.dropout

    def forward(
        self,
        x: torch.Tensor,
        x_mask: torch.Tensor | None,
        other: torch.Tensor,
        other_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """X [B, N, D] attends to itself, then to `other` [B, M, D]; masks are SDPA booleans or None."""
        x = self.self_attn(x, x, x_mask)
        x = self.cross_attn(x, other, other_mask)
        h = self.fc2(F.gelu(self.fc1(x)))  # exact (erf) GELU, as BERT
        return self.norm(x + F.dropout(h, self.dropout, self.training))


class CoAttentionFusion(nn.Module):
    """The text and image stacks of `FusionLayer`s."""

    def __init__(self, cfg: FusionConfig) -> None:
        super().__init__()
        self.text_layers = nn.ModuleList(FusionLayer(cfg) for _ in range(cfg.layers))
        self.image_layers = nn.ModuleList(FusionLayer(cfg) for _ in range(cfg.layers))
        self.grad_checkpointing = False

    def forward(
        self,
        text: torch.Tensor,
        text_mask: torch.Tensor,
        image: torch.Tensor,
        image_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """Fuse the streams.

        Args:
            text: [B, L_t, D].
            text_mask: [B, L_t] with 1 = real token.
            image: [B, 1+L_i', D].
            image_mask: [B, 1+L_i'] or None (no image padding).

        Returns:
            text [B, L_t, D], image [B, 1+L_i', D], and image_hidden: layers+1 tensors, the
            image-stream input of each layer followed by the final output.
        """
        t_mask, i_mask = key_padding_mask(text_mask), key_padding_mask(image_mask)
        use_ckpt = self.grad_checkpointing and self.training and torch.is_grad_enabled()
        image_hidden = [image]
        for text_layer, image_layer in zip(self.text_layers, self.image_layers, strict=True):
            if use_ckpt:
                new_text = checkpoint(text_layer, text, t_mask, image, i_mask, use_reentrant=False)
                new_image = checkpoint(image_layer, image, i_mask, text, t_mask, use_reentrant=False)
            else:
                new_text = text_layer(text, t_mask, image, i_mask)
                new_image = image_layer(image, i_mask, text, t_mask)
            text, image = new_text, new_image  # simultaneous update from the previous outputs
            image_hidden.append(image)
        return text, image, image_hidden
