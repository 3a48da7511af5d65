"""Pre-training: MLM + MIM + ITM (+ ITC) on caption folders, and its evaluation (mean losses, ITM
accuracy and the effective rank of the image features)."""
from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from m3ae import distributed as D
from m3ae.errors import M3AEError
from m3ae.hardware import autocast_context
from m3ae.metrics import effective_rank
from m3ae.models import losses as L
from m3ae.tasks.base import BaseTask, Batch, Scale, fuse, mlm_loss_at_labels, register
from m3ae.tasks.evaluation import _batches, _device_of, eval_mode


FEATURE_COLLAPSE = 0.5
"""A held-out effective rank below this share of its value before training is warned about."""
ITM_NEGATIVES = ("random", "batch", "hard")
"""Where ITM's mismatched pairs come from: "random" (the paper: the collator swaps in another image
for half of the texts, which may carry the same text); "batch" (in the batch, one image per text and
one text per image, drawn uniformly among those whose text differs from the anchor's); "hard" (the
same, drawn by ITC similarity as ALBEF does; uniform when ITC is off)."""


def same_text(input_ids: torch.Tensor) -> torch.Tensor:
    """[B, L_t] token ids -> [B, B] bool, True where rows i and j hold the same text: such a "negative"
    is true of the other image too (a composed caption such as "axial ct of the brain" recurs)."""
    return (input_ids[:, None, :] == input_ids[None, :, :]).all(dim=-1)


