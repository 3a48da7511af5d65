"""Training-step benchmark: samples/s and peak memory of one pre-training step, one VQA fine-tuning
step and VQA inference, at tiny and base sizes, fp32 and bf16 (CUDA when present).

Each configuration runs in its own subprocess so that its peak RSS (resource.getrusage) is its own.
Weights are random (speed and memory do not depend on them); batches are synthetic with the
paper's shapes (pre-training 288 px / 64 tokens, VQA 384 px / 32 tokens / 498 answers).

Usage:
    python benchmarks/bench_train.py                      # tiny only (seconds)
    python benchmarks/bench_train.py --sizes m3ae-tiny m3ae-base --precisions fp32 bf16
    python benchmarks/bench_train.py --sizes m3ae-base --jobs pretrain --grad-checkpointing both

This is a benchmark, not a test: nothing here asserts a speed.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Original implementation, base size, 2-core CPU machine, fp32 (from the issue): seconds per call
# and peak RSS in GiB. Used only to print the ratios.
REFERENCE = {
    ("pretrain", 4): (20.2, 12.6),
    ("vqa", 4): (15.1, 10.7),
    ("infer", 1): (1.08, 1.7),
}
SHAPES = {  # job -> (image size at base, text length)
    "pretrain": (288, 64),
    "vqa": (384, 32),
    "infer": (384, 32),
}
NUM_ANSWERS = 498  # VQA-RAD


def _batch(job: str, model, batch: int, text_len: int, device):
    import torch

    g = torch.Generator().manual_seed(0)
    size, n = model.config.vision.image_size, model.config.vision.num_patches
    ids = torch.randint(3, 1000, (batch, text_len), generator=g)
    ids[:, 0], ids[:, -1] = 0, 2
    out = {"pixel_values": torch.randn(batch, 3, size, size, generator=g), "input_ids": ids,
           "attention_mask": torch.ones(batch, text_len, dtype=torch.long)}
    if job == "pretrain":
        labels = torch.full((batch, text_len), -100)
        labels[:, 1:text_len:7] = ids[:, 1:text_len:7]
        out.update(mlm_input_ids=torch.where(labels != -100, 50264, ids), mlm_labels=labels,
                   image_noise=torch.rand(batch, n, generator=g),
                   itm_labels=torch.tensor([i % 2 for i in range(batch)]),
                   itm_pixel_values=torch.randn(batch, 3, size, size, generator=g))
    else:
        out["vqa_targets"] = torch.nn.functional.one_hot(torch.arange(batch) % NUM_ANSWERS, NUM_ANSWERS).float()
    return {k: v.to(device) for k, v in out.items()}


def _cpu_seconds() -> float:
    """User + system CPU time of this process (robust to other processes sharing the cores)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def child(spec: dict) -> dict:
    """Runs one configuration in this process and returns its measurements."""
    import torch

    from m3ae.models import M3AE, ModelConfig
    from m3ae.train.config import OptimArgs
    from m3ae.train.loop import autocast_context, train_step
    from m3ae.train.optim import build_optimizer
    from m3ae.train.tasks import PretrainTask, VQATask

    torch.manual_seed(0)
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    job, size = spec["job"], spec["size"]
    cfg = ModelConfig.from_name(size)
    image, text_len = SHAPES[job]
    if size == "m3ae-tiny":
        image, text_len = cfg.vision.image_size, 16
    heads = ["mlm", "mim", "itm"] if job == "pretrain" else ["vqa"]
    cfg = cfg.with_heads(heads, num_answers=NUM_ANSWERS).with_image_size(image)
    # bf16 inference keeps the weights themselves in bf16 (built directly in bf16, so the fp32 copy
    # never exists); training keeps fp32 master weights and autocasts the compute.
    pure_bf16 = job == "infer" and spec["precision"] == "bf16"
    if pure_bf16:
        torch.set_default_dtype(torch.bfloat16)
    model = M3AE(cfg).to(device)
    torch.set_default_dtype(torch.float32)
    if spec["grad_checkpointing"]:
        model.set_grad_checkpointing(True)
    batch = _batch(job, model, spec["batch"], text_len, device)
    if pure_bf16:
        batch["pixel_values"] = batch["pixel_values"].to(torch.bfloat16)
    n_params = sum(p.numel() for p in model.parameters())

    if job == "infer":
        model.eval()
        task = VQATask()

        def step() -> None:
            with torch.no_grad(), autocast_context("fp32" if pure_bf16 else spec["precision"], device):
                task.logits(model, batch)
    else:
        model.train()
        task = PretrainTask() if job == "pretrain" else VQATask()
        opt = build_optimizer(model, OptimArgs(lr=1e-5, warmup_steps=0, warmup_ratio=None))

        def step() -> None:
            train_step(task, model, opt, [batch], step=0, seed=0, precision=spec["precision"], device=device,
                       scaler=None, clip_grad_norm=None)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    step()  # warm-up (allocator, kernels, optimizer state)
    sync()
    times, cpu_times = [], []
    for _ in range(spec["steps"]):
        t0, c0 = time.perf_counter(), _cpu_seconds()
        step()
        sync()
        times.append(time.perf_counter() - t0)
        cpu_times.append(_cpu_seconds() - c0)
    sec = sorted(times)[len(times) // 2]  # median
    cpu_sec = sorted(cpu_times)[len(cpu_times) // 2]
    rss_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB
    result = {**spec, "sec_per_step": sec, "cpu_sec_per_step": cpu_sec, "threads": torch.get_num_threads(), "samples_per_s": spec["batch"] / sec, "peak_rss_gib": rss_gib,
              "params_m": n_params / 1e6, "image_size": image, "text_len": text_len}
    if device.type == "cuda":
        result["peak_cuda_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return result


def run_one(spec: dict) -> dict:
    """Runs ``spec`` in a fresh interpreter (its own peak RSS)."""
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True)
    if proc.returncode != 0:
        return {**spec, "error": (proc.stderr or proc.stdout).strip().splitlines()[-1:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


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
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--sizes", nargs="+", default=["m3ae-tiny"])
    p.add_argument("--jobs", nargs="+", default=["pretrain", "vqa", "infer"], choices=list(SHAPES))
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16", "fp16"])
    p.add_argument("--batch-pretrain", type=int, default=4)
    p.add_argument("--batch-vqa", type=int, default=4)
    p.add_argument("--batch-infer", type=int, default=1)
    p.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step (median reported)")
    p.add_argument("--grad-checkpointing", choices=["off", "on", "both"], default="off")
    p.add_argument("--device", default="auto", help="auto (cuda when present), cpu or cuda")
    p.add_argument("--threads", type=int, default=0,
                   help="torch intra-op threads (0 = torch's default); 1 avoids OpenMP spin-waiting on a busy machine")
    p.add_argument("--json", action="store_true", help="also print one JSON line per configuration")
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0
    import torch

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    batches = {"pretrain": args.batch_pretrain, "vqa": args.batch_vqa, "infer": args.batch_infer}
    ckpt = {"off": [False], "on": [True], "both": [False, True]}[args.grad_checkpointing]
    rows = []
    for size in args.sizes:
        for job in args.jobs:
            for precision in args.precisions:
                for gc in ckpt if job != "infer" else [False]:
                    spec = {"job": job, "size": size, "precision": precision, "batch": batches[job],
                            "steps": args.steps, "device": device, "grad_checkpointing": gc,
                            "threads": args.threads}
                    rows.append(run_one(spec))
                    if args.json:
                        print(json.dumps(rows[-1]), flush=True)
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
