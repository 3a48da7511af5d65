"""A toy regression task for the training loop: the same pieces drive `fit` in-process
(test_train_loop.py) and in a subprocess that is killed mid-run (test_resume.py)."""
from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import nn

from m3ae.train.config import EvalArgs, OptimArgs, TrainArgs
from m3ae.train.loop import Loaders, fit
from m3ae.train.runlog import read_log

N_SAMPLES = 32



class ToyModel(nn.Module):
    """A regression MLP with dropout (so RNG handling matters) and a save_pretrained."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fusion = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Dropout(0.2))
        self.heads = nn.ModuleDict({"out": nn.Linear(16, 1)})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.heads["out"](self.fusion(x)).squeeze(-1)

    def save_pretrained(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        torch.save(self.state_dict(), path / "toy.pt")


class ToyTask:
    name = "toy"

    def __init__(self, nan_at_call: int | None = None) -> None:
        self.calls = 0
        self.nan_at_call = nan_at_call

    def forward_backward(self, model, batch, scale):
        self.calls += 1
        loss = ((model(batch["x"]) - batch["y"]) ** 2).mean()
        if self.nan_at_call is not None and self.calls >= self.nan_at_call:
            loss = loss * float("nan")
        scale(loss).backward()
        return {"loss": loss.detach(), "mse": loss.detach()}


def toy_sample(i: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + i)
    x = torch.randn(4, generator=g)
    return x, x.sum() * 0.5


def toy_loaders(per_device: int, seed: int = 0, rank: int = 0, world: int = 1, delay: float = 0.0,
                validate: bool = False) -> Loaders:
    def train(epoch: int, start: int):
        order = torch.randperm(N_SAMPLES, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
        order = order[rank::world]
        batches = [order[i:i + per_device] for i in range(0, len(order) - per_device + 1, per_device)]
        for idx in batches[start:]:
            if delay:
                time.sleep(delay)
            xs, ys = zip(*(toy_sample(i) for i in idx))
            yield {"x": torch.stack(xs), "y": torch.stack(ys)}

    def val(model):
        model.eval()
        with torch.no_grad():
            xs, ys = zip(*(toy_sample(i) for i in range(8)))
            mse = float(((model(torch.stack(xs)) - torch.stack(ys)) ** 2).mean())
        return {"loss": mse}

    return Loaders(train=train, micro_batches_per_epoch=N_SAMPLES // world // per_device,
                   validate=val if validate else None, samples_per_micro_batch=per_device)


def run_toy(run_dir, max_steps=12, batch=4, per_device=2, resume=False, delay=0.0, nan_at_call=None,
            checkpoint_every=2, validate=False, every_steps=None, keep=2):
    model = ToyModel()
    train = TrainArgs(batch_size=batch, per_device_batch_size=per_device, max_steps=max_steps,
                      log_every=1, checkpoint_every=checkpoint_every, keep_checkpoints=keep,
                      progress=False, tensorboard=False)
    optim = OptimArgs(lr=0.05, warmup_steps=2, warmup_ratio=None, lr_multipliers={"fusion": 1.0, "heads": 2.0})
    result = fit(ToyTask(nan_at_call), model, toy_loaders(per_device, delay=delay, validate=validate),
                 optim, train, EvalArgs(every_steps=every_steps), run_dir=run_dir, resume=resume,
                 monitor="-loss")
    return model, result


def losses(run_dir) -> list[float]:
    return [r["loss"] for r in read_log(run_dir)]
