"""The demo's time budget: a few timed steps of each recipe measure this machine (and bf16 against fp32
where bf16 is native), then pre-training and fine-tuning are shortened, the same for every row, to fit."""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from m3ae.errors import M3AEError
from m3ae.experiments.demo.sizes import FINETUNE_ROWS, SHORT_ROW, DemoSizes
from m3ae.experiments.demo.stages import finetune_config, pretrain_config

MIN_SCALE = 0.25
"""The budget planner never shortens pre-training or fine-tuning below this share of FULL."""
DEFAULT_BUDGET_MINUTES = 15.0


def choose_threads(requested: int | None) -> tuple[int, str]:
    """Torch threads and why: as asked, else every core this process may run on.

    The load average is not used: it still counts a job that has just finished (the `pip install`
    that `make demo` runs first left it at 1.0 on an idle 2-core machine, and the demo then ran on
    one core).
    """
    from m3ae.hardware import usable_cores

    if requested is not None:
        if requested < 1:
            raise M3AEError(f"--threads must be at least 1, got {requested}")
        return requested, "--threads"
    return usable_cores(), "the cores this process may run on (os.sched_getaffinity)"


# ----------------------------------------------------------------------------- time budget
@dataclass(frozen=True)
class StepCosts:
    """Seconds measured on this machine (median of a few timed steps after a warm-up step)."""

    pretrain_step: float
    """One pre-training step (three passes, backward, optimizer) at the demo's batch size."""
    finetune_step: float
    """One VQA fine-tuning step with images."""
    question_only_step: float
    """One fine-tuning step of the question-only baseline (no vision tower)."""
    eval_example: float
    """Forward pass of one evaluation example."""


@dataclass(frozen=True)
class Plan:
    """What the demo will run, and how long it expects each stage to take."""

    scale: float
    """Share of the default lengths (1 = FULL; never below MIN_SCALE)."""
    pretrain_steps: int
    finetune_steps: int
    """Optimisation steps of every fine-tuned row."""
    stage_seconds: dict[str, float]
    """Expected wall time per stage."""
    fits: bool
    """False when even MIN_SCALE exceeds the budget."""

    @property
    def total_seconds(self) -> float:
        return sum(self.stage_seconds.values())


LOOP_OVERHEAD = 1.35
"""A stage's wall time over its timed steps: data loading, logging, validation and saving the best model
each epoch. Measured by the idle 15-minute demo (2 cores, AMX): fine-tuning rows 182-188 s for 860 steps
timed at 0.15 s, pre-training 193 s for 300 steps timed at 0.42 s (1.4-1.5x); without it the plan
expected 10.9 minutes and the demo took 14.8."""

REPORT_SECONDS = 30.0
"""Planned time for test predictions, pictures and the report (measured: about 20 s)."""


def plan_stages(costs: StepCosts, sizes: DemoSizes, scale: float, steps_per_epoch: int,
                eval_examples: dict[str, int], fixed_seconds: float, short_row: bool = True) -> Plan:
    """Expected stage times when pre-training and fine-tuning run at ``scale`` x their default lengths
    (``short_row``: with the demo's own pre-training and its row)."""
    pretrain_steps = max(1, round(sizes.pretrain_steps * scale)) if short_row else 0
    finetune_steps = max(1, round(sizes.finetune_epochs * steps_per_epoch * scale))
    epochs = max(1, math.ceil(finetune_steps / max(1, steps_per_epoch)))
    evals = (epochs * eval_examples["val"] + 2 * eval_examples["test"]) * costs.eval_example
    times = {"fixed": fixed_seconds}
    if short_row:
        times["pretrain"] = pretrain_steps * costs.pretrain_step * LOOP_OVERHEAD
    for row in FINETUNE_ROWS + ((SHORT_ROW,) if short_row else ()):
        step = costs.question_only_step if row == "question_only" else costs.finetune_step
        times[row] = (finetune_steps * step + evals * (0.5 if row == "question_only" else 1.0)) * LOOP_OVERHEAD
    return Plan(scale, pretrain_steps, finetune_steps, {k: round(v, 1) for k, v in times.items()}, True)


