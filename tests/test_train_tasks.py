"""Tasks and optimiser groups on m3ae-tiny: per-pass backward, gradients, parameter-group rules."""
from __future__ import annotations

import pytest
import torch

from m3ae.errors import M3AEError
from m3ae.models import M3AE, ModelConfig
from m3ae.train.config import OptimArgs
from m3ae.train.optim import build_optimizer, lr_factor, param_groups, warmup_steps_for
from m3ae.train.tasks import ClassificationTask, PretrainTask, RetrievalTask, VQATask

B, LT = 4, 8



def tiny(heads=("mlm", "mim", "itm"), **kw) -> M3AE:
    torch.manual_seed(0)
    return M3AE(ModelConfig.from_name("m3ae-tiny").with_heads(list(heads), **kw))


def pretrain_batch(model: M3AE, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    size, n = model.config.vision.image_size, model.config.vision.num_patches
    ids = torch.randint(3, 1000, (B, LT), generator=g)
    ids[:, 0], ids[:, -1] = 0, 2
    mask = torch.ones(B, LT, dtype=torch.long)
    mask[0, -2:] = 0
    labels = torch.full((B, LT), -100)
    labels[:, 2] = ids[:, 2]
    mlm_ids = ids.clone()
    mlm_ids[:, 2] = 50264
    return {
        "pixel_values": torch.randn(B, 3, size, size, generator=g),
        "input_ids": ids, "attention_mask": mask, "mlm_input_ids": mlm_ids, "mlm_labels": labels,
        "image_noise": torch.rand(B, n, generator=g),
        "itm_labels": torch.tensor([1, 0, 1, 0]),
        "itm_pixel_values": torch.randn(B, 3, size, size, generator=g),
        "itm_noise": torch.rand(B, 2, generator=g),
    }


def grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_per_pass_backward_equals_summed_loss():
    model = tiny()
    model.eval()  # no dropout: both ways must see identical forward passes
    batch = pretrain_batch(model)
    task = PretrainTask(mlm_weight=1.0, mim_weight=0.5, itm_weight=2.0)
    reference = task.losses(model, batch)
    (reference["loss"] / 3).backward()
    want = grads(model)
    model.zero_grad(set_to_none=True)
    got_losses = task.forward_backward(model, batch, lambda loss: loss / 3)
    got = grads(model)
    assert set(got) == set(want)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-6, msg=name)
    for key in ("loss", "mlm_loss", "mim_loss", "itm_loss"):
        torch.testing.assert_close(got_losses[key], reference[key].detach())


def test_pretrain_every_parameter_gets_a_gradient():
    # no exemption: our text tower has no RoBERTa pooler, and M3AE's own poolers feed ITM
    model = tiny()
    PretrainTask().forward_backward(model, pretrain_batch(model), lambda loss: loss)
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []
    assert model.poolers["text"].dense.weight.grad.any() and model.poolers["image"].dense.weight.grad.any()


def ablated(**fields) -> M3AE:
    import dataclasses
    torch.manual_seed(0)
    return M3AE(dataclasses.replace(ModelConfig.from_name("m3ae-tiny"), **fields))


@pytest.mark.parametrize("fields", [{"mlm_decoder": "transformer", "mlm_decoder_depth": 2}, {"mlm_layer": 1},
                                    {"mim_layer": -1}], ids=["text-decoder", "mlm-layer-1", "mim-last"])
def test_design_ablations_keep_per_pass_backward_exact(fields):
    model = ablated(**fields)
    model.eval()
    batch = pretrain_batch(model)
    task = PretrainTask()
    task.losses(model, batch)["loss"].backward()
    want = grads(model)
    model.zero_grad(set_to_none=True)
    task.forward_backward(model, batch, lambda loss: loss)
    got = grads(model)
    assert set(got) == set(want)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-6, msg=name)


