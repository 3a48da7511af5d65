"""Readers for each raw release: turn its files into ``RawExample`` lists per split.

One reader per source, one module each (``read_vqa_rad`` in ``vqa_rad``, ``read_slake`` in ``slake``,
...; shared helpers in ``common``). They only parse and split; all validation of texts and images,
vocabularies and writing happen in ``m3ae.data.prepare``.
Line numbers in messages are 1-based; JSON list records are numbered from 0 (their index).
"""

from __future__ import annotations

from m3ae.data.sources.arrow import ARROW_READERS, UPSTREAM_ARROW_NAMES, read_upstream_arrows
from m3ae.data.sources.common import hold_out_by_image, read_json_list, read_jsonl
from m3ae.data.sources.custom import (
    CUSTOM_FIELDS,
    CUSTOM_SUFFIXES,
    CUSTOM_TASK_COLUMNS,
    custom_task,
    read_custom,
)
from m3ae.data.sources.medicat import MEDICAT_EVAL_SIZE, read_medicat
from m3ae.data.sources.medvqa import (
    MEDVQA_ALL_CATEGORIES,
    MEDVQA_CATEGORIES,
    MEDVQA_NO_TEST_IMAGES,
    MEDVQA_RELEASE_SPLITS,
    MEDVQA_TEST_IMAGES,
    MEDVQA_TEST_QUESTIONS,
    medvqa_categories,
    read_medvqa_2019,
)
from m3ae.data.sources.melinda import MELINDA_FILES, MELINDA_LABEL_COLUMNS, read_melinda
from m3ae.data.sources.roco import ROCO_POOL_SIZE, read_roco, read_roco_retrieval
from m3ae.data.sources.slake import SLAKE_FILES, SLAKE_IMAGE_FIELDS, read_slake
from m3ae.data.sources.vqa_rad import VQA_RAD_IMAGE_FIELDS, VQA_RAD_VAL_FRACTION, read_vqa_rad

__all__ = [
    "ARROW_READERS",
    "CUSTOM_FIELDS",
    "CUSTOM_SUFFIXES",
    "CUSTOM_TASK_COLUMNS",
    "MEDICAT_EVAL_SIZE",
    "MEDVQA_ALL_CATEGORIES",
    "MEDVQA_CATEGORIES",
    "MEDVQA_NO_TEST_IMAGES",
    "MEDVQA_RELEASE_SPLITS",
    "MEDVQA_TEST_IMAGES",
    "MEDVQA_TEST_QUESTIONS",
    "MELINDA_FILES",
    "MELINDA_LABEL_COLUMNS",
    "ROCO_POOL_SIZE",
    "SLAKE_FILES",
    "SLAKE_IMAGE_FIELDS",
    "UPSTREAM_ARROW_NAMES",
    "VQA_RAD_IMAGE_FIELDS",
    "VQA_RAD_VAL_FRACTION",
    "custom_task",
    "hold_out_by_image",
    "medvqa_categories",
    "read_custom",
    "read_json_list",
    "read_jsonl",
    "read_medicat",
    "read_medvqa_2019",
    "read_melinda",
    "read_roco",
    "read_roco_retrieval",
    "read_slake",
    "read_upstream_arrows",
    "read_vqa_rad",
]
