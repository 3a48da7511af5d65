"""The whole M3AE pipeline on the bundled VQA-RAD copy, on CPU, in minutes: `m3ae demo` (its options are
in m3ae/cli/demo.py; ``run_demo`` is the same run from Python).

Stages: prepare (clean protocol) -> fine-tune VQA from the pre-trained m3ae-small that ships with m3ae,
from scratch, on blank images and from the question only (optionally after the demo's own short
pre-training, one more row) -> evaluate on test next to the majority answer -> pictures and report.
Research use only: not for clinical decisions. Where each part lives:

- ``sizes``: what one run trains (``DemoSizes``; ``FULL``, and ``QUICK`` for --quick) and the image size;
- ``data``: stage 1, the raw folder, its prepared copy, the blank-image twin, the pre-training pairs;
  the output folder the demo may replace;
- ``stages``: stages 2-4, the m3ae-small recipes, the training of every row, the test predictions and
  their scores, the stage clock;
- ``planner``: the time budget: timed steps on this machine, then lengths that fit;
- ``report``: stages 5-6, the pictures, the results table, results.json / results.md and the model card.

This file runs them in order and re-exports the names other code uses (``demo.FULL``, ...).
"""
from __future__ import annotations

from pathlib import Path

import torch

from m3ae.experiments.demo.data import (
    DEMO_MARKER,
    blank_raw,
    caption_csv,
    clear_out,
    find_src,
    prepare,
    prepare_all,
    prepare_vqa_and_pairs,
    subset_raw,
)
from m3ae.experiments.demo.planner import (
    DEFAULT_BUDGET_MINUTES,
    MIN_SCALE,
    Plan,
    StepCosts,
    choose_threads,
    demo_precision,
    make_plan,
    measure_costs,
    plan_stages,
    plan_to_budget,
)
from m3ae.experiments.demo.report import (
    check_metrics,
    draw_figures,
    mean_table,
    results_table,
    write_report,
)
from m3ae.experiments.demo.sizes import (
    DEMO_IMAGE_SIZE,
    FINETUNE_ROWS,
    FULL,
    QUICK,
    SHORT_ROW,
    DemoSizes,
    demo_sizes,
)
from m3ae.experiments.demo.stages import (
    ROWS,
    StageClock,
    finetune_config,
    majority_baseline,
    minilm_folder,
    predict_split,
    pretrain_config,
    score_rows,
    scores,
    start_folder,
    train_rows,
    train_stage,
)

__all__ = [
    "DEFAULT_BUDGET_MINUTES", "DEMO_IMAGE_SIZE", "DEMO_MARKER", "FINETUNE_ROWS", "FULL", "MIN_SCALE", "QUICK",
    "ROWS", "SHORT_ROW", "DemoSizes", "Plan", "StageClock", "StepCosts", "blank_raw", "caption_csv",
    "check_metrics", "choose_threads", "clear_out", "demo_precision", "demo_sizes", "draw_figures",
    "find_src", "finetune_config", "majority_baseline", "make_plan", "mean_table", "measure_costs",
    "minilm_folder", "plan_stages", "plan_to_budget", "predict_split", "prepare", "prepare_all",
    "prepare_vqa_and_pairs", "pretrain_config", "results_table", "run_demo", "score_rows", "scores",
    "start_folder", "subset_raw", "train_rows", "train_stage", "write_report",
]


