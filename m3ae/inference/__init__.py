"""Everything that runs a trained model: the VQA pipeline (``pipeline``), answer heat maps
(``explain``), dynamic int8 (``quantize``), ONNX export (``export``), embeddings to Parquet
(``embed``) and the local web server with its page (``server``, extra ``m3ae[serve]``).

    from m3ae.inference.pipeline import VQAPipeline
    pipe = VQAPipeline.from_pretrained("runs/demo/finetune/best")
    pipe("scan.dcm", "Is this a CT scan?")

Names resolve on first access, so importing this package loads none of its modules.
"""
from __future__ import annotations

from m3ae._lazy import lazy_getattr

_LAZY = {
    "VQAPipeline": "m3ae.inference.pipeline",
    "read_folder_config": "m3ae.inference.pipeline",
    "preprocessing_from_config": "m3ae.inference.pipeline",
    "to_rgb_image": "m3ae.inference.pipeline",
    "array_to_pil": "m3ae.inference.pipeline",
    "Preprocessing": "m3ae.preprocessing",
}
__all__ = list(_LAZY)

__getattr__ = lazy_getattr(__name__, _LAZY, globals())
