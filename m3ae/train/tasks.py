"""Tasks pair a batch with the model and the losses; the training loop knows none of them.

Each task has ``losses(model, batch) -> {name: scalar}`` (``loss`` = the total that is optimised)
and ``forward_backward(model, batch, scale)``, which computes the same losses and
back-propagates ``scale(loss)``. Only `PretrainTask` overrides the latter, to back-propagate each
of its three passes as soon as its loss exists.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from m3ae.errors import M3AEError
from m3ae.models import losses as L

Batch = dict[str, torch.Tensor]
Scale = Callable[[torch.Tensor], torch.Tensor]


def fuse(model: nn.Module, text: torch.Tensor, attention_mask: torch.Tensor, image: Any) -> Any:
    """`model.fuse`: fusion and poolers on embeddings a task computed once (see `M3AE.fuse`)."""
    return model.fuse(text, attention_mask, image)


def mlm_loss_at_labels(model: nn.Module, text_feats: torch.Tensor, labels: torch.Tensor,
                       attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """MLM cross-entropy with the vocabulary head applied to the labelled positions only.

    The same loss as the head over every position ([B, L_t, V] logits) followed by the masked
    mean, for about 15% of the work: the vocabulary projection is the largest matrix product of
    pre-training at small widths. A head that mixes tokens (the transformer decoder) first runs
    its blocks over the whole stream.

    Args:
        text_feats: [B, L_t, D] text stream (`model.mlm_features`); labels: [B, L_t], -100 = not
            predicted; attention_mask: [B, L_t] (read by a token-mixing head only).
    """
    chosen = labels != -100
    if not bool(chosen.any()):
        return text_feats.sum() * 0.0
    head = model.heads["mlm"]
    if getattr(head, "mixes_tokens", False):
        return L.mlm_loss(head(text_feats, attention_mask)[chosen], labels[chosen])
    return L.mlm_loss(head(text_feats[chosen]), labels[chosen])  # [N, V] vs [N]


class BaseTask:
    """Shared behaviour: batch-key validation and the default forward/backward."""

    name = "base"
    batch_keys: tuple[str, ...] = ()

    def check_batch(self, batch: Batch) -> None:
        """Raises a clear error when the collator did not produce a key this task needs."""
        missing = [k for k in self.batch_keys if k not in batch]
        if missing:
            raise M3AEError(f"{self.name} task: batch lacks {missing} (has {sorted(batch)})")

    def losses(self, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        """Named scalar losses; ``loss`` is the one optimised."""
        raise NotImplementedError

    def losses_one_graph(self, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        """`losses` as one autograd graph, for a single backward (the low-memory mode's optimizer
        step inside backward needs each gradient complete when its hook fires)."""
        return self.losses(model, batch)

    def forward_backward(self, model: nn.Module, batch: Batch, scale: Scale) -> dict[str, torch.Tensor]:
        """Computes `losses` and back-propagates ``scale(loss)``; returns detached losses."""
        out = self.losses(model, batch)
        scale(out["loss"]).backward()
        return {k: v.detach() for k, v in out.items()}


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

    def __init__(self, mlm_weight: float = 1.0, mim_weight: float = 1.0, itm_weight: float = 1.0,
                 mask_ratio: float = 0.75, norm_pix_loss: bool = True) -> None:
        self.weights = {"mlm": mlm_weight, "mim": mim_weight, "itm": itm_weight}
        if not self.active:
            raise M3AEError("pre-training needs at least one of task.mlm_weight, mim_weight, itm_weight > 0")
        self.mask_ratio = mask_ratio
        self.norm_pix_loss = norm_pix_loss

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


IMAGE_INPUTS = ("pixels", "none")
"""pixels: the image goes through the vision tower; none: question-only (`M3AE.empty_image`)."""


class HeadOnJointFeatureTask(BaseTask):
    """A head on ``cls_feats`` trained with one loss: what VQA and classification share.

    Args:
        image_input: "pixels" (the model) or "none" (the text-only baseline: the same text tower,
            fusion and head, with an image stream that carries no image).
    """

    head: str
    """Key of ``model.heads``."""
    target_key: str
    """Batch key of the loss target."""

    def __init__(self, image_input: str = "pixels") -> None:
        if image_input not in IMAGE_INPUTS:
            raise M3AEError(f"task.image_input must be one of {IMAGE_INPUTS} (got {image_input!r})")
        self.image_input = image_input

    @staticmethod
    def loss_fn(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def logits(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """[B, A] answer logits (VQA) or [B, K] class logits (classification)."""
        ids, mask = batch["input_ids"], batch["attention_mask"]
        if self.image_input == "none":
            out = model.encode(None, ids, mask, image_embeds=model.empty_image(ids.shape[0]))
        else:
            out = model.encode(batch["pixel_values"], ids, mask)
        return model.heads[self.head](out.cls_feats)

    def losses(self, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        """``{"loss": ...}``."""
        self.check_batch(batch)
        return {"loss": self.loss_fn(self.logits(model, batch), batch[self.target_key])}


VQA_LOSSES = ("paper", "ce")


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

    def __init__(self, image_input: str = "pixels", loss: str = "paper") -> None:
        super().__init__(image_input)
        if loss not in VQA_LOSSES:
            raise M3AEError(f"task.loss must be one of {VQA_LOSSES} (got {loss!r})")
        self.loss = loss
        if loss == "ce":
            self.batch_keys = (*self.batch_keys, "vqa_labels")

    def losses(self, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        """``{"loss": ...}``: the paper's BCE x A, or softmax cross-entropy over the answers."""
        self.check_batch(batch)
        logits = self.logits(model, batch)
        if self.loss == "ce":
            return {"loss": L.vqa_ce_loss(logits, batch["vqa_labels"])}
        return {"loss": self.loss_fn(logits, batch[self.target_key])}


