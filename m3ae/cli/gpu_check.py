"""Check and measure the library on one CUDA GPU, in one run of under 10 minutes.

Checks (``--only`` picks some; each runs in its own process, so a crash, an out-of-memory or a
hang in one never loses the others' results):

    parity    m3ae-tiny, one pre-training step and one VQA step on CPU and on CUDA from the same
              weights and batch, in fp32 (tight tolerance) and bf16 (loose tolerance): the largest
              difference of the losses and of the gradients
    pretrain  m3ae-base (random weights, no downloads), one pre-training step at the GPU's half
              precision (bf16 where it has it, else fp16): seconds per
              step, samples/s, model FLOPs per step (`m3ae bench --flops`), MFU, peak GPU memory
    vqa       the same for a VQA fine-tuning step
    latency   VQA inference of one question (batch 1), m3ae-base, fp32 and the GPU's half precision
    ddp       `torchrun --nproc_per_node 1` with the NCCL backend: training steps of m3ae-tiny on
              the GPU through the training loop's `train_step`, then NCCL collectives

Results go to ``--out`` (default ``$OUT`` or runs/gpu_check): gpu_check.json (one record per
check: name, ok, seconds, numbers, error) and gpu_check.md (a Markdown table). The whole run has
a time budget (``--budget-minutes``, default 9): a check whose usual duration would overrun it is
skipped and says so, and a running check is stopped at the budget. Without a CUDA device the run
prints one line, writes a record saying so, and exits 0.

Examples:
    scripts/gpu_check.sh
    m3ae gpu-check --only parity latency --out runs/gpu_check
    python -m m3ae.gpu_check --budget-minutes 5
"""
from __future__ import annotations

import argparse
import sys

from m3ae.experiments.gpu_check import CHECKS, DEFAULT_BUDGET_MIN


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `m3ae gpu-check`."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--only", nargs="+", choices=CHECKS, metavar="CHECK",
                        help=f"run these checks only, in this order (default all: {' '.join(CHECKS)})")
    parser.add_argument("--budget-minutes", type=float, default=DEFAULT_BUDGET_MIN,
                        help=f"time for the whole run; a check that would overrun it is skipped "
                             f"(default {DEFAULT_BUDGET_MIN:g})")
    parser.add_argument("--out", default=None,
                        help="folder for gpu_check.json and gpu_check.md (default $OUT, else runs/gpu_check)")


def run(args: argparse.Namespace) -> int:
    """Entry point of `m3ae gpu-check`: exit 0 when every check that ran passed (or there is no
    CUDA device), 1 when one failed."""
    from m3ae.experiments.gpu_check import run_gpu_check

    return run_gpu_check(args.only, args.budget_minutes, args.out)


if __name__ == "__main__":  # python -m m3ae.cli.gpu_check (and the old python -m m3ae.gpu_check)
    from m3ae.cli import main

    sys.exit(main(["gpu-check", *sys.argv[1:]]))
