"""The one training loop: every task (pre-training, VQA, classification, retrieval) runs through `fit`.

`fit` knows nothing about tasks: a task maps (model, batch) to named losses and back-propagates
them; `fit` handles accumulation, precision, the schedule, data parallelism, logging,
validation/model selection and crash-safe checkpoints.
"""
from __future__ import annotations

import hashlib
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from m3ae.errors import M3AEError
from m3ae.hardware import autocast_context, resolve_precision, to_device  # noqa: F401 (re-exported)
from m3ae import distributed as D
from m3ae.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from m3ae.train.config import EvalArgs, OptimArgs, TrainArgs
from m3ae.train.memory import (OptimizerInBackward, apply_memory_mode, autocast_weight_cache, choose_memory_mode,
                               optimizer_in_backward_blockers)
from m3ae.train.optim import build_optimizer, lr_factor, set_lr, warmup_steps_for
from m3ae.train.runlog import RunLogger


class Task(Protocol):
    """What the loop needs from a task (see `m3ae.train.tasks`)."""

    name: str

    def forward_backward(
        self, model: nn.Module, batch: dict[str, torch.Tensor], scale: Callable[[torch.Tensor], torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """Computes the named losses (``loss`` = total) and back-propagates ``scale(loss)``."""
        ...

    def losses_one_graph(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The same named losses as one graph, for a single backward (low-memory mode)."""
        ...


@dataclass
class Loaders:
    """The data side of `fit`.

    Attributes:
        train: ``train(epoch, start)`` yields this rank's micro-batches of that epoch, beginning at
            micro-batch ``start`` (for resuming mid-epoch).
        micro_batches_per_epoch: how many micro-batches ``train`` yields per epoch on each rank.
        validate: ``validate(model) -> metrics`` on the validation split (every rank calls it;
            it returns the gathered metrics), or None.
        samples_per_micro_batch: per-device batch size, for samples/s.
    """

    train: Callable[[int, int], Iterable[dict[str, torch.Tensor]]]
    micro_batches_per_epoch: int
    validate: Callable[[nn.Module], dict[str, float]] | None = None
    samples_per_micro_batch: int = 1


@dataclass
class FitResult:
    """What `fit` returns."""

    steps: int
    best_metric: float | None
    best_step: int | None
    last_metrics: dict[str, float] = field(default_factory=dict)
    best_metrics: dict[str, float] = field(default_factory=dict)
    """The validation metrics of the best model (the one saved in ``best/``)."""


def resolve_device(name: str) -> torch.device:
    """``auto`` -> this rank's CUDA device when available, else CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise M3AEError("train.device is cuda but no CUDA device is available")
        return torch.device("cuda", D.dist_info().local_rank)
    return torch.device(name)


def grad_accum_steps(batch_size: int, per_device_batch_size: int, world_size: int) -> int:
    """Micro-batches per optimisation step so that the global batch equals ``batch_size``."""
    per_step = per_device_batch_size * world_size
    if batch_size % per_step:
        raise M3AEError(
            f"train.batch_size ({batch_size}) must be a multiple of per_device_batch_size "
            f"({per_device_batch_size}) x processes ({world_size})"
        )
    return batch_size // per_step


def micro_seed(seed: int, step: int, micro: int) -> int:
    """A seed per (run seed, step, global micro-batch index) for dropout and any in-model randomness.

    Reseeding per micro-batch makes a resumed run draw exactly the random numbers the uninterrupted
    run drew, whatever happened before the checkpoint.
    """
    digest = hashlib.sha256(f"{seed}:{step}:{micro}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


@dataclass
class _State:
    """Resumable loop position (goes into the checkpoint's state.json)."""

    step: int = 0
    epoch: int = 0
    micro_in_epoch: int = 0
    best_metric: float | None = None
    best_step: int | None = None
    best_metrics: dict[str, float] | None = None
    """Every validation metric of the best model (what ``best/`` holds)."""


def train_step(
    task: Task,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    micro_batches: list[dict[str, torch.Tensor]],
    *,
    step: int,
    seed: int,
    precision: str,
    device: torch.device,
    scaler: torch.amp.GradScaler | None,
    clip_grad_norm: float | None,
    in_backward: OptimizerInBackward | None = None,
    weight_cache: bool = True,
) -> dict[str, float]:
    """One optimisation step over ``len(micro_batches)`` accumulated micro-batches.

    ``weight_cache``: autocast's weight cache (`autocast_context`); the memory modes turn it off.

    With ``in_backward`` (the low-memory mode), the one micro-batch's loss is back-propagated once
    and the optimizer updates each parameter from inside that backward (`OptimizerInBackward`).

    Returns:
        The micro-batch mean of every named loss (this rank), ``grad_norm`` when clipping, and
        ``nonfinite`` = 1.0 when any loss was NaN/inf (then the step was *not* applied).
    """
    if in_backward is not None:
        return _train_step_in_backward(task, model, optimizer, micro_batches, step=step, seed=seed,
                                       precision=precision, device=device, in_backward=in_backward,
                                       weight_cache=weight_cache)
    info = D.dist_info()
    accum = len(micro_batches)
    sums: dict[str, float] = {}
    bad = False

    def scale(loss: torch.Tensor) -> torch.Tensor:
        loss = loss / accum
        return scaler.scale(loss) if scaler is not None else loss

    optimizer.zero_grad(set_to_none=True)
    for i, batch in enumerate(micro_batches):
        torch.manual_seed(micro_seed(seed, step, i * info.world_size + info.rank))
        with autocast_context(precision, device, weight_cache):
            losses = task.forward_backward(model, to_device(batch, device), scale)
        for name, value in losses.items():
            v = float(value.detach().float())
            bad = bad or not math.isfinite(v)
            sums[name] = sums.get(name, 0.0) + v / accum
    if D.any_rank(bad):
        optimizer.zero_grad(set_to_none=True)
        return {**sums, "nonfinite": 1.0}
    params = [p for g in optimizer.param_groups for p in g["params"]]
    D.average_gradients(params)
    if scaler is not None:
        scaler.unscale_(optimizer)
    if clip_grad_norm is not None:
        sums["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, clip_grad_norm))
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    return sums


def _train_step_in_backward(task: Task, model: nn.Module, optimizer: torch.optim.Optimizer,
                            micro_batches: list[dict[str, torch.Tensor]], *, step: int, seed: int,
                            precision: str, device: torch.device,
                            in_backward: OptimizerInBackward, weight_cache: bool) -> dict[str, float]:
    """`train_step` with the update inside backward: one micro-batch, one backward, no clipping.

    The loss is checked *before* backward, so a NaN/inf loss still leaves the weights untouched.
    """
    if len(micro_batches) != 1:
        raise M3AEError(f"the optimizer step inside backward takes one micro-batch, got {len(micro_batches)}")
    optimizer.zero_grad(set_to_none=True)
    torch.manual_seed(micro_seed(seed, step, D.dist_info().rank))
    with autocast_context(precision, device, weight_cache):
        losses = task.losses_one_graph(model, to_device(micro_batches[0], device))
    stats = {name: float(value.detach().float()) for name, value in losses.items()}
    if not all(math.isfinite(v) for v in stats.values()):
        return {**stats, "nonfinite": 1.0}
    with in_backward.armed():
        losses["loss"].backward()
    return stats


def _windows(batches: Iterable[dict], size: int) -> Iterator[list[dict]]:
    """Groups micro-batches into accumulation windows; an incomplete tail is dropped."""
    window: list[dict] = []
    for b in batches:
        window.append(b)
        if len(window) == size:
            yield window
            window = []


def _better(value: float, best: float | None) -> bool:
    return best is None or value > best


def fit(
    task: Task,
    model: nn.Module,
    loaders: Loaders,
    optim: OptimArgs,
    train: TrainArgs,
    eval: EvalArgs,  # noqa: A002 - the section name of the recipe
    *,
    run_dir: str | Path | None = None,
    resume: bool = False,
    monitor: str = "-loss",
    save_best: Callable[[nn.Module, Path], None] | None = None,
    extra_state: dict[str, Any] | None = None,
) -> FitResult:
    """Trains ``model`` on ``task`` until ``train.max_steps`` (or ``max_epochs``) steps.

    Args:
        task: maps (model, batch) to named losses and back-propagates them.
        model: the model, unwrapped (moved to the device here).
        loaders: training micro-batches and the validation function.
        optim: optimiser and schedule settings.
        train: loop settings (batch, length, precision, checkpoints).
        eval: validation settings (``every_steps``; None = once per epoch).
        run_dir: the run folder (``log.jsonl``, ``checkpoints/``, ``best/``); None = keep nothing.
        resume: continue from ``run_dir/checkpoints/latest.json`` when it exists.
        monitor: validation metric that picks the best model (higher is better; ``-x`` negates x).
        save_best: writes the best model to a folder (rank 0 only); defaults to
            ``model.save_pretrained``.
        extra_state: JSON-serialisable items stored in every checkpoint (e.g. the resolved config).

    Returns:
        Steps done and the best validation metric.

    Raises:
        M3AEError: a NaN/inf loss (the last good checkpoint is left intact), bad batch settings.
    """
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    was_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    if train.deterministic:
        # CUDA's cuBLAS is deterministic only with a fixed workspace; the variable must be set before
        # its first use, and a value the user set wins
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        run = _Run(task, model, loaders, optim, train, eval, run_dir, monitor, save_best, extra_state)
        run.start(resume)
        try:
            while run.state.step < run.total:
                if run.one_epoch():
                    break
            run.finish()
        finally:
            run.progress.close()
            run.logger.close()
            if run.in_backward is not None:  # the model may train again elsewhere, with its own optimizer
                run.in_backward.remove()
    finally:
        torch.use_deterministic_algorithms(was_deterministic, warn_only=was_warn_only)
    return FitResult(run.state.step, run.state.best_metric, run.state.best_step, run.last_metrics,
                     run.state.best_metrics or {})


class _Run:
    """The pieces of one `fit` call: set-up and resume, one epoch, and the hook after each step
    (log, validate, checkpoint). The resumable position is `state` (a `_State`)."""

    def __init__(self, task: Task, model: nn.Module, loaders: Loaders, optim: OptimArgs, train: TrainArgs,
                 eval: EvalArgs, run_dir: str | Path | None, monitor: str,  # noqa: A002
                 save_best: Callable[[nn.Module, Path], None] | None, extra_state: dict[str, Any] | None) -> None:
        self.task, self.model, self.loaders, self.optim, self.train, self.eval = task, model, loaders, optim, train, eval
        self.monitor, self.save_best, self.extra_state = monitor, save_best or _save_pretrained, extra_state or {}
        self.info = D.dist_info()
        self.device = resolve_device(train.device)
        model.to(self.device)
        self.accum = grad_accum_steps(train.batch_size, train.per_device_batch_size, self.info.world_size)
        steps_per_epoch = loaders.micro_batches_per_epoch // self.accum
        if steps_per_epoch == 0 and train.max_steps != 0:
            raise M3AEError(
                f"an epoch has {loaders.micro_batches_per_epoch} micro-batches per process, fewer than the "
                f"{self.accum} needed for one step of batch_size {train.batch_size}; lower train.batch_size"
            )
        self.total = train.max_steps if train.max_steps is not None else steps_per_epoch * train.max_epochs
        self.warmup = warmup_steps_for(optim, self.total)
        self.optimizer = build_optimizer(model, optim)
        self.precision = resolve_precision(train.precision, self.device)
        self.scaler = torch.amp.GradScaler("cuda") if self.precision.name == "fp16" else None
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.ckpt_dir = self.run_dir / "checkpoints" if self.run_dir is not None else None
        self.logger = RunLogger(self.run_dir, enabled=self.info.is_main, tensorboard=train.tensorboard)
        self.state = _State()
        self.in_backward: OptimizerInBackward | None = None
        self.validated_at = -1
        self.last_metrics: dict[str, float] = {}
        torch.manual_seed(train.seed)

    # ------------------------------------------------------------------ set-up and resume
    def start(self, resume: bool) -> None:
        """Refuse to overwrite a run, start or truncate the log, restore the latest checkpoint."""
        ckpt_dir, logger = self.ckpt_dir, self.logger
        if not resume and ckpt_dir is not None and (ckpt_dir / "latest.json").exists():
            raise M3AEError(f"{self.run_dir} already holds a training run; pass --resume to continue it, "
                            "or choose another --out")
        if not resume:
            logger.truncate_after(0)  # a fresh run starts a fresh log
        logger.log({"step": self.state.step, "precision": self.precision.name,
                    "precision_reason": self.precision.reason}, prefix="run")
        self.memory, why = self.train.memory, ""
        if self.memory == "auto":
            self.memory, why = self.choose_memory_mode()
        self.in_backward = _apply_speed_options(self.model, self.optimizer, self.train, self.optim, self.accum,
                                                self.scaler, logger, self.state.step, self.memory, why)
        if resume and ckpt_dir is not None and (path := latest_checkpoint(ckpt_dir)) is not None:
            meta = load_checkpoint(path, self.model, self.optimizer)
            self.state = _State(**meta["loop"])
            if self.scaler is not None and meta.get("scaler"):
                self.scaler.load_state_dict(meta["scaler"])
            logger.truncate_after(self.state.step)
            if self.info.is_main:
                print(f"resumed from {path} (step {self.state.step})", flush=True)
        D.broadcast_parameters(self.model)
        self.progress = _progress(self.total, self.state.step, enabled=self.info.is_main and self.train.progress)
        self.model.train()
        if self.state.step == 0 and getattr(self.task, "pretraining", False):
            # pre-training is judged against its start (the feature-health figure needs one)
            self.last_metrics = self.validate()
        self.t_last, self.steps_since = time.perf_counter(), 0

    def choose_memory_mode(self) -> tuple[str, str]:
        """``train.memory: auto``: time normal and lean on the first micro-batch (`choose_memory_mode`)."""
        first = next(iter(self.loaders.train(0, 0)), None)
        if first is None:
            return "normal", "auto chose normal: the training loader yielded no batch to measure on"
        return choose_memory_mode(self.task, self.model, first, type(self.task).__name__, self.precision.name,
                                  self.device)

    # ------------------------------------------------------------------ one epoch
    def one_epoch(self) -> bool:
        """Steps until the epoch's loader runs out (then the epoch advances) or training is done.

        Returns:
            True when ``total`` steps are done.
        """
        state = self.state
        windows_done = 0
        for window in _windows(self.loaders.train(state.epoch, state.micro_in_epoch), self.accum):
            windows_done += 1
            factor = lr_factor(state.step, self.warmup, self.total)
            set_lr(self.optimizer, factor)
            lr = self.optim.lr * factor  # the base group's lr (multiplied groups scale with it)
            stats = train_step(
                self.task, self.model, self.optimizer, window, step=state.step, seed=self.train.seed,
                precision=self.precision.name, device=self.device, scaler=self.scaler,
                clip_grad_norm=self.optim.clip_grad_norm, in_backward=self.in_backward,
                weight_cache=autocast_weight_cache(self.memory),
            )
            if stats.pop("nonfinite", 0.0):
                last = latest_checkpoint(self.ckpt_dir) if self.ckpt_dir is not None else None
                raise M3AEError(
                    f"non-finite loss at step {state.step + 1} ({_fmt(stats)}); stopping. "
                    f"Last good checkpoint: {last or 'none'} (resume with --resume after lowering "
                    "optim.lr or using precision fp32)"
                )
            state.step += 1
            state.micro_in_epoch += self.accum
            self.after_step(stats, lr)
            if state.step >= self.total:
                return True
        if windows_done == 0 and state.micro_in_epoch == 0:
            raise M3AEError("the training loader yielded no complete batch in an epoch")
        state.epoch += 1
        state.micro_in_epoch = 0
        if not self.eval.every_steps:
            self.last_metrics = self.validate()
        return False

    # ------------------------------------------------------------------ after each step
    def after_step(self, stats: dict[str, float], lr: float) -> None:
        """Log (every ``log_every`` steps), validate (every ``eval.every_steps``), checkpoint."""
        state, train = self.state, self.train
        self.steps_since += 1
        now = time.perf_counter()
        sps = train.batch_size * self.steps_since / max(now - self.t_last, 1e-9)
        if state.step % train.log_every == 0 or state.step == self.total:
            rec = D.all_reduce_mean(stats)
            self.logger.log({"step": state.step, "epoch": state.epoch, "lr": lr, **rec,
                             "samples_per_s": round(sps, 3)})
            self.t_last, self.steps_since = now, 0
        self.progress.update(1)
        self.progress.set_postfix(loss=f"{stats['loss']:.4f}", lr=f"{lr:.2e}", samples_s=f"{sps:.1f}")
        if self.eval.every_steps and state.step % self.eval.every_steps == 0:
            self.last_metrics = self.validate()
        if state.step % train.checkpoint_every == 0 and state.step < self.total:
            self.checkpoint()

    def validate(self) -> dict[str, float]:
        """Validation metrics now; keeps the best model under ``run_dir/best``."""
        if self.loaders.validate is None:
            return {}
        state = self.state
        self.validated_at = state.step
        metrics = self.loaders.validate(self.model)
        self.model.train()
        self.logger.log({"step": state.step, "epoch": state.epoch, **metrics}, prefix="val")
        key = self.monitor.lstrip("-")
        if key not in metrics:
            raise M3AEError(f"eval.monitor {self.monitor!r} is not among the validation metrics {sorted(metrics)}")
        value = -metrics[key] if self.monitor.startswith("-") else metrics[key]
        if _better(value, state.best_metric):
            state.best_metric, state.best_step, state.best_metrics = value, state.step, dict(metrics)
            if self.run_dir is not None and self.info.is_main:
                self.save_best(self.model, self.run_dir / "best")
            D.barrier()
        return metrics

    def checkpoint(self) -> Path | None:
        """Save the resumable state (rank 0) and wait for every rank."""
        path = None
        if self.ckpt_dir is not None and self.info.is_main:
            extras = {
                "loop": vars(self.state),
                "scheduler": {"step": self.state.step, "warmup": self.warmup, "total": self.total},
                "scaler": self.scaler.state_dict() if self.scaler is not None else None, **self.extra_state,
            }
            path = save_checkpoint(self.ckpt_dir, self.state.step, self.model, self.optimizer, extras,
                                   keep=self.train.keep_checkpoints)
        D.barrier()
        return path

    def finish(self) -> None:
        """A last validation (unless this step had one), the final model, a last checkpoint."""
        if self.loaders.validate is not None and self.validated_at != self.state.step:
            self.last_metrics = self.validate()
        if self.loaders.validate is None and self.run_dir is not None and self.info.is_main:
            self.save_best(self.model, self.run_dir / "best")
        self.checkpoint()


def _apply_speed_options(model: nn.Module, optimizer: torch.optim.Optimizer, train: TrainArgs,
                         optim: OptimArgs, accum: int, scaler: Any, logger: RunLogger,
                         step: int, memory: str, why: str = "") -> OptimizerInBackward | None:
    """The memory mode (``train.memory``, resolved: ``memory``; ``why`` says how auto chose it) and
    ``train.compile``; returns the in-backward optimizer of ``memory: low`` (None when the step does
    not allow it, which is logged and printed with the reasons)."""
    in_backward = None
    notes = ([why] if why else []) + apply_memory_mode(model, memory)
    if memory == "low":
        blockers = optimizer_in_backward_blockers(accum=accum, clip_grad_norm=optim.clip_grad_norm,
                                                  scaler=scaler, world_size=D.dist_info().world_size)
        if blockers:
            notes.append("the optimizer step stays after backward because of " + "; ".join(blockers))
            if D.dist_info().is_main:
                print(f"train.memory low: {notes[-1]}", flush=True)
        else:
            in_backward = OptimizerInBackward(optimizer)
            notes.append("the optimizer step inside backward")
    note = f"train.memory {memory}: " + "; ".join(notes)
    logger.log({"step": step, "memory": memory, "memory_requested": train.memory, "memory_note": note},
               prefix="run")
    if why and D.dist_info().is_main and train.progress:
        print(f"train.memory {train.memory}: {why}", flush=True)
    if train.compile:
        from m3ae.compiling import compile_model

        compile_model(model)
        logger.log({"step": step, "compile": True}, prefix="run")
    return in_backward


def _fmt(stats: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in stats.items())


def _save_pretrained(model: nn.Module, path: Path) -> None:
    save = getattr(model, "save_pretrained", None)
    if save is None:
        raise M3AEError(f"{type(model).__name__} has no save_pretrained; pass save_best to fit")
    save(path)


class _NoProgress:
    def update(self, n: int = 1) -> None:  # noqa: D102
        pass

    def set_postfix(self, **kwargs: Any) -> None:  # noqa: D102
        pass

    def close(self) -> None:  # noqa: D102
        pass


def _progress(total: int, initial: int, enabled: bool) -> Any:
    if not enabled:
        return _NoProgress()
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _NoProgress()
    return tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True)