class ClassificationTask(HeadOnJointFeatureTask):
    """Image-text classification (MELINDA): cross-entropy over K classes."""

    name = head = "cls"
    target_key = "labels"
    batch_keys = ("pixel_values", "input_ids", "attention_mask", "labels")
    loss_fn = staticmethod(L.cls_loss)


class RetrievalTask(BaseTask):
    """Image-text retrieval fine-tuning: listwise softmax over the true caption and N others.

    Each image is paired with 1+N captions (index 0 true); all pairs go through the cross-encoder
    and ``heads["irtr"]`` scores them. The vision tower runs once per image and its embedding is
    repeated for the captions.
    """

    name = "irtr"
    batch_keys = ("pixel_values", "input_ids", "attention_mask")

    def scores(self, model: nn.Module, batch: Batch, image: torch.Tensor | None = None) -> torch.Tensor:
        """[B, 1+N] matching scores (``image``: the batch's [B, 1+L_i, D] embeddings, when at hand)."""
        ids, mask = batch["input_ids"], batch["attention_mask"]
        if ids.ndim != 3:
            raise M3AEError(f"irtr task: input_ids must be [B, 1+N, L_t], got {tuple(ids.shape)}")
        b, n, lt = ids.shape
        if image is None:
            image = model.embed_image(batch["pixel_values"]).embeds  # [B, 1+L_i, D]
        image = image.repeat_interleave(n, dim=0)  # [B*(1+N), 1+L_i, D], rows follow ids.reshape
        out = model.encode(None, ids.reshape(b * n, lt), mask.reshape(b * n, lt), image_embeds=image)
        return model.heads["irtr"](out.cls_feats).reshape(b, n)  # [B*(1+N), 1] -> [B, 1+N]

    def losses(self, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        """``{"loss": retrieval_loss}``."""
        self.check_batch(batch)
        return {"loss": L.retrieval_loss(self.scores(model, batch))}


class ContrastiveRetrievalTask(RetrievalTask):
    """Retrieval fine-tuning plus ALBEF's image-text contrastive loss (ITC) on the towers.

    The listwise cross-encoder loss of `RetrievalTask`, plus ``itc_weight`` x the symmetric
    InfoNCE between the batch's images and their true captions, embedded by the towers alone
    (``heads["itc"]``). The dual encoder this trains ranks a whole pool cheaply; the cross-encoder
    re-ranks its top K (two-stage retrieval). Other images' captions in the batch are negatives.

    Args:
        itc_weight: weight of the contrastive loss.
    """

    batch_keys = ("pixel_values", "input_ids", "attention_mask")

    def __init__(self, itc_weight: float = 1.0) -> None:
        self.itc_weight = itc_weight

    def losses(self, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        """``{"loss", "irtr_loss", "itc_loss"}``; the vision tower runs once for both."""
        self.check_batch(batch)
        image = model.embed_image(batch["pixel_values"]).embeds  # [B, 1+L_i, D]
        irtr = L.retrieval_loss(self.scores(model, batch, image))
        ids, mask = batch["input_ids"][:, 0], batch["attention_mask"][:, 0]  # true captions [B, L_t]
        text_cls = model.embed_text(ids, mask)[:, 0]  # [B, D]
        itc = L.itc_loss(model.project_dual(image[:, 0], "image"), model.project_dual(text_cls, "text"),
                         model.heads["itc"].logit_scale)
        return {"loss": irtr + self.itc_weight * itc, "irtr_loss": irtr, "itc_loss": itc}


def make_task(name: str, **kwargs: Any) -> BaseTask:
    """The task object for ``task.name`` (pretrain, vqa, cls, irtr) with its options; irtr with
    ``itc_weight`` > 0 adds the contrastive loss."""
    if name == "irtr":
        itc_weight = kwargs.pop("itc_weight", 0.0)
        if itc_weight:
            return ContrastiveRetrievalTask(itc_weight=itc_weight)
    tasks = {"pretrain": PretrainTask, "vqa": VQATask, "cls": ClassificationTask, "irtr": RetrievalTask}
    if name not in tasks:
        raise M3AEError(f"unknown task {name!r}; choose among pretrain, vqa, cls, irtr")
    return tasks[name](**kwargs)
