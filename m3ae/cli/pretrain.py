"""Pre-train M3AE with masked language modelling, masked image modelling and image-text matching.

Example: m3ae pretrain --config configs/pretrain/m3ae.yaml --data prepared/roco prepared/medicat --out runs/pretrain
"""
from __future__ import annotations

import argparse

from m3ae.cli._recipe import add_run_arguments, data_arg, overrides


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the pre-training options."""
    add_run_arguments(parser, "configs/pretrain/m3ae.yaml")


def run(args: argparse.Namespace) -> int:
    """Runs pre-training; the final model is written to --out/best."""
    from m3ae.train.runner import pretrain

    pretrain(args.config, data_arg(args), args.out, overrides=overrides(args), resume=args.resume)
    return 0
