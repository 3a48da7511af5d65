"""Image-text classification (MELINDA), and its evaluation (accuracy, macro-F1)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from m3ae import metrics as M
from m3ae.errors import M3AEError
from m3ae.hardware import autocast_context
from m3ae.models import losses as L
from m3ae.tasks.base import HeadOnJointFeatureTask, register
from m3ae.tasks.evaluation import _batches, _cat, _device_of, _gather_cat, eval_mode


@register
class ClassificationTask(HeadOnJointFeatureTask):
    """Image-text classification (MELINDA): cross-entropy over K classes."""

    name = head = "cls"
    target_key = "labels"
    batch_keys = ("pixel_values", "input_ids", "attention_mask", "labels")
    loss_fn = staticmethod(L.cls_loss)
    heads = ("cls",)
    examples = "cls"
    accepts = ("cls",)
    monitor = "accuracy"
    options = ("image_input",)

    @classmethod
    def head_sizes(cls, summary: dict[str, Any]) -> dict[str, Any]:
        return {"num_classes": summary.get("num_classes")}

    @classmethod
    def metadata(cls, data_dir: str | Path, args: Any) -> dict[str, Any]:
        """The image input and the class names (index = the head's output)."""
        from m3ae.data import read_labels

        return {"image_input": args.image_input, "labels": read_labels(data_dir)}

    def evaluate(self, model: nn.Module, data: Any, args: Any, precision: str,
                 progress: bool = False) -> dict[str, float]:
        """Accuracy and macro-F1 (percent) and the loss."""
        return evaluate_cls(model, data, args.batch_size, precision, progress, self)[0]


def evaluate_cls(model: nn.Module, dataset: Dataset, batch_size: int = 32, precision: str = "fp32",
                 progress: bool = False, task: ClassificationTask | None = None
                 ) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """Classification accuracy and macro-F1 (percent) and the per-example predictions."""
    task = task or ClassificationTask()
    preds, labels, losses = [], [], []
    with eval_mode(model):
        for batch in _batches(model, dataset, batch_size, "eval cls", progress):
            with autocast_context(precision, _device_of(model)):
                logits = task.logits(model, batch).float()
            losses.append(torch.nn.functional.cross_entropy(logits, batch["labels"], reduction="sum").reshape(1).cpu())
            preds.append(logits.argmax(-1).cpu())
            labels.append(batch["labels"].cpu())
    out = _gather_cat({"pred": _cat(preds), "label": _cat(labels), "loss": _cat(losses)})
    n = len(out["pred"])
    if n == 0:
        raise M3AEError("classification evaluation: the split has no examples")
    scores = M.classification_scores(out["pred"], out["label"])
    scores["loss"] = float(out.pop("loss").sum()) / n
    scores["n"] = n
    return scores, out
