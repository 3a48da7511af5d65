"""Speed and memory options: int8 inference, torch.compile, the low-memory mode, `m3ae bench`.

Each test guards an invariant at m3ae-tiny size: an option changes how fast or how big a step is,
never what it computes (beyond the stated tolerance of int8).
"""
from __future__ import annotations

import copy
import json

import pytest
import torch

from m3ae.models import M3AE, ModelConfig
from m3ae.train.config import OptimArgs
from m3ae.train.loop import train_step
from m3ae.train.memory import OptimizerInBackward, enable_low_memory, optimizer_in_backward_blockers
from m3ae.train.optim import build_optimizer
from m3ae.train.tasks import PretrainTask, VQATask

NUM_ANSWERS = 7


def _batch(job: str, config: ModelConfig, batch: int = 4, text_len: int = 12, seed: int = 0) -> dict:
    """A synthetic batch for ``job`` (pretrain or vqa) at the model's image size."""
    from m3ae.bench import synthetic_batch

    return synthetic_batch(job, config, batch, text_len, NUM_ANSWERS, torch.device("cpu"), seed=seed)


def _model(job: str) -> M3AE:
    torch.manual_seed(0)
    heads = ["mlm", "mim", "itm"] if job == "pretrain" else ["vqa"]
    return M3AE(ModelConfig.from_name("m3ae-tiny").with_heads(heads, num_answers=NUM_ANSWERS)).train()


# -------------------------------------------------------------------------------- low memory
# eps = 1 makes AdamW's update nearly linear in the gradient (g / (sqrt(v) + 1)), so parameters
# after a step differ only as much as the gradients do; with the default eps a gradient of ~0 has
# update ±lr whatever its sign, and rounding noise would look like a different step.
LINEAR_ADAM = OptimArgs(lr=1e-2, eps=1.0, weight_decay=0.01, warmup_steps=0, warmup_ratio=None)


@pytest.mark.parametrize("job", ["pretrain", "vqa"])
def test_low_memory_mode_takes_the_same_steps(job):
    """Checkpointing + optimizer step inside backward = the normal step (two steps, AdamW state)."""
    task = PretrainTask() if job == "pretrain" else VQATask()
    normal = _model(job)
    low = copy.deepcopy(normal)
    enable_low_memory(low)
    opt_normal, opt_low = build_optimizer(normal, LINEAR_ADAM), build_optimizer(low, LINEAR_ADAM)
    in_backward = OptimizerInBackward(opt_low)
    cpu = torch.device("cpu")
    for step in range(2):
        batch = _batch(job, normal.config, seed=step)
        a = train_step(task, normal, opt_normal, [batch], step=step, seed=0, precision="fp32", device=cpu,
                       scaler=None, clip_grad_norm=None)
        b = train_step(task, low, opt_low, [batch], step=step, seed=0, precision="fp32", device=cpu,
                       scaler=None, clip_grad_norm=None, in_backward=in_backward)
        assert a.keys() == b.keys()
        for key in a:
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), key
        trainable = sum(1 for p in low.parameters() if p.requires_grad)
        assert in_backward.steps == trainable  # every parameter was updated once, from its hook
        assert all(p.grad is None for p in low.parameters())  # and its gradient freed
    for (name, p), q in zip(normal.named_parameters(), low.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6, msg=name)
    # the optimizer state is the main optimizer's (what checkpoints save)
    assert len(opt_low.state) == len(opt_normal.state)


def test_low_memory_blockers_name_each_reason():
    assert optimizer_in_backward_blockers(accum=1, clip_grad_norm=None, scaler=None, world_size=1) == []
    reasons = optimizer_in_backward_blockers(accum=2, clip_grad_norm=1.0, scaler=object(), world_size=2)
    assert len(reasons) == 4 and "accumulation" in reasons[0] and "clip_grad_norm" in reasons[1]


def test_train_memory_override_parses_and_rejects_unknown_modes():
    from m3ae.errors import M3AEError
    from m3ae.train.config import RunConfig, apply_overrides

    cfg = apply_overrides(RunConfig(), ["--train.memory", "low", "--train.compile", "true"])
    assert cfg.train.memory == "low" and cfg.train.compile is True
    with pytest.raises(M3AEError, match="train.memory must be one of"):
        apply_overrides(RunConfig(), ["--train.memory", "tiny"])
