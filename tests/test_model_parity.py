"""Parity of our modules with upstream-style computations written out by hand (float32, tiny sizes).

Upstream runs RoBERTa's embeddings and layers manually with an additive -10000 mask, CLIP blocks
through nn.MultiheadAttention, and METER's BertCrossLayer; we use transformers' RobertaModel,
SDPA and our own fusion layer. These tests pin that the results agree.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from m3ae.models.config import FusionConfig, TextConfig
from m3ae.models.fusion import FusionLayer, key_padding_mask
from m3ae.models.text import build_text_encoder, encode_text
from m3ae.models.vision import ResidualAttentionBlock

TOL = 2e-6


def _attention(x, ctx, w, prefix, heads, additive_mask):
    """BERT self-attention + output (dense, residual, LayerNorm) from raw weights."""
    b, n, d = x.shape

    def split(t):
        return t.reshape(b, -1, heads, d // heads).transpose(1, 2)

    q = split(F.linear(x, w[f"{prefix}query.weight"], w[f"{prefix}query.bias"]))
    k = split(F.linear(ctx, w[f"{prefix}key.weight"], w[f"{prefix}key.bias"]))
    v = split(F.linear(ctx, w[f"{prefix}value.weight"], w[f"{prefix}value.bias"]))
    scores = q @ k.transpose(-1, -2) / math.sqrt(d // heads) + additive_mask
    return (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, n, d)


def _extended(mask: torch.Tensor) -> torch.Tensor:
    return (1.0 - mask[:, None, None, :].float()) * -10000.0  # HF get_extended_attention_mask (4.6)


@torch.no_grad()
def test_roberta_matches_manual_upstream_computation() -> None:
    torch.manual_seed(0)
    cfg = TextConfig(
        vocab_size=100,
        hidden_size=32,
        num_layers=2,
        num_heads=4,
        intermediate_size=64,
        max_position_embeddings=20,
    )
    enc = build_text_encoder(cfg).eval()
    w = enc.state_dict()
    ids = torch.tensor([[0, 5, 6, 7, 2, 1, 1], [0, 9, 8, 7, 6, 5, 2]])
    mask = (ids != 1).long()
    # embeddings: RoBERTa position ids = padding_idx + running count of real tokens, pads -> padding_idx
    pos = torch.cumsum(mask, 1) * mask + 1
    x = w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][pos]
    x = x + w["embeddings.token_type_embeddings.weight"][0]
    x = F.layer_norm(x, (32,), w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], 1e-5)
    ext = _extended(mask)
    for i in range(2):
        p = f"encoder.layer.{i}."
        a = _attention(x, x, w, p + "attention.self.", 4, ext)
        a = F.linear(a, w[p + "attention.output.dense.weight"], w[p + "attention.output.dense.bias"])
        x = F.layer_norm(
            a + x,
            (32,),
            w[p + "attention.output.LayerNorm.weight"],
            w[p + "attention.output.LayerNorm.bias"],
            1e-5,
        )
        h = F.gelu(F.linear(x, w[p + "intermediate.dense.weight"], w[p + "intermediate.dense.bias"]))
        h = F.linear(h, w[p + "output.dense.weight"], w[p + "output.dense.bias"])
        x = F.layer_norm(h + x, (32,), w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"], 1e-5)
    ours = encode_text(enc, ids, mask)
    real = mask.bool()
    assert (ours - x)[real].abs().max() < TOL


@torch.no_grad()
def test_clip_block_matches_multihead_attention() -> None:
    torch.manual_seed(0)
    block = ResidualAttentionBlock(32, 4).eval()
    mha = torch.nn.MultiheadAttention(32, 4, batch_first=True)
    mha.in_proj_weight.copy_(block.attn.in_proj.weight)  # fused rows [q; k; v], as CLIP
    mha.in_proj_bias.copy_(block.attn.in_proj.bias)
    mha.out_proj.load_state_dict(block.attn.out_proj.state_dict())
    x = torch.randn(2, 5, 32)
    h = block.norm1(x)
    ref = x + mha(h, h, h, need_weights=False)[0]
    h = block.norm2(ref)
    ref = ref + block.mlp.fc2(
        F.linear(h, block.mlp.fc1.weight, block.mlp.fc1.bias).mul(
            torch.sigmoid(1.702 * F.linear(h, block.mlp.fc1.weight, block.mlp.fc1.bias))
        )
    )
    assert (block(x) - ref).abs().max() < TOL


@torch.no_grad()
def test_fusion_layer_matches_bert_cross_layer() -> None:
    torch.manual_seed(0)
    layer = FusionLayer(FusionConfig(width=32, layers=1, heads=4)).eval()
    w = {
        k.replace("self_attn.", "sa.").replace("cross_attn.", "ca."): v for k, v in layer.state_dict().items()
    }
    x, ctx = torch.randn(2, 5, 32), torch.randn(2, 7, 32)
    x_mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    ctx_mask = torch.tensor([[1, 1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1, 1]])

    def sub(inp, context, prefix, mask):
        a = _attention(
            inp,
            context,
            {k[len(prefix) :]: v for k, v in w.items() if k.startswith(prefix)},
            "",
            4,
            _extended(mask),
        )
        a = F.linear(a, w[prefix + "out.weight"], w[prefix + "out.bias"])
        return F.layer_norm(a + inp, (32,), w[prefix + "norm.weight"], w[prefix + "norm.bias"], 1e-12)

    h = sub(x, x, "sa.", x_mask)
    h = sub(h, ctx, "ca.", ctx_mask)
    f = F.linear(F.gelu(F.linear(h, w["fc1.weight"], w["fc1.bias"])), w["fc2.weight"], w["fc2.bias"])
    ref = F.layer_norm(f + h, (32,), w["norm.weight"], w["norm.bias"], 1e-12)
    ours = layer(x, key_padding_mask(x_mask), ctx, key_padding_mask(ctx_mask))
    assert (ours - ref).abs().max() < TOL


@torch.no_grad()
def test_masked_vision_path_follows_upstream_order() -> None:
    """Pos-embed added before the gather, CLS (with pos row 0) prepended, then ln_pre (spec 10.7)."""
    from m3ae.models.config import VisionConfig
    from m3ae.models.vision import VisionTransformer

    torch.manual_seed(0)
    tower = VisionTransformer(VisionConfig(image_size=32, patch_size=8, width=32, layers=2, heads=2)).eval()
    px, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 16)
    x = tower.patch_embed(px).flatten(2).transpose(1, 2) + tower.pos_embed[1:]
    keep = noise.argsort(1)[:, :4]
    x = torch.gather(x, 1, keep[..., None].expand(-1, -1, 32))
    cls = (tower.class_embedding + tower.pos_embed[0]).expand(2, 1, 32)
    x = tower.norm_pre(torch.cat([cls, x], 1))
    for block in tower.blocks:
        x = block(x)
    ours, mask, _ = tower(px, noise, 0.75)
    assert (ours - tower.norm_post(x)).abs().max() < TOL
    assert mask.sum().item() == 2 * 12


@torch.no_grad()
def test_pixel_decoder_puts_tokens_back_in_patch_order() -> None:
    """Kept tokens land at their own patch position, mask tokens everywhere else."""
    from m3ae.models.config import PixelDecoderConfig, VisionConfig
    from m3ae.models.decoders import PixelDecoder
    from m3ae.models.masking import random_masking

    torch.manual_seed(0)
    dec = PixelDecoder(PixelDecoderConfig(width=16, depth=1, heads=2), VisionConfig(32, 8, 32, 1, 1), 32).eval()
    tokens = torch.randn(2, 1 + 16, 32)
    kept, mask, ids_restore = random_masking(tokens[:, 1:], 0.75, noise=torch.rand(2, 16))
    ours = dec(torch.cat([tokens[:, :1], kept], 1), ids_restore)
    full = dec.decoder_embed(tokens)  # every patch embedded, then removed ones replaced
    full[:, 1:][mask.bool()] = dec.mask_token[0, 0]
    x = full + dec.decoder_pos_embed
    for block in dec.blocks:
        x = block(x)
    ref = dec.decoder_pred(dec.decoder_norm(x))[:, 1:]
    assert (ours - ref).abs().max() < TOL


def test_key_table_covers_the_upstream_inventory() -> None:
    """Spec 6.3 counts: pre-training 728 keys, VQA 670, retrieval 668 (with position_ids)."""
    from m3ae.models import M3AE, ModelConfig
    from m3ae.weights.upstream import to_upstream_state_dict

    small = {"vision_encoder.token_embedding.weight": (1, 1), "vision_encoder.positional_embedding": (1, 1)}
    base = ModelConfig.from_name("m3ae-base")
    for heads, count in ((["mlm", "mim", "itm"], 728), (["vqa"], 670), (["itm", "irtr"], 668)):
        cfg = base.with_heads(heads, num_answers=498)
        with torch.device("meta"):
            sd = M3AE(cfg).state_dict()
        assert len(to_upstream_state_dict(sd, cfg, leftover_shapes=small)) == count, heads
