"""Collators: a list of per-example dicts -> one batch dict, exactly the batch contract of
docs/architecture.md. Every random draw already happened in the dataset (per example), so
collation is deterministic and cheap.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from m3ae.errors import M3AEError

def vqa_targets(labels: torch.Tensor, num_answers: int) -> torch.Tensor:
    """Multi-hot answer scores from single labels; -1 (outside the answer set) gives an all-zero row.

    Upstream scores are always 1.0 with one answer per question, so the target is one-hot.
    # [B] -> [B, A]
    """
    targets = torch.zeros(labels.shape[0], num_answers, dtype=torch.float32)
    inside = labels.ge(0)
    targets[inside.nonzero(as_tuple=True)[0], labels[inside]] = 1.0
    return targets


def _vqa_batch_targets(batch: dict[str, torch.Tensor], num_answers: int | None) -> dict[str, torch.Tensor]:
    return {"vqa_targets": vqa_targets(batch["vqa_labels"], num_answers)}


@dataclass(frozen=True)
class ExampleSpec:
    """One kind of example: what its dataset items and batches hold and how a batch is completed.

    The dataset builds items with ``M3AEDataset._item_<name>``; a task (``m3ae.tasks``) names the
    kind it consumes (``task.examples``), so this floor never compares task names.
    """

    name: str
    keys: tuple[str, ...]
    """Batch keys after collation (checked by tests against docs/architecture.md)."""
    folders: tuple[str, ...]
    """Prepared data kinds (``summary.json`` "task") the examples are read from."""
    needs_mlm: bool = False
    """Items are MLM-masked (the dataset needs the tokenizer's special ids)."""
    needs_answers: bool = False
    """The collator needs the answer count (``num_answers``) to build the targets."""
    targets: Callable[[dict[str, torch.Tensor], int | None], dict[str, torch.Tensor]] | None = None
    """Batch keys built at collation from the stacked items (VQA: multi-hot answer scores)."""


_CAPTIONS = ("pretrain", "irtr")  # caption folders feed both pre-training and retrieval
EXAMPLES: dict[str, ExampleSpec] = {spec.name: spec for spec in (
    ExampleSpec("pretrain", ("pixel_values", "input_ids", "attention_mask", "mlm_input_ids", "mlm_labels",
                             "image_noise", "itm_labels", "itm_pixel_values", "itm_noise"), _CAPTIONS, needs_mlm=True),
    ExampleSpec("vqa", ("pixel_values", "input_ids", "attention_mask", "vqa_targets", "vqa_labels",
                        "answer_type", "question_id"), ("vqa",), needs_answers=True, targets=_vqa_batch_targets),
    ExampleSpec("cls", ("pixel_values", "input_ids", "attention_mask", "labels"), ("cls",)),
    ExampleSpec("irtr", ("pixel_values", "input_ids", "attention_mask"), _CAPTIONS),
)}
"""The example kinds by name (the same names as the tasks that consume them)."""

BATCH_KEYS: dict[str, tuple[str, ...]] = {name: spec.keys for name, spec in EXAMPLES.items()}
"""Batch keys of each example kind."""


def example_spec(kind: str | ExampleSpec) -> ExampleSpec:
    """The `ExampleSpec` of ``kind`` (a name or a spec); a clear error for an unknown name."""
    if isinstance(kind, ExampleSpec):
        return kind
    if kind not in EXAMPLES:
        raise M3AEError(f"unknown task {kind!r}; expected one of {tuple(EXAMPLES)}")
    return EXAMPLES[kind]


class Collator:
    """Stack per-example tensors into the batch of an example kind (a picklable callable for workers).

    Args:
        task: the example kind, by name (the task's ``examples``) or as an `ExampleSpec`.
        num_answers: the answer count, for kinds whose targets need it (VQA).
    """

    def __init__(self, task: str | ExampleSpec, num_answers: int | None = None, trim_padding: bool = True) -> None:
        spec = example_spec(task)
        if spec.needs_answers and not num_answers:
            raise M3AEError(f"the {spec.name} collator needs num_answers")
        self.spec, self.num_answers, self.trim_padding = spec, num_answers, trim_padding

    @property
    def task(self) -> str:
        """The example kind's name."""
        return self.spec.name

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not examples:
            raise M3AEError("cannot collate an empty batch")
        batch = {}
        for key in examples[0]:
            values = [ex[key] for ex in examples]
            batch[key] = torch.stack(values) if torch.is_tensor(values[0]) else torch.tensor(values)
        if self.spec.targets is not None:
            batch.update(self.spec.targets(batch, self.num_answers))
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
