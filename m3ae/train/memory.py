"""The memory modes of training (``train.memory``: normal, lean, low).

Peak memory of a training step is weights + AdamW state + gradients + activations + what the C
allocator holds but no tensor uses. At base size in fp32 the first three are 1.36 + 2.72 + 1.36
GiB; the modes cut the others:

- **normal**: nothing recomputed.
- **lean**: activation checkpointing in the two towers only (`M3AE.set_grad_checkpointing` with
  ``parts=LEAN_PARTS``). The towers keep the largest graphs of a pre-training step (the full
  image's ViT graph lives through all three passes), yet recomputing them is one tower forward:
  about 3% of a pre-training step for 1.2 GiB less at base size.
- **low**: three levers together:

  1. **Activation checkpointing** in the vision tower, the text tower, the fusion layers and the
     MIM decoder: only block inputs are kept; each block is recomputed in backward (about one
     more forward pass of compute).
  2. **The optimizer step inside backward** (`OptimizerInBackward`): a hook on each parameter
     applies AdamW to it as soon as its gradient is complete and then frees that gradient, so the
     gradients of the whole model never exist at once (1.36 GiB at base size in fp32).
  3. **Freed memory goes back to the OS** (the ``return`` policy of `m3ae.allocator`): 1.8 GiB of
     a low-memory pre-training step at base size was memory glibc had freed but kept; returning
     it costs page faults, about a third more time per step. The other modes set ``keep``, which
     is faster than glibc's default at the same peak.

In lean and low, autocast also stops caching its bf16/fp16 copies of the weights
(`autocast_weight_cache`): the cache keeps a copy of every weight a step used until the step's
forward ends, and with checkpointed towers nothing else needs the copies of theirs.

(2) needs every gradient to be final when its hook fires, which holds only when:

- the step has one micro-batch (no gradient accumulation: batch_size == per_device_batch_size);
- nothing looks at all gradients before the update: no ``optim.clip_grad_norm``, no fp16
  GradScaler (it unscales and checks every gradient), a single process (DDP averages gradients
  after backward);
- the loss is back-propagated once: tasks provide `losses_one_graph` for that (pre-training's
  default per-pass backward would fire the hooks after the first pass).

When any of these fails, ``low`` keeps (1) and (3) and says why (`optimizer_in_backward_blockers`).
No mode changes what a step computes: the tests check each against the normal step.
"""
from __future__ import annotations

import contextlib
import inspect
import time
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from m3ae.allocator import set_malloc_policy


def autocast_weight_cache(mode: str) -> bool:
    """Whether autocast keeps its low-precision weight copies through a step in memory ``mode``.

    Only in normal. With checkpointing, a tower's forward keeps no graph, so its weights' bf16
    copies are needed again only in the recomputation, which casts anew: the cache's copies (0.6
    GiB for a base pre-training step in bf16 lean) are pure peak. Casting at each use instead cost
    no measurable time (21.0 s and 21.4 s per step, within this machine's noise).
    """
    return mode == "normal"


def optimizer_in_backward_blockers(*, accum: int, clip_grad_norm: float | None, scaler: object | None,
                                   world_size: int) -> list[str]:
    """Why the optimizer step cannot run inside backward for these settings (empty = it can)."""
    reasons = []
    if accum != 1:
        reasons.append(f"gradient accumulation over {accum} micro-batches (set train.batch_size = "
                       "train.per_device_batch_size x processes)")
    if clip_grad_norm is not None:
        reasons.append("optim.clip_grad_norm needs every gradient before the step")
    if scaler is not None:
        reasons.append("fp16 loss scaling checks every gradient before the step")
    if world_size != 1:
        reasons.append(f"{world_size} processes average gradients after backward")
    return reasons