def test_zero_weight_objective_is_not_run():
    model = tiny()
    out = PretrainTask(mim_weight=0.0).forward_backward(model, pretrain_batch(model), lambda loss: loss)
    assert "mim_loss" not in out and {"mlm_loss", "itm_loss"} <= set(out)
    assert all(p.grad is None for p in model.heads["mim"].parameters())
    with pytest.raises(M3AEError, match="at least one"):
        PretrainTask(mlm_weight=0.0, mim_weight=0.0, itm_weight=0.0)


def test_mlm_from_an_intermediate_layer_reads_that_layer():
    # MLM alone, read from the output of fusion layer 0: later text layers and the image stack
    # of the fusion do not reach the loss, so they get no gradient
    model = ablated(mlm_layer=1)
    PretrainTask(mim_weight=0.0, itm_weight=0.0).forward_backward(model, pretrain_batch(model), lambda loss: loss)
    assert model.fusion.text_layers[0].fc1.weight.grad is not None
    assert all(p.grad is None for layer in model.fusion.text_layers[1:] for p in layer.parameters())
    assert all(p.grad is None for p in model.fusion.image_layers.parameters())


def test_transformer_text_decoder_ignores_padding():
    model = ablated(mlm_decoder="transformer")
    model.eval()
    head = model.heads["mlm"]
    x = torch.randn(2, 6, model.config.width)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1] * 6])
    y = x.clone()
    y[0, 4:] = torch.randn(2, model.config.width)  # only padded positions differ
    torch.testing.assert_close(head(x, mask)[0, :4], head(y, mask)[0, :4])
    z = x.clone()
    z[1, 5] = torch.randn(model.config.width)  # a real token differs: the others' logits follow
    assert not torch.allclose(head(x, mask)[1, 0], head(z, mask)[1, 0])


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_itc_and_hard_negatives_keep_per_pass_backward_exact(pooling):
    """ITC + in-batch hard ITM negatives: per-pass backward equals one backward of the summed loss,
    every parameter (the ITC projections and temperature included) gets a gradient."""
    import dataclasses
    torch.manual_seed(0)
    model = M3AE(dataclasses.replace(ModelConfig.from_name("m3ae-tiny").with_heads(["mlm", "mim", "itm", "itc"]),
                                     pooling=pooling))
    model.eval()
    batch = pretrain_batch(model)
    batch["input_ids"][3] = batch["input_ids"][1]  # two rows share a text: never each other's negative
    batch["attention_mask"][3] = batch["attention_mask"][1]
    task = PretrainTask(itc_weight=0.5, itm_negatives="hard")
    reference = task.losses(model, batch)
    reference["loss"].backward()
    want = grads(model)
    model.zero_grad(set_to_none=True)
    got_losses = task.forward_backward(model, batch, lambda loss: loss)
    got = grads(model)
    assert set(got) == set(want) == {n for n, p in model.named_parameters() if p.requires_grad}
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-6, msg=name)
    for key in ("loss", "mlm_loss", "mim_loss", "itm_loss", "itc_loss", "itm_acc"):
        torch.testing.assert_close(got_losses[key], reference[key].detach())
    one_graph = task.losses_one_graph(model, batch)
    torch.testing.assert_close(one_graph["loss"], reference["loss"])


def test_hard_negatives_never_pair_equal_texts():
    from m3ae.tasks.pretrain import draw_negatives, same_text

    ids = torch.tensor([[0, 5, 2], [0, 6, 2], [0, 5, 2], [0, 7, 2]])
    excluded = same_text(ids)
    assert excluded.tolist() == [[True, False, True, False], [False, True, False, False],
                                 [True, False, True, False], [False, False, False, True]]
    logits = torch.zeros(4, 4)
    logits[0, 2] = 50.0  # by far the most similar candidate of row 0, but it holds the same text
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        index, valid = draw_negatives(logits, excluded, torch.rand(4, generator=g))
        assert valid.all() and not excluded[torch.arange(4), index].any()
    # the draw follows the softmax: a candidate 50 logits above the others is (almost) always taken
    logits = torch.zeros(4, 4)
    logits[0, 3] = 50.0
    picks = [int(draw_negatives(logits, excluded, torch.rand(4, generator=g))[0][0]) for _ in range(50)]
    assert picks.count(3) == 50
    # a batch of one text has no negative: the rows are marked invalid (their ITM label is ignored)
    same = same_text(torch.tensor([[0, 5, 2]] * 3))
    assert not draw_negatives(torch.zeros(3, 3), same, torch.rand(3, generator=g))[1].any()