def draw_negatives(logits: torch.Tensor, excluded: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One in-batch negative per anchor, drawn with probability softmax(logits) over the allowed columns.

    Inverse-CDF sampling driven by ``noise`` (one uniform number per anchor, from the collator), so the
    draw is reproducible and the same in every code path that sees the batch.

    Args:
        logits: [B, B] anchor x candidate scores (zeros: uniform).
        excluded: [B, B] bool, candidates never drawn (the anchor itself and texts equal to its own).
        noise: [B] uniform in [0, 1).

    Returns:
        (index [B] of the drawn candidate, valid [B] bool: False where every candidate was excluded).
    """
    weights = torch.softmax(logits.float(), dim=1).masked_fill(excluded, 0.0)  # [B, B]
    valid = weights.sum(dim=1) > 0
    cdf = weights.cumsum(dim=1)
    cdf = cdf / cdf[:, -1:].clamp_min(torch.finfo(cdf.dtype).tiny)  # last entry exactly 1 on valid rows
    u = noise.float().clamp_min(1e-6)[:, None]  # u > 0: never a leading excluded column (cdf 0)
    index = torch.searchsorted(cdf, u).squeeze(1).clamp_max(logits.shape[1] - 1)
    return index, valid


def balanced_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean of the recall on matched (1) and on mismatched (0) pairs; -100 labels are ignored. Chance is
    0.5 whatever the share of negatives (hard ITM has two negatives per positive)."""
    pred = logits.argmax(dim=-1)
    recalls = [(pred[labels == c] == c).float().mean() for c in (0, 1) if bool((labels == c).any())]
    return torch.stack(recalls).mean() if recalls else logits.new_zeros(())


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

    Two options beyond the paper (both off by default, so the paper's setting stays as it was):
    ``itc_weight`` > 0 adds ALBEF's image-text contrastive loss on the towers' summaries (before
    fusion), which aligns the towers
    so that matching has something to compare; ``itm_negatives="hard"`` replaces the collator's
    random swaps by in-batch negatives drawn from the ITC similarity (one image per text and one
    text per image, 1 positive : 2 negatives), skipping any candidate whose text equals the
    anchor's, since such a "negative" is really a positive; ``"batch"`` draws them uniformly instead
    (on synthetic pairs whose hard negatives differ only in shape, which a tiny ViT hardly sees, ITM
    stayed at chance with "hard" and learned with "batch"). In-batch negatives need no extra vision pass.

    Args:
        mlm_weight, mim_weight, itm_weight: loss weights (1, 1, 1 in the paper).
        mask_ratio: share of image patches removed for MIM.
        norm_pix_loss: per-patch normalised MIM targets.
        itc_weight: weight of the contrastive loss (0 = not computed; needs ``heads["itc"]``).
        itm_negatives: "random" (the paper), "batch" or "hard" (see `ITM_NEGATIVES`).
    """

    name = "pretrain"
    batch_keys = ("pixel_values", "input_ids", "attention_mask", "mlm_input_ids", "mlm_labels",
                  "image_noise", "itm_labels", "itm_pixel_values")
    heads = ("mlm", "mim", "itm")
    examples = "pretrain"
    accepts = ("pretrain", "irtr")  # caption folders
    monitor = "-loss"
    options = ("mlm_weight", "mim_weight", "itm_weight", "mask_ratio", "norm_pix_loss", "itc_weight",
               "itm_negatives")
    pretraining = True
    several_folders = True  # ROCO + MedICaT, as the paper
    evaluates_saved = False

    def __init__(self, mlm_weight: float = 1.0, mim_weight: float = 1.0, itm_weight: float = 1.0,
                 mask_ratio: float = 0.75, norm_pix_loss: bool = True, itc_weight: float = 0.0,
                 itm_negatives: str = "random") -> None:
        self.weights = {"mlm": mlm_weight, "mim": mim_weight, "itm": itm_weight, "itc": itc_weight}
        if not self.active:
            raise M3AEError("pre-training needs at least one of task.mlm_weight, mim_weight, itm_weight, "
                            "itc_weight > 0")
        if itm_negatives not in ITM_NEGATIVES:
            raise M3AEError(f"task.itm_negatives must be one of {ITM_NEGATIVES} (got {itm_negatives!r})")
        self.mask_ratio = mask_ratio
        self.norm_pix_loss = norm_pix_loss
        self.itm_negatives = itm_negatives

    @property
    def in_batch(self) -> bool:
        """ITM draws its negatives in the batch (needs the collator's ``itm_noise``)."""
        return self.itm_negatives != "random" and bool(self.weights["itm"])

    def check_batch(self, batch: Batch) -> None:
        """`BaseTask.check_batch`, plus ``itm_noise`` for hard negatives."""
        super().check_batch(batch)
        if self.in_batch and "itm_noise" not in batch:
            raise M3AEError(f"pretrain task: itm_negatives {self.itm_negatives!r} needs itm_noise in the batch "
                            f"(has {sorted(batch)})")

    def evaluate(self, model: nn.Module, data: Any, args: Any, precision: str,
                 progress: bool = False) -> dict[str, float]:
        """The mean losses on the split (model selection on ``-loss``), ITM accuracy and feature health.

        The first call's ``feature_rank`` is the reference (the loop validates a pre-training run once
        before its first step); a later one below half of it is reported as a collapse."""
        metrics = evaluate_pretrain(model, data, args.batch_size, precision, progress, self)
        rank = metrics.get("feature_rank")
        if rank is not None:
            self.start_rank = getattr(self, "start_rank", None) or rank
            if rank < FEATURE_COLLAPSE * self.start_rank:
                warnings.warn(f"feature health: the effective rank of the pooled image features fell from "
                              f"{self.start_rank:.1f} to {rank:.1f} (below {FEATURE_COLLAPSE:.0%} of its start): "
                              f"the vision tower is folding its features into a few directions", stacklevel=2)
        return metrics

    # -- the passes: (model, batch, shared embeddings) -> (loss, detached metrics) ------------------
    def mlm_pass(self, model: nn.Module, batch: Batch, image: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Masked text + full image -> MLM cross-entropy on the masked positions."""
        text = model.embed_text(batch["mlm_input_ids"], batch["attention_mask"], cache=False)  # [B, L_t, D]
        out = fuse(model, text, batch["attention_mask"], image)
        return mlm_loss_at_labels(model, model.mlm_features(out), batch["mlm_labels"], batch["attention_mask"]), {}

    def mim_pass(self, model: nn.Module, batch: Batch, text: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Full text + masked image -> pixel reconstruction loss on the removed patches."""
        masked = model.embed_image(batch["pixel_values"], batch["image_noise"], self.mask_ratio)
        out = fuse(model, text, batch["attention_mask"], masked)
        pred = model.heads["mim"](model.mim_features(out), out.ids_restore)  # [B, L_i, P*P*C]
        return L.mim_loss(pred, batch["pixel_values"], out.image_mask, model.config.vision.patch_size,
                          self.norm_pix_loss), {}

    def dual_embeddings(self, model: nn.Module, batch: Batch, image: torch.Tensor,
                        text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit-norm ITC embeddings of the batch's images and texts from the towers: 2 x [B, D]."""
        mask = batch["attention_mask"]
        return (model.project_dual(model.tower_summary(image), "image"),
                model.project_dual(model.tower_summary(text, mask), "text"))

    def itc_pass(self, model: nn.Module, batch: Batch, image: torch.Tensor,
                 text: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Tower summaries of the true pairs -> symmetric InfoNCE over the batch.

        A text that occurs twice in the batch needs no special case here: equal texts get equal
        embeddings, so the two rows' diagonal targets add up to the same loss and gradient as one
        target shared by both images (the loss then cannot go below log 2 on those rows)."""
        img, txt = self.dual_embeddings(model, batch, image, text)
        return L.itc_loss(img, txt, model.heads["itc"].logit_scale), {}

    def in_batch_pairs(self, model: nn.Module, batch: Batch, image: torch.Tensor, text: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """ALBEF's ITM rows: the B true pairs, then for each text an in-batch image and for each image
        an in-batch text, among those whose text differs: uniformly ("batch"), or by ITC similarity
        ("hard", when ITC is on).

        Returns image [3B, 1+L_i, D], text [3B, L_t, D], attention mask [3B, L_t] and labels [3B]
        (1 matched, 0 mismatched, -100 where the batch held no text different from the anchor's).
        """
        ids, mask = batch["input_ids"], batch["attention_mask"]
        b = ids.shape[0]
        excluded = same_text(ids)  # [B, B], the diagonal included
        with torch.no_grad():
            sim = torch.zeros(b, b, device=ids.device)  # [B_image, B_text]
            if self.itm_negatives == "hard" and self.weights["itc"]:
                img, txt = self.dual_embeddings(model, batch, image, text)
                sim = model.heads["itc"].logit_scale.clamp(max=math.log(100.0)).exp() * img @ txt.t()
        noise = batch["itm_noise"]  # [B, 2]
        neg_image, image_ok = draw_negatives(sim.t(), excluded, noise[:, 0])  # an image for each text
        neg_text, text_ok = draw_negatives(sim, excluded, noise[:, 1])  # a text for each image
        rows = torch.arange(b, device=ids.device)
        image_rows, text_rows = torch.cat([rows, neg_image, rows]), torch.cat([rows, rows, neg_text])
        negative = lambda ok: torch.where(ok, 0, -100)
        labels = torch.cat([torch.ones_like(rows), negative(image_ok), negative(text_ok)])
        return image[image_rows], text[text_rows], mask[text_rows], labels

    def itm_pass(self, model: nn.Module, batch: Batch, image: torch.Tensor,
                 text: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Full text + true (label 1) or other (label 0) image -> matching cross-entropy."""
        mask = batch["attention_mask"]
        if self.in_batch:
            image, text, mask, labels = self.in_batch_pairs(model, batch, image, text)
        else:
            labels = batch["itm_labels"]
            neg = (labels == 0).nonzero(as_tuple=True)[0]
            if neg.numel():
                # only the swapped rows need a vision pass of their own; label-1 rows reuse `image`
                neg_embeds = model.embed_image(batch["itm_pixel_values"][neg]).embeds  # [B_neg, 1+L_i, D]
                image = image.index_copy(0, neg, neg_embeds.to(image.dtype))
        logits = model.heads["itm"](fuse(model, text, mask, image).cls_feats)  # [B or 3B, 2]
        return L.itm_loss(logits, labels), {"itm_acc": balanced_accuracy(logits.detach(), labels)}

    def _total(self, parts: dict[str, torch.Tensor]) -> torch.Tensor:
        return sum(self.weights[k] * parts[f"{k}_loss"] for k in self.active)

    @property
    def active(self) -> tuple[str, ...]:
        """Objectives with a non-zero weight; the others' passes are not run at all (ablations)."""
        return tuple(k for k, w in self.weights.items() if w)

    def losses(self, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        """All losses from one graph, MLM, MIM and the paper's ITM each through `model.encode` (the
        reference path); ITC and hard-negative ITM through the towers' outputs, as in training."""
        self.check_batch(batch)
        ids, mask, pix = batch["input_ids"], batch["attention_mask"], batch["pixel_values"]

        def mlm() -> tuple[torch.Tensor, dict]:
            out = model.encode(pix, batch["mlm_input_ids"], mask)
            return mlm_loss_at_labels(model, model.mlm_features(out), batch["mlm_labels"], mask), {}

        def mim() -> tuple[torch.Tensor, dict]:
            out = model.encode(pix, ids, mask, image_noise=batch["image_noise"], mask_ratio=self.mask_ratio)
            pred = model.heads["mim"](model.mim_features(out), out.ids_restore)
            return L.mim_loss(pred, pix, out.image_mask, model.config.vision.patch_size, self.norm_pix_loss), {}

        def towers() -> tuple[torch.Tensor, torch.Tensor]:
            return model.embed_image(pix).embeds, model.embed_text(ids, mask)

        def itm() -> tuple[torch.Tensor, dict]:
            if self.in_batch:
                return self.itm_pass(model, batch, *towers())
            itm_pix = torch.where(batch["itm_labels"].bool()[:, None, None, None], pix, batch["itm_pixel_values"])
            logits = model.heads["itm"](model.encode(itm_pix, ids, mask).cls_feats)
            return L.itm_loss(logits, batch["itm_labels"]), {"itm_acc": balanced_accuracy(logits.detach(),
                                                                                            batch["itm_labels"])}

        passes = {"mlm": mlm, "mim": mim, "itm": itm, "itc": lambda: self.itc_pass(model, batch, *towers())}
        return self._collect({k: passes[k]() for k in self.active})

    def _collect(self, results: dict[str, tuple[torch.Tensor, dict]]) -> dict[str, torch.Tensor]:
        """{"loss": weighted sum, "<k>_loss": each loss, metrics...} from each pass's (loss, metrics)."""
        parts = {f"{k}_loss": loss for k, (loss, _) in results.items()}
        metrics = {name: value for _, extra in results.values() for name, value in extra.items()}
        return {"loss": self._total(parts), **parts, **metrics}

    def _passes(self, model: nn.Module, batch: Batch, image: torch.Tensor, text: torch.Tensor) -> list:
        """The active passes in training order, as (name, thunk) on the shared tower outputs."""
        passes = (
            ("mlm", lambda: self.mlm_pass(model, batch, image)),
            ("mim", lambda: self.mim_pass(model, batch, text)),
            ("itc", lambda: self.itc_pass(model, batch, image, text)),
            ("itm", lambda: self.itm_pass(model, batch, image, text)),
        )
        return [(k, run) for k, run in passes if self.weights[k]]

    def losses_one_graph(self, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        """The passes of `forward_backward`, sharing the tower outputs the same way, in one
        graph (one backward). Same losses, gradients and random draws as `forward_backward`; the
        graphs of all passes live together, which activation checkpointing keeps small."""
        self.check_batch(batch)
        image = model.embed_image(batch["pixel_values"]).embeds  # [B, 1+L_i, D]
        text = model.embed_text(batch["input_ids"], batch["attention_mask"])  # [B, L_t, D]
        return self._collect({k: run() for k, run in self._passes(model, batch, image, text)})

    def forward_backward(self, model: nn.Module, batch: Batch, scale: Scale) -> dict[str, torch.Tensor]:
        """Per-pass backward; gradients equal those of ``scale(losses(...)["loss"]).backward()``."""
        self.check_batch(batch)
        # The full image (MLM, ITC, ITM) and the full text (MIM, ITC, ITM) each go through their tower
        # once. The passes start from detached copies and collect gradients in their .grad; one
        # backward per tower at the end sends them on, so each pass's graph is freed when it is done.
        image_full = model.embed_image(batch["pixel_values"]).embeds  # [B, 1+L_i, D]
        text_full = model.embed_text(batch["input_ids"], batch["attention_mask"])  # [B, L_t, D]
        image = image_full.detach().requires_grad_(True)
        text = text_full.detach().requires_grad_(True)
        results: dict[str, tuple[torch.Tensor, dict]] = {}
        for key, run in self._passes(model, batch, image, text):
            loss, metrics = run()
            scale(self.weights[key] * loss).backward()
            results[key] = (loss.detach(), metrics)
        roots = [(t, s.grad) for t, s in ((image_full, image), (text_full, text)) if s.grad is not None]
        if roots:
            torch.autograd.backward([t for t, _ in roots], [g for _, g in roots])
        return self._collect(results)


FEATURE_RANK_EXAMPLES = 256
"""Held-out examples whose pooled image features give the feature-health figure (the first ones of the split)."""


def evaluate_pretrain(model: nn.Module, dataset: Dataset, batch_size: int = 32, precision: str = "fp32",
                      progress: bool = False, task: PretrainTask | None = None) -> dict[str, float]:
    """Mean pre-training losses on a split (batch-weighted), for model selection (``-loss``), the ITM
    balanced accuracy (``itm_acc``) and ``feature_rank``: the effective rank of the vision tower's
    pooled features of the split's first `FEATURE_RANK_EXAMPLES` examples (a fixed held-out batch)."""
    task = task or PretrainTask()
    sums: dict[str, float] = {}
    count = 0
    image_features = []
    with eval_mode(model):
        for batch in _batches(model, dataset, batch_size, "eval pretrain", progress):
            with autocast_context(precision, _device_of(model)):
                losses = task.losses(model, batch)
                if sum(len(f) for f in image_features) < FEATURE_RANK_EXAMPLES:
                    pooled = model.tower_summary(model.embed_image(batch["pixel_values"]).embeds)  # [B, D]
                    image_features.append(pooled.float().cpu())
            b = len(batch["input_ids"])
            count += b
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + float(v) * b
    totals = D.gather_objects((sums, count))
    n = sum(c for _, c in totals)
    if n == 0:
        raise M3AEError("pre-training evaluation: the split has no examples")
    metrics = {k: sum(s.get(k, 0.0) for s, _ in totals) / n for k in sums} | {"n": n}
    features = torch.cat(image_features)[:FEATURE_RANK_EXAMPLES]
    if len(features) >= 2:
        metrics["feature_rank"] = effective_rank(features)
    return metrics
