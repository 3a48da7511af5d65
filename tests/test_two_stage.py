"""Two-stage retrieval: ITC head and loss, candidate pairs, re-ranking equal to the full protocol
when K covers the pool, pair counts that grow as N*K, and the CLI flags on finetune/evaluate."""
from __future__ import annotations

import json

import pytest
import torch
from torch.utils.data import Dataset

from m3ae.cli import main
from m3ae.models import M3AE, ModelConfig
from m3ae.models.losses import itc_loss
from m3ae.train import evaluation as E
from m3ae.train.tasks import ContrastiveRetrievalTask, make_task


class _Images(Dataset):
    def __init__(self, pix: torch.Tensor) -> None:
        self.pix = pix

    def __len__(self) -> int:
        return len(self.pix)

    def __getitem__(self, i: int) -> dict:
        return {"pixel_values": self.pix[i]}


class _Texts(Dataset):
    def __init__(self, ids: torch.Tensor, mask: torch.Tensor) -> None:
        self.ids, self.mask = ids, mask

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.ids[i], "attention_mask": self.mask[i]}


def _model(heads=("irtr", "itc")) -> M3AE:
    torch.manual_seed(0)
    return M3AE(ModelConfig.from_name("m3ae-tiny").with_heads(list(heads))).eval()


def _pool(n_images: int = 6, captions_per_image: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    pix = torch.randn(n_images, 3, 32, 32, generator=g)
    n_texts = n_images * captions_per_image
    ids = torch.randint(5, 1000, (n_texts, 8), generator=g)
    ids[:, 0] = 0  # <s>
    mask = torch.ones(n_texts, 8, dtype=torch.long)
    mask[::3, 5:] = 0
    text_to_image = torch.arange(n_images).repeat_interleave(captions_per_image)
    return _Images(pix), _Texts(ids, mask), text_to_image


def test_itc_loss_is_low_for_aligned_pairs_and_symmetric():
    e = torch.nn.functional.normalize(torch.randn(8, 16), dim=-1)
    scale = torch.tensor(4.0)
    aligned, shuffled = itc_loss(e, e, scale), itc_loss(e, e.roll(1, 0), scale)
    assert aligned < 0.1 < shuffled
    other = torch.nn.functional.normalize(torch.randn(8, 16), dim=-1)
    assert torch.allclose(itc_loss(e, other, scale), itc_loss(other, e, scale))


def test_embed_images_and_texts_are_unit_norm_and_use_the_itc_projection():
    model = _model()
    images, texts, _ = _pool(3)
    with torch.no_grad():
        img = model.embed_images(images.pix)
        txt = model.embed_texts(texts.ids[:4], texts.mask[:4])
        raw = model.embed_image(images.pix).embeds[:, 0]
    assert img.shape == (3, 32) and txt.shape == (4, 32)
    assert torch.allclose(img.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert not torch.allclose(img, torch.nn.functional.normalize(raw, dim=-1))  # projected, not the raw CLS


def test_contrastive_task_trains_the_itc_head_and_the_cross_encoder():
    model = _model().train()
    images, texts, _ = _pool(4, 1)
    ids = torch.stack([texts.ids, texts.ids.roll(1, 0)], 1)  # [B, 1+N, L_t], index 0 true
    batch = {"pixel_values": images.pix, "input_ids": ids,
             "attention_mask": torch.stack([texts.mask, texts.mask.roll(1, 0)], 1)}
    task = make_task("irtr", itc_weight=0.5)
    assert isinstance(task, ContrastiveRetrievalTask)
    out = task.losses(model, batch)
    assert torch.allclose(out["loss"], out["irtr_loss"] + 0.5 * out["itc_loss"])
    out["loss"].backward()
    for name in ("heads.itc.image_proj.weight", "heads.itc.text_proj.weight", "heads.itc.logit_scale",
                 "heads.irtr.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    assert type(make_task("irtr")).__name__ == "RetrievalTask"  # the original's loss by default


def test_candidate_pairs_are_each_querys_top_k_without_duplicates():
    sim = torch.randn(5, 7)
    pairs, i2t, t2i = E.candidate_pairs(sim, 3)
    assert i2t.shape == (5, 3) and t2i.shape == (7, 3)
    keys = set(map(tuple, pairs.tolist()))
    assert len(keys) == len(pairs) <= 3 * (5 + 7)
    assert all((i, t) in keys for i in range(5) for t in i2t[i].tolist())
    assert all((i, t) in keys for t in range(7) for i in t2i[t].tolist())
    assert torch.equal(pairs[:, 0], pairs[:, 0].sort().values)  # grouped by image


def test_re_ranked_scores_equal_the_full_cross_encoder():
    model = _model()
    images, texts, _ = _pool()
    full = E.retrieval_scores(model, images, texts, image_batch=4, text_batch=5)
    _, _, text_batches = E.dual_embeddings(model, images, texts, 4, 5)
    pairs = torch.tensor([[0, 0], [0, 11], [3, 2], [5, 7], [5, 8]])
    got = E.score_pairs(model, images, text_batches, pairs, image_batch=4, pair_batch=2)
    assert torch.allclose(got, full[pairs[:, 0], pairs[:, 1]], atol=1e-5)


def test_two_stage_with_k_covering_the_pool_equals_the_full_protocol():
    model = _model()
    pool = _pool()
    full, _ = E.evaluate_retrieval(model, pool, image_batch=4, text_batch=5)
    two, scores = E.evaluate_retrieval_two_stage(model, pool, top_k=12, image_batch=4, text_batch=5)
    assert scores.pairs_scored == 6 * 12  # every pair once
    for key in ("i2t_r1", "i2t_r5", "t2i_r1", "t2i_r5", "r_mean"):
        assert two[key] == pytest.approx(full[key]), key


def test_two_stage_ranks_candidates_first_and_costs_at_most_k_per_query():
    model = _model()
    images, texts, t2i = _pool(8, 2)
    scores = E.two_stage_scores(model, images, texts, top_k=2, image_batch=4, text_batch=8)
    assert scores.pairs_scored <= 2 * (8 + 16) < 8 * 16
    img, txt, _ = E.dual_embeddings(model, images, texts, 4, 8)
    sim = img @ txt.t()
    top = sim.topk(2, dim=1).indices
    best = scores.i2t.topk(2, dim=1).indices
    assert all(set(top[i].tolist()) == set(best[i].tolist()) for i in range(8))  # re-ranked set first
    metrics = E.evaluate_retrieval_two_stage(model, (images, texts, t2i), top_k=2, image_batch=4)[0]
    assert metrics["pairs_scored"] == scores.pairs_scored and metrics["top_k"] == 2


def test_finetune_and_evaluate_take_two_stage_flags(tmp_path):
    from helpers.synthetic import REPO, TINY, prepare

    data = prepare(tmp_path, "irtr")
    out = tmp_path / "run"
    rc = main(["finetune", "--config", str(REPO / "configs/finetune/vqa_rad_tiny.yaml"), "--data", str(data),
               "--out", str(out), "--task.name", "irtr", "--task.itc_weight", "1.0", "--data.draw_false_text", "3",
               "--train.max_steps", "2", "--train.max_epochs", "null", "--retrieval", "two-stage", "--top-k", "2",
               *TINY])
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["top_k"] == 2 and metrics["pairs_scored"] <= 2 * (4 + 4)
    assert "heads.itc.logit_scale" in M3AE.from_pretrained(out / "best").state_dict()
    rc = main(["evaluate", "--model", str(out / "best"), "--data", str(data), "--retrieval", "two-stage",
               "--top-k", "3", "--out", str(tmp_path / "ev")])
    assert rc == 0
    ev = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert ev["top_k"] == 3 and {"i2t_r1", "t2i_r10"} <= set(ev)
    assert main(["evaluate", "--model", str(out / "best"), "--data", str(data), "--top-k", "0",
                 "--retrieval", "two-stage"]) == 2
