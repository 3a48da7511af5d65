"""Fine-tune M3AE on VQA, classification (MELINDA) or retrieval (ROCO) from a YAML recipe.

Example: m3ae finetune --config configs/finetune/vqa_rad.yaml --data data/vqa-rad --out runs/vqa_rad
"""
from __future__ import annotations

import argparse

from m3ae.train._cli_common import add_run_arguments, data_arg, overrides


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the fine-tuning options."""
    parser.add_argument("--seeds", type=int, nargs="+", metavar="S",
                        help="run once per seed (out/seed_S) and print mean ± sd, e.g. --seeds 0 1 2")
    add_run_arguments(parser, "configs/finetune/vqa_rad.yaml")


def run(args: argparse.Namespace) -> int:
    """Runs the fine-tune; metrics.json in --out holds the test split's metrics of the best model."""
    from m3ae.train.runner import finetune

    finetune(args.config, data_arg(args), args.out, overrides=overrides(args), resume=args.resume, seeds=args.seeds)
    return 0