def plan_to_budget(costs: StepCosts, sizes: DemoSizes, budget_seconds: float, steps_per_epoch: int,
                   eval_examples: dict[str, int], fixed_seconds: float, keep_short_row: bool = False) -> Plan:
    """The longest plan (scale <= 1, the same for every row) that fits the budget.

    The demo's own short pre-training row is planned only at its full length, when everything fits at
    the default lengths; otherwise it is left out (``pretrain_steps`` 0) before any row is shortened,
    unless ``keep_short_row`` (the user asked for it with --pretrain-steps). Pure: it only does
    arithmetic on measured costs, so it is tested with made-up step times. When even MIN_SCALE does
    not fit, the MIN_SCALE plan is returned with ``fits=False``.
    """
    wanted = sizes.pretrain_steps > 0
    if wanted and not keep_short_row:
        full = plan_stages(costs, sizes, 1.0, steps_per_epoch, eval_examples, fixed_seconds)
        if budget_seconds <= 0 or full.total_seconds <= budget_seconds:
            return full
    short_row = wanted and keep_short_row

    def plan(scale: float) -> Plan:
        return plan_stages(costs, sizes, scale, steps_per_epoch, eval_examples, fixed_seconds, short_row)

    full = plan(1.0)
    if budget_seconds <= 0 or full.total_seconds <= budget_seconds:
        return full
    low, high = MIN_SCALE, 1.0
    if plan(low).total_seconds > budget_seconds:
        return dataclasses.replace(plan(low), fits=False)
    for _ in range(30):  # bisection on the scale: total time grows monotonically with it
        mid = (low + high) / 2
        low, high = (mid, high) if plan(mid).total_seconds <= budget_seconds else (low, mid)
    return plan(low)


def time_steps(cfg: dict[str, Any], data_dir: Path, steps: int = 3) -> float:
    """Median seconds of one optimisation step of a recipe on this machine (after one warm-up step).

    Builds the recipe's model, task and optimizer and runs them on one real batch, as `fit` does;
    the data loading of one batch of not yet decoded images is added (so the estimate errs long; the
    split's one-time tokenisation is left out: it was counted per step once and tripled the estimate
    of the question-only row).
    """
    import statistics

    from m3ae.data import load_tokenizer, make_dataset
    from m3ae.train.config import config_from_dict
    from m3ae.train.loop import autocast_context
    from m3ae.train.optim import build_optimizer
    from m3ae.train.runner import _summary, build_model, task_options, tokenizer_path
    from m3ae.train.tasks import make_task

    config = config_from_dict(cfg, where="demo timing recipe")
    model = build_model(config, _summary(data_dir, config.task.name)).train()
    task = make_task(config.task.name, **task_options(config.task))
    dataset = make_dataset(data_dir, "train", config.task.name, config.data,
                           load_tokenizer(tokenizer_path(config)), train=True, seed=0)
    size = config.train.batch_size
    batch = dataset.collate_fn([dataset[i % len(dataset)] for i in range(size)])  # tokenises the split once
    start = time.perf_counter()
    dataset.collate_fn([dataset[(size + i) % len(dataset)] for i in range(size)])  # a batch of new images
    data_seconds = time.perf_counter() - start
    optimizer = build_optimizer(model, config.optim)
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        with autocast_context(config.train.precision, torch.device("cpu")):
            task.forward_backward(model, batch, lambda loss: loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:]) + data_seconds


def faster_precision(sizes: DemoSizes, dirs: dict[str, Path], text_dir: Path, seed: int
                     ) -> tuple[DemoSizes, dict[str, float] | None]:
    """Where bf16 is native, time a fine-tuning step in bf16 and in fp32 and keep the faster.

    Native bf16 is not always faster at the demo's small widths, where autocast's casts weigh against
    the cheaper matrix products: on one CPU with AMX, a profile under load gave 1.46 s per step in bf16
    and 0.78 s in fp32, while the idle demo run measured 0.57 s and 0.76 s. So it is measured, not assumed.
    Returns the sizes with the faster precision, and the seconds per step of each (None: not timed).
    """
    from m3ae.hardware import resolve_precision

    if resolve_precision(sizes.precision, "cpu").name != "bf16":
        return sizes, None
    seconds = {}
    for precision in ("bf16", "fp32"):
        candidate = dataclasses.replace(sizes, precision=precision)
        seconds[precision] = time_steps(finetune_config(candidate, seed, text_dir, pretrained=None), dirs["vqa"],
                                        steps=2)
    return dataclasses.replace(sizes, precision=min(seconds, key=seconds.get)), seconds


def demo_precision(requested: str, chosen: str, seconds: dict[str, float] | None) -> Any:
    """The precision the demo runs, with one reason that says what was measured and what was chosen."""
    from m3ae.hardware import Precision, resolve_precision

    if seconds is None:
        return resolve_precision(chosen, "cpu")
    timed = ", ".join(f"{name} {value:.2f} s" for name, value in seconds.items())
    return Precision(chosen, f"{requested}: this CPU has native bf16, so a fine-tuning step was timed in "
                             f"each ({timed}); {chosen} is faster here")