def test_pretrain_batch_missing_key_is_a_clear_error():
    model = tiny()
    batch = pretrain_batch(model)
    del batch["image_noise"]
    with pytest.raises(M3AEError, match="image_noise"):
        PretrainTask().losses(model, batch)


@pytest.mark.parametrize("task_name", ["vqa", "cls", "irtr"])
def test_finetune_tasks_give_finite_loss_and_gradients(task_name):
    g = torch.Generator().manual_seed(1)
    heads = {"vqa": ["vqa"], "cls": ["cls"], "irtr": ["irtr"]}[task_name]
    model = tiny(heads, num_answers=5, num_classes=3)
    pix = torch.randn(B, 3, 32, 32, generator=g)
    ids = torch.randint(3, 1000, (B, LT), generator=g)
    mask = torch.ones(B, LT, dtype=torch.long)
    if task_name == "vqa":
        targets = torch.nn.functional.one_hot(torch.tensor([0, 1, 2, 4]), 5).float()
        batch, task = {"pixel_values": pix, "input_ids": ids, "attention_mask": mask, "vqa_targets": targets}, VQATask()
    elif task_name == "cls":
        batch, task = {"pixel_values": pix, "input_ids": ids, "attention_mask": mask,
                       "labels": torch.tensor([0, 1, 2, 0])}, ClassificationTask()
    else:
        batch = {"pixel_values": pix, "input_ids": ids[:, None].repeat(1, 3, 1),
                 "attention_mask": mask[:, None].repeat(1, 3, 1)}
        task = RetrievalTask()
        assert task.scores(model, batch).shape == (B, 3)
    out = task.forward_backward(model, batch, lambda loss: loss)
    assert torch.isfinite(out["loss"])
    assert model.heads[heads[0]].state_dict() and all(
        p.grad is not None for p in model.heads[heads[0]].parameters())


@pytest.mark.parametrize("grouping", ["rule", "paper"])
def test_every_trainable_parameter_in_exactly_one_group(grouping):
    model = tiny(("mlm", "mim", "itm", "vqa"), num_answers=3)
    model.heads["itm"].weight.requires_grad_(False)  # frozen parameters go nowhere
    groups = param_groups(model, 1e-5, 0.01, {"fusion": 5, "heads": 5}, grouping)
    ids = [id(p) for g in groups for p in g["params"]]
    trainable = [id(p) for p in model.parameters() if p.requires_grad]
    assert sorted(ids) == sorted(trainable)
    assert len(ids) == len(set(ids))


def test_rule_groups_multipliers_and_decay():
    model = tiny(("mlm", "mim", "itm", "vqa"), num_answers=3)
    groups = param_groups(model, 1e-5, 0.01, {"fusion": 5, "heads": 10}, "rule")
    where = {n: g for g in groups for n in g["names"]}
    assert where["fusion.text_layers.0.fc1.weight"]["lr"] == pytest.approx(5e-5)
    assert where["text_proj.weight"]["lr"] == pytest.approx(5e-5)
    assert where["poolers.image.dense.weight"]["lr"] == pytest.approx(5e-5)
    assert where["heads.vqa.fc2.weight"]["lr"] == pytest.approx(1e-4)
    assert where["vision_encoder.patch_embed.weight"]["lr"] == pytest.approx(1e-5)
    assert where["modality_embed.weight"]["lr"] == pytest.approx(1e-5)  # base, as the original
    assert where["fusion.text_layers.0.fc1.bias"]["weight_decay"] == 0.0
    assert where["vision_encoder.pos_embed"]["weight_decay"] == 0.0  # model.no_weight_decay()
    assert where["heads.vqa.norm.weight"]["weight_decay"] == 0.0
    assert where["fusion.text_layers.0.fc1.weight"]["weight_decay"] == 0.01


