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


def _dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """`F.dropout` in training (p > 0); the cheaper `cpu_dropout` on CPU."""
    if p == 0.0:
        return x
    return cpu_dropout(x, p) if x.device.type == "cpu" else F.dropout(x, p, True)


class _MaskedScale(torch.autograd.Function):
    """x * keep * scale with a boolean `keep`; saves only the 1-byte mask for backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, keep: torch.Tensor, scale: float) -> torch.Tensor:  # noqa: D102
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return torch.where(keep, x, 0).mul_(scale)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: D102
        (keep,) = ctx.saved_tensors
        return torch.where(keep, grad, 0).mul_(ctx.scale), None, None


def cpu_dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """Inverted dropout (drop with probability p, scale kept values by 1/(1-p)), as `F.dropout`.

    CPU `bernoulli_` costs ~7 ns per element. Here the keep mask comes from one uniform 31-bit
    integer per element (`random_` on int32, ~2 ns), compared against round(p * 2**31): the
    same distribution up to a 2**-31 granularity (finer than the 2**-24 of a float uniform).
    Backward keeps a bool mask instead of a float one. Draws come from torch's default CPU
    generator, so `manual_seed` and activation checkpointing (which replays the RNG state)
    behave as with `F.dropout` (the random streams differ, the distribution does not).
    """
    if p <= 0.0:
        return x
    if p >= 1.0:
        return x * 0.0
    bits = torch.empty(x.shape, dtype=torch.int32, device=x.device).random_()  # uniform [0, 2**31)
    keep = bits >= round(p * 2**31)
    return _MaskedScale.apply(x, keep, 1.0 / (1.0 - p))


BATCHED_ATTENTION_ELEMENTS = 1 << 20
"""Score tensors up to this many elements (4 MiB in fp32) are computed for the whole batch at once;
larger ones one batch row at a time, so that their temporaries stay small enough to be reused."""


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, dropout_p: float
) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + mask) v with dropout on the probabilities; [B, h, N, d] layout.

    `mask` is None or boolean, broadcastable to [B, h, N, M], True = attend (`key_padding_mask`).

    Without dropout this is SDPA (its fused CPU kernel). With dropout on CPU, SDPA falls back to
    its generic math path (a safe-softmax with extra full-size passes, float dropout masks and
    several [B, h, N, M] temporaries that are mmap-allocated and page-faulted on every call), so
    we compute the same thing explicitly: for the whole batch when the score tensor is small
    (`BATCHED_ATTENTION_ELEMENTS`), else one batch row at a time (keeps temporaries small enough
    for the allocator to reuse). Masked keys get the dtype's most negative value, i.e.
    exactly zero weight whenever a row has at least one real key (the CLS token always is).
    Under autocast or with bf16/fp16 inputs the attention itself runs in fp32.
    """
    if q.device.type != "cpu":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
    if q.dtype in (torch.float16, torch.bfloat16) or torch.is_autocast_enabled("cpu"):
        # bf16/fp16 (autocast or low-precision weights): attend in fp32 and cast the result back.
        # SDPA's math path upcasts the same way; its flash kernel with bf16 inputs rounds the
        # probabilities to bf16 and is slower on CPU than the fp32 one.
        dtype = q.dtype
        with torch.autocast("cpu", enabled=False):
            out = attention(q.float(), k.float(), v.float(), mask, dropout_p)
        return out.to(dtype)
    if dropout_p == 0.0:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    scale = q.shape[-1] ** -0.5
    if q.shape[0] * q.shape[1] * q.shape[2] * k.shape[2] <= BATCHED_ATTENTION_ELEMENTS:
        # small score tensors (the CPU demo's sizes): one batched pass, no Python loop over rows
        scores = torch.matmul(q, k.transpose(-1, -2)) * scale  # [B, h, N, M]
        if mask is not None:
            scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        return torch.matmul(cpu_dropout(torch.softmax(scores, dim=-1), dropout_p), v)
    outs = []
    for i in range(q.shape[0]):
        scores = torch.matmul(q[i], k[i].transpose(-1, -2))  # [h, N, M]
        scores = scores * scale
        if mask is not None:
            scores = scores.masked_fill(~mask[i], torch.finfo(scores.dtype).min)
        probs = cpu_dropout(torch.softmax(scores, dim=-1), dropout_p)
        outs.append(torch.matmul(probs, v[i]))  # [h, N, d]
    return torch.stack(outs)


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
        attn = attention(q, k, v, context_mask, drop)
        attn = attn.transpose(1, 2).reshape(x.shape)  # [B, h, N, d/h] -> [B, N, D]
        return self.norm(x + _dropout(self.out(attn), drop))


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
        return self.norm(x + _dropout(h, self.dropout if self.training else 0.0))


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
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """Fuse the streams.

        Args:
            text: [B, L_t, D].
            text_mask: [B, L_t] with 1 = real token.
            image: [B, 1+L_i', D].
            image_mask: [B, 1+L_i'] or None (no image padding).

        Returns:
            text [B, L_t, D], image [B, 1+L_i', D], then image_hidden and text_hidden: layers+1
            tensors each, the stream's input of each layer followed by the final output (the
            decoders read the layer their config names).
        """
        t_mask, i_mask = key_padding_mask(text_mask), key_padding_mask(image_mask)
        use_ckpt = self.grad_checkpointing and self.training and torch.is_grad_enabled()
        image_hidden, text_hidden = [image], [text]
        for text_layer, image_layer in zip(self.text_layers, self.image_layers, strict=True):
            if use_ckpt:
                new_text = checkpoint(text_layer, text, t_mask, image, i_mask, use_reentrant=False)
                new_image = checkpoint(image_layer, image, i_mask, text, t_mask, use_reentrant=False)
            else:
                new_text = text_layer(text, t_mask, image, i_mask)
                new_image = image_layer(image, i_mask, text, t_mask)
            text, image = new_text, new_image  # simultaneous update from the previous outputs
            image_hidden.append(image)
            text_hidden.append(text)
        return text, image, image_hidden, text_hidden