def measure_costs(sizes: DemoSizes, dirs: dict[str, Path], text_dir: Path, seed: int) -> StepCosts:
    """Times a pre-training, a fine-tuning and a question-only step of the demo's own recipes."""
    pre = time_steps(pretrain_config(sizes, seed, text_dir), dirs["pretrain"]) if sizes.pretrain_steps else 0.0
    ft_cfg = finetune_config(sizes, seed, text_dir, pretrained=None)
    ft = time_steps(ft_cfg, dirs["vqa"])
    qo_cfg = finetune_config(sizes, seed, text_dir, pretrained=None, image_input="none")
    qo = time_steps(qo_cfg, dirs["vqa"])
    # an evaluation forward costs about a third of a training step's forward + backward
    return StepCosts(pre, ft, qo, eval_example=ft / sizes.finetune_batch_size / 3)


def make_plan(sizes: DemoSizes, dirs: dict[str, Path], text_dir: Path, elapsed: float, *, quick: bool,
              budget_minutes: float, seed: int, pretrain_steps: int | None, finetune_epochs: float | None
              ) -> tuple[DemoSizes, Plan | None, dict[str, float] | None]:
    """Measure this machine and fit the run into the budget; returns the sizes to run, the plan and
    the precision timings (see `faster_precision`).

    No measurement with --quick, with --budget-minutes 0, or when the user fixed both lengths
    (``pretrain_steps``, ``finetune_epochs``: the lengths given on the command line; None: not given).
    """
    from m3ae.data import read_summary

    fixed = pretrain_steps is not None and finetune_epochs is not None
    if quick or budget_minutes == 0 or fixed:
        return sizes, None, None
    splits = read_summary(dirs["vqa"])["splits"]
    steps_per_epoch = int(splits["train"]["examples"]) // sizes.finetune_batch_size
    start = time.perf_counter()
    sizes, precision_seconds = faster_precision(sizes, dirs, text_dir, seed)
    costs = measure_costs(sizes, dirs, text_dir, seed)
    spent = elapsed + time.perf_counter() - start
    print(f"measured on this machine: pre-training step {costs.pretrain_step:.2f} s (demo's own row), fine-tuning step "
          f"{costs.finetune_step:.2f} s, question-only step {costs.question_only_step:.2f} s "
          f"(batch {sizes.batch_size} / {sizes.finetune_batch_size}; timing took {time.perf_counter() - start:.0f} s)")
    fixed_seconds = REPORT_SECONDS
    plan = plan_to_budget(costs, sizes, budget_minutes * 60 - spent, steps_per_epoch,
                          {k: int(splits[k]["examples"]) for k in ("val", "test")}, fixed_seconds,
                          keep_short_row=pretrain_steps is not None)
    if pretrain_steps is not None:
        plan = dataclasses.replace(plan, pretrain_steps=sizes.pretrain_steps)
    if finetune_epochs is not None:
        plan = dataclasses.replace(plan, finetune_steps=round(sizes.finetune_epochs * steps_per_epoch))
    epochs = plan.finetune_steps / steps_per_epoch
    if sizes.pretrain_steps and not plan.pretrain_steps:
        print(f"the demo's own {sizes.pretrain_steps}-step pre-training row is left out: with it the demo would "
              f"not fit the {budget_minutes:g}-minute budget (--pretrain-steps N keeps it)")
    short = f"pre-train {plan.pretrain_steps} steps (own row), " if plan.pretrain_steps else ""
    print(f"plan ({plan.scale:.0%} of the default lengths, the same for every row): {short}"
          f"fine-tune {plan.finetune_steps} steps ({epochs:.1f} epochs) per row; "
          "expected: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in plan.stage_seconds.items())
          + f"; total with set-up {(spent + plan.total_seconds) / 60:.1f} min of the {budget_minutes:g}")
    if not plan.fits:
        print(f"WARNING: this machine is too slow to fit the {budget_minutes:g}-minute budget even at "
              f"{MIN_SCALE:.0%} of the default lengths; expect about {(spent + plan.total_seconds) / 60:.0f} "
              "minutes (use --budget-minutes to set a longer one)", flush=True)
    sizes = dataclasses.replace(sizes, pretrain_steps=plan.pretrain_steps, finetune_epochs=epochs,
                                finetune_max_steps=plan.finetune_steps)
    return sizes, plan, precision_seconds
