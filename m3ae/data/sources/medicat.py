"""MedICaT reader."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from m3ae.data.prepare import SPLITS, Issues, RawExample
from m3ae.data.sources.common import read_jsonl

MEDICAT_EVAL_SIZE = 1000
"""MedICaT: the last 2,000 shuffled radiology figures become val (first 1,000) and test (last 1,000)."""


def _medicat_texts(sample: dict[str, Any]) -> list[str]:
    texts = []
    if sample.get("s2_caption"):
        texts.append(sample["s2_caption"])
    texts.extend(sample.get("s2orc_references") or [])
    return texts


def read_medicat(
    src: Path, protocol: str, seed: int, issues: Issues, eval_size: int = MEDICAT_EVAL_SIZE
) -> dict[str, list[RawExample]]:
    """MedICaT: release/s2_full_figures_oa_nonroco_combined_medical_top4_public.jsonl + release/figures/.

    Radiology figures only; shuffled with ``random.seed(seed)`` (42 upstream); the last
    2 x ``eval_size`` become val then test. Texts = caption + inline references, one example each.
    """
    path = src / "release" / "s2_full_figures_oa_nonroco_combined_medical_top4_public.jsonl"
    records = [(w, o) for w, o in read_jsonl(path, "train", issues) if o.get("radiology")]
    random.seed(seed)  # the module-level generator, as upstream, so the shuffle is identical
    indices = list(range(len(records)))
    random.shuffle(indices)
    parts = {
        "train": indices[: -2 * eval_size],
        "val": indices[-2 * eval_size : -eval_size],
        "test": indices[-eval_size:],
    }
    splits: dict[str, list[RawExample]] = {s: [] for s in SPLITS}
    for split, chosen in parts.items():
        for i in chosen:
            where, sample = records[i]
            if "pdf_hash" not in sample or "fig_uri" not in sample:
                issues.bad(split, "malformed_record", f"{where}: missing pdf_hash/fig_uri")
                continue
            name = f"{sample['pdf_hash']}_{sample['fig_uri']}"
            for text in _medicat_texts(sample):
                splits[split].append(
                    RawExample(
                        split=split,
                        image_id=f"figures/{name}",
                        where=where,
                        image_path=src / "release" / "figures" / name,
                        text=text,
                    )
                )
    return splits
