"""The training loop on a toy task: accumulation, schedule, logging, checkpoints, NaN stop.

The toy pieces live in helpers/toy.py, shared with test_resume.py.
"""
from __future__ import annotations

import json

import pytest
import torch

from m3ae.errors import M3AEError
from m3ae.train.checkpoint import latest_checkpoint, load_checkpoint
from m3ae.train.config import EvalArgs, OptimArgs, TrainArgs
from m3ae.train.loop import fit, grad_accum_steps
from m3ae.train.runlog import read_log

from helpers.toy import N_SAMPLES, ToyModel, ToyTask, losses, run_toy, toy_loaders, toy_sample  # noqa: F401

def test_loss_goes_down_and_run_folder_is_complete(tmp_path):
    model, result = run_toy(tmp_path, max_steps=24, validate=True)
    seq = losses(tmp_path)
    assert result.steps == 24 and len(seq) == 24
    assert sum(seq[-4:]) < sum(seq[:4])
    assert (tmp_path / "best" / "toy.pt").is_file()
    ckpt = latest_checkpoint(tmp_path / "checkpoints")
    assert ckpt is not None and ckpt.name == "step_0000024"
    assert len(list((tmp_path / "checkpoints").glob("step_*"))) == 2  # keep_checkpoints
    assert read_log(tmp_path, "val"), "validation ran at each epoch end"
    lrs = [r["lr"] for r in read_log(tmp_path)]
    assert lrs[0] == 0.0 and lrs[2] == pytest.approx(0.05)  # warm-up of 2 steps, then decay
    assert lrs[-1] < lrs[3]


def test_gradient_accumulation_matches_one_big_batch(tmp_path):
    # dropout is reseeded per micro-batch, so compare with dropout off via eval-free toy: same data,
    # batch 4 as 2x2 or 1x4 gives the same first update when dropout is disabled.
    results = []
    for per_device in (2, 4):
        model = ToyModel()
        model.fusion[2].p = 0.0
        train = TrainArgs(batch_size=4, per_device_batch_size=per_device, max_steps=3, log_every=1,
                          progress=False, tensorboard=False, precision="fp32")  # exact comparison
        optim = OptimArgs(lr=0.05, warmup_steps=0, warmup_ratio=None)
        fit(ToyTask(), model, toy_loaders(per_device), optim, train, EvalArgs(), run_dir=None)
        results.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    torch.testing.assert_close(results[0], results[1], rtol=1e-5, atol=1e-6)


def test_batch_size_not_divisible_is_an_error():
    with pytest.raises(M3AEError, match="multiple"):
        grad_accum_steps(10, 4, 1)
    assert grad_accum_steps(256, 32, 2) == 4


@pytest.mark.parametrize("kwargs, message", [({"retrieval": "fast"}, "eval.retrieval"), ({"top_k": 0}, "eval.top_k"),
                                             ({"batch_size": 0}, "eval.batch_size"), ({"val_split": " "}, "eval.val_split")])
def test_every_eval_option_is_checked(kwargs, message):
    # EvalArgs once had two __post_init__ methods, and the second silently replaced the first
    with pytest.raises(M3AEError, match=message):
        EvalArgs(**kwargs)


def test_in_process_resume_gives_the_same_losses(tmp_path):
    full = tmp_path / "full"
    run_toy(full, max_steps=10)
    part = tmp_path / "part"
    run_toy(part, max_steps=10, checkpoint_every=2, keep=10)
    # pretend the run died after step 6: drop later checkpoints and log lines, then resume
    ckpts = part / "checkpoints"
    for p in ckpts.glob("step_*"):
        if int(p.name.split("_")[1]) > 6:
            import shutil
            shutil.rmtree(p)
    (ckpts / "latest.json").write_text(json.dumps({"step": 6, "path": "step_0000006"}))
    run_toy(part, max_steps=10, resume=True)
    assert losses(part) == pytest.approx(losses(full), rel=1e-6)


def test_nan_loss_stops_with_a_clear_message_and_keeps_last_good_checkpoint(tmp_path):
    # 2 micro-batches per step: call 9 is in step 5, after the checkpoint at step 4
    with pytest.raises(M3AEError, match="non-finite loss at step 5") as info:
        run_toy(tmp_path, max_steps=10, nan_at_call=9, checkpoint_every=2)
    assert "step_0000004" in str(info.value)
    ckpt = latest_checkpoint(tmp_path / "checkpoints")
    assert ckpt.name == "step_0000004"
    model = ToyModel()
    meta = load_checkpoint(ckpt, model)
    assert meta["step"] == 4 and all(torch.isfinite(p).all() for p in model.parameters())


def test_tensorboard_events_are_written_when_available(tmp_path):
    from m3ae.train.runlog import RunLogger

    pytest.importorskip("torch.utils.tensorboard")
    logger = RunLogger(tmp_path, enabled=True, tensorboard=True)
    logger.log({"step": 1, "loss": 0.5})
    logger.close()
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert read_log(tmp_path)[0]["loss"] == 0.5


def test_a_fresh_run_into_a_used_folder_is_refused(tmp_path):
    run_toy(tmp_path, max_steps=2)
    with pytest.raises(M3AEError, match="--resume"):
        run_toy(tmp_path, max_steps=2)


def test_training_uses_deterministic_kernels_and_restores_the_setting_after(tmp_path):
    """`train.deterministic` (on by default) is what makes a rerun give the same losses on CPU; the
    global switch is back to the caller's setting afterwards, even when training fails."""
    seen = []

    class Spy(ToyTask):
        def forward_backward(self, model, batch, backward):
            seen.append(torch.are_deterministic_algorithms_enabled())
            return super().forward_backward(model, batch, backward)

    before = torch.are_deterministic_algorithms_enabled()
    train = TrainArgs(batch_size=2, per_device_batch_size=2, max_steps=2, log_every=1, progress=False,
                      tensorboard=False)
    optim = OptimArgs(lr=0.05, warmup_steps=0, warmup_ratio=None)
    fit(Spy(), ToyModel(), toy_loaders(2), optim, train, EvalArgs(), run_dir=tmp_path / "a")
    assert seen and all(seen) and torch.are_deterministic_algorithms_enabled() == before
    with pytest.raises(M3AEError):
        fit(Spy(nan_at_call=1), ToyModel(), toy_loaders(2), optim, train, EvalArgs(), run_dir=tmp_path / "b")
    assert torch.are_deterministic_algorithms_enabled() == before
    seen.clear()
    off = TrainArgs(**{**train.__dict__, "deterministic": False})
    fit(Spy(), ToyModel(), toy_loaders(2), optim, off, EvalArgs(), run_dir=tmp_path / "c")
    assert seen and not any(seen)


def test_the_result_carries_the_validation_metrics_of_the_best_model(tmp_path):
    """metrics.json and the model card of a run without a test split describe the model in best/, not
    the last validation's model."""
    _, result = run_toy(tmp_path, max_steps=24, validate=True)
    rows = {r["step"]: r for r in read_log(tmp_path, "val")}
    best = rows[result.best_step]
    assert result.best_metrics and all(result.best_metrics[k] == best[k] for k in result.best_metrics)
    assert result.best_metric == -best["loss"]
