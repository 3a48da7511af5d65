"""Model invariants on m3ae-tiny: configs, head shapes, encode semantics, gradients."""

from __future__ import annotations

import json

import pytest
import torch

from m3ae.errors import M3AEError
from m3ae.models import M3AE, ModelConfig, list_models

ALL_HEADS = ["mlm", "mim", "itm", "vqa", "cls", "irtr"]


def tiny(heads=ALL_HEADS, dropout: float | None = None) -> M3AE:
    torch.manual_seed(0)
    cfg = ModelConfig.from_name("m3ae-tiny").with_heads(heads, num_answers=5, num_classes=3)
    if dropout is not None:
        cfg.text.dropout = cfg.fusion.dropout = dropout
    return M3AE(cfg)


def batch(b: int = 2, length: int = 7, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 1000, (b, length), generator=g)
    ids[:, 0] = 0  # <s>
    mask = torch.ones(b, length, dtype=torch.long)
    mask[-1, length - 2 :] = 0
    ids[mask == 0] = 1  # <pad>
    return {"pixel_values": torch.randn(b, 3, 32, 32, generator=g), "input_ids": ids, "attention_mask": mask}


@pytest.fixture(scope="module")
def model() -> M3AE:
    return tiny().eval()


def test_presets_round_trip_through_json() -> None:
    assert {"m3ae-base", "m3ae-small", "m3ae-tiny"} <= set(list_models())
    for name in list_models():
        cfg = ModelConfig.from_name(name)
        assert ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    base = ModelConfig.from_name("m3ae-base")
    assert (base.vision.layers, base.vision.width, base.fusion.layers, base.pixel_decoder.depth) == (
        11,
        768,
        6,
        4,
    )


@pytest.mark.parametrize(
    "change",
    [
        {"fusion": {"width": 30, "heads": 4}},
        {"vision": {"image_size": 30, "patch_size": 8}},
        {"mim_layer": 7},
        {"heads": ["vqa"]},  # num_answers missing
        {"heads": ["nope"]},
        {"unknown_field": 1},
    ],
)
def test_config_validation_rejects(change: dict) -> None:
    d = ModelConfig.from_name("m3ae-tiny").to_dict()
    for key, value in change.items():
        d[key] = {**d[key], **value} if isinstance(value, dict) else value
    with pytest.raises(M3AEError):
        ModelConfig.from_dict(d)


def test_head_output_shapes(model: M3AE) -> None:
    b = batch()
    out = model.encode(**b, mask_ratio=0.75)
    l_i, d = 16, 32
    assert out.text_feats.shape == (2, 7, d)
    assert out.image_feats.shape == (2, 1 + 4, d)
    assert out.cls_feats.shape == (2, 2 * d)
    assert len(out.image_hidden) == model.config.fusion.layers + 1
    assert out.image_mask.shape == out.ids_restore.shape == (2, l_i)
    heads = model.heads
    assert heads["mim"](model.mim_features(out), out.ids_restore).shape == (2, l_i, 8 * 8 * 3)
    assert heads["mlm"](out.text_feats).shape == (2, 7, 50265)
    assert heads["itm"](out.cls_feats).shape == (2, 2)
    assert heads["vqa"](out.cls_feats).shape == (2, 5)
    assert heads["cls"](out.cls_feats).shape == (2, 3)
    assert heads["irtr"](out.cls_feats).shape == (2, 1)
    full = model.encode(**b)
    assert full.image_mask is None and full.image_feats.shape == (2, 1 + l_i, d)
    assert heads["mim"](model.mim_features(full)).shape == (2, l_i, 192)


@torch.no_grad()
def test_image_hidden_and_embed_image_reuse(model: M3AE) -> None:
    b = batch()
    out = model.encode(**b)
    embeds = model.embed_image(b["pixel_values"])
    assert torch.equal(out.image_hidden[0], embeds.embeds)  # input of fusion layer 0
    assert torch.equal(out.image_hidden[-1], out.image_feats)
    again = model.encode(None, b["input_ids"], b["attention_mask"], image_embeds=embeds)
    assert torch.equal(again.cls_feats, out.cls_feats)
    as_tensor = model.encode(None, b["input_ids"], b["attention_mask"], image_embeds=embeds.embeds)
    assert torch.equal(as_tensor.cls_feats, out.cls_feats)