def test_paper_groups_reproduce_original_decay_quirks():
    model = tiny(("mlm", "mim", "itm", "vqa"), num_answers=3)
    where = {n: g for g in param_groups(model, 1e-5, 0.01, {"fusion": 5, "heads": 5}, "paper")
             for n in g["names"]}
    decayed = {n for n, g in where.items() if g["weight_decay"] > 0}
    # decayed upstream: CLIP LayerNorms, head LayerNorm in a Sequential, pos/class embeddings, mask token
    for name in ("vision_encoder.norm_pre.weight", "vision_encoder.blocks.0.norm1.weight",
                 "heads.vqa.norm.weight", "vision_encoder.pos_embed", "heads.mim.mask_token",
                 "heads.mim.blocks.0.norm1.weight", "modality_embed.weight"):
        assert name in decayed, name
    # not decayed upstream: biases, Hugging Face LayerNorms, decoder_norm
    for name in ("text_encoder.embeddings.LayerNorm.weight", "fusion.image_layers.1.norm.weight",
                 "heads.mlm.transform.norm.weight", "heads.mim.decoder_norm.weight", "heads.mlm.bias",
                 "vision_encoder.norm_post.bias"):
        assert name not in decayed, name
    assert where["modality_embed.weight"]["lr"] == pytest.approx(1e-5)


def test_unknown_lr_multiplier_set_is_an_error():
    with pytest.raises(M3AEError, match="unknown module sets"):
        param_groups(tiny(), 1e-5, 0.01, {"fusoin": 5})


def test_schedule_warmup_then_linear_decay_to_zero():
    assert warmup_steps_for(OptimArgs(warmup_ratio=0.1, warmup_steps=None), 100) == 10
    assert warmup_steps_for(OptimArgs(warmup_ratio=None, warmup_steps=7), 100) == 7
    assert lr_factor(0, 10, 100) == 0.0
    assert lr_factor(5, 10, 100) == pytest.approx(0.5)
    assert lr_factor(10, 10, 100) == pytest.approx(1.0)
    assert lr_factor(55, 10, 100) == pytest.approx(0.5)
    assert lr_factor(100, 10, 100) == 0.0


def test_warmup_steps_and_ratio_together_is_an_error():
    with pytest.raises(M3AEError, match="not both"):
        OptimArgs(warmup_steps=10, warmup_ratio=0.1)


def test_optimizer_betas_and_groups():
    opt = build_optimizer(tiny(), OptimArgs())
    assert opt.defaults["betas"] == (0.9, 0.98) and opt.defaults["eps"] == 1e-8


class _Items(torch.utils.data.Dataset):
    def __init__(self, items):
        self.items = items
        self.collate_fn = lambda xs: {k: torch.stack([x[k] for x in xs]) for k in xs[0]}

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def test_retrieval_score_matrix_equals_pairwise_encode():
    from m3ae.train.evaluation import retrieval_scores

    model = tiny(["irtr"])
    model.eval()
    g = torch.Generator().manual_seed(3)
    images = [{"pixel_values": torch.randn(3, 32, 32, generator=g)} for _ in range(3)]
    texts = [{"input_ids": torch.randint(3, 900, (LT,), generator=g), "attention_mask": torch.ones(LT, dtype=torch.long)}
             for _ in range(5)]
    scores = retrieval_scores(model, _Items(images), _Items(texts), image_batch=2, text_batch=2)
    assert scores.shape == (3, 5)
    with torch.no_grad():
        for i in (0, 2):
            for t in (1, 4):
                out = model.encode(images[i]["pixel_values"][None], texts[t]["input_ids"][None],
                                   texts[t]["attention_mask"][None])
                want = model.heads["irtr"](out.cls_feats).item()
                assert scores[i, t].item() == pytest.approx(want, rel=1e-4, abs=1e-5)


