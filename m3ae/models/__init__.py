"""The M3AE model: configs, modules, pure masking functions and losses.

Shape letters used in comments and docstrings: B batch, C channels, H/W image height/width,
P patch size, L_i image patches (grid_h * grid_w; L_i' after masking), L_t text tokens,
D fusion width, V vocabulary, A answers, K classes.

Imports torch, transformers and safetensors only (no training extras).
"""

from m3ae.models.config import (
    FusionConfig,
    ModelConfig,
    PixelDecoderConfig,
    TextConfig,
    VisionConfig,
    list_models,
)
from m3ae.models.factory import create_model
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
    "create_model",
    "list_models",
]
