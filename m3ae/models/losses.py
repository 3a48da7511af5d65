"""Objectives as pure functions: (predictions, targets) -> scalar loss. No logging, no state."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from m3ae.models.masking import patchify


def mim_target(images: torch.Tensor, patch_size: int, norm_pix: bool = True) -> torch.Tensor:
    """Pixel targets of the MIM loss.

    Args:
        images: [B, C, H, W] exactly as fed to the network (already CLIP-normalised).
        patch_size: P.
        norm_pix: normalise each patch by its own mean and unbiased variance (+1e-6).

    Returns:
        [B, L_i, P*P*C].
    """
    target = patchify(images, patch_size).float()
    if norm_pix:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)  # unbiased, as upstream (torch default)
        target = (target - mean) / (var + 1e-6) ** 0.5
    return target


def mim_loss(
    pred: torch.Tensor, images: torch.Tensor, mask: torch.Tensor, patch_size: int, norm_pix: bool = True
) -> torch.Tensor:
    """Masked image modelling loss (MAE).

    Args:
        pred: [B, L_i, P*P*C] decoder output.
        images: [B, C, H, W] network input.
        mask: [B, L_i], 1 = removed; the loss averages over removed patches only.
        patch_size: P.
        norm_pix: per-patch normalised targets.

    Returns:
        scalar: mean over removed patches of the per-patch mean squared error.
    """
    target = mim_target(images, patch_size, norm_pix)
    per_patch = ((pred.float() - target) ** 2).mean(dim=-1)  # [B, L_i]
    mask = mask.float()
    return (per_patch * mask).sum() / mask.sum().clamp_min(1.0)


def mlm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the vocabulary at labelled positions.

    Args:
        logits: [B, L_t, V].
        labels: [B, L_t], -100 = not predicted.

    Returns:
        scalar; 0 (still connected to the graph) when no position is labelled, so the step
        does not produce NaN when a batch of short captions draws no masked token.
    """
    if not bool((labels != -100).any()):
        return logits.sum() * 0.0
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=-100
    )


def itm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Image-text matching: logits [B, 2], labels [B] (1 = matched pair, -100 = ignored)."""
    return F.cross_entropy(logits.float(), labels.long())


def vqa_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Upstream VQA loss: BCE-with-logits averaged over all B*A entries, times A.

    Args:
        logits: [B, A].
        targets: [B, A] answer scores in [0, 1].
    """
    return F.binary_cross_entropy_with_logits(logits.float(), targets.float()) * targets.shape[1]


def vqa_ce_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Softmax cross-entropy over the answer set: logits [B, A], labels [B] (-1 = outside, ignored).

    Returns 0 (still connected to the graph) when every label in the batch is outside the set.
    """
    if not bool((labels >= 0).any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits.float(), labels.long(), ignore_index=-1)


def cls_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Classification cross-entropy: logits [B, K], labels [B]."""
    return F.cross_entropy(logits.float(), labels.long())


def retrieval_loss(scores: torch.Tensor) -> torch.Tensor:
    """Listwise retrieval loss: scores [B, 1+N] with the true caption at index 0."""
    target = torch.zeros(scores.shape[0], dtype=torch.long, device=scores.device)
    return F.cross_entropy(scores.float(), target)


def itc_loss(image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE over a batch of matched pairs (CLIP / ALBEF image-text contrastive loss).

    Args:
        image_embeds: [B, E] unit-norm image embeddings.
        text_embeds: [B, E] unit-norm embeddings of each image's own caption (row i matches row i).
        logit_scale: scalar log inverse temperature (clamped to at most log 100, as CLIP).

    Returns:
        scalar: mean of the image->text and text->image cross-entropies.
    """
    scale = logit_scale.clamp(max=math.log(100.0)).exp()
    logits = scale * image_embeds.float() @ text_embeds.float().t()  # [B, B]
    target = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))