class OptimizerInBackward:
    """Applies ``optimizer``'s update to each parameter from a post-accumulate-grad hook.

    Each parameter gets a one-parameter optimizer of the same class and defaults (fused AdamW
    where available), whose ``state`` *is* the main optimizer's: the update, the moments and the
    checkpointed ``optimizer.state_dict()`` are exactly those of ``optimizer.step()``. Hyper-
    parameters (the scheduled lr, weight decay) are read from the parameter's group at each step.

    The hooks act only inside `armed()`, so evaluation passes and anything else that calls
    backward are unaffected.

    Args:
        optimizer: the training optimizer (built by `m3ae.train.optim.build_optimizer`).
    """

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer
        self._armed = False
        self._handles = []
        self.steps = 0
        """Parameter updates applied by the hooks since the last `armed()` began."""
        for group in optimizer.param_groups:
            for p in group["params"]:
                self._handles.append(p.register_post_accumulate_grad_hook(self._hook_for(p, group)))

    def _hook_for(self, param: nn.Parameter, group: dict) -> callable:
        # the same class and settings (fused or not); `defaults` may hold keys the constructor
        # does not take (torch's AdamW records decoupled_weight_decay), so keep only its arguments
        accepted = inspect.signature(type(self.optimizer).__init__).parameters
        single = type(self.optimizer)([param], **{k: v for k, v in self.optimizer.defaults.items()
                                                  if k in accepted})

        def hook(p: torch.Tensor) -> None:
            if not self._armed:
                return
            # load_state_dict replaces the main optimizer's state dict: look it up at every step
            single.state = self.optimizer.state
            single.param_groups[0].update({k: v for k, v in group.items() if k != "params"})
            single.step()
            p.grad = None  # the point of the mode: this gradient's memory is free from here on
            self.steps += 1

        return hook

    @contextlib.contextmanager
    def armed(self) -> Iterator[None]:
        """Inside: every completed gradient is applied and freed."""
        self._armed, self.steps = True, 0
        try:
            yield
        finally:
            self._armed = False

    def remove(self) -> None:
        """Remove the hooks (the parameters go back to plain gradient accumulation)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []


LEAN_PARTS = ("vision", "text")
"""What ``lean`` checkpoints: the two towers (the largest graphs for the least recompute)."""


def _checkpoint(model: nn.Module, **parts: tuple[str, ...]) -> None:
    set_ckpt = getattr(model, "set_grad_checkpointing", None)  # models without it (toys) are left as they are
    if set_ckpt is not None:
        set_ckpt(True, **parts)


def enable_low_memory(model: nn.Module) -> None:
    """Activation checkpointing in every tower, the fusion layers and the MIM decoder."""
    _checkpoint(model)


def enable_lean_memory(model: nn.Module) -> None:
    """Activation checkpointing in the two towers only (``train.memory: lean``)."""
    _checkpoint(model, parts=LEAN_PARTS)


def apply_memory_mode(model: nn.Module, mode: str) -> list[str]:
    """The model-side part of a memory mode (checkpointing) and its allocator policy (`m3ae.allocator`:
    ``return`` for low, ``keep`` otherwise); the optimizer side (`OptimizerInBackward`) is the
    caller's, since it depends on the step. Returns notes for the run log."""
    notes = []
    if mode == "lean":
        enable_lean_memory(model)
        notes.append("activation checkpointing in the two towers")
    elif mode == "low":
        enable_low_memory(model)
        notes.append("activation checkpointing in every tower, the fusion layers and the MIM decoder")
    return notes + [set_malloc_policy("return" if mode == "low" else "keep")]


# ------------------------------------------------------------------------- train.memory: auto
AUTO_MODES = ("normal", "lean")
"""What ``train.memory: auto`` chooses between (low changes the optimizer step and the allocator,
and costs about a third more time: it stays a choice the user makes)."""
AUTO_TOLERANCE = 0.05
"""auto picks lean when its forward + backward takes at most 5% longer than normal's. The probe times
forward + backward only (no optimizer step, which is where normal's extra memory costs page faults)
and two passes each: at base size on a 2-core AMD it said lean 1.04x while whole steps ran 0.92-0.99x
(docs/benchmarks.md, fourth run). Within 5% lean costs nothing measurable and holds ~1.5 GiB less."""
MEMORY_CACHE = "memory_modes"
"""`m3ae.hardware.measured_path` name of the measured choices (~/.cache/m3ae/memory_modes.json)."""
AUTO_REPEATS = 2
"""Timed forward + backward passes per mode, after one untimed one (allocator, autocast warm-up)."""


