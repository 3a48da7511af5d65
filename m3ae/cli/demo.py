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
from pathlib import Path

from m3ae.experiments.demo.planner import DEFAULT_BUDGET_MINUTES, MIN_SCALE
from m3ae.experiments.demo.sizes import FULL, QUICK


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


def run(args: argparse.Namespace) -> int:
    """Run the demo with the parsed options. Returns the exit code."""
    from m3ae.experiments.demo import run_demo

    # --pretrain-steps and --finetune-epochs are absent unless given (argparse.SUPPRESS): given, they fix
    # the lengths; absent, the budget planner sets them
    return run_demo(out=args.out, src=args.src, quick=args.quick, start=args.start,
                    pretrain_steps=getattr(args, "pretrain_steps", None),
                    finetune_epochs=getattr(args, "finetune_epochs", None),
                    budget_minutes=args.budget_minutes, seed=args.seed, seeds=args.seeds, threads=args.threads)
