"""m3ae: multi-modal masked autoencoders for medical vision-and-language pre-training.

The model package imports with torch, transformers and safetensors only; data preparation and
training code live in `m3ae.data` and `m3ae.train` and are imported on first use.
"""
from __future__ import annotations

from m3ae._lazy import lazy_getattr
from m3ae._version import __version__

# public name -> module that defines it; resolved on first access (PEP 562) so that
# `import m3ae` stays light and never imports training extras.
_LAZY = {
    "M3AE": "m3ae.models.m3ae",
    "ModelConfig": "m3ae.models.config",
    "create_model": "m3ae.weights.factory",
    "list_models": "m3ae.models.config",
    "load_upstream": "m3ae.weights.upstream",
    "VQAPipeline": "m3ae.inference",
    "metrics": "m3ae.metrics",
}

__all__ = ["__version__", *_LAZY]


__getattr__ = lazy_getattr(__name__, _LAZY, globals())
