"""Evaluation: (model, dataset) -> metrics, for every task, correct under data parallelism.

Each rank scores a contiguous, disjoint slice of the examples (no padded duplicates, unlike a
DistributedSampler), the per-example results are gathered, and every rank computes the same
metrics from the full set.
"""
from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from m3ae import metrics as M
from m3ae.errors import M3AEError
from m3ae.train import distributed as D
from m3ae.train.loop import autocast_context, to_device
from m3ae.models.losses import vqa_ce_loss, vqa_loss
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


# -- two-stage retrieval: dual-encoder ranking of every candidate, cross-encoder on the top K ----

RETRIEVAL_PROTOCOLS = ("full", "two-stage")
"""``full``: the original's cross-encoder on all N_i x N_t pairs (the default); ``two-stage``."""


@dataclass
class TwoStageScores:
    """What `two_stage_scores` computes: two ranking matrices and the cost."""

    i2t: torch.Tensor
    """[N_i, N_t] image->text ranking: each image's top-K texts by the dual score carry their
    cross-encoder score, and rank above all others (ordered among themselves by the dual score)."""
    t2i: torch.Tensor
    """[N_i, N_t] text->image ranking, the same per column."""
    pairs_scored: int
    """Distinct (image, text) pairs that went through the cross-encoder (<= K * (N_i + N_t))."""


@torch.no_grad()
def dual_embeddings(model: nn.Module, images: Dataset, texts: Dataset, image_batch: int = 8,
                    text_batch: int = 64, precision: str = "fp32") -> tuple[torch.Tensor, torch.Tensor, list]:
    """Unit-norm dual-encoder embeddings of a pool, plus the text tower outputs for re-ranking.

    Returns:
        (image [N_i, D], text [N_t, D], text tower batches [(embeds [b, L_t, D], mask [b, L_t])]).
    """
    device = _device_of(model)
    with eval_mode(model):
        image_parts, text_parts, text_batches = [], [], []
        for tb in DataLoader(texts, batch_size=text_batch, collate_fn=getattr(texts, "collate_fn", None)):
            tb = to_device(tb, device)
            with autocast_context(precision, device):
                text = model.embed_text(tb["input_ids"], tb["attention_mask"])  # [b, L_t, D]
                text_parts.append(model.project_dual(text[:, 0], "text").float().cpu())
            text_batches.append((text, tb["attention_mask"]))
        for ib in DataLoader(images, batch_size=image_batch, collate_fn=getattr(images, "collate_fn", None)):
            with autocast_context(precision, device):
                image_parts.append(model.embed_images(ib["pixel_values"].to(device)).float().cpu())
    return torch.cat(image_parts), torch.cat(text_parts), text_batches