def memory_probe_key(model: nn.Module, batch: dict, task_name: str, precision: str, device: torch.device) -> str:
    """What the choice depends on: the machine (CPU model, usable cores, torch), the device, the model
    (parameter and trainable counts), the task, the precision and the micro-batch's shapes."""
    from m3ae.hardware import machine_key

    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    shapes = ",".join(f"{k}={tuple(v.shape)}" for k, v in sorted(batch.items()) if torch.is_tensor(v))
    return f"{machine_key()}|{device.type}|params={params}|trainable={trainable}|{task_name}|{precision}|{shapes}"


def time_forward_backward(task: Any, model: nn.Module, batch: dict, precision: str, device: torch.device,
                          weight_cache: bool, repeats: int = AUTO_REPEATS) -> float:
    """Median seconds of one micro-batch's forward + backward (after one untimed pass).

    The weights are not touched (no optimizer step) and the gradients are cleared afterwards, so a
    probe before training leaves the run exactly as it was (each step reseeds its own randomness).
    """
    from m3ae.hardware import autocast_context, to_device

    batch = to_device(batch, device)
    times = []
    for i in range(repeats + 1):
        start = time.perf_counter()
        with autocast_context(precision, device, weight_cache):
            task.forward_backward(model, batch, lambda loss: loss)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i:
            times.append(time.perf_counter() - start)
        model.zero_grad(set_to_none=True)
    return sorted(times)[len(times) // 2]


def choose_memory_mode(task: Any, model: nn.Module, batch: dict, task_name: str, precision: str,
                       device: torch.device) -> tuple[str, str]:
    """``train.memory: auto``: lean when it is not slower than normal on this machine, else normal.

    Measured once per machine and job (`memory_probe_key`) by timing the forward + backward of the
    run's first micro-batch in both modes (`time_forward_backward`), then read from
    `m3ae.hardware.measured_path("memory_modes")`. In a multi-process run every rank uses the mean of all ranks' timings.

    Returns:
        (the mode, one sentence for the run log saying why).
    """
    from m3ae import distributed as D

    from m3ae.hardware import measured_path, read_measured, remember_measured

    key = memory_probe_key(model, batch, task_name, precision, device)
    entry = read_measured(MEMORY_CACHE).get(key)
    seconds = entry.get("seconds") if isinstance(entry, dict) else None
    if isinstance(seconds, dict) and all(isinstance(seconds.get(m), (int, float)) for m in AUTO_MODES):
        mode, why = _decide(seconds)  # from the cached times, so a changed rule applies to old entries
        return mode, f"auto chose {mode}: {why} (measured earlier, cached in {measured_path(MEMORY_CACHE)})"
    seconds = {}
    set_ckpt = getattr(model, "set_grad_checkpointing", None) or (lambda *a, **k: None)  # toys have none
    for mode in AUTO_MODES:
        set_ckpt(mode == "lean", parts=LEAN_PARTS)
        seconds[mode] = time_forward_backward(task, model, batch, precision, device, autocast_weight_cache(mode))
    set_ckpt(False, parts=LEAN_PARTS)
    seconds = D.all_reduce_mean(seconds)
    mode, why = _decide(seconds)
    if D.dist_info().is_main:
        remember_measured(MEMORY_CACHE, key, {"mode": mode, "why": why, "seconds": seconds})
    return mode, f"auto chose {mode}: {why}"


def _decide(seconds: dict[str, float]) -> tuple[str, str]:
    """lean when its time is within `AUTO_TOLERANCE` of normal's, and the sentence that says so."""
    mode = "lean" if seconds["lean"] <= seconds["normal"] * (1 + AUTO_TOLERANCE) else "normal"
    ratio = seconds["lean"] / max(seconds["normal"], 1e-9)
    return mode, (f"forward + backward of one micro-batch took {seconds['lean']:.3g} s lean vs "
                  f"{seconds['normal']:.3g} s normal ({ratio:.2f}x; lean is chosen up to {1 + AUTO_TOLERANCE:.2f}x)")
