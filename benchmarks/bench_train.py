"""Training-step benchmark grid: samples/s and peak memory of one pre-training step, one VQA
fine-tuning step and VQA inference, at several sizes and precisions, as a Markdown table.

Each configuration is one `m3ae bench` run (`m3ae.experiments.bench.run_job`: a fresh subprocess, so its peak
RSS is its own; random weights; synthetic batches with the paper's shapes: pre-training 288 px /
64 tokens, VQA 384 px / 32 tokens / 498 answers). Inference runs as `m3ae predict` does (bf16 by
autocast, int8 by dynamic quantisation).

Usage:
    python benchmarks/bench_train.py                      # tiny only (its own 32 px; seconds)
    python benchmarks/bench_train.py --sizes m3ae-tiny m3ae-base --precisions fp32 bf16
    python benchmarks/bench_train.py --sizes m3ae-base --jobs pretrain --grad-checkpointing both

This is a benchmark, not a test: nothing here asserts a speed.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Original implementation, base size, 2-core CPU machine, fp32 (from the issue): seconds per call
# and peak RSS in GiB. Used only to print the ratios.
REFERENCE = {
    ("pretrain", 4): (20.2, 12.6),
    ("vqa", 4): (15.1, 10.7),
    ("infer", 1): (1.08, 1.7),
}


def run_one(spec: dict) -> dict:
    """Runs one configuration through `m3ae.experiments.bench` (a fresh interpreter: its own peak RSS)."""
    from m3ae.experiments.bench import BenchSpec, run_job
    from m3ae.errors import M3AEError

    try:
        return run_job(BenchSpec(**spec))
    except M3AEError as err:
        return {**spec, "error": str(err)}


def markdown(rows: list[dict]) -> str:
    """The results as a Markdown table, with ratios to the original where one is known.

    Speed-ups are given two ways: wall-clock, and CPU seconds against twice the original's wall
    time (the original ran with torch's default two threads on the two cores). The second is the
    fair one on a machine that other jobs share, where wall time mostly measures the others.
    """
    head = ("| job | size | threads | precision | grad ckpt | batch | s/step (wall) | CPU s/step "
            "| samples/s (wall) | peak RSS GiB | speed-up (wall) | speed-up (CPU s) | memory vs original |")
    lines = [head, "|" + "---|" * 13]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['job']} | {r['size']} | {r['threads']} | {r['precision']} | "
                         f"{r['grad_checkpointing']} | {r['batch']} | error: {r['error']} | | | | | | |")
            continue
        ref = REFERENCE.get((r["job"], r["batch"])) if r["size"] == "m3ae-base" else None
        wall = f"{ref[0] / r['sec_per_step']:.2f}x" if ref else "-"
        cpu = f"{2 * ref[0] / r['cpu_sec_per_step']:.2f}x" if ref else "-"
        mem = f"{r['peak_rss_gib'] / ref[1]:.2f}x" if ref else "-"
        lines.append(f"| {r['job']} | {r['size']} | {r['threads'] or 'default'} | {r['precision']} | "
                     f"{'on' if r['grad_checkpointing'] else 'off'} | {r['batch']} | {r['sec_per_step']:.2f} | "
                     f"{r['cpu_sec_per_step']:.2f} | {r['samples_per_s']:.3f} | {r['peak_rss_gib']:.2f} | "
                     f"{wall} | {cpu} | {mem} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Runs the grid of configurations and prints a Markdown table (and JSON lines with --json)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    from m3ae.experiments.bench_core import JOBS

    p.add_argument("--sizes", nargs="+", default=["m3ae-tiny"])
    p.add_argument("--jobs", nargs="+", default=["pretrain", "vqa", "infer"], choices=list(JOBS))
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"],
                   choices=["auto", "fp32", "bf16", "fp16", "int8"], help="int8: inference only")
    p.add_argument("--batch-pretrain", type=int, default=4)
    p.add_argument("--batch-vqa", type=int, default=4)
    p.add_argument("--batch-infer", type=int, default=1)
    p.add_argument("--steps", type=int, default=3, help="timed steps after the warm-up (median reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    p.add_argument("--memory", choices=["normal", "low"], default="normal", help="training jobs: train.memory")
    p.add_argument("--compile", action="store_true", help="torch.compile the blocks")
    p.add_argument("--grad-checkpointing", choices=["off", "on", "both"], default="off")
    p.add_argument("--device", default="auto", help="auto (cuda when present), cpu or cuda")
    p.add_argument("--threads", type=int, default=0,
                   help="torch intra-op threads (0 = torch's default); 1 avoids OpenMP spin-waiting on a busy machine")
    p.add_argument("--json", action="store_true", help="also print one JSON line per configuration")
    args = p.parse_args(argv)
    import torch

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    batches = {"pretrain": args.batch_pretrain, "vqa": args.batch_vqa, "infer": args.batch_infer}
    ckpt = {"off": [False], "on": [True], "both": [False, True]}[args.grad_checkpointing]
    rows = []
    for size in args.sizes:
        for job in args.jobs:
            for precision in args.precisions:
                if precision == "int8" and job != "infer":
                    continue  # int8 has no training path
                for gc in ckpt if job != "infer" else [False]:
                    spec = {"job": job, "size": size, "precision": precision, "batch": batches[job],
                            "steps": args.steps, "warmup": args.warmup, "device": device,
                            "grad_checkpointing": gc, "threads": args.threads, "compile": args.compile,
                            "memory": args.memory if job != "infer" else "normal"}
                    if size == "m3ae-tiny":  # the paper's 384 px would not be a seconds-long run
                        spec.update(image_size=32, text_len=16)
                    rows.append(run_one(spec))
                    if args.json:
                        print(json.dumps(rows[-1]), flush=True)
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
