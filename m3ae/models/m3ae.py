"""M3AE: wires the vision tower, the text tower, the co-attention fusion and the task heads.

The forward pass (`encode`) follows upstream's `infer()`:
image -> CLIP ViT (optionally masked) -> projection + modality row 1;
text -> RoBERTa -> projection + modality row 0; both -> fusion -> poolers -> cls_feats.
Heads are applied by the caller (a task) to the fields of `EncoderOutput`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from m3ae.models import io
from m3ae.models.config import ModelConfig
from m3ae.models.feature_cache import FrozenFeatureCache
from m3ae.models.fusion import CoAttentionFusion
from m3ae.models.heads import Pooler, build_heads, summarise
from m3ae.models.text import build_text_encoder, encode_text
from m3ae.models.vision import VisionTransformer

CHECKPOINT_PARTS = ("vision", "text", "fusion", "decoder")
"""What `M3AE.set_grad_checkpointing` can recompute: the two towers, the fusion layers, the MIM decoder."""

TEXT_TYPE, IMAGE_TYPE = 0, 1
"""Rows of `modality_embed` added to text and image tokens (upstream `image_token_type_idx=1`)."""


@dataclass
class ImageEmbeds:
    """Output of `M3AE.embed_image`: the image stream before fusion, reusable across passes."""

    embeds: torch.Tensor
    """[B, 1+L_i', D] projected tokens with the image modality row added (CLS first)."""
    mask: torch.Tensor | None = None
    """[B, L_i], 1 = removed patch; None when nothing was masked."""
    ids_restore: torch.Tensor | None = None
    """[B, L_i] permutation that restores patch order; None when nothing was masked."""


@dataclass
class EncoderOutput:
    """What `M3AE.encode` returns; the heads consume its fields."""

    text_feats: torch.Tensor
    """[B, L_t, D] final text stream."""
    image_feats: torch.Tensor
    """[B, 1+L_i', D] final image stream (CLS first)."""
    cls_feats: torch.Tensor
    """[B, 2D] = [text pooler, image pooler]."""
    image_hidden: list[torch.Tensor] = field(default_factory=list)
    """fusion.layers+1 tensors: the image-stream input of each fusion layer, then the final output."""
    image_mask: torch.Tensor | None = None
    """[B, L_i], 1 = removed (only when masked)."""
    ids_restore: torch.Tensor | None = None
    """[B, L_i] (only when masked)."""
    text_hidden: list[torch.Tensor] = field(default_factory=list)
    """fusion.layers+1 tensors: the text-stream input of each fusion layer, then the final output."""


def init_new_weights(module: nn.Module) -> None:
    """Upstream's init for modules trained from scratch: N(0, 0.02), zero bias, LayerNorm 1/0."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)
        if isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class M3AE(nn.Module):
    """Multi-modal masked autoencoder. Builds from a config; never reads files.

    Args:
        config: the model configuration (`ModelConfig.from_name("m3ae-tiny")`, ...).
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.frozen: tuple[str, ...] = ()
        self.text_cache: FrozenFeatureCache | None = None
        d = config.width
        self.vision_encoder = VisionTransformer(config.vision)
        self.text_encoder = build_text_encoder(config.text)
        self.vision_proj = nn.Linear(config.vision.width, d)
        self.text_proj = nn.Linear(config.text.hidden_size, d)
        self.modality_embed = nn.Embedding(2, d)
        self.fusion = CoAttentionFusion(config.fusion)
        self.poolers = nn.ModuleDict({"text": Pooler(d, config.pooling), "image": Pooler(d, config.pooling)})
        self.heads = build_heads(config)
        for part in (
            self.vision_proj,
            self.text_proj,
            self.modality_embed,
            self.fusion,
            self.poolers,
            self.heads,
        ):
            init_new_weights(part)
        if "mim" in self.heads:
            nn.init.normal_(self.heads["mim"].mask_token, std=0.02)

    # ------------------------------------------------------------------ forward
    def embed_image(
        self, pixel_values: torch.Tensor, image_noise: torch.Tensor | None = None, mask_ratio: float = 0.0
    ) -> ImageEmbeds:
        """Vision tower + projection + image modality embedding.

        Args:
            pixel_values: [B, C, H, W] CLIP-normalised.
            image_noise: [B, L_i] noise driving the masking (smallest values kept); drawn when None.
            mask_ratio: fraction of patches removed (0 = no masking).

        Returns:
            ImageEmbeds with embeds [B, 1+L_i', D] (and mask / ids_restore when masked).
        """
        with self._tower_grad("vision_encoder"):
            tokens, mask, ids_restore = self.vision_encoder(pixel_values, image_noise, mask_ratio)
        embeds = self.vision_proj(tokens) + self.modality_embed.weight[IMAGE_TYPE]  # [B, 1+L_i', D]
        return ImageEmbeds(embeds, mask, ids_restore)

    def empty_image(self, batch_size: int) -> ImageEmbeds:
        """An image stream that carries no image: one token, the image modality row. # -> [B, 1, D]

        The question-only baseline fuses the text with this instead of a picture, so it keeps the
        same text tower, fusion, poolers and head as the full model but never runs the vision tower.
        """
        return ImageEmbeds(self.modality_embed.weight[IMAGE_TYPE].expand(batch_size, 1, -1))

    def embed_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, cache: bool = True) -> torch.Tensor:
        """Text tower + projection + text modality embedding: [B, L_t] -> [B, L_t, D].

        cache=False bypasses the frozen-feature cache: for texts that never come back (MLM's
        randomly masked copies), which would only push useful rows out of it.
        """
        with self._tower_grad("text_encoder"):
            if cache and self.text_cache is not None:  # only set by cache_frozen_text(), on a frozen tower
                feats = self.text_cache(partial(encode_text, self.text_encoder), input_ids, attention_mask)
            else:
                feats = encode_text(self.text_encoder, input_ids, attention_mask)
        return self.text_proj(feats) + self.modality_embed.weight[TEXT_TYPE]

    def encode(
        self,
        pixel_values: torch.Tensor | None,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        image_noise: torch.Tensor | None = None,
        mask_ratio: float = 0.0,
        image_embeds: ImageEmbeds | torch.Tensor | None = None,
    ) -> EncoderOutput:
        """Encode an image-text batch.

        Args:
            pixel_values: [B, C, H, W]; may be None when `image_embeds` is given.
            input_ids: [B, L_t].
            attention_mask: [B, L_t] (1 = real token).
            image_noise: [B, L_i] masking noise (MIM pass).
            mask_ratio: fraction of image patches removed.
            image_embeds: output of `embed_image` to reuse instead of running the vision tower.

        Returns:
            EncoderOutput.
        """
        if image_embeds is None:
            if pixel_values is None:
                raise ValueError("encode() needs pixel_values or image_embeds")
            image_embeds = self.embed_image(pixel_values, image_noise, mask_ratio)
        elif mask_ratio > 0:
            raise ValueError(
                "mask_ratio applies to pixel_values; mask in embed_image() when reusing image_embeds"
            )
        return self.fuse(self.embed_text(input_ids, attention_mask), attention_mask, image_embeds)

    def fuse(self, text: torch.Tensor, attention_mask: torch.Tensor,
             image: ImageEmbeds | torch.Tensor) -> EncoderOutput:
        """Co-attention fusion and the poolers on embedded streams: the second half of `encode`.

        Lets a task run each tower once and reuse its output in several passes (pre-training).

        Args:
            text: [B, L_t, D] from `embed_text`; attention_mask: [B, L_t].
            image: `ImageEmbeds` (or its [B, 1+L_i', D] tensor) from `embed_image` / `empty_image`.
        """
        if isinstance(image, torch.Tensor):
            image = ImageEmbeds(image)
        text, fused_image, image_hidden, text_hidden = self.fusion(text, attention_mask, image.embeds)
        cls_feats = torch.cat([self.poolers["text"](text, attention_mask),
                               self.poolers["image"](fused_image)], dim=-1)  # [B, 2D]
        return EncoderOutput(text, fused_image, cls_feats, image_hidden, image.mask, image.ids_restore,
                             text_hidden)

    def forward(
        self,
        pixel_values: torch.Tensor | None,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        image_noise: torch.Tensor | None = None,
        mask_ratio: float = 0.0,
        image_embeds: ImageEmbeds | torch.Tensor | None = None,
    ) -> EncoderOutput:
        """Same as `encode` (so that DDP and hooks see a normal forward call)."""
        return self.encode(pixel_values, input_ids, attention_mask, image_noise, mask_ratio, image_embeds)

    # ------------------------------------------------------------------ dual encoder (no fusion)
    def project_dual(self, cls_token: torch.Tensor, stream: str) -> torch.Tensor:
        """A stream's summary before fusion (`tower_summary`) -> its unit-norm dual-encoder embedding [B, D].

        With an ``itc`` head (trained by the contrastive loss) this is its projection; without
        one, the normalised CLS token itself (usable, but never trained to align the modalities).
        """
        if "itc" in self.heads:
            return self.heads["itc"](cls_token, stream)
        return torch.nn.functional.normalize(cls_token.float(), dim=-1)

    def tower_summary(self, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """One vector per example from a tower's projected tokens, before fusion, pooled as the
        poolers are (``config.pooling``): the first token ("cls") or the mean of the real tokens
        ("mean"; ``mask`` [B, N], 1 = real, None = all). [B, N, D] -> [B, D]. What ITC compares."""
        return summarise(tokens, self.config.pooling, mask)

    def embed_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Image embeddings from the vision tower alone: [B, C, H, W] -> [B, D], unit norm."""
        return self.project_dual(self.tower_summary(self.embed_image(pixel_values).embeds), "image")

    def embed_texts(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Text embeddings from the text tower alone: [B, L_t] -> [B, D], unit norm."""
        return self.project_dual(self.tower_summary(self.embed_text(input_ids, attention_mask), attention_mask),
                                 "text")

    def mim_features(self, out: EncoderOutput) -> torch.Tensor:
        """The image-stream features the MIM decoder reads: `out.image_hidden[config.mim_layer]`."""
        return out.image_hidden[self.config.mim_layer]

    def mlm_features(self, out: EncoderOutput) -> torch.Tensor:
        """The text-stream features the MLM head reads: `out.text_hidden[config.mlm_layer]` (the
        last layer by default, as the paper: tokens are reconstructed from the top, pixels lower)."""
        return out.text_hidden[self.config.mlm_layer]

    # ------------------------------------------------------------------ training helpers
    def no_weight_decay(self) -> set[str]:
        """Parameter names of position, class, mask and modality embeddings (exempt from weight decay)."""
        names = {
            "vision_encoder.class_embedding",
            "vision_encoder.pos_embed",
            "text_encoder.embeddings.position_embeddings.weight",
        }
        if "mim" in self.heads:
            names.add("heads.mim.mask_token")
        own = dict(self.named_parameters())
        return {n for n in names if n in own}

    FREEZABLE = ("vision_encoder", "text_encoder")

    def freeze(self, *towers: str) -> None:
        """Freeze towers: no gradients, eval mode (no dropout) even while the rest trains.

        A frozen tower runs under no_grad, so its backward pass costs nothing: on a CPU this is what
        makes fine-tuning with a pretrained text tower affordable (the demo).
        """
        unknown = sorted(set(towers) - set(self.FREEZABLE))
        if unknown:
            raise ValueError(f"cannot freeze {unknown}; freezable: {list(self.FREEZABLE)}")
        self.frozen = tuple(dict.fromkeys((*self.frozen, *towers)))
        for name in towers:
            getattr(self, name).requires_grad_(False)
        self.train(self.training)

    def cache_frozen_text(self, max_mb: float = 512) -> None:
        """Keep the frozen text tower's features of each distinct text (up to `max_mb` MiB).

        Fine-tuning sees every question once per epoch: from the second epoch on, the tower's forward
        pass becomes a lookup. Exact (the tower is frozen and in eval mode); call after `freeze`.
        """
        if "text_encoder" not in self.frozen:
            raise ValueError("cache_frozen_text() needs a frozen text tower: call freeze('text_encoder') first")
        self.text_cache = FrozenFeatureCache(max_mb)

    def train(self, mode: bool = True) -> M3AE:
        """`nn.Module.train`, keeping frozen towers in eval mode."""
        super().train(mode)
        for name in self.frozen:
            getattr(self, name).eval()
        return self

    def _tower_grad(self, tower: str) -> torch.autograd.grad_mode.set_grad_enabled:
        """No autograd graph through a frozen tower (nothing to back-propagate into)."""
        return torch.set_grad_enabled(torch.is_grad_enabled() and tower not in self.frozen)

    def set_grad_checkpointing(self, enable: bool = True, parts: tuple[str, ...] = CHECKPOINT_PARTS) -> None:
        """Recompute block activations in backward to save memory, in ``parts`` (a subset of
        `CHECKPOINT_PARTS`: vision, text, fusion, decoder); the other parts are left as they are."""
        unknown = set(parts) - set(CHECKPOINT_PARTS)
        if unknown:
            raise ValueError(f"checkpointing parts must be among {CHECKPOINT_PARTS} (got {sorted(unknown)})")
        if "vision" in parts:
            self.vision_encoder.grad_checkpointing = enable
        if "fusion" in parts:
            self.fusion.grad_checkpointing = enable
        if "decoder" in parts and "mim" in self.heads:
            self.heads["mim"].grad_checkpointing = enable
        if "text" in parts:
            _set_text_checkpointing(self.text_encoder, enable)

    # ------------------------------------------------------------------ I/O
    def save_pretrained(
        self, directory: str | Path, tokenizer: Any = None, extra: dict[str, Any] | None = None
    ) -> Path:
        """Write `model.safetensors`, `config.json` (+ `extra` metadata) and tokenizer files."""
        return io.save_model(self, directory, tokenizer=tokenizer, extra=extra)

    @classmethod
    def from_pretrained(
        cls,
        directory: str | Path,
        image_size: int | None = None,
        map_location: str | torch.device = "cpu",
        allow_download: bool = False,
        verify: bool = True,
        dtype: torch.dtype | None = None,
    ) -> M3AE:
        """Load a folder written by `save_pretrained` (strict; positions resized to `image_size`;
        the weights' SHA-256 checked unless ``verify=False``; NaN/Inf weights refused).

        ``directory`` may also be a Hub id ("org/name"), resolved through the local Hugging Face
        cache; it is downloaded only when ``allow_download=True``. ``dtype`` (torch.bfloat16 or
        float16, for inference) builds the model and reads its weights at that precision
        (`io.to_inference_dtype`: matrices low, norms and small tables fp32), never in fp32 first.
        """
        folder = io.resolve_model_dir(directory, allow_download=allow_download)
        cfg = io.read_config(folder)
        if verify:
            io.verify_weights(folder, io.read_metadata(folder))
        cfg = cfg if image_size is None else cfg.with_image_size(image_size)
        # built in the low dtype (the fp32 weights never exist) and without a random init: every
        # parameter is read from the folder next
        with io.default_dtype(dtype), io.skip_init():
            model = cls(cfg) if dtype is None else io.to_inference_dtype(cls(cfg), dtype)
        io.load_folder_weights(model, folder)  # one tensor at a time, cast as it is copied
        model.to(map_location)
        return model


def _set_text_checkpointing(text: nn.Module, enable: bool) -> None:
    """Checkpointing in a Hugging Face text tower; transformers 5 renamed gradient_* to
    activation_checkpointing_*, so accept both."""
    if hasattr(text, "activation_checkpointing_enable"):
        if enable:
            text.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            text.activation_checkpointing_disable()
    elif enable:
        text.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        text.gradient_checkpointing_disable()
