"""Time one job on this machine: a pre-training step, a VQA fine-tuning step or VQA inference.

Each run happens in a fresh Python process, so its peak memory (peak RSS) is its own and
nothing compiled or cached by an earlier run helps it. Weights are random (speed and memory do
not depend on their values) and batches are synthetic, with the paper's shapes by default:
pre-training batch 4, 288 px, 64 tokens; VQA fine-tuning batch 4, 384 px, 32 tokens, 498
answers (VQA-RAD); inference batch 1, 384 px, 32 tokens. A training step is the forward pass,
backward and the AdamW update, exactly as `m3ae pretrain` / `m3ae finetune` run it.

Examples:
    m3ae bench --job infer
    m3ae bench --job infer --precision int8 --json
    m3ae bench --job pretrain --memory low --threads 2 --steps 3
    m3ae bench --job vqa --size m3ae-tiny --image-size 32 --text-len 16 --steps 2 --warmup 1
    m3ae bench --job vqa --precision fp32 --steps 1 --profile 1 --profile-out profile_vqa.md

Timings are medians of the timed steps after the warm-up steps; on a machine that other jobs
share, they measure the others too (the output gives the load average, and CPU seconds per step).
``--profile N`` runs N more steps under torch.profiler after the timed ones and prints the top
ops by self CPU time (a Markdown table).
"""
from __future__ import annotations

import argparse
import json
from dataclasses import fields

from m3ae.errors import M3AEError
from m3ae.experiments.bench import (
    JOBS,
    PROFILE_TOP,
    BenchSpec,
    format_result,
    profile_markdown,
    profile_title,
    run_job,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `m3ae bench`."""
    from m3ae.hardware import INFERENCE_PRECISIONS
    from m3ae.train.config import MEMORY_MODES

    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--job", required=True, choices=JOBS,
                        help="pretrain: one pre-training step (MLM+MIM+ITM, backward, AdamW); vqa: one VQA "
                             "fine-tuning step; infer: VQA logits for one batch, no gradients")
    parser.add_argument("--size", default="m3ae-base", help="model preset (m3ae-base, m3ae-tiny, ...); default m3ae-base")
    parser.add_argument("--batch", type=int, help="samples per step (default: the paper's, 4 for pretrain/vqa, 1 for infer)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps; the median is reported (default 3)")
    parser.add_argument("--warmup", type=int, default=1,
                        help="untimed steps first (default 1; give 2-3 with --compile, whose first steps compile)")
    parser.add_argument("--precision", default="auto", choices=INFERENCE_PRECISIONS,
                        help="auto (bf16 where native, else fp32), fp32, bf16, fp16 (CUDA), or int8 (dynamic int8 "
                             "Linear layers; --job infer on CPU only). Default auto")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (default 0 = torch's default)")
    parser.add_argument("--image-size", type=int, help="image side in pixels (default: 288 pretrain, 384 vqa/infer)")
    parser.add_argument("--text-len", type=int, help="tokens per text (default: 64 pretrain, 32 vqa/infer)")
    parser.add_argument("--memory", default="auto", choices=MEMORY_MODES,
                        help="training jobs, as train.memory: auto = lean when it is not slower than normal here "
                             "(measured, cached); lean = activation checkpointing in the two towers; "
                             "low = checkpointing everywhere + freed memory returned to the OS + the optimizer "
                             "step inside backward. Default auto")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the transformer blocks (inductor, needs gcc/clang)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--flops", action="store_true",
                        help="after the timed steps, count the step's model FLOPs (one more step on a fresh "
                             "eager model) and report gflop_per_step and achieved_gflops (GFLOP/s at the "
                             "median step time)")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="after the timed steps, run N more under torch.profiler and print the top "
                             f"{PROFILE_TOP} ops by self CPU time as a Markdown table (default 0 = no profile)")
    parser.add_argument("--profile-out", metavar="FILE",
                        help="with --profile: also write the Markdown table to FILE")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON line (sec_per_step, samples_per_s, peak_rss_gib, precision, threads, "
                             "cpu_bf16, load_avg, shapes, ...) instead of a readable line")


def spec_from_args(args: argparse.Namespace) -> BenchSpec:
    """The `BenchSpec` of parsed `m3ae bench` options."""
    names = {f.name for f in fields(BenchSpec)}
    return BenchSpec(**{k: v for k, v in vars(args).items() if k in names})


def run(args: argparse.Namespace) -> int:
    """Entry point of `m3ae bench`."""
    from m3ae.guards import check_device

    check_device(args.device, "--device")
    if getattr(args, "profile_out", None) and not args.profile:
        raise M3AEError("--profile-out needs --profile N (the number of profiled steps)")
    result = run_job(spec_from_args(args))
    print(json.dumps(result) if args.json else format_result(result), flush=True)
    if result.get("profile_ops"):
        table = profile_markdown(result["profile_ops"], profile_title(result))
        if not args.json:  # --json keeps stdout one JSON line (the rows are in it)
            print(table, flush=True)
        if args.profile_out:
            from pathlib import Path

            Path(args.profile_out).write_text(table + "\n")
    return 0




if __name__ == "__main__":  # python -m m3ae.cli.bench (and the old python -m m3ae.bench)
    import sys

    from m3ae.cli import main

    sys.exit(main(["bench", *sys.argv[1:]]))
