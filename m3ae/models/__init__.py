"""The M3AE model: configs, modules, pure masking functions and losses.

Shape letters used in comments and docstrings: B batch, C channels, H/W image height/width,
P patch size, L_i image patches (grid_h * grid_w; L_i' after masking), L_t text tokens,
D fusion width, V vocabulary, A answers, K classes.

Imports torch, transformers and safetensors only (no training extras), and nothing from
`m3ae.weights`, `m3ae.data`, `m3ae.train` or the CLI (see docs/architecture.md).
"""

from m3ae.models.config import (
    FusionConfig,
    ModelConfig,
    PixelDecoderConfig,
    TextConfig,
    VisionConfig,
    list_models,
)
from m3ae.models.m3ae import M3AE, EncoderOutput, ImageEmbeds

__all__ = [
    "M3AE",
    "EncoderOutput",
    "FusionConfig",
    "ImageEmbeds",
    "ModelConfig",
    "PixelDecoderConfig",
    "TextConfig",
    "VisionConfig",
    "list_models",
]


def __getattr__(name: str):
    """``m3ae.models.create_model`` still works, with a warning: it lives in `m3ae.weights.factory`
    (it reads files of every format) and is public as ``m3ae.create_model``."""
    if name == "create_model":
        import importlib
        import warnings

        warnings.warn("m3ae.models.create_model is deprecated; use m3ae.create_model",
                      DeprecationWarning, stacklevel=2)
        return importlib.import_module("m3ae.weights.factory").create_model
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
