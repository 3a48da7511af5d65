"""Collators: a list of per-example dicts -> one batch dict, exactly the batch contract of
docs/architecture.md. Every random draw already happened in the dataset (per example), so
collation is deterministic and cheap.
"""

from __future__ import annotations

from typing import Any

import torch

from m3ae.errors import M3AEError

# batch keys each task produces (checked by tests against docs/architecture.md)
BATCH_KEYS: dict[str, tuple[str, ...]] = {
    "pretrain": (
        "pixel_values",
        "input_ids",
        "attention_mask",
        "mlm_input_ids",
        "mlm_labels",
        "image_noise",
        "itm_labels",
        "itm_pixel_values",
    ),
    "vqa": (
        "pixel_values",
        "input_ids",
        "attention_mask",
        "vqa_targets",
        "vqa_labels",
        "answer_type",
        "question_id",
    ),
    "cls": ("pixel_values", "input_ids", "attention_mask", "labels"),
    "irtr": ("pixel_values", "input_ids", "attention_mask"),
}


def vqa_targets(labels: torch.Tensor, num_answers: int) -> torch.Tensor:
    """Multi-hot answer scores from single labels; -1 (outside the answer set) gives an all-zero row.

    Upstream scores are always 1.0 with one answer per question, so the target is one-hot.
    # [B] -> [B, A]
    """
    targets = torch.zeros(labels.shape[0], num_answers, dtype=torch.float32)
    inside = labels.ge(0)
    targets[inside.nonzero(as_tuple=True)[0], labels[inside]] = 1.0
    return targets


class Collator:
    """Stack per-example tensors into the batch of ``task`` (a picklable callable for workers)."""

    def __init__(self, task: str, num_answers: int | None = None, trim_padding: bool = True) -> None:
        if task not in BATCH_KEYS:
            raise M3AEError(f"unknown task {task!r}; expected one of {tuple(BATCH_KEYS)}")
        if task == "vqa" and not num_answers:
            raise M3AEError("the vqa collator needs num_answers")
        self.task, self.num_answers, self.trim_padding = task, num_answers, trim_padding

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not examples:
            raise M3AEError("cannot collate an empty batch")
        batch = {}
        for key in examples[0]:
            values = [ex[key] for ex in examples]
            batch[key] = torch.stack(values) if torch.is_tensor(values[0]) else torch.tensor(values)
        if self.task == "vqa":
            batch["vqa_targets"] = vqa_targets(batch["vqa_labels"], self.num_answers)
        return trim_text_padding(batch) if self.trim_padding else batch


TEXT_KEYS = ("input_ids", "attention_mask", "mlm_input_ids", "mlm_labels")


def trim_text_padding(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Cut the text columns that are padding in every row of the batch: [.., L_t] -> [.., L_max].

    Exact: padded positions are masked out as attention keys everywhere, their MLM labels are
    ignored, and position ids of real tokens do not change. VQA-RAD questions fill about half of
    the 24-token budget, so this removes much of the text tower's work.
    """
    mask = batch["attention_mask"]
    longest = int(mask.reshape(-1, mask.shape[-1]).sum(-1).max()) if mask.numel() else mask.shape[-1]
    if longest >= mask.shape[-1]:
        return batch
    return {k: v[..., :max(1, longest)] if k in TEXT_KEYS else v for k, v in batch.items()}
