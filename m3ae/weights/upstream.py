"""Convert official M3AE (zhjohnchan/M3AE, PyTorch Lightning) checkpoints to our module tree.

`convert_upstream_state_dict` is a pure function: it renames every key through an explicit
table, drops only keys on an allow-list (CLIP text leftovers, the RoBERTa pooler,
`position_ids`, the fixed MIM position table), asserts every shape against the target model,
and resamples the vision position table to the requested grid. Anything else missing or
unexpected is an error that lists the keys.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from m3ae.errors import CheckpointError
from m3ae.models.config import (
    HEAD_NAMES,
    FusionConfig,
    ModelConfig,
    PixelDecoderConfig,
    TextConfig,
    VisionConfig,
)
from m3ae.models.heads import init_irtr_from_itm
from m3ae.models.io import check_state_dict, resize_pos_table
from m3ae.models.m3ae import M3AE
from m3ae.models.masking import sincos_pos_embed_2d
from m3ae.weights.unpickle import Placeholder, load_checkpoint_file

# --------------------------------------------------------------------------- key table
# Templates: {n} = a layer index, {p} = weight|bias, {r} = any remainder. Each pair is
# (upstream name, our name); the same table drives both directions.
_CLIP_BLOCK = [
    ("ln_1.{p}", "norm1.{p}"),
    ("ln_2.{p}", "norm2.{p}"),
    ("attn.in_proj_weight", "attn.in_proj.weight"),
    ("attn.in_proj_bias", "attn.in_proj.bias"),
    ("attn.out_proj.{p}", "attn.out_proj.{p}"),
    ("mlp.c_fc.{p}", "mlp.fc1.{p}"),
    ("mlp.c_proj.{p}", "mlp.fc2.{p}"),
]
_FUSION_LAYER = [
    ("attention.self.query.{p}", "self_attn.query.{p}"),
    ("attention.self.key.{p}", "self_attn.key.{p}"),
    ("attention.self.value.{p}", "self_attn.value.{p}"),
    ("attention.output.dense.{p}", "self_attn.out.{p}"),
    ("attention.output.LayerNorm.{p}", "self_attn.norm.{p}"),
    ("crossattention.self.query.{p}", "cross_attn.query.{p}"),
    ("crossattention.self.key.{p}", "cross_attn.key.{p}"),
    ("crossattention.self.value.{p}", "cross_attn.value.{p}"),
    ("crossattention.output.dense.{p}", "cross_attn.out.{p}"),
    ("crossattention.output.LayerNorm.{p}", "cross_attn.norm.{p}"),
    ("intermediate.dense.{p}", "fc1.{p}"),
    ("output.dense.{p}", "fc2.{p}"),
    ("output.LayerNorm.{p}", "norm.{p}"),
]


def _build_table() -> list[tuple[str, str]]:
    table = [
        ("vision_encoder.visual.class_embedding", "vision_encoder.class_embedding"),
        ("vision_encoder.visual.positional_embedding", "vision_encoder.pos_embed"),
        ("vision_encoder.visual.conv1.weight", "vision_encoder.patch_embed.weight"),
        ("vision_encoder.visual.ln_pre.{p}", "vision_encoder.norm_pre.{p}"),
        ("vision_encoder.visual.ln_post.{p}", "vision_encoder.norm_post.{p}"),
        ("multi_modal_language_proj.{p}", "text_proj.{p}"),
        ("multi_modal_vision_proj.{p}", "vision_proj.{p}"),
        ("modality_type_embeddings.weight", "modality_embed.weight"),
        ("multi_modal_language_pooler.dense.{p}", "poolers.text.dense.{p}"),
        ("multi_modal_vision_pooler.dense.{p}", "poolers.image.dense.{p}"),
        ("mlm_head.bias", "heads.mlm.bias"),
        ("mlm_head.transform.dense.{p}", "heads.mlm.transform.dense.{p}"),
        ("mlm_head.transform.LayerNorm.{p}", "heads.mlm.transform.norm.{p}"),
        ("mlm_head.decoder.weight", "heads.mlm.decoder.weight"),
        ("mim_head.mask_token", "heads.mim.mask_token"),
        ("mim_head.decoder_embed.{p}", "heads.mim.decoder_embed.{p}"),
        ("mim_head.decoder_norm.{p}", "heads.mim.decoder_norm.{p}"),
        ("mim_head.decoder_pred.{p}", "heads.mim.decoder_pred.{p}"),
        ("itm_head.fc.{p}", "heads.itm.{p}"),
        ("irtr_head.{p}", "heads.irtr.{p}"),
    ]
    for head in ("vqa", "cls"):
        table += [
            (f"{head}_head.0.{{p}}", f"heads.{head}.fc1.{{p}}"),
            (f"{head}_head.1.{{p}}", f"heads.{head}.norm.{{p}}"),
            (f"{head}_head.3.{{p}}", f"heads.{head}.fc2.{{p}}"),
        ]
    for up, ours in _CLIP_BLOCK:
        table.append(
            (f"vision_encoder.visual.transformer.resblocks.{{n}}.{up}", f"vision_encoder.blocks.{{n}}.{ours}")
        )
        table.append((f"mim_head.decoder.resblocks.{{n}}.{up}", f"heads.mim.blocks.{{n}}.{ours}"))
    for stream_up, stream in (("language", "text"), ("vision", "image")):
        for up, ours in _FUSION_LAYER:
            table.append(
                (f"multi_modal_{stream_up}_layers.{{n}}.{up}", f"fusion.{stream}_layers.{{n}}.{ours}")
            )
    # the text tower keeps HF names under another prefix (pooler/position_ids are dropped first)
    table.append(("language_encoder.{r}", "text_encoder.{r}"))
    return table


def _compile(template: str) -> re.Pattern[str]:
    pattern = re.escape(template)
    pattern = pattern.replace(r"\{n\}", r"(?P<n>\d+)").replace(r"\{p\}", r"(?P<p>weight|bias)")
    return re.compile(pattern.replace(r"\{r\}", r"(?P<r>.+)") + r"\Z")


_TABLE = _build_table()
_UP_TO_OURS = [(_compile(up), ours) for up, ours in _TABLE]
_OURS_TO_UP = [(_compile(ours), up) for up, ours in _TABLE]

# upstream keys we deliberately do not build, with the reason shown in the report
DROPPABLE = {
    "vision_encoder.positional_embedding": "CLIP text tower leftover (unused upstream)",
    "vision_encoder.token_embedding.weight": "CLIP text tower leftover (unused upstream)",
    "vision_encoder.ln_final.weight": "CLIP text tower leftover (unused upstream)",
    "vision_encoder.ln_final.bias": "CLIP text tower leftover (unused upstream)",
    "language_encoder.embeddings.position_ids": "buffer, recomputed by transformers",
    "language_encoder.pooler.dense.weight": "RoBERTa pooler (unused upstream)",
    "language_encoder.pooler.dense.bias": "RoBERTa pooler (unused upstream)",
    "mim_head.decoder_pos_embed": "fixed sin-cos table, rebuilt from the grid",
}


def _rename(key: str, rules: list[tuple[re.Pattern[str], str]]) -> str | None:
    for pattern, target in rules:
        m = pattern.match(key)
        if m:
            return target.format(**m.groupdict())
    return None


def upstream_to_ours(key: str) -> str | None:
    """Our name for an upstream key, or None when the table has no rule for it."""
    return _rename(key, _UP_TO_OURS)


def ours_to_upstream(key: str) -> str | None:
    """The upstream name for one of our keys, or None."""
    return _rename(key, _OURS_TO_UP)


# --------------------------------------------------------------------------- report
@dataclass
class ConversionReport:
    """What a conversion did; `lines()` renders it for the CLI."""

    converted: int = 0
    """Tensors renamed into our tree."""
    dropped: dict[str, str] = field(default_factory=dict)
    """Upstream key -> reason it was dropped (allow-listed only)."""
    resized: list[str] = field(default_factory=list)
    """Our keys whose tensors were resampled."""
    inferred: dict[str, Any] = field(default_factory=dict)
    """Sizes inferred from the checkpoint."""
    notes: list[str] = field(default_factory=list)
    """Other remarks."""

    def lines(self) -> list[str]:
        """The report as printable lines."""
        out = [f"converted {self.converted} tensors"]
        out += [f"dropped {k}: {why}" for k, why in self.dropped.items()]
        out += [f"resized {k}" for k in self.resized]
        out += [f"inferred {k} = {v}" for k, v in self.inferred.items()]
        return out + self.notes


# --------------------------------------------------------------------------- config inference
def _count(sd: dict[str, torch.Tensor], prefix: str) -> int:
    """Number of numbered sub-modules under `prefix` (e.g. resblocks.{n})."""
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    return len({m.group(1) for k in sd for m in [pat.match(k)] if m})


def _heads_for(width: int) -> int:
    # CLIP and BERT-base use 64-wide heads; tiny test models fall back to one head
    return max(1, width // 64)


def _shape(sd: dict[str, torch.Tensor], key: str) -> tuple[int, ...]:
    if key not in sd:
        raise CheckpointError(f"checkpoint has no {key!r}; is this an M3AE checkpoint?")
    return tuple(sd[key].shape)


def _upstream_towers(sd: dict[str, torch.Tensor], hp: dict[str, Any],
                     image_size: int | None) -> tuple[VisionConfig, TextConfig, FusionConfig]:
    """The vision, text and fusion configs of an upstream state dict (sizes) and its Sacred config."""
    width, channels, patch, _ = _shape(sd, "vision_encoder.visual.conv1.weight")
    grid = round((_shape(sd, "vision_encoder.visual.positional_embedding")[0] - 1) ** 0.5)
    vision = VisionConfig(
        image_size=image_size or grid * patch,
        patch_size=patch,
        width=width,
        channels=channels,
        layers=_count(sd, "vision_encoder.visual.transformer.resblocks."),
        heads=_heads_for(width),
        mlp_ratio=_shape(sd, "vision_encoder.visual.transformer.resblocks.0.mlp.c_fc.weight")[0] / width,
    )
    vocab, hidden = _shape(sd, "language_encoder.embeddings.word_embeddings.weight")
    text = TextConfig(
        model_type="roberta",
        vocab_size=vocab,
        hidden_size=hidden,
        num_heads=_heads_for(hidden),
        num_layers=_count(sd, "language_encoder.encoder.layer."),
        intermediate_size=_shape(sd, "language_encoder.encoder.layer.0.intermediate.dense.weight")[0],
        max_position_embeddings=_shape(sd, "language_encoder.embeddings.position_embeddings.weight")[0],
        type_vocab_size=_shape(sd, "language_encoder.embeddings.token_type_embeddings.weight")[0],
    )
    d = _shape(sd, "multi_modal_language_proj.weight")[0]
    fusion = FusionConfig(
        width=d,
        layers=_count(sd, "multi_modal_language_layers."),
        heads=int(hp.get("num_heads", _heads_for(d))),
        mlp_ratio=_shape(sd, "multi_modal_language_layers.0.intermediate.dense.weight")[0] / d,
        dropout=float(hp.get("drop_rate", 0.1)),
    )
    return vision, text, fusion


def infer_config_from_upstream(
    sd: dict[str, torch.Tensor], hparams_config: dict[str, Any] | None = None, image_size: int | None = None
) -> ModelConfig:
    """Infer a `ModelConfig` from an upstream state dict (sizes) and its saved Sacred config.

    Args:
        sd: upstream state dict.
        hparams_config: `ckpt["hyper_parameters"]["config"]` (may be empty).
        image_size: target resolution; default = the grid stored in the checkpoint.
    """
    hp = dict(hparams_config or {})
    vision, text, fusion = _upstream_towers(sd, hp, image_size)
    heads = [h for h in HEAD_NAMES if any(k.startswith(f"{h}_head.") for k in sd)]
    decoder = PixelDecoderConfig()
    if "mim" in heads:
        dw = _shape(sd, "mim_head.decoder_embed.weight")[0]
        decoder = PixelDecoderConfig(
            width=dw,
            depth=_count(sd, "mim_head.decoder.resblocks."),
            heads=int(hp.get("mim_decoder_num_heads", _heads_for(dw))),
            mlp_ratio=_shape(sd, "mim_head.decoder.resblocks.0.mlp.c_fc.weight")[0] / dw,
        )
    mim_layer = int(hp.get("mim_layer", -1))
    if not -(fusion.layers + 1) <= mim_layer <= fusion.layers:
        mim_layer = -1
    return ModelConfig(
        vision=vision,
        text=text,
        fusion=fusion,
        pixel_decoder=decoder,
        mask_ratio_image=float(hp.get("mim_prob", 0.75)),
        mim_layer=mim_layer,
        norm_pix_loss=bool(hp.get("norm_pix_loss", True)),
        heads=tuple(heads),
        num_answers=_shape(sd, "vqa_head.3.weight")[0] if "vqa" in heads else 0,
        num_classes=_shape(sd, "cls_head.3.weight")[0] if "cls" in heads else 0,
        name="upstream",
    )


# --------------------------------------------------------------------------- conversion
def expected_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Our state-dict key -> shape for `config`, computed without allocating weights."""
    with torch.device("meta"):
        model = M3AE(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def convert_upstream_state_dict(
    sd: dict[str, torch.Tensor], config: ModelConfig
) -> tuple[dict[str, torch.Tensor], ConversionReport]:
    """Rename an upstream state dict to our keys, strictly.

    Args:
        sd: the checkpoint's `state_dict`.
        config: the target configuration (its image size decides the position grid).

    Returns:
        (our state dict, report).

    Raises:
        CheckpointError: unknown or missing keys, or a shape mismatch, all listed.
    """
    report = ConversionReport()
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if key in DROPPABLE:
            report.dropped[key] = DROPPABLE[key]
        else:  # a key without a rule keeps its upstream name and is reported as unexpected
            out[upstream_to_ours(key) or key] = value
    want = expected_shapes(config)
    pos = "vision_encoder.pos_embed"
    before = tuple(out[pos].shape) if pos in out else None
    if pos in want and resize_pos_table(out, pos, want[pos], config.vision.grid):
        report.resized.append(f"{pos} {before} -> {want[pos]}")
    check_state_dict(want, out, "checkpoint (M3AE layout)", display=lambda k: ours_to_upstream(k) or k)
    _check_decoder_pos_embed(sd, config, report)
    report.converted = len(out)
    return out, report


def _check_decoder_pos_embed(
    sd: dict[str, torch.Tensor], config: ModelConfig, report: ConversionReport
) -> None:
    """The upstream MIM table is a frozen parameter; ours is rebuilt. Say whether they agree."""
    if "mim_head.decoder_pos_embed" not in sd or sd["mim_head.decoder_pos_embed"].is_meta:
        return  # a shape-only (meta) state dict has no values to compare
    stored = sd["mim_head.decoder_pos_embed"].float().reshape(-1, sd["mim_head.decoder_pos_embed"].shape[-1])
    grid = round((stored.shape[0] - 1) ** 0.5)
    ours = sincos_pos_embed_2d(stored.shape[1], grid, cls_token=True)
    if ours.shape == stored.shape and torch.allclose(ours, stored, atol=1e-5):
        report.notes.append("mim_head.decoder_pos_embed equals our sin-cos table")
    else:
        report.notes.append(
            "WARNING: mim_head.decoder_pos_embed differs from our sin-cos table; ours is used"
        )


def to_upstream_state_dict(
    sd: dict[str, torch.Tensor],
    config: ModelConfig,
    leftover_shapes: dict[str, tuple[int, ...]] | None = None,
) -> dict[str, torch.Tensor]:
    """Inverse mapping (tests, parity): our state dict -> upstream names, with upstream's leftovers.

    Adds the CLIP text leftovers (random, shapes from `leftover_shapes` or CLIP's), the RoBERTa
    pooler, `position_ids` and the MIM `decoder_pos_embed`, like a real upstream checkpoint.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        up = ours_to_upstream(key)
        if up is None:
            raise KeyError(f"no upstream name for {key}")
        out[up] = value.clone()
    shapes = {
        "vision_encoder.positional_embedding": (77, 512),
        "vision_encoder.token_embedding.weight": (49408, 512),
        "vision_encoder.ln_final.weight": (512,),
        "vision_encoder.ln_final.bias": (512,),
    }
    shapes.update(leftover_shapes or {})
    for key, shape in shapes.items():
        out[key] = torch.randn(shape)
    h = config.text.hidden_size
    out["language_encoder.pooler.dense.weight"] = torch.randn(h, h)
    out["language_encoder.pooler.dense.bias"] = torch.zeros(h)
    out["language_encoder.embeddings.position_ids"] = torch.arange(config.text.max_position_embeddings)[None]
    if "mim" in config.heads:
        table = sincos_pos_embed_2d(config.pixel_decoder.width, config.vision.grid, cls_token=True)
        out["mim_head.decoder_pos_embed"] = table.unsqueeze(0)
    return out


# --------------------------------------------------------------------------- files
def _plain(obj: Any) -> dict[str, Any]:
    """A dict from a dict, or from an inert placeholder (AttributeDict, Namespace...)."""
    if isinstance(obj, dict):
        return obj
    return obj.as_dict() if isinstance(obj, Placeholder) else {}


def _hparams_config(ckpt: dict[str, Any]) -> dict[str, Any]:
    """The saved Sacred config: `hyper_parameters["config"]` (or the hyper-parameters themselves)."""
    hp = _plain(ckpt.get("hyper_parameters") or {})
    return _plain(hp.get("config", hp))


def read_upstream(
    path: str | Path, image_size: int | None = None
) -> tuple[ModelConfig, dict[str, torch.Tensor], ConversionReport]:
    """Read an official `.ckpt` safely and convert it: (config, our state dict, report)."""
    ckpt = load_checkpoint_file(path)
    sd = ckpt.get("state_dict")
    if not isinstance(sd, dict):
        raise CheckpointError(
            f"{path}: no 'state_dict' in the checkpoint (keys: {sorted(map(str, ckpt))[:10]})"
        )
    hp = _hparams_config(ckpt)
    try:
        config = infer_config_from_upstream(sd, hp, image_size=image_size)
        converted, report = convert_upstream_state_dict(sd, config)
    except CheckpointError as err:
        raise CheckpointError(f"{path}: {err}") from None
    report.inferred = {
        "image_size": config.vision.image_size,
        "patch_size": config.vision.patch_size,
        "vision": f"{config.vision.layers} blocks x {config.vision.width}",
        "text": f"{config.text.num_layers} layers x {config.text.hidden_size}, V {config.text.vocab_size}",
        "fusion": f"{config.fusion.layers} layers x {config.fusion.width}, {config.fusion.heads} heads",
        "heads": list(config.heads),
        "num_answers": config.num_answers,
        "num_classes": config.num_classes,
        "mim_layer": config.mim_layer,
    }
    return config, converted, report


def convert_checkpoint(path: str | Path, image_size: int | None = None) -> tuple[Any, ConversionReport]:
    """Official `.ckpt` -> (M3AE, report). Adds an `irtr` head from ITM's match row when absent."""
    config, sd, report = read_upstream(path, image_size=image_size)
    add_irtr = "itm" in config.heads and "irtr" not in config.heads
    model = M3AE(config.with_heads([*config.heads, "irtr"]) if add_irtr else config)
    model.load_state_dict(sd, strict=not add_irtr)
    if add_irtr:
        init_irtr_from_itm(model.heads, sd)
        report.notes.append("heads.irtr initialised from the ITM 'match' row (itm row 1)")
    return model, report


def load_upstream(path: str | Path, image_size: int | None = None) -> Any:
    """Load an official M3AE `.ckpt` (pre-trained or fine-tuned) as an `M3AE`, in eval mode.

    Args:
        path: local checkpoint file (never downloaded).
        image_size: input resolution; the vision position table is resized bicubically.
    """
    model, _ = convert_checkpoint(path, image_size=image_size)
    return model.eval()