def candidate_pairs(sim: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The pairs the cross-encoder re-ranks: each image's top-K texts and each text's top-K images.

    Args:
        sim: [N_i, N_t] dual-encoder similarities.
        top_k: K (clamped to the pool sizes).

    Returns:
        (pairs [P, 2] distinct (image, text) rows sorted by image, i2t [N_i, K_t] text indices,
        t2i [N_t, K_i] image indices).
    """
    n_i, n_t = sim.shape
    i2t = sim.topk(min(top_k, n_t), dim=1).indices  # [N_i, K_t]
    t2i = sim.topk(min(top_k, n_i), dim=0).indices.t()  # [N_t, K_i]
    rows = torch.cat([
        torch.stack([torch.arange(n_i).repeat_interleave(i2t.shape[1]), i2t.reshape(-1)], 1),
        torch.stack([t2i.reshape(-1), torch.arange(n_t).repeat_interleave(t2i.shape[1])], 1),
    ])
    flat = torch.unique(rows[:, 0] * n_t + rows[:, 1])  # sorted: image-major, so grouped by image
    return torch.stack([flat // n_t, flat % n_t], 1), i2t, t2i


@torch.no_grad()
def score_pairs(model: nn.Module, images: Dataset, text_batches: list, pairs: torch.Tensor,
                image_batch: int = 8, pair_batch: int = 64, precision: str = "fp32",
                progress: bool = False) -> torch.Tensor:
    """Cross-encoder (fusion + ``heads["irtr"]``) scores of given (image, text) pairs: -> [P].

    Images are read in order, each once; under data parallelism each rank scores the pairs of
    its own slice of images and the scores are gathered.
    """
    device = _device_of(model)
    text = torch.cat([t for t, _ in text_batches])  # [N_t, L_t, D]
    mask = torch.cat([m for _, m in text_batches])  # [N_t, L_t]
    info = D.dist_info()
    shard = D.shard_indices(len(images), info.rank, info.world_size)
    mine = ((pairs[:, 0] >= shard.start) & (pairs[:, 0] < shard.stop)).nonzero(as_tuple=True)[0]
    image_of = pairs[mine, 0]  # [P_rank] image index of each of this rank's pairs
    out = torch.zeros(len(mine))
    loader = shard_loader(images, image_batch)
    start = shard.start
    with eval_mode(model):
        for batch in _progress(loader, len(loader), "re-rank", progress and info.is_main):
            pix = batch["pixel_values"].to(device)
            with autocast_context(precision, device):
                image = model.embed_image(pix).embeds  # [b_i, 1+L_i, D]
            positions = ((image_of >= start) & (image_of < start + len(pix))).nonzero(as_tuple=True)[0]
            for pos in positions.split(pair_batch):
                img_idx = (image_of[pos] - start).to(device)
                txt_idx = pairs[mine[pos], 1].to(device)
                with autocast_context(precision, device):
                    fused = fuse(model, text[txt_idx], mask[txt_idx], image[img_idx])
                    out[pos] = model.heads["irtr"](fused.cls_feats).float().reshape(-1).cpu()
            start += len(pix)
    gathered = D.gather_objects((mine, out))
    full = torch.zeros(len(pairs))
    for idx, val in gathered:
        full[idx] = val
    return full


def _ranking(sim: torch.Tensor, candidates: torch.Tensor, cross: torch.Tensor, dim: int) -> torch.Tensor:
    """Scores whose order along ``dim`` is: candidates by cross score, then the rest by dual score.

    Args:
        sim: [N_i, N_t] dual similarities (in [-1, 1]).
        candidates: [N, K] indices along ``dim`` for each row (dim=1) or column (dim=0).
        cross: [N, K] their cross-encoder scores.
    """
    # every non-candidate sits below the lowest cross score (a dual score is in [-1, 1])
    ranked = sim - 2.0 + float(cross.min()) - 1.0
    if dim == 1:
        ranked.scatter_(1, candidates, cross)
    else:
        ranked.t().scatter_(1, candidates, cross)
    return ranked


def two_stage_scores(model: nn.Module, images: Dataset, texts: Dataset, top_k: int, image_batch: int = 8,
                     text_batch: int = 64, precision: str = "fp32", progress: bool = False) -> TwoStageScores:
    """Dual-encoder scores for all N_i x N_t pairs, cross-encoder re-ranking of each query's top K.

    Cost: the towers run once per image (twice for the vision tower) and once per text; the
    fusion runs on at most K * (N_i + N_t) pairs instead of N_i * N_t.
    """
    if top_k < 1:
        raise M3AEError(f"two-stage retrieval: top_k must be at least 1 (got {top_k})")
    img, txt, text_batches = dual_embeddings(model, images, texts, image_batch, text_batch, precision)
    sim = img @ txt.t()  # [N_i, N_t]
    pairs, i2t, t2i = candidate_pairs(sim, top_k)
    cross = score_pairs(model, images, text_batches, pairs, image_batch, text_batch, precision, progress)
    lookup = torch.full(sim.shape, float("nan"))
    lookup[pairs[:, 0], pairs[:, 1]] = cross
    i2t_cross = lookup.gather(1, i2t)  # [N_i, K_t]
    t2i_cross = lookup.t().gather(1, t2i)  # [N_t, K_i]
    return TwoStageScores(_ranking(sim, i2t, i2t_cross, 1), _ranking(sim, t2i, t2i_cross, 0), len(pairs))


def evaluate_retrieval_two_stage(model: nn.Module, pool: tuple[Dataset, Dataset, torch.Tensor], top_k: int,
                                 image_batch: int = 8, text_batch: int = 64, precision: str = "fp32",
                                 progress: bool = False) -> tuple[dict[str, float], TwoStageScores]:
    """R@1/5/10 both ways and ``r_mean`` under two-stage retrieval, plus ``pairs_scored``."""
    images, texts, text_to_image = pool
    if "itc" not in model.heads:
        warnings.warn("two-stage retrieval without an itc head ranks by the towers' raw CLS tokens, which "
                      "were never trained to align; fine-tune with --task.itc_weight > 0", stacklevel=2)
    scores = two_stage_scores(model, images, texts, top_k, image_batch, text_batch, precision, progress)
    i2t = M.retrieval_recall(scores.i2t, text_to_image)
    t2i = M.retrieval_recall(scores.t2i, text_to_image)
    out = {k: v for k, v in i2t.items() if k.startswith("i2t")} | {k: v for k, v in t2i.items() if k.startswith("t2i")}
    recalls = [v for k, v in out.items()]
    out["r_mean"] = sum(recalls) / len(recalls)
    out["n_images"], out["n_texts"] = int(scores.i2t.shape[0]), int(scores.i2t.shape[1])
    out["top_k"], out["pairs_scored"] = int(top_k), int(scores.pairs_scored)
    return out, scores


DEFAULT_MONITOR = {"pretrain": "-loss", "vqa": "overall", "cls": "accuracy", "irtr": "r_mean"}
