"""How a model expects its inputs: the one `Preprocessing` record and the CLIP constants.

The record is written into every model folder (``config.json`` -> ``"preprocessing"``) by training
and by ``m3ae convert``; the training transforms (`m3ae.data`) and inference (`m3ae.inference`,
`m3ae.inference.embed`, `m3ae.inference.export`) both build their image transform and tokenizer call from it, so a
model is always fed the way it was trained. This module is on the lowest floor: it imports
nothing from the package but `m3ae.errors`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from m3ae.errors import M3AEError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
"""Per-channel mean of OpenAI CLIP's training images (RGB); the vision tower starts from CLIP."""
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
"""Per-channel std of OpenAI CLIP's training images (RGB)."""
INTERPOLATIONS = ("bicubic",)
"""Resampling filters the image pipeline implements (the original uses bicubic everywhere)."""
DEFAULT_MAX_TEXT_LEN = 32
"""Text length of the VQA recipes (spec §1.2); used when a folder records none."""


@dataclass(frozen=True)
class Preprocessing:
    """Image size, normalisation, resampling and text length a model was trained with."""

    image_size: int
    """Side of the square input in pixels."""
    mean: tuple[float, ...] = CLIP_MEAN
    """Per-channel normalisation mean."""
    std: tuple[float, ...] = CLIP_STD
    """Per-channel normalisation std."""
    interpolation: str = "bicubic"
    """Resampling filter of the resize (see `INTERPOLATIONS`)."""
    max_text_len: int = DEFAULT_MAX_TEXT_LEN
    """Tokens per text after padding/truncation."""
    tokenizer: str | None = None
    """Tokenizer name or folder; None = the files saved beside the weights, else the packaged one."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(float(x) for x in self.mean))
        object.__setattr__(self, "std", tuple(float(x) for x in self.std))
        if self.image_size <= 0 or self.max_text_len < 3:
            raise M3AEError(f"preprocessing: image_size must be > 0 and max_text_len >= 3, got {self}")
        if len(self.mean) != len(self.std) or any(s <= 0 for s in self.std):
            raise M3AEError(f"preprocessing: mean and std need one value per channel, std > 0 (got {self})")
        if self.interpolation not in INTERPOLATIONS:
            raise M3AEError(f"preprocessing: interpolation must be one of {INTERPOLATIONS}, "
                            f"got {self.interpolation!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (tuples become lists)."""
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocessing:
        """Inverse of `to_dict`; unknown keys are ignored (a newer folder still loads)."""
        known = {"image_size", "mean", "std", "interpolation", "max_text_len", "tokenizer"}
        return cls(**{k: v for k, v in d.items() if k in known})


def preprocessing_from_metadata(meta: dict[str, Any], model_image_size: int | None = None) -> Preprocessing:
    """The preprocessing a model folder records.

    Reads ``meta["preprocessing"]``; folders written before it existed fall back to their ``data``
    section (the training `DataConfig`), then to the model's image size, CLIP's mean/std and the
    VQA text length.

    Args:
        meta: the folder's whole ``config.json``.
        model_image_size: the model's input size, used when the folder records none (default:
            the image size of the folder's model config).
    """
    if model_image_size is None:
        model_image_size = int(((meta.get("model") or {}).get("vision") or {}).get("image_size", 0))
    data = meta.get("data") or {}
    pre = {"image_size": model_image_size, **{k: data[k] for k in ("image_size", "max_text_len") if k in data}}
    pre.update(meta.get("preprocessing") or {})
    return Preprocessing.from_dict(pre)
