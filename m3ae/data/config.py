"""`DataConfig`: every knob of the image and text pipeline in one typed, YAML-friendly dataclass."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from m3ae.errors import M3AEError
from m3ae.preprocessing import CLIP_MEAN, CLIP_STD, Preprocessing

MLM_MODES = ("token", "word")
TRAIN_TRANSFORMS = ("clip", "clip_resizedcrop")


@dataclass
class DataConfig:
    """How examples are turned into tensors. Defaults follow the original fine-tuning recipes."""

    image_size: int = 384
    """Side of the square model input in pixels (288 for pre-training, 384 for fine-tuning upstream)."""
    max_text_len: int = 32
    """Tokens per text after padding/truncation (32 VQA, 64 pre-training, 128 MELINDA/retrieval)."""
    patch_size: int = 16
    """ViT patch size; with image_size it fixes L_i = (image_size / patch_size)^2 for MIM noise."""
    mlm_probability: float = 0.15
    """Share of text positions chosen for masked language modelling."""
    mlm_mode: str = "token"
    """"token": the original's effective behaviour (budget over the padded length); "word": whole words."""
    train_transform: str = "clip"
    """"clip" (resize + centre crop) or "clip_resizedcrop" (random resized crop, scale 0.9-1.0)."""
    draw_false_text: int = 15
    """Random other captions per image for retrieval fine-tuning (N in input_ids [B, 1+N, L_t])."""
    num_workers: int = 0
    """DataLoader worker processes."""
    image_cache_mb: int = 512
    """Decoded images kept in memory per dataset and process (0 = decode every time)."""
    mean: tuple[float, ...] = CLIP_MEAN
    """Per-channel normalisation mean (CLIP's: the vision tower starts from CLIP)."""
    std: tuple[float, ...] = CLIP_STD
    """Per-channel normalisation std."""

    def __post_init__(self) -> None:
        self.mean, self.std = tuple(self.mean), tuple(self.std)
        if self.image_size <= 0 or self.patch_size <= 0 or self.image_size % self.patch_size:
            raise M3AEError(
                f"DataConfig: image_size ({self.image_size}) must be a positive multiple of patch_size "
                f"({self.patch_size})"
            )
        if self.max_text_len < 3:
            raise M3AEError(f"DataConfig: max_text_len must be >= 3 (got {self.max_text_len})")
        if not 0.0 <= self.mlm_probability <= 1.0:
            raise M3AEError(f"DataConfig: mlm_probability must be in [0, 1] (got {self.mlm_probability})")
        if self.mlm_mode not in MLM_MODES:
            raise M3AEError(f"DataConfig: mlm_mode must be one of {MLM_MODES} (got {self.mlm_mode!r})")
        if self.train_transform not in TRAIN_TRANSFORMS:
            raise M3AEError(
                f"DataConfig: train_transform must be one of {TRAIN_TRANSFORMS} (got {self.train_transform!r})"
            )
        if self.draw_false_text < 0 or self.num_workers < 0 or self.image_cache_mb < 0:
            raise M3AEError("DataConfig: draw_false_text, num_workers and image_cache_mb must be >= 0")
        self.preprocessing()  # validates mean/std (one value per channel, std > 0)

    @property
    def num_patches(self) -> int:
        """L_i: patches per image, the length of `image_noise`."""
        return (self.image_size // self.patch_size) ** 2

    def preprocessing(self, tokenizer: str | None = None) -> Preprocessing:
        """The `Preprocessing` record of this pipeline: what the training transforms apply and
        what a saved model folder records for inference."""
        return Preprocessing(image_size=self.image_size, mean=self.mean, std=self.std,
                             max_text_len=self.max_text_len, tokenizer=tokenizer)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for YAML/JSON (tuples become lists)."""
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DataConfig:
        """Build from a dict, rejecting unknown keys (a typo must not pass silently)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise M3AEError(f"DataConfig: unknown keys {unknown}; known: {sorted(known)}")
        return cls(**data)
