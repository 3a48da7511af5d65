"""Evaluation: (model, dataset) -> metrics, for every task, correct under data parallelism.

Each rank scores a contiguous, disjoint slice of the examples (no padded duplicates, unlike a
DistributedSampler), the per-example results are gathered, and every rank computes the same
metrics from the full set.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from m3ae import metrics as M
from m3ae.errors import M3AEError
from m3ae.train import distributed as D
from m3ae.train.loop import autocast_context, to_device
from m3ae.models.losses import vqa_loss
from m3ae.train.tasks import ClassificationTask, PretrainTask, VQATask, fuse


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def shard_loader(dataset: Dataset, batch_size: int, num_workers: int = 0) -> DataLoader:
    """A loader over this rank's disjoint slice of ``dataset``, in order, with its collate_fn."""
    info = D.dist_info()
    indices = D.shard_indices(len(dataset), info.rank, info.world_size)
    collate = getattr(dataset, "collate_fn", None)
    return DataLoader(Subset(dataset, list(indices)), batch_size=batch_size, shuffle=False,
                      num_workers=num_workers, collate_fn=collate)


def _progress(iterable: Any, total: int, desc: str, enabled: bool) -> Any:
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """``model.eval()`` and no_grad inside; restores the previous mode after."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _batches(model: nn.Module, dataset: Dataset, batch_size: int, desc: str, progress: bool):
    loader = shard_loader(dataset, batch_size)
    show = progress and D.dist_info().is_main
    for batch in _progress(loader, len(loader), desc, show):
        yield to_device(batch, _device_of(model))


def _cat(parts: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)


def _gather_cat(local: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Concatenates each rank's tensors in rank order (= dataset order, shards are contiguous)."""
    gathered = D.gather_objects({k: v.cpu() for k, v in local.items()})
    return {k: torch.cat([g[k] for g in gathered]) for k in local}


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
            parts["loss"].append(vqa_loss(logits, batch["vqa_targets"]).reshape(1).cpu() * len(logits))
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


@torch.no_grad()
def retrieval_scores(model: nn.Module, images: Dataset, texts: Dataset, image_batch: int = 8,
                     text_batch: int = 64, precision: str = "fp32", progress: bool = False) -> torch.Tensor:
    """The full cross-encoder score matrix [n_images, n_texts]: ``heads["irtr"]`` on every pair.

    Each image's vision embedding is computed once and repeated against every text batch. Under
    data parallelism each rank scores a disjoint slice of the images and the rows are gathered.
    """
    device = _device_of(model)
    text_loader = DataLoader(texts, batch_size=text_batch, shuffle=False,
                             collate_fn=getattr(texts, "collate_fn", None))
    rows: list[torch.Tensor] = []
    with eval_mode(model):
        # the text tower runs once per caption; only fusion + head run per (image, caption) pair
        text_batches = []
        for tb in text_loader:
            tb = to_device(tb, device)
            with autocast_context(precision, device):
                text_batches.append((model.embed_text(tb["input_ids"], tb["attention_mask"]), tb["attention_mask"]))
        loader = shard_loader(images, image_batch)
        show = progress and D.dist_info().is_main
        for batch in _progress(loader, len(loader), "eval retrieval", show):
            pix = batch["pixel_values"].to(device)
            with autocast_context(precision, device):
                image = model.embed_image(pix).embeds  # [b_i, 1+L_i, D]
                for i in range(len(pix)):
                    row = []
                    for text, mask in text_batches:
                        emb = image[i:i + 1].expand(len(text), -1, -1)  # [b_t, 1+L_i, D]
                        out = fuse(model, text, mask, emb)
                        row.append(model.heads["irtr"](out.cls_feats).float().reshape(-1).cpu())
                    rows.append(torch.cat(row))
    local = torch.stack(rows) if rows else torch.zeros(0, len(texts))
    return torch.cat(D.gather_objects(local))  # [n_images, n_texts], rank order = image order


def evaluate_retrieval(model: nn.Module, pool: tuple[Dataset, Dataset, torch.Tensor], image_batch: int = 8,
                       text_batch: int = 64, precision: str = "fp32",
                       progress: bool = False) -> tuple[dict[str, float], torch.Tensor]:
    """R@1/5/10 for image->text and text->image over the whole pool, plus ``r_mean``."""
    images, texts, text_to_image = pool
    scores = retrieval_scores(model, images, texts, image_batch, text_batch, precision, progress)
    out = M.retrieval_recall(scores, text_to_image)
    out["n_images"], out["n_texts"] = int(scores.shape[0]), int(scores.shape[1])
    return out, scores


DEFAULT_MONITOR = {"pretrain": "-loss", "vqa": "overall", "cls": "accuracy", "irtr": "r_mean"}
