"""Typed configuration of the M3AE model and the registry of named presets.

Every component has its own dataclass; `ModelConfig` composes them. All fields are plain
numbers, strings, tuples or nested dataclasses, so `to_dict()` is JSON/YAML-safe and
`from_dict(to_dict())` round-trips. Validation happens in `__post_init__` so that a bad
recipe fails when it is read, not deep inside a forward pass.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from typing import Any

from m3ae.errors import M3AEError

HEAD_NAMES = ("mlm", "mim", "itm", "vqa", "cls", "irtr", "itc")
"""Every task head the model can carry, in the order they are built."""

PRETRAIN_HEADS = ("mlm", "mim", "itm")
MLM_DECODERS = ("mlp", "transformer")
POS_INITS = ("sincos", "random")


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise M3AEError(msg)


@dataclass
class VisionConfig:
    """CLIP-style ViT image encoder."""

    image_size: int = 288
    """Input side in pixels (square images); must be a multiple of `patch_size`."""
    patch_size: int = 16
    """Side P of a square patch; the conv patch embedding has kernel = stride = P."""
    width: int = 768
    """Token width of the vision tower."""
    layers: int = 11
    """Number of residual blocks actually built (upstream keeps 11 of CLIP's 12)."""
    heads: int = 12
    """Attention heads per block (CLIP uses width // 64)."""
    mlp_ratio: float = 4.0
    """MLP hidden size = width * mlp_ratio."""
    channels: int = 3
    """Input image channels C."""
    layer_norm_eps: float = 1e-5
    """LayerNorm epsilon (CLIP: 1e-5, computed in fp32)."""
    pos_init: str = "random"
    """How the learned position table starts when the tower is trained from scratch: "random" (CLIP's
    N(0, width^-0.5)) or "sincos" (MAE's 2-D sine-cosine table, so a patch's place is readable from the
    first step). On synthetic shapes of random colours, which half of the image the shape is in stayed
    at chance for 300 steps from "random" and reached 100% from "sincos"; but fine-tuning m3ae-small
    from scratch on VQA-RAD (10 epochs, 64 px) scored 57.4 from "sincos" against 62.5 from "random"
    (docs/learning.md), so "random" stays the default. Loaded weights replace the table either way."""

    def __post_init__(self) -> None:
        _check(self.pos_init in POS_INITS, f"vision.pos_init must be one of {list(POS_INITS)}, got {self.pos_init!r}")
        _check(
            self.image_size % self.patch_size == 0,
            f"vision.image_size={self.image_size} is not a multiple of patch_size={self.patch_size}",
        )
        _check(
            self.width % self.heads == 0, f"vision.width={self.width} is not divisible by heads={self.heads}"
        )
        _check(self.layers >= 1 and self.channels >= 1, "vision.layers and vision.channels must be >= 1")

    @property
    def grid(self) -> tuple[int, int]:
        """Patch grid (grid_h, grid_w)."""
        g = self.image_size // self.patch_size
        return (g, g)

    @property
    def num_patches(self) -> int:
        """L_i = grid_h * grid_w."""
        return self.grid[0] * self.grid[1]

    @property
    def mlp_width(self) -> int:
        """MLP hidden size."""
        return int(self.width * self.mlp_ratio)


@dataclass
class TextConfig:
    """A BERT-family text encoder (RoBERTa or BERT/MiniLM) built with `transformers`."""

    model_type: str = "roberta"
    """"roberta" or "bert"; picks the transformers class and the position-id rule."""
    vocab_size: int = 50265
    """Token vocabulary size V."""
    hidden_size: int = 768
    """Width of the text tower (projected to the fusion width D afterwards)."""
    num_layers: int = 12
    """Transformer layers of the text tower."""
    num_heads: int = 12
    """Attention heads per layer."""
    intermediate_size: int = 3072
    """FFN hidden size."""
    max_position_embeddings: int = 514
    """Rows of the position table (RoBERTa: 512 + 2, offset by the padding index)."""
    pad_token_id: int = 1
    """Padding id (RoBERTa 1, BERT 0); RoBERTa derives position ids from it."""
    type_vocab_size: int = 1
    """Rows of the token-type table (RoBERTa 1, BERT 2)."""
    layer_norm_eps: float = 1e-5
    """LayerNorm epsilon (RoBERTa 1e-5, BERT 1e-12)."""
    dropout: float = 0.1
    """Hidden and attention-probability dropout."""
    pretrained_path: str | None = None
    """Optional local folder with HF weights; read by `m3ae.weights` only, never by the constructor."""

    def __post_init__(self) -> None:
        _check(
            self.model_type in ("roberta", "bert"),
            f"text.model_type must be 'roberta' or 'bert', got {self.model_type!r}",
        )
        _check(
            self.hidden_size % self.num_heads == 0,
            f"text.hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}",
        )
        _check(0 <= self.pad_token_id < self.vocab_size, "text.pad_token_id must be a valid token id")

    def to_hf_config(self) -> Any:
        """The equivalent `transformers` config (RobertaConfig or BertConfig), SDPA attention."""
        from transformers import BertConfig, RobertaConfig

        cls = RobertaConfig if self.model_type == "roberta" else BertConfig
        return cls(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads,
            intermediate_size=self.intermediate_size,
            max_position_embeddings=self.max_position_embeddings,
            pad_token_id=self.pad_token_id,
            type_vocab_size=self.type_vocab_size,
            layer_norm_eps=self.layer_norm_eps,
            hidden_dropout_prob=self.dropout,
            attention_probs_dropout_prob=self.dropout,
            hidden_act="gelu",
            attn_implementation="sdpa",
        )


@dataclass
class FusionConfig:
    """Two-stream co-attention fusion (post-LN BERT-style cross layers)."""

    width: int = 768
    """Fusion width D shared by both streams."""
    layers: int = 6
    """Co-attention layers per stream."""
    heads: int = 12
    """Attention heads (self and cross attention)."""
    mlp_ratio: float = 4.0
    """FFN hidden size = width * mlp_ratio."""
    dropout: float = 0.1
    """Hidden and attention-probability dropout."""
    layer_norm_eps: float = 1e-12
    """LayerNorm epsilon (BERT default)."""

    def __post_init__(self) -> None:
        _check(
            self.width % self.heads == 0, f"fusion.width={self.width} is not divisible by heads={self.heads}"
        )
        _check(self.layers >= 1, "fusion.layers must be >= 1")

    @property
    def mlp_width(self) -> int:
        """MLP hidden size."""
        return int(self.width * self.mlp_ratio)


@dataclass
class PixelDecoderConfig:
    """The MIM pixel decoder (MAE-style)."""

    type: str = "transformer"
    """"transformer" (CLIP-style pre-LN blocks, as upstream) or "mlp" (ablation)."""
    width: int = 384
    """Decoder width."""
    depth: int = 4
    """Decoder blocks (upstream passes 4+1 to a "layers-1" builder: 4 blocks)."""
    heads: int = 6
    """Decoder attention heads."""
    mlp_ratio: float = 4.0
    """Block MLP hidden size = width * mlp_ratio."""

    def __post_init__(self) -> None:
        _check(
            self.type in ("transformer", "mlp"),
            f"pixel_decoder.type must be transformer|mlp, got {self.type!r}",
        )
        _check(
            self.width % self.heads == 0,
            f"pixel_decoder.width={self.width} is not divisible by heads={self.heads}",
        )


@dataclass
class ModelConfig:
    """The whole model: towers, fusion, decoders and which task heads exist."""

    vision: VisionConfig = field(default_factory=VisionConfig)
    """Image encoder."""
    text: TextConfig = field(default_factory=TextConfig)
    """Text encoder."""
    fusion: FusionConfig = field(default_factory=FusionConfig)
    """Co-attention fusion."""
    pixel_decoder: PixelDecoderConfig = field(default_factory=PixelDecoderConfig)
    """MIM decoder (only built when "mim" is in heads)."""
    mask_ratio_image: float = 0.75
    """Fraction of image patches removed in the MIM pass the weights were trained with: training
    writes it from ``task.mask_ratio`` when the model has a MIM head (the demo's reconstructions
    read it). The MLM share is a data setting (``data.mlm_probability``)."""
    mim_layer: int = 3
    """Index into `image_hidden` read by the MIM decoder: k = input of fusion layer k; -1 = last."""
    mlm_layer: int = -1
    """Index into `text_hidden` read by the MLM head: -1 = the last fusion layer (the paper); k = the
    input of fusion layer k (ablation: tokens reconstructed from an intermediate layer)."""
    mlm_decoder: str = "mlp"
    """MLM decoder design: "mlp" (BERT prediction head, as upstream) or "transformer" (ablation:
    `mlm_decoder_depth` self-attention blocks over the text stream before that head)."""
    mlm_decoder_depth: int = 1
    """Blocks of the "transformer" MLM decoder (fusion width and heads)."""
    norm_pix_loss: bool = True
    """Whether the MIM head learned per-patch normalised targets: written by training from
    ``task.norm_pix_loss`` when the model has a MIM head; read to de-normalise reconstructions."""
    pooling: str = "cls"
    """How each stream's pooler summarises it: "cls" (first token, the paper) or "mean" (mean of the
    real tokens; same parameters, learns faster in short fine-tuning)."""
    heads: tuple[str, ...] = PRETRAIN_HEADS
    """Task heads to build, among mlm, mim, itm, vqa, cls, irtr, itc (dual-encoder projections)."""
    num_answers: int = 0
    """Answer-set size A of the VQA head (required when "vqa" in heads)."""
    num_classes: int = 0
    """Classes K of the classification head (required when "cls" in heads)."""
    name: str = ""
    """Preset name this config came from (informational)."""

    def __post_init__(self) -> None:
        # accept plain dicts (from YAML/JSON) for the nested configs
        for key, cls in _SUBCONFIGS.items():
            value = getattr(self, key)
            if isinstance(value, dict):
                setattr(self, key, _from_dict(cls, value, f"model.{key}"))
        self.heads = tuple(self.heads)
        unknown = [h for h in self.heads if h not in HEAD_NAMES]
        _check(not unknown, f"unknown head(s) {unknown}; choose among {list(HEAD_NAMES)}")
        _check(len(set(self.heads)) == len(self.heads), f"duplicate heads in {list(self.heads)}")
        _check("vqa" not in self.heads or self.num_answers > 0, "the vqa head needs num_answers > 0")
        _check("cls" not in self.heads or self.num_classes > 0, "the cls head needs num_classes > 0")
        n = self.fusion.layers
        _check(
            -(n + 1) <= self.mim_layer <= n,
            f"mim_layer={self.mim_layer} out of range for {n} fusion layers (use 0..{n} or -1)",
        )
        _check(
            -(n + 1) <= self.mlm_layer <= n,
            f"mlm_layer={self.mlm_layer} out of range for {n} fusion layers (use 0..{n} or -1)",
        )
        _check(0.0 <= self.mask_ratio_image < 1.0, "mask_ratio_image must be in [0, 1)")
        _check(self.mlm_decoder in MLM_DECODERS,
               f"mlm_decoder must be one of {list(MLM_DECODERS)}, got {self.mlm_decoder!r}")
        _check(self.mlm_decoder_depth >= 1, f"mlm_decoder_depth must be >= 1, got {self.mlm_decoder_depth}")
        _check(self.pooling in ("cls", "mean"), f"pooling must be 'cls' or 'mean', got {self.pooling!r}")

    @property
    def width(self) -> int:
        """Fusion width D."""
        return self.fusion.width

    def to_dict(self) -> dict[str, Any]:
        """JSON/YAML-safe nested dict (tuples become lists)."""
        d = dataclasses.asdict(self)
        d["heads"] = list(self.heads)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """Inverse of `to_dict`; unknown keys raise `M3AEError` naming them.

        Keys that older versions wrote (`DEPRECATED_KEYS`) are dropped with a DeprecationWarning,
        so old model folders still load.
        """
        old = sorted(set(d) & set(DEPRECATED_KEYS))
        if old:
            warnings.warn("model config: ignoring " + "; ".join(f"{k} ({DEPRECATED_KEYS[k]})" for k in old),
                          DeprecationWarning, stacklevel=2)
            d = {k: v for k, v in d.items() if k not in DEPRECATED_KEYS}
        return _from_dict(cls, d, "model")

    def with_heads(
        self,
        names: list[str] | tuple[str, ...],
        num_answers: int | None = None,
        num_classes: int | None = None,
    ) -> ModelConfig:
        """A copy with another set of task heads (e.g. ["vqa"] for fine-tuning)."""
        return dataclasses.replace(
            self,
            heads=tuple(names),
            num_answers=self.num_answers if num_answers is None else num_answers,
            num_classes=self.num_classes if num_classes is None else num_classes,
        )

    def with_image_size(self, image_size: int) -> ModelConfig:
        """A copy at another input resolution (position embeddings are resized on load)."""
        return dataclasses.replace(self, vision=dataclasses.replace(self.vision, image_size=image_size))

    @classmethod
    def from_name(cls, name: str) -> ModelConfig:
        """A registered preset, e.g. "m3ae-base", "m3ae-small" or "m3ae-tiny"."""
        if name not in _PRESETS:
            raise M3AEError(f"unknown model {name!r}; available: {list_models()}")
        return _PRESETS[name]()


DEPRECATED_KEYS = {
    "mask_ratio_text": "nothing read it; the MLM share is data.mlm_probability",
}
"""Model-config keys older folders carry that are no longer fields -> why."""

_SUBCONFIGS = {
    "vision": VisionConfig,
    "text": TextConfig,
    "fusion": FusionConfig,
    "pixel_decoder": PixelDecoderConfig,
}


def _from_dict(cls: type, d: dict[str, Any], where: str) -> Any:
    if not isinstance(d, dict):
        raise M3AEError(f"{where}: expected a mapping, got {type(d).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise M3AEError(f"{where}: unknown key(s) {unknown}; valid keys: {sorted(names)}")
    return cls(**d)


def _base() -> ModelConfig:
    # Upstream M3AE: CLIP ViT-B/16 (11 blocks), RoBERTa-base, 6 co-attention layers of 768.
    return ModelConfig(name="m3ae-base")


def _small() -> ModelConfig:
    # CPU demo size: a MiniLM-L6-H384 (BERT) text tower and a small ViT.
    return ModelConfig(
        vision=VisionConfig(image_size=128, patch_size=16, width=192, layers=4, heads=3),
        text=TextConfig(
            model_type="bert",
            vocab_size=30522,
            hidden_size=384,
            num_layers=6,
            num_heads=12,
            intermediate_size=1536,
            max_position_embeddings=512,
            pad_token_id=0,
            type_vocab_size=2,
            layer_norm_eps=1e-12,
        ),
        fusion=FusionConfig(width=192, layers=2, heads=3),
        pixel_decoder=PixelDecoderConfig(width=128, depth=2, heads=4),
        mim_layer=1,
        name="m3ae-small",
    )


def _tiny() -> ModelConfig:
    # Test size. Head counts follow the max(1, width // 64) rule so that an upstream-layout
    # checkpoint of this size can be re-read by `infer_config_from_upstream`.
    return ModelConfig(
        vision=VisionConfig(image_size=32, patch_size=8, width=32, layers=2, heads=1),
        text=TextConfig(
            model_type="roberta",
            vocab_size=50265,
            hidden_size=32,
            num_layers=2,
            num_heads=1,
            intermediate_size=64,
            max_position_embeddings=66,
        ),
        fusion=FusionConfig(width=32, layers=2, heads=2),
        pixel_decoder=PixelDecoderConfig(width=16, depth=1, heads=2),
        mim_layer=1,
        name="m3ae-tiny",
    )


_PRESETS = {"m3ae-base": _base, "m3ae-small": _small, "m3ae-tiny": _tiny}


def list_models() -> list[str]:
    """Names accepted by `ModelConfig.from_name` and `create_model`."""
    return sorted(_PRESETS)
