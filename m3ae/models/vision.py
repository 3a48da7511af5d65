"""CLIP ViT image encoder, as used by upstream M3AE (OpenAI CLIP ViT-B/16 with 11 blocks).

Numerics follow CLIP: pre-LN blocks, QuickGELU, LayerNorm in fp32, `ln_post` on all tokens.
Attention keeps CLIP's fused [3D, D] input projection (rows = [q; k; v]) so that the official
weights map one-to-one, but runs through `scaled_dot_product_attention`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from m3ae.errors import M3AEError
from m3ae.models.config import VisionConfig
from m3ae.models.fusion import attention
from m3ae.models.masking import random_masking, sincos_pos_embed_2d


class LayerNormFp32(nn.LayerNorm):
    """LayerNorm computed in float32 whatever the input dtype (CLIP's fp16-safe LayerNorm)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise the last dim in fp32; return in the input dtype."""
        out = F.layer_norm(x.float(), self.normalized_shape, self.weight.float(), self.bias.float(), self.eps)
        return out.to(x.dtype)


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x): the GELU approximation CLIP was trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Elementwise. Without autograd, one temporary updated in place (same values)."""
        if x.requires_grad and torch.is_grad_enabled():
            return x * torch.sigmoid(1.702 * x)
        return torch.sigmoid(1.702 * x).mul_(x)


class FusedSelfAttention(nn.Module):
    """Multi-head self-attention with one fused q/k/v projection (like nn.MultiheadAttention)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.in_proj = nn.Linear(width, 3 * width)
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, N, D] -> [B, N, D], no mask (image tokens are never padded)."""
        b, n, d = x.shape
        qkv = self.in_proj(x).reshape(b, n, 3, self.heads, d // self.heads)  # [B, N, 3, h, d/h]
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x [B, h, N, d/h]
        out = attention(q, k, v, None, 0.0)  # SDPA; in fp32 on CPU also under bf16
        return self.out_proj(out.transpose(1, 2).reshape(b, n, d))


class ClipMlp(nn.Module):
    """Linear -> QuickGELU -> Linear."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.act = QuickGELU()
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, N, D] -> [B, N, D]."""
        return self.fc2(self.act(self.fc1(x)))


class ResidualAttentionBlock(nn.Module):
    """CLIP pre-LN block: x + attn(norm1(x)); x + mlp(norm2(x)). Also used by the MIM decoder."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0, eps: float = 1e-5) -> None:
        super().__init__()
        self.norm1 = LayerNormFp32(width, eps=eps)
        self.attn = FusedSelfAttention(width, heads)
        self.norm2 = LayerNormFp32(width, eps=eps)
        self.mlp = ClipMlp(width, int(width * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, N, D] -> [B, N, D]."""
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def run_blocks(blocks: nn.ModuleList, x: torch.Tensor, use_checkpoint: bool) -> torch.Tensor:
    """Apply blocks in order, optionally with activation checkpointing (training only)."""
    for block in blocks:
        if use_checkpoint and torch.is_grad_enabled():
            x = checkpoint(block, x, use_reentrant=False)
        else:
            x = block(x)
    return x


class VisionTransformer(nn.Module):
    """CLIP visual tower without the final projection: tokens [CLS, patches] after `norm_post`."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.width
        self.patch_embed = nn.Conv2d(
            cfg.channels, d, kernel_size=cfg.patch_size, stride=cfg.patch_size, bias=False
        )
        self.class_embedding = nn.Parameter(torch.zeros(d))
        self.pos_embed = nn.Parameter(torch.zeros(1 + cfg.num_patches, d))  # 2-D, as CLIP
        self.norm_pre = LayerNormFp32(d, eps=cfg.layer_norm_eps)
        self.blocks = nn.ModuleList(
            ResidualAttentionBlock(d, cfg.heads, cfg.mlp_ratio, cfg.layer_norm_eps) for _ in range(cfg.layers)
        )
        self.norm_post = LayerNormFp32(d, eps=cfg.layer_norm_eps)
        self.grad_checkpointing = False
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """CLIP's initialisation (only matters when training from scratch, e.g. tests)."""
        d, n = self.cfg.width, self.cfg.layers
        scale = d**-0.5
        nn.init.normal_(self.class_embedding, std=scale)
        if self.cfg.pos_init == "sincos":
            self.pos_embed.copy_(sincos_pos_embed_2d(d, self.cfg.grid, cls_token=True))
        else:
            nn.init.normal_(self.pos_embed, std=scale)
        for block in self.blocks:
            nn.init.normal_(block.attn.in_proj.weight, std=scale)
            nn.init.zeros_(block.attn.in_proj.bias)
            nn.init.normal_(block.attn.out_proj.weight, std=scale * (2 * n) ** -0.5)
            nn.init.zeros_(block.attn.out_proj.bias)
            nn.init.normal_(block.mlp.fc1.weight, std=(2 * d) ** -0.5)
            nn.init.normal_(block.mlp.fc2.weight, std=scale * (2 * n) ** -0.5)

    def forward(
        self, pixel_values: torch.Tensor, noise: torch.Tensor | None = None, mask_ratio: float = 0.0
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Encode images, optionally removing a random subset of patches (MIM).

        Args:
            pixel_values: [B, C, H, W], H = W = image_size.
            noise: [B, L_i] noise driving the masking (argsort ascending, smallest kept).
            mask_ratio: fraction of patches to remove; 0 disables masking.

        Returns:
            tokens [B, 1+L_i', width]; mask [B, L_i] (1 = removed) and ids_restore [B, L_i], or None.
        """
        x = self.patch_embed(pixel_values)  # [B, C, H, W] -> [B, width, gh, gw]
        x = x.flatten(2).transpose(1, 2)  # -> [B, L_i, width]
        if x.shape[1] != self.pos_embed.shape[0] - 1:
            h, w = pixel_values.shape[-2:]
            raise M3AEError(
                f"a {h}x{w} image gives {x.shape[1]} patches; the model expects "
                f"{self.pos_embed.shape[0] - 1} (image_size={self.cfg.image_size})"
            )
        pos = self.pos_embed.to(x.dtype)
        # the position embedding is added before patches are dropped, so kept tokens keep their place
        x = x + pos[1:]
        mask = ids_restore = None
        if mask_ratio > 0:
            x, mask, ids_restore = random_masking(x, mask_ratio, noise=noise)  # [B, L_i', width]
        cls = (self.class_embedding.to(x.dtype) + pos[0]).expand(x.shape[0], 1, -1)  # CLS is never masked
        x = torch.cat([cls, x], dim=1)  # [B, 1+L_i', width]
        x = self.norm_pre(x)
        x = run_blocks(self.blocks, x, self.grad_checkpointing and self.training)
        return self.norm_post(x), mask, ids_restore
