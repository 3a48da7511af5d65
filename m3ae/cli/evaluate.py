"""Evaluate a saved model (a run's best/ folder) on a split of a prepared data folder.

Example: m3ae evaluate --model runs/vqa_rad/best --data data/vqa-rad --split test
"""
from __future__ import annotations

import argparse

from m3ae.hardware import INFERENCE_PRECISIONS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the evaluation options."""
    parser.add_argument("--model", required=True, metavar="DIR", help="model folder (save_pretrained output)")
    parser.add_argument("--data", required=True, metavar="DIR", help="a folder written by `m3ae prepare`")
    parser.add_argument("--split", default="test", help="split to evaluate (train, val or test)")
    parser.add_argument("--batch-size", type=int, default=32, help="examples (images for retrieval) per batch")
    parser.add_argument("--precision", default="auto", choices=INFERENCE_PRECISIONS,
                        help="precision of the forward passes (auto: bf16 where the hardware runs it natively, "
                             "else fp32; int8: dynamic int8 Linear layers, CPU only)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--out", metavar="DIR", help="also write metrics.json into this folder")
    parser.add_argument("--retrieval", default="full", choices=("full", "two-stage"),
                        help="retrieval protocol: full (the original, every pair through the cross-encoder) or "
                             "two-stage (dual-encoder ranking, cross-encoder re-ranking of the top K)")
    parser.add_argument("--top-k", type=int, default=128, metavar="K",
                        help="two-stage retrieval: candidates per query re-ranked by the cross-encoder")


def run(args: argparse.Namespace) -> int:
    """Prints a summary table of the split's metrics."""
    from m3ae.train.runner import evaluate

    evaluate(args.model, args.data, args.split, batch_size=args.batch_size, precision=args.precision,
             device=args.device, out_dir=args.out, retrieval=args.retrieval, top_k=args.top_k)
    return 0
