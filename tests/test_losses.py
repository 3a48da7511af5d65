"""The objectives compute what upstream computes."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from m3ae.models.losses import cls_loss, itm_loss, mim_loss, mim_target, mlm_loss, retrieval_loss, vqa_loss
from m3ae.models.masking import patchify


def test_mim_loss_averages_over_removed_patches_only() -> None:
    g = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, 16, 16, generator=g)
    pred = torch.randn(2, 4, 8 * 8 * 3, generator=g)
    mask = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 0.0, 1.0, 1.0]])
    loss = mim_loss(pred, images, mask, 8, norm_pix=True)
    target = patchify(images, 8)
    target = (target - target.mean(-1, keepdim=True)) / (
        target.var(-1, unbiased=True, keepdim=True) + 1e-6
    ) ** 0.5
    per_patch = ((pred - target) ** 2).mean(-1)
    assert torch.allclose(loss, per_patch[mask.bool()].mean(), atol=1e-6)
    pred2 = pred.clone()
    pred2[mask == 0] += 5.0  # kept patches do not count
    assert torch.allclose(mim_loss(pred2, images, mask, 8), loss)


def test_mim_target_without_norm_is_plain_patches() -> None:
    images = torch.randn(1, 1, 8, 8)
    assert torch.equal(mim_target(images, 4, norm_pix=False), patchify(images, 4))


def test_mlm_loss_ignores_unlabelled_and_survives_no_labels() -> None:
    logits = torch.randn(2, 5, 11, requires_grad=True)
    labels = torch.full((2, 5), -100)
    empty = mlm_loss(logits, labels)
    assert empty.item() == 0.0 and empty.requires_grad
    labels[0, 1], labels[1, 4] = 3, 7
    expected = F.cross_entropy(torch.stack([logits[0, 1], logits[1, 4]]), torch.tensor([3, 7]))
    assert torch.allclose(mlm_loss(logits, labels), expected)


def test_vqa_loss_is_bce_summed_over_answers() -> None:
    logits, targets = torch.randn(4, 6), (torch.rand(4, 6) > 0.7).float()
    by_hand = F.binary_cross_entropy_with_logits(logits, targets, reduction="none").sum(1).mean()
    assert torch.allclose(vqa_loss(logits, targets), by_hand, atol=1e-6)


def test_classification_losses_and_retrieval_target_zero() -> None:
    logits, labels = torch.randn(3, 2), torch.tensor([1, 0, 1])
    assert torch.allclose(itm_loss(logits, labels), F.cross_entropy(logits, labels))
    assert torch.allclose(cls_loss(logits, labels), F.cross_entropy(logits, labels))
    scores = torch.zeros(2, 4)
    scores[:, 0] = 50.0
    assert retrieval_loss(scores).item() < 1e-6
    assert torch.allclose(retrieval_loss(torch.zeros(2, 4)), torch.log(torch.tensor(4.0)))
