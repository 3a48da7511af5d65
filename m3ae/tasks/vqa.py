"""Med-VQA: classification over the closed answer set, and its evaluation (open / closed / overall)."""
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
from m3ae.models.losses import vqa_ce_loss, vqa_loss
from m3ae.tasks.base import Batch, HeadOnJointFeatureTask, register
from m3ae.tasks.evaluation import _batches, _cat, _device_of, _gather_cat, eval_mode


VQA_LOSSES = ("paper", "ce")


@register
class VQATask(HeadOnJointFeatureTask):
    """Med-VQA as classification over the closed answer set.

    Args:
        image_input: see `HeadOnJointFeatureTask`.
        loss: "paper" = BCE x A on the one-hot targets (the original); "ce" = softmax cross-entropy
            on the answer index (questions whose answer is outside the set are left out of it).
    """

    name = head = "vqa"
    target_key = "vqa_targets"
    batch_keys = ("pixel_values", "input_ids", "attention_mask", "vqa_targets")
    loss_fn = staticmethod(L.vqa_loss)
    heads = ("vqa",)
    examples = "vqa"
    accepts = ("vqa",)
    monitor = "overall"
    options = ("image_input", "loss")
    card_usage = ("```python", "from m3ae import VQAPipeline", "",
                  "pipe = VQAPipeline.from_pretrained(\"path/to/this/folder\")",
                  "pipe(\"image.png\", \"Is there a fracture?\")",
                  "# [{'answer': ..., 'probability': ...}, ...] best first",
                  "```")

    def __init__(self, image_input: str = "pixels", loss: str = "paper") -> None:
        super().__init__(image_input)
        if loss not in VQA_LOSSES:
            raise M3AEError(f"task.loss must be one of {VQA_LOSSES} (got {loss!r})")
        self.loss = loss
        if loss == "ce":
            self.batch_keys = (*self.batch_keys, "vqa_labels")

    @classmethod
    def head_sizes(cls, summary: dict[str, Any]) -> dict[str, Any]:
        return {"num_answers": summary.get("num_answers")}

    @classmethod
    def metadata(cls, data_dir: str | Path, args: Any) -> dict[str, Any]:
        """The image input and the answer list (index = the head's output)."""
        from m3ae.data import read_answers

        return {"image_input": args.image_input, "answers": read_answers(data_dir)}

    @classmethod
    def check_saved(cls, meta: dict[str, Any], data_dir: str | Path, model_dir: str | Path) -> None:
        """The folder's answer list must be the one the model was trained with."""
        if "answers" in meta:
            from m3ae.data import read_answers

            if read_answers(data_dir) != meta["answers"]:
                raise M3AEError(f"{data_dir}: its answer list differs from the one {model_dir} was trained with")

    def evaluate(self, model: nn.Module, data: Any, args: Any, precision: str,
                 progress: bool = False) -> dict[str, float]:
        """Open / closed / overall accuracy (percent) and the loss it trains with."""
        return evaluate_vqa(model, data, args.batch_size, precision, progress, self)[0]

    def losses(self, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        """``{"loss": ...}``: the paper's BCE x A, or softmax cross-entropy over the answers."""
        self.check_batch(batch)
        logits = self.logits(model, batch)
        if self.loss == "ce":
            return {"loss": L.vqa_ce_loss(logits, batch["vqa_labels"])}
        return {"loss": self.loss_fn(logits, batch[self.target_key])}


def evaluate_vqa(model: nn.Module, dataset: Dataset, batch_size: int = 32, precision: str = "fp32",
                 progress: bool = False, task: VQATask | None = None
                 ) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """VQA accuracy (open / closed / overall, percent) and the per-question predictions.

    Prediction = argmax over the answer logits; the answer type comes from the data.

    Returns:
        (metrics incl. ``loss``, ``{"question_id", "pred", "label", "answer_type"}`` tensors).
    """
    task = task or VQATask()
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in ("question_id", "pred", "label", "answer_type", "loss")}
    with eval_mode(model):
        for batch in _batches(model, dataset, batch_size, "eval vqa", progress):
            with autocast_context(precision, _device_of(model)):
                logits = task.logits(model, batch).float()  # [B, A]
            loss = (vqa_ce_loss(logits, batch["vqa_labels"]) if task.loss == "ce"  # the loss it trains with
                    else vqa_loss(logits, batch["vqa_targets"]))
            parts["loss"].append(loss.reshape(1).cpu() * len(logits))
            parts["pred"].append(logits.argmax(-1).cpu())
            parts["label"].append(batch["vqa_labels"].cpu())
            parts["answer_type"].append(batch["answer_type"].cpu())
            parts["question_id"].append(batch["question_id"].cpu())
    out = _gather_cat({k: _cat(v) for k, v in parts.items()})
    n = len(out["pred"])
    if n == 0:
        raise M3AEError("VQA evaluation: the split has no examples")
    scores = M.vqa_scores(out["pred"], out["label"], out["answer_type"])
    scores["loss"] = float(out.pop("loss").sum()) / n
    scores["n"] = n
    return scores, out
