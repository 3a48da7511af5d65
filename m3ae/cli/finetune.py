"""Fine-tune M3AE on VQA, classification (MELINDA) or retrieval (ROCO) from a YAML recipe.

Example: m3ae finetune --config configs/finetune/vqa_rad.yaml --data data/vqa-rad --out runs/vqa_rad
"""
from __future__ import annotations

import argparse

from m3ae.cli._recipe import add_run_arguments, data_arg, overrides


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the fine-tuning options."""
    parser.add_argument("--seeds", type=int, nargs="+", metavar="S",
                        help="run once per seed (out/seed_S) and print mean ± sd, e.g. --seeds 0 1 2")
    parser.add_argument("--retrieval", choices=("full", "two-stage"), default=None,
                        help="retrieval protocol of validation and test (= --eval.retrieval; default: the "
                             "recipe's, full); two-stage needs --task.itc_weight > 0 to train its dual encoder")
    parser.add_argument("--top-k", type=int, default=None, metavar="K",
                        help="two-stage retrieval: candidates per query re-ranked (= --eval.top_k)")
    add_run_arguments(parser, "configs/finetune/vqa_rad.yaml")


def run(args: argparse.Namespace) -> int:
    """Runs the fine-tune; metrics.json in --out holds the test split's metrics of the best model."""
    from m3ae.train.runner import finetune

    extra = [(k, str(v)) for k, v in (("eval.retrieval", args.retrieval), ("eval.top_k", args.top_k))
             if v is not None]
    finetune(args.config, data_arg(args), args.out, overrides=overrides(args) + extra, resume=args.resume,
             seeds=args.seeds)
    return 0
