"""Decoders of the two masked-modelling objectives.

* `PixelDecoder` (MIM): an MAE-style decoder that re-inserts mask tokens at the removed patch
  positions and predicts the P*P*C pixel values of every patch. Upstream uses CLIP-style pre-LN
  blocks with QuickGELU; the "mlp" variant replaces the blocks with a per-token MLP (ablation).
* `MLMHead`: BERT's prediction head (dense, GELU, LayerNorm) and an untied vocabulary decoder; the
  "transformer" variant (ablation) puts self-attention blocks over the text stream before it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from m3ae.models.config import PixelDecoderConfig, VisionConfig
from m3ae.models.fusion import MultiHeadAttention, key_padding_mask
from m3ae.models.masking import sincos_pos_embed_2d
from m3ae.models.vision import LayerNormFp32, ResidualAttentionBlock, run_blocks


class TokenMlp(nn.Module):
    """Residual per-token MLP block (the "mlp" decoder ablation: no mixing across patches)."""

    def __init__(self, width: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm = LayerNormFp32(width, eps=1e-5)
        self.fc1 = nn.Linear(width, int(width * mlp_ratio))
        self.fc2 = nn.Linear(int(width * mlp_ratio), width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, N, w] -> [B, N, w]."""
        return x + self.fc2(F.gelu(self.fc1(self.norm(x))))


class PixelDecoder(nn.Module):
    """MIM decoder: fused image tokens (CLS + kept patches) -> pixels of every patch."""

    def __init__(self, cfg: PixelDecoderConfig, vision: VisionConfig, in_width: int) -> None:
        super().__init__()
        w = cfg.width
        self.grid = vision.grid
        self.decoder_embed = nn.Linear(in_width, w)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, w))
        # fixed sin-cos table, recomputed from the grid: not trainable and not saved, so a
        # checkpoint stays loadable at another image size
        pos = sincos_pos_embed_2d(w, self.grid, cls_token=True).unsqueeze(0)  # [1, 1+L_i, w]
        self.register_buffer("decoder_pos_embed", pos, persistent=False)
        if cfg.type == "transformer":
            blocks = [ResidualAttentionBlock(w, cfg.heads, cfg.mlp_ratio, 1e-5) for _ in range(cfg.depth)]
        else:
            blocks = [TokenMlp(w, cfg.mlp_ratio) for _ in range(cfg.depth)]
        self.blocks = nn.ModuleList(blocks)
        self.decoder_norm = LayerNormFp32(w, eps=1e-5)
        self.decoder_pred = nn.Linear(w, vision.patch_size**2 * vision.channels)
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor, ids_restore: torch.Tensor | None = None) -> torch.Tensor:
        """Predict pixels.

        Args:
            x: [B, 1+L_i', D] image-stream features (CLS first).
            ids_restore: [B, L_i] from the masking, or None when nothing was removed.

        Returns:
            [B, L_i, P*P*C] predictions in patch order (CLS dropped).
        """
        x = self.decoder_embed(x)  # [B, 1+L_i', w]
        if ids_restore is not None:
            b, n_kept = x.shape[0], x.shape[1] - 1
            n_removed = ids_restore.shape[1] - n_kept
            mask_tokens = self.mask_token.to(x.dtype).expand(b, n_removed, -1)
            patches = torch.cat([x[:, 1:], mask_tokens], dim=1)  # [B, L_i, w], shuffled order
            index = ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[2])
            patches = torch.gather(patches, 1, index)  # unshuffle to patch order
            x = torch.cat([x[:, :1], patches], dim=1)  # [B, 1+L_i, w]
        x = x + self.decoder_pos_embed.to(x.dtype)
        x = run_blocks(self.blocks, x, self.grad_checkpointing and self.training)
        x = self.decoder_pred(self.decoder_norm(x))  # [B, 1+L_i, P*P*C]
        return x[:, 1:]


class MLMTransform(nn.Module):
    """dense -> GELU -> LayerNorm (BertPredictionHeadTransform)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.dense = nn.Linear(width, width)
        self.norm = nn.LayerNorm(width, eps=1e-12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, L_t, D] -> [B, L_t, D]."""
        return self.norm(F.gelu(self.dense(x)))


class TextBlock(nn.Module):
    """Post-LN BERT block without cross-attention: the "transformer" MLM decoder's unit."""

    def __init__(self, width: int, heads: int, eps: float = 1e-12) -> None:
        super().__init__()
        self.attn = MultiHeadAttention(width, heads, 0.0, eps)
        self.fc1 = nn.Linear(width, 4 * width)
        self.fc2 = nn.Linear(4 * width, width)
        self.norm = nn.LayerNorm(width, eps=eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """[B, L_t, D] -> [B, L_t, D]; mask: SDPA boolean key-padding mask or None."""
        x = self.attn(x, x, mask)
        return self.norm(x + self.fc2(F.gelu(self.fc1(x))))


class MLMHead(nn.Module):
    """Masked-language-model head; the decoder is not tied to the word embeddings (as upstream).

    Args:
        depth: 0 = the paper's MLP head; > 0 = that many `TextBlock`s over the whole text stream
            first (the "transformer" decoder ablation), which needs the [B, L_t, D] stream and its mask.
    """

    def __init__(self, width: int, vocab_size: int, depth: int = 0, heads: int = 1) -> None:
        super().__init__()
        if depth:
            self.blocks = nn.ModuleList(TextBlock(width, heads) for _ in range(depth))
        self.transform = MLMTransform(width)
        self.decoder = nn.Linear(width, vocab_size, bias=False)
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    @property
    def mixes_tokens(self) -> bool:
        """Whether a token's logits depend on the other tokens (then run it on the whole stream)."""
        return hasattr(self, "blocks")

    def forward(self, text_feats: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """[..., D] -> [..., V] logits (any leading shape: [B, L_t, D] or the [N, D] labelled positions;
        with blocks, [B, L_t, D] and its [B, L_t] attention mask)."""
        if self.mixes_tokens:
            mask = key_padding_mask(attention_mask)
            for block in self.blocks:
                text_feats = block(text_feats, mask)
        return self.decoder(self.transform(text_feats)) + self.bias
