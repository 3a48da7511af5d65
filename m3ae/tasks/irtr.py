"""Image-text retrieval: the listwise cross-encoder task (with ALBEF's ITC optionally), and its
evaluation: the original's full protocol, or two-stage (dual-encoder ranking, cross-encoder re-ranking).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from m3ae import distributed as D
from m3ae import metrics as M
from m3ae.errors import M3AEError
from m3ae.hardware import autocast_context, to_device
from m3ae.models import losses as L
from m3ae.tasks.base import BaseTask, Batch, fuse, register
from m3ae.tasks.evaluation import _device_of, _progress, eval_mode, shard_loader


@register
class RetrievalTask(BaseTask):
    """Image-text retrieval fine-tuning: listwise softmax over the true caption and N others.

    Each image is paired with 1+N captions (index 0 true); all pairs go through the cross-encoder
    and ``heads["irtr"]`` scores them. The vision tower runs once per image and its embedding is
    repeated for the captions.
    """

    name = "irtr"
    batch_keys = ("pixel_values", "input_ids", "attention_mask")
    heads = ("irtr",)
    examples = "irtr"
    accepts = ("pretrain", "irtr")  # caption folders
    monitor = "r_mean"
    options = ("itc_weight",)

    @classmethod
    def create(cls, **options: Any) -> BaseTask:
        """`RetrievalTask`, or `ContrastiveRetrievalTask` when ``itc_weight`` > 0."""
        itc_weight = options.pop("itc_weight", 0.0)
        if itc_weight:
            return ContrastiveRetrievalTask(itc_weight=itc_weight)
        return RetrievalTask(**options)

    def eval_data(self, data_dir: str | Path, split: str, data_cfg: Any, tokenizer: Any, seed: int = 0) -> Any:
        """The split as a retrieval pool: (images, texts, text_to_image)."""
        from m3ae.data import make_retrieval_pool

        return make_retrieval_pool(data_dir, split, data_cfg, tokenizer)

    def evaluate(self, model: nn.Module, data: Any, args: Any, precision: str,
                 progress: bool = False) -> dict[str, float]:
        """R@1/5/10 both ways and ``r_mean``: the full protocol, or two-stage (``args.retrieval``)."""
        if args.retrieval == "two-stage":
            return evaluate_retrieval_two_stage(model, data, args.top_k, args.batch_size,
                                                args.retrieval_text_batch, precision, progress)[0]
        return evaluate_retrieval(model, data, args.batch_size, args.retrieval_text_batch, precision, progress)[0]

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
        text = model.tower_summary(model.embed_text(ids, mask), mask)  # [B, D]
        itc = L.itc_loss(model.project_dual(model.tower_summary(image), "image"), model.project_dual(text, "text"),
                         model.heads["itc"].logit_scale)
        return {"loss": irtr + self.itc_weight * itc, "irtr_loss": irtr, "itc_loss": itc}


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
                summary = model.tower_summary(text, tb["attention_mask"])  # [b, D]
                text_parts.append(model.project_dual(summary, "text").float().cpu())
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
