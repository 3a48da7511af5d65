"""Data for M3AE: preparing benchmarks, the on-disk format, the image and text pipeline, loaders.

Public names (see docs/architecture.md, "Data API"):
``DataConfig``, ``load_tokenizer``, ``read_summary``, ``read_answers``, ``read_labels``,
``make_dataset``, ``make_loader``, ``make_retrieval_pool``, ``DATASETS``/``DatasetSpec``,
``prepare_dataset``, ``ImageStore``, ``read_table``, ``mask_text_tokens``, ``normalize_answer``, ``ImageTransform``, ``decode_image``.
Names resolve lazily so that ``import m3ae.data`` stays light.
"""

from __future__ import annotations

from m3ae._lazy import lazy_getattr

_LAZY = {
    "DataConfig": "m3ae.data.config",
    "load_tokenizer": "m3ae.data.text",
    "tokenizer_info": "m3ae.data.text",
    "mask_text_tokens": "m3ae.data.text",
    "read_summary": "m3ae.data.storage",
    "read_answers": "m3ae.data.storage",
    "read_labels": "m3ae.data.storage",
    "read_table": "m3ae.data.storage",
    "ImageStore": "m3ae.data.storage",
    "make_dataset": "m3ae.data.dataset",
    "make_retrieval_pool": "m3ae.data.dataset",
    "M3AEDataset": "m3ae.data.dataset",
    "make_loader": "m3ae.data.sampler",
    "DistributedSampler": "m3ae.data.sampler",
    "DATASETS": "m3ae.data.specs",
    "DatasetSpec": "m3ae.data.specs",
    "prepare_dataset": "m3ae.data.specs",
    "normalize_answer": "m3ae.data.answers",
    "ImageTransform": "m3ae.data.images",
    "decode_image": "m3ae.data.images",
    "CLIP_MEAN": "m3ae.data.images",
    "CLIP_STD": "m3ae.data.images",
}

__all__ = list(_LAZY)


__getattr__ = lazy_getattr(__name__, _LAZY, globals())