def test_trimming_text_padding_changes_no_loss():
    """The collator cuts columns that are padding in every row; the pre-training losses must not move."""
    from m3ae.data.collate import trim_text_padding

    model = tiny()
    model.eval()
    batch = pretrain_batch(model)
    batch["attention_mask"][:, -3:] = 0  # the last three columns are padding everywhere
    batch["mlm_labels"][:, -3:] = -100
    trimmed = trim_text_padding(batch)
    assert trimmed["input_ids"].shape[1] == LT - 3 and trimmed["mlm_labels"].shape[1] == LT - 3
    task = PretrainTask()
    torch.manual_seed(0)
    full = task.losses(model, batch)
    torch.manual_seed(0)
    cut = task.losses(model, trimmed)
    for key in full:
        torch.testing.assert_close(cut[key], full[key], rtol=1e-5, atol=1e-6, msg=key)


def test_question_only_task_never_reads_the_image():
    """image_input none: the logits do not depend on the pixels, and the vision tower gets no gradient."""
    model = tiny(heads=("vqa",), num_answers=5)
    model.eval()
    batch = pretrain_batch(model)
    batch["vqa_labels"] = torch.tensor([0, 1, 2, 3])
    task = VQATask(image_input="none", loss="ce")
    a = task.logits(model, batch)
    batch["pixel_values"] = torch.randn_like(batch["pixel_values"])
    torch.testing.assert_close(task.logits(model, batch), a)
    task.losses(model, {**batch, "vqa_targets": torch.zeros(B, 5)})["loss"].backward()
    assert all(p.grad is None for p in model.vision_encoder.parameters())
    assert model.text_encoder.embeddings.word_embeddings.weight.grad is not None


def test_vqa_ce_loss_ignores_answers_outside_the_set():
    from m3ae.models.losses import vqa_ce_loss

    logits = torch.randn(3, 4)
    labels = torch.tensor([1, -1, 3])
    want = torch.nn.functional.cross_entropy(logits[[0, 2]], labels[[0, 2]])
    torch.testing.assert_close(vqa_ce_loss(logits, labels), want)
    assert float(vqa_ce_loss(logits, torch.tensor([-1, -1, -1]))) == 0.0
    with pytest.raises(M3AEError):
        VQATask(loss="focal")


def test_frozen_text_tower_gets_no_gradient_and_no_dropout():
    model = tiny(heads=("vqa",), num_answers=5)
    model.freeze("text_encoder")
    model.train()
    assert not model.text_encoder.training and model.fusion.training
    batch = pretrain_batch(model)
    a = model.embed_text(batch["input_ids"], batch["attention_mask"])
    b = model.embed_text(batch["input_ids"], batch["attention_mask"])
    torch.testing.assert_close(a, b)  # no dropout inside the frozen tower
    VQATask(loss="ce").losses(model, {**batch, "vqa_labels": torch.tensor([0, 1, 2, 3]),
                                      "vqa_targets": torch.zeros(B, 5)})["loss"].backward()
    assert all(p.grad is None for p in model.text_encoder.parameters())
    assert model.text_proj.weight.grad is not None and model.vision_encoder.patch_embed.weight.grad is not None
    with pytest.raises(ValueError):
        model.freeze("fusion")


def test_feature_health_warns_when_the_rank_halves(monkeypatch):
    """The first evaluation's effective rank is the reference; a later one under half of it warns."""
    import m3ae.tasks.pretrain as pretrain

    ranks = iter([16.0, 9.0, 7.5])
    monkeypatch.setattr(pretrain, "evaluate_pretrain", lambda *a, **k: {"loss": 1.0, "feature_rank": next(ranks)})
    task, args = PretrainTask(), type("Args", (), {"batch_size": 4})()
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        task.evaluate(None, None, args, "fp32")  # the start
        task.evaluate(None, None, args, "fp32")  # 9.0 >= 8.0: fine
    with pytest.warns(UserWarning, match="fell from 16.0 to 7.5"):
        task.evaluate(None, None, args, "fp32")