def run_demo(*, out: Path = Path("runs/demo"), src: Path | None = None, quick: bool = False,
             start: str | None = None, pretrain_steps: int | None = None, finetune_epochs: float | None = None,
             budget_minutes: float = DEFAULT_BUDGET_MINUTES, seed: int = 0, seeds: list[int] | None = None,
             threads: int | None = None) -> int:
    """Run the whole demo into ``out`` (what `m3ae demo` does); returns the exit code (0).

    Args:
        out: output folder; a previous demo output there is replaced, any other non-empty folder refused.
        src: raw VQA-RAD folder (trainset.json, testset.json, images/); None: the bundled copy.
        quick: a few steps of each stage on a data subset (QUICK, for CI).
        start: the pre-trained model the m3ae, blank-image and question-only rows fine-tune from (a model
            shipped with m3ae, or a model folder); None: ``FULL.start_model``.
        pretrain_steps: steps of the demo's own short pre-training row (0: no such row); fixes the
            length. None: the default, left out when it does not fit the budget.
        finetune_epochs: fine-tuning epochs of every row; fixes the length. None: scaled to the budget.
        budget_minutes: wall-time budget of the whole demo (0: no budget).
        seed: seed of the split, initialisation and data order.
        seeds: run the training stages once per seed and report mean ± sd; None: ``[seed]``.
        threads: torch threads; None: every core this process may run on.
    """
    from m3ae.hardware import describe

    out = Path(out)
    clock = StageClock()
    sizes = demo_sizes(quick=quick, pretrain_steps=pretrain_steps, finetune_epochs=finetune_epochs, start=start,
                       seeds=seeds, budget_minutes=budget_minutes)
    src, text_dir = find_src(src), minilm_folder()
    clear_out(out)
    threads, why = choose_threads(threads)
    torch.set_num_threads(threads)
    seeds = seeds or [seed]
    print(f"m3ae demo: {'QUICK (CI) ' if quick else ''}run into {out}/ from {src}/; seed(s) {seeds}; "
          f"{threads} torch thread(s) from {why}; {describe()}")
    print("Protocol: clean. Model selection uses a validation split held out from train (by image); "
          "the answer list comes from train only; the test split is used once, at the end.")

    clock("prepare", "1/6 prepare VQA-RAD (clean protocol), its blank-image twin and the pre-training pairs")
    dirs = prepare_all(src, out, sizes, image_size=DEMO_IMAGE_SIZE, seed=seed)
    clock("plan", "time budget: measure this machine, then fit the lengths to the budget")
    requested = sizes.precision
    sizes, plan, precision_seconds = make_plan(sizes, dirs, text_dir, clock.total, quick=quick,
                                               budget_minutes=budget_minutes, seed=seed,
                                               pretrain_steps=pretrain_steps, finetune_epochs=finetune_epochs)
    precision = demo_precision(requested, sizes.precision, precision_seconds)
    print(f"precision: {precision.name} ({precision.reason})")  # once, after the timing that decides it
    if plan is None:
        print(f"lengths as given: pre-train {sizes.pretrain_steps} steps, fine-tune "
              f"{sizes.finetune_epochs:g} epoch(s){' (capped at %d steps)' % sizes.finetune_max_steps if sizes.finetune_max_steps else ''}")

    tables, all_runs = [], {}
    for run_seed in seeds:
        tag = f" [seed {run_seed}]" if len(seeds) > 1 else ""
        seed_out = out / f"seed_{run_seed}" if len(seeds) > 1 else out
        runs = train_rows(seed_out, sizes, run_seed, text_dir, dirs, clock, tag)
        clock(f"evaluate{tag}", f"5/6 per-question predictions on the test split{tag}")
        records, majority_answer = score_rows(runs, dirs, sizes.precision)
        table = {row: scores(rows) for row, rows in records.items()}
        check_metrics(table)
        tables.append(table)
        all_runs[run_seed] = (runs, records)
        if len(seeds) > 1:
            print(results_table(table, majority_answer))
    runs, records = all_runs[seeds[0]]
    clock("report", "6/6 pictures and results")
    figures = draw_figures(out, src, dirs, runs, records, sizes.min_type_count, start_folder(sizes.start_model))
    mean, sd = mean_table(tables) if len(tables) > 1 else (tables[0], None)
    clock.stop()
    write_report(out, sizes, mean, sd, tables, seeds, figures, runs["m3ae"], dirs, clock, plan, precision,
                 quick=quick, seed=seed, budget_minutes=budget_minutes)
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