@torch.no_grad()
def test_image_noise_drives_masking(model: M3AE) -> None:
    b = batch()
    noise = torch.rand(2, 16, generator=torch.Generator().manual_seed(1))
    out = model.encode(**b, image_noise=noise, mask_ratio=0.75)
    expected = torch.ones(2, 16)
    expected.scatter_(1, noise.argsort(1)[:, :4], 0.0)
    assert torch.equal(out.image_mask, expected)
    again = model.encode(**b, image_noise=noise, mask_ratio=0.75)
    assert torch.equal(out.image_feats, again.image_feats)
    other = model.encode(**b, image_noise=torch.rand(2, 16, generator=torch.Generator().manual_seed(2)),
                         mask_ratio=0.75)
    assert not torch.equal(other.image_mask, out.image_mask)  # the noise, not a constant, decides


# Parameters allowed an all-zero gradient in one step, each with the reason (none may lack a gradient).
ZERO_GRAD_OK = {
    "heads.irtr.bias": "a softmax over the 1+N scores of one image ignores a shared shift",
}


@pytest.mark.parametrize("task", ["pretrain", "vqa", "cls", "irtr"])
def test_every_parameter_gets_a_gradient(task: str, tiny_model, task_batch) -> None:
    """Through the task's own losses (the ones training runs), not hand-written ones."""
    from m3ae.train.runner import HEADS  # the heads training builds for each task
    from m3ae.train.tasks import make_task

    m = tiny_model(HEADS[task]).train()
    out = make_task(task).forward_backward(m, task_batch(task, m), lambda loss: loss)
    assert torch.isfinite(out["loss"])
    no_grad = [n for n, p in m.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad, f"{task}: parameters without gradient: {no_grad}"
    zero = [n for n, p in m.named_parameters() if not p.grad.any() and n not in ZERO_GRAD_OK]
    assert not zero, f"{task}: parameters with an all-zero gradient: {zero}"


def test_grad_checkpointing_gives_the_same_gradients(tiny_model, task_batch) -> None:
    from m3ae.train.tasks import PretrainTask

    grads = []
    for enable in (False, True):
        m = tiny_model(["mlm", "mim", "itm"], dropout=0.0).train()
        m.set_grad_checkpointing(enable)
        PretrainTask().forward_backward(m, task_batch("pretrain", m), lambda loss: loss)
        grads.append({n: p.grad.clone() for n, p in m.named_parameters()})
    for name, g in grads[0].items():
        assert torch.allclose(g, grads[1][name], atol=1e-5), name


def test_no_weight_decay_names_are_parameters(model: M3AE) -> None:
    names = model.no_weight_decay()
    params = dict(model.named_parameters())
    assert {"vision_encoder.pos_embed", "vision_encoder.class_embedding", "heads.mim.mask_token"} <= names
    assert names <= set(params)
    assert "heads.mim.decoder_pos_embed" not in params  # fixed table: a buffer, not trained


def test_wrong_image_size_is_a_clear_error(model: M3AE) -> None:
    b = batch()
    with pytest.raises(M3AEError, match="image_size=32"):
        model.encode(torch.randn(2, 3, 48, 48), b["input_ids"], b["attention_mask"])


def test_fusion_cpu_attention_with_dropout_matches_sdpa() -> None:
    """The explicit CPU path used when attention dropout is on computes SDPA's function."""
    import torch.nn.functional as F

    from m3ae.models.fusion import attention, cpu_dropout

    g = torch.Generator().manual_seed(0)
    shape = (3, 2, 6, 4)
    q, k, v = (torch.randn(shape, dtype=torch.float64, generator=g, requires_grad=True) for _ in range(3))
    mask = torch.ones(3, 6, dtype=torch.bool)
    mask[1, 4:] = False
    mask = mask[:, None, None, :]
    # a vanishing rate keeps every probability (scale 1): exactly SDPA, masked keys get no weight
    ours = attention(q, k, v, mask, 1e-30)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert torch.allclose(ours, ref, atol=1e-12)

    def with_dropout(q, k, v):
        torch.manual_seed(1)  # the same mask on every call
        return attention(q, k, v, mask, 0.3)

    assert torch.autograd.gradcheck(with_dropout, (q, k, v))
    # inverted dropout: drop rate p, kept values scaled by 1/(1-p), seeded by torch.manual_seed
    x = torch.ones(200_000)
    torch.manual_seed(2)
    y = cpu_dropout(x, 0.1)
    torch.manual_seed(2)
    assert torch.equal(y, cpu_dropout(x, 0.1))
    assert abs((y == 0).double().mean().item() - 0.1) < 0.005
    assert torch.allclose(y[y != 0], torch.tensor(1 / 0.9))
