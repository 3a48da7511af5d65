"""Pre-training: MLM + MIM + ITM on caption folders, and its evaluation (the mean losses)."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from m3ae import distributed as D
from m3ae.errors import M3AEError
from m3ae.hardware import autocast_context
from m3ae.models import losses as L
from m3ae.tasks.base import BaseTask, Batch, Scale, fuse, mlm_loss_at_labels, register
from m3ae.tasks.evaluation import _batches, _device_of, eval_mode


@register
class PretrainTask(BaseTask):
    """M3AE pre-training: three passes per batch, as the original (MLM, MIM, ITM).

    1. MLM: masked text with the full image.
    2. MIM: full text with 75% of the image patches removed (driven by ``image_noise``).
    3. ITM: full text with the true image (``itm_labels`` 1) or another image (0).

    The vision tower runs once for the full images that the MLM and ITM passes share (the ITM rows
    with label 0 get their own vision pass), and the text tower once for the full text that the
    MIM and ITM passes share. `forward_backward` back-propagates each pass as soon as its loss
    exists, so peak activation memory is one pass's (plus the two shared tower graphs). The shared
    embeddings are detached for the passes and their accumulated gradients are sent through the
    towers once at the end, which gives exactly the gradients of the summed loss.

    Args:
        mlm_weight, mim_weight, itm_weight: loss weights (1, 1, 1 in the paper).
        mask_ratio: share of image patches removed for MIM.
        norm_pix_loss: per-patch normalised MIM targets.
    """

    name = "pretrain"
    batch_keys = ("pixel_values", "input_ids", "attention_mask", "mlm_input_ids", "mlm_labels",
                  "image_noise", "itm_labels", "itm_pixel_values")
    heads = ("mlm", "mim", "itm")
    examples = "pretrain"
    accepts = ("pretrain", "irtr")  # caption folders
    monitor = "-loss"
    options = ("mlm_weight", "mim_weight", "itm_weight", "mask_ratio", "norm_pix_loss")
    pretraining = True
    several_folders = True  # ROCO + MedICaT, as the paper
    evaluates_saved = False

    def __init__(self, mlm_weight: float = 1.0, mim_weight: float = 1.0, itm_weight: float = 1.0,
                 mask_ratio: float = 0.75, norm_pix_loss: bool = True) -> None:
        self.weights = {"mlm": mlm_weight, "mim": mim_weight, "itm": itm_weight}
        if not self.active:
            raise M3AEError("pre-training needs at least one of task.mlm_weight, mim_weight, itm_weight > 0")
        self.mask_ratio = mask_ratio
        self.norm_pix_loss = norm_pix_loss

    def evaluate(self, model: nn.Module, data: Any, args: Any, precision: str,
                 progress: bool = False) -> dict[str, float]:
        """The mean losses on the split (model selection on ``-loss``)."""
        return evaluate_pretrain(model, data, args.batch_size, precision, progress, self)

    # -- the three passes: (model, batch, shared embeddings) -> loss --------------------------
    def mlm_pass(self, model: nn.Module, batch: Batch, image: torch.Tensor) -> torch.Tensor:
        """Masked text + full image -> MLM cross-entropy on the masked positions."""
        text = model.embed_text(batch["mlm_input_ids"], batch["attention_mask"], cache=False)  # [B, L_t, D]
        out = fuse(model, text, batch["attention_mask"], image)
        return mlm_loss_at_labels(model, model.mlm_features(out), batch["mlm_labels"], batch["attention_mask"])

    def mim_pass(self, model: nn.Module, batch: Batch, text: torch.Tensor) -> torch.Tensor:
        """Full text + masked image -> pixel reconstruction loss on the removed patches."""
        masked = model.embed_image(batch["pixel_values"], batch["image_noise"], self.mask_ratio)
        out = fuse(model, text, batch["attention_mask"], masked)
        pred = model.heads["mim"](model.mim_features(out), out.ids_restore)  # [B, L_i, P*P*C]
        return L.mim_loss(pred, batch["pixel_values"], out.image_mask, model.config.vision.patch_size,
                          self.norm_pix_loss)

    def itm_pass(self, model: nn.Module, batch: Batch, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Full text + true (label 1) or other (label 0) image -> matching cross-entropy."""
        labels = batch["itm_labels"]
        neg = (labels == 0).nonzero(as_tuple=True)[0]
        if neg.numel():
            # only the swapped rows need a vision pass of their own; label-1 rows reuse `image`
            neg_embeds = model.embed_image(batch["itm_pixel_values"][neg]).embeds  # [B_neg, 1+L_i, D]
            image = image.index_copy(0, neg, neg_embeds.to(image.dtype))
        out = fuse(model, text, batch["attention_mask"], image)
        return L.itm_loss(model.heads["itm"](out.cls_feats), labels)

    def _total(self, parts: dict[str, torch.Tensor]) -> torch.Tensor:
        return sum(self.weights[k] * parts[f"{k}_loss"] for k in self.active)

    @property
    def active(self) -> tuple[str, ...]:
        """Objectives with a non-zero weight; the others' passes are not run at all (ablations)."""
        return tuple(k for k, w in self.weights.items() if w)

    def losses(self, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        """All three losses from one graph, each pass through `model.encode` (the reference path)."""
        self.check_batch(batch)
        ids, mask, pix = batch["input_ids"], batch["attention_mask"], batch["pixel_values"]

        def mlm() -> torch.Tensor:
            out = model.encode(pix, batch["mlm_input_ids"], mask)
            return mlm_loss_at_labels(model, model.mlm_features(out), batch["mlm_labels"], mask)

        def mim() -> torch.Tensor:
            out = model.encode(pix, ids, mask, image_noise=batch["image_noise"], mask_ratio=self.mask_ratio)
            pred = model.heads["mim"](model.mim_features(out), out.ids_restore)
            return L.mim_loss(pred, pix, out.image_mask, model.config.vision.patch_size, self.norm_pix_loss)

        def itm() -> torch.Tensor:
            itm_pix = torch.where(batch["itm_labels"].bool()[:, None, None, None], pix, batch["itm_pixel_values"])
            out = model.encode(itm_pix, ids, mask)
            return L.itm_loss(model.heads["itm"](out.cls_feats), batch["itm_labels"])

        passes = {"mlm": mlm, "mim": mim, "itm": itm}
        parts = {f"{k}_loss": passes[k]() for k in self.active}
        return {"loss": self._total(parts), **parts}

    def losses_one_graph(self, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        """The three passes of `forward_backward`, sharing the tower outputs the same way, in one
        graph (one backward). Same losses, gradients and random draws as `forward_backward`; the
        graphs of all three passes live together, which activation checkpointing keeps small."""
        self.check_batch(batch)
        image = model.embed_image(batch["pixel_values"]).embeds  # [B, 1+L_i, D]
        text = model.embed_text(batch["input_ids"], batch["attention_mask"])  # [B, L_t, D]
        passes = {"mlm": lambda: self.mlm_pass(model, batch, image), "mim": lambda: self.mim_pass(model, batch, text),
                  "itm": lambda: self.itm_pass(model, batch, image, text)}
        parts = {f"{k}_loss": passes[k]() for k in self.active}
        return {"loss": self._total(parts), **parts}

    def forward_backward(self, model: nn.Module, batch: Batch, scale: Scale) -> dict[str, torch.Tensor]:
        """Per-pass backward; gradients equal those of ``scale(losses(...)["loss"]).backward()``."""
        self.check_batch(batch)
        # The full image (MLM, ITM) and the full text (MIM, ITM) each go through their tower once.
        # The passes start from detached copies and collect gradients in their .grad; one backward
        # per tower at the end sends them on, so each pass's graph is freed as soon as it is done.
        image_full = model.embed_image(batch["pixel_values"]).embeds  # [B, 1+L_i, D]
        text_full = model.embed_text(batch["input_ids"], batch["attention_mask"])  # [B, L_t, D]
        image = image_full.detach().requires_grad_(True)
        text = text_full.detach().requires_grad_(True)
        parts: dict[str, torch.Tensor] = {}
        passes = (
            ("mlm", lambda: self.mlm_pass(model, batch, image)),
            ("mim", lambda: self.mim_pass(model, batch, text)),
            ("itm", lambda: self.itm_pass(model, batch, image, text)),
        )
        for key, run in passes:
            if not self.weights[key]:
                continue
            loss = run()
            scale(self.weights[key] * loss).backward()
            parts[f"{key}_loss"] = loss.detach()
        roots = [(t, s.grad) for t, s in ((image_full, image), (text_full, text)) if s.grad is not None]
        if roots:
            torch.autograd.backward([t for t, _ in roots], [g for _, g in roots])
        return {"loss": self._total(parts), **parts}


def evaluate_pretrain(model: nn.Module, dataset: Dataset, batch_size: int = 32, precision: str = "fp32",
                      progress: bool = False, task: PretrainTask | None = None) -> dict[str, float]:
    """Mean pre-training losses on a split (batch-weighted), for model selection (``-loss``)."""
    task = task or PretrainTask()
    sums: dict[str, float] = {}
    count = 0
    with eval_mode(model):
        for batch in _batches(model, dataset, batch_size, "eval pretrain", progress):
            with autocast_context(precision, _device_of(model)):
                losses = task.losses(model, batch)
            b = len(batch["input_ids"])
            count += b
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + float(v) * b
    totals = D.gather_objects((sums, count))
    n = sum(c for _, c in totals)
    if n == 0:
        raise M3AEError("pre-training evaluation: the split has no examples")
    return {k: sum(s.get(k, 0.0) for s, _ in totals) / n for k in sums} | {"n": n}
