"""`m3ae bench`'s machinery: time one job (a pre-training step, a VQA step or VQA inference) in a fresh
Python process, with random weights and synthetic batches of the paper's shapes (`bench_core`),
and report seconds per step, CPU seconds, peak RSS, FLOPs and a profile. The command's help
(`m3ae.cli.bench`) lists the options and examples."""
from __future__ import annotations

import gc
import json
import os
import resource
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace

from m3ae.errors import M3AEError
from m3ae.experiments.bench_core import (  # noqa: F401 - profile_markdown is re-exported (`from m3ae.experiments.bench import ...`)
    BOS_ID,
    EOS_ID,
    JOB_TASKS,
    JOBS,
    MASK_TOKEN_ID,
    NUM_ANSWERS,
    PAPER_SHAPES,
    PROFILE_TOP,
    cpu_seconds,
    load_avg,
    profile_markdown,
    profile_steps,
)


@dataclass
class BenchSpec:
    """One benchmark run (what the child process receives as JSON)."""

    job: str = "infer"
    """pretrain, vqa (a fine-tuning step) or infer (VQA logits, no gradients)."""
    size: str = "m3ae-base"
    """Model preset (`m3ae.list_models()`)."""
    batch: int | None = None
    """Samples per step; None = the paper's for the job."""
    steps: int = 3
    """Timed steps (the median is reported)."""
    warmup: int = 1
    """Untimed steps first (allocator, optimizer state; kernel compilation with compile)."""
    precision: str = "auto"
    """auto, fp32, bf16, fp16, or int8 (infer only)."""
    threads: int = 0
    """torch intra-op threads; 0 = torch's default."""
    image_size: int | None = None
    """Input side in pixels; None = the paper's (288 pre-training, 384 VQA)."""
    text_len: int | None = None
    """Tokens per text; None = the paper's (64 pre-training, 32 VQA)."""
    memory: str = "auto"
    """auto, normal, lean or low (training jobs; ``train.memory``, see m3ae.train.memory); auto
    measures normal and lean first, as training does (inference ignores it)."""
    compile: bool = False
    """torch.compile the transformer blocks (m3ae.compiling)."""
    grad_checkpointing: bool = False
    """Activation checkpointing alone (what memory low adds first); for benchmarks/bench_train.py."""
    device: str = "cpu"
    """cpu or cuda."""
    flops: bool = False
    """After the timed steps, count the step's model FLOPs (one more step, under torch's
    FlopCounterMode, on a fresh eager model without checkpointing, int8 or compile) and report the
    achieved rate (`model_flops`)."""
    profile: int = 0
    """Extra steps run under torch.profiler after the timed ones (0 = none); the result gets the
    top ops by self CPU time as ``profile_ops`` (`profile_steps`)."""


def check_spec(spec: BenchSpec) -> None:
    """Reject impossible combinations with one line each.

    Raises:
        M3AEError: naming the option.
    """
    from m3ae.hardware import INFERENCE_PRECISIONS
    from m3ae.train.config import MEMORY_MODES

    if spec.job not in JOBS:
        raise M3AEError(f"--job must be one of {JOBS} (got {spec.job!r})")
    if spec.precision not in INFERENCE_PRECISIONS:
        raise M3AEError(f"--precision must be one of {INFERENCE_PRECISIONS} (got {spec.precision!r})")
    if spec.precision == "int8" and spec.job != "infer":
        raise M3AEError(f"--precision int8 is for --job infer only: int8 layers have no gradients to "
                        f"train with (got --job {spec.job})")
    if spec.memory not in MEMORY_MODES:
        raise M3AEError(f"--memory must be one of {MEMORY_MODES} (got {spec.memory!r})")
    if spec.memory not in ("auto", "normal") and spec.job == "infer":
        raise M3AEError(f"--memory {spec.memory} is a training mode (pretrain, vqa); inference keeps no activations")
    for name in ("steps", "batch", "image_size", "text_len"):
        value = getattr(spec, name)
        if value is not None and value < 1:
            raise M3AEError(f"--{name.replace('_', '-')} must be at least 1 (got {value})")
    if spec.warmup < 0 or spec.threads < 0 or spec.profile < 0:
        raise M3AEError("--warmup, --threads and --profile must be >= 0")
    if spec.text_len is not None and spec.text_len < 3:
        raise M3AEError(f"--text-len must be at least 3 (<s>, a token, </s>), got {spec.text_len}")


def resolve_shapes(spec: BenchSpec) -> tuple[int, int, int]:
    """(batch, image size, text length): the spec's, else the paper's for the job (whatever the
    preset: a quick tiny run passes e.g. ``--image-size 32 --text-len 16``)."""
    batch, image, text_len = PAPER_SHAPES[spec.job]
    return spec.batch or batch, spec.image_size or image, spec.text_len or text_len


def job_task(job: str):
    """The task object a job times, from the task registry (`JOB_TASKS`: infer is VQA without training)."""
    from m3ae.tasks import make_task

    return make_task(JOB_TASKS[job])


def synthetic_batch(job: str, config, batch: int, text_len: int, num_answers: int, device, seed: int = 0) -> dict:
    """A batch with the keys and shapes the job's task reads (random values, fixed seed).

    Pre-training masks every 7th token for MLM and pairs half the images with another one for
    ITM; VQA targets are one answer per question.
    """
    import torch

    g = torch.Generator().manual_seed(seed)
    size, n = config.vision.image_size, config.vision.num_patches
    ids = torch.randint(3, min(1000, config.text.vocab_size), (batch, text_len), generator=g)
    ids[:, 0], ids[:, -1] = BOS_ID, EOS_ID
    out = {"pixel_values": torch.randn(batch, 3, size, size, generator=g), "input_ids": ids,
           "attention_mask": torch.ones(batch, text_len, dtype=torch.long)}
    if job_task(job).pretraining:
        labels = torch.full((batch, text_len), -100)
        labels[:, 1:text_len - 1:7] = ids[:, 1:text_len - 1:7]
        out.update(mlm_input_ids=torch.where(labels != -100, MASK_TOKEN_ID % config.text.vocab_size, ids),
                   mlm_labels=labels, image_noise=torch.rand(batch, n, generator=g),
                   itm_labels=torch.tensor([i % 2 for i in range(batch)]),
                   itm_pixel_values=torch.randn(batch, 3, size, size, generator=g))
    else:
        out["vqa_targets"] = torch.nn.functional.one_hot(torch.arange(batch) % num_answers, num_answers).float()
    return {k: v.to(device) for k, v in out.items()}


def bench_model(spec: BenchSpec, device, dtype=None):
    """The model (random weights, heads of the job) and its resolved shapes.

    ``dtype``: build the model at that inference precision (`m3ae.models.io.to_inference_dtype`, as
    `m3ae predict` loads it; the weights never exist in fp32 first).
    """
    import torch

    from m3ae.models import M3AE, ModelConfig
    from m3ae.models.io import default_dtype, to_inference_dtype

    config = ModelConfig.from_name(spec.size)
    batch, image, text_len = resolve_shapes(spec)
    heads = list(job_task(spec.job).heads)
    config = config.with_heads(heads, num_answers=NUM_ANSWERS).with_image_size(image)
    torch.manual_seed(0)
    with default_dtype(dtype):
        model = M3AE(config) if dtype is None else to_inference_dtype(M3AE(config), dtype)
    return model.to(device), batch, image, text_len


def _step_function(spec: BenchSpec, model, batch: dict, precision: str, device):
    """A callable that runs one step of the job (inference, or a full training step)."""
    import torch

    from m3ae.train.loop import autocast_context, train_step

    task = job_task(spec.job)
    if spec.job == "infer":
        model.eval()

        def infer() -> None:
            with torch.no_grad(), autocast_context(precision, device):
                task.logits(model, batch)
        return infer

    from m3ae.train.config import OptimArgs
    from m3ae.train.memory import OptimizerInBackward, autocast_weight_cache
    from m3ae.train.optim import build_optimizer

    model.train()
    opt = build_optimizer(model, OptimArgs(lr=1e-5, warmup_steps=0, warmup_ratio=None))
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
    in_backward = OptimizerInBackward(opt) if spec.memory == "low" and scaler is None else None
    counter = iter(range(1 << 30))

    def train() -> None:
        train_step(task, model, opt, [batch], step=next(counter), seed=0, precision=precision, device=device,
                   scaler=scaler, clip_grad_norm=None, in_backward=in_backward,
                   weight_cache=autocast_weight_cache(spec.memory))
    return train


def run_here(spec: BenchSpec) -> dict:
    """Run ``spec`` in this process and return its measurements (the child side of `run_job`)."""
    import torch

    from m3ae.hardware import cpu_bf16, resolve_inference_precision, usable_cores
    from m3ae.inference.quantize import autocast_name, quantize_int8, weight_dtype
    from m3ae.train.memory import apply_memory_mode

    check_spec(spec)
    load_start = load_avg()
    if spec.threads:
        torch.set_num_threads(spec.threads)
    device = torch.device(spec.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise M3AEError("--device cuda but no CUDA device is available")
    precision = resolve_inference_precision(spec.precision, device)
    dtype = weight_dtype(precision) if spec.job == "infer" else None  # training keeps fp32 master weights
    model, batch_size, image, text_len = bench_model(spec, device, dtype)
    n_params = sum(p.numel() for p in model.parameters())
    if spec.grad_checkpointing:
        model.set_grad_checkpointing(True)
    batch = synthetic_batch(spec.job, model.config, batch_size, text_len, NUM_ANSWERS, device)
    memory, why = ("normal", "") if spec.memory == "auto" and spec.job == "infer" else (spec.memory, "")
    if memory == "auto":  # as a training run resolves it: timed on this batch, cached per machine
        from m3ae.train.memory import choose_memory_mode

        task = job_task(spec.job)
        memory, why = choose_memory_mode(task, model.train(), batch, type(task).__name__,
                                         autocast_name(precision), device)
    memory_notes = ([why] if why else []) + apply_memory_mode(model, memory)
    memory_requested, spec = spec.memory, replace(spec, memory=memory)
    if precision.name == "int8":
        quantize_int8(model)
    if spec.compile:
        from m3ae.compiling import compile_model

        compile_model(model)
    step = _step_function(spec, model, batch, autocast_name(precision), device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    t0 = time.perf_counter()
    for _ in range(spec.warmup):
        step()
    sync()
    warmup_s = time.perf_counter() - t0
    times, cpu_times = [], []
    for _ in range(spec.steps):
        t0, c0 = time.perf_counter(), cpu_seconds()
        step()
        sync()
        times.append(time.perf_counter() - t0)
        cpu_times.append(cpu_seconds() - c0)
    sec = sorted(times)[len(times) // 2]  # median (the upper one for an even count)
    result = {
        **asdict(spec), "memory_requested": memory_requested, "batch": batch_size, "image_size": image, "text_len": text_len,
        "num_answers": None if job_task(spec.job).pretraining else NUM_ANSWERS,
        "precision_requested": spec.precision, "precision": precision.name, "precision_reason": precision.reason,
        "sec_per_step": sec, "cpu_sec_per_step": sorted(cpu_times)[len(cpu_times) // 2],
        "samples_per_s": batch_size / sec, "warmup_s": warmup_s, "step_times": times,
        # Linux reports ru_maxrss in KiB
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "params_m": n_params / 1e6, "threads": torch.get_num_threads(), "usable_cores": usable_cores(),
        "cpu_bf16": bool(cpu_bf16()), "load_avg": load_start, "load_avg_end": load_avg(),
        "torch": torch.__version__, "memory_notes": memory_notes,
    }
    if device.type == "cuda":
        result["peak_cuda_gib"] = torch.cuda.max_memory_allocated() / 2**30
    if spec.profile:  # after the timed steps and the peak RSS: the profiler's own records do not count
        result["profile_ops"] = profile_steps(step, spec.profile, sync)
    if spec.flops:  # after the peaks too: the counting step is a normal-mode one on another model
        del step, model
        gc.collect()  # the low mode's in-backward hooks make reference cycles with the optimizer
        flop = model_flops(spec, precision, device)
        result["gflop_per_step"] = flop / 1e9
        result["achieved_gflops"] = flop / 1e9 / sec
    return result


def model_flops(spec: BenchSpec, precision, device) -> int:
    """Floating-point operations of one step of ``spec`` (matmuls, convolutions, attention; a
    multiply-add counts 2), by torch's FlopCounterMode, on a fresh eager model in memory normal:
    model FLOPs, without the recomputation of checkpointing, and on kernels the counter knows
    (int8 counts as the fp32 maths it stands for; compiled graphs would hide their ops). The
    counted call is a real step: a training step updates the random weights, which is harmless."""
    from torch.utils.flop_counter import FlopCounterMode

    from m3ae.inference.quantize import autocast_name

    model, batch_size, _, text_len = bench_model(spec, device)
    batch = synthetic_batch(spec.job, model.config, batch_size, text_len, NUM_ANSWERS, device)
    step = _step_function(replace(spec, memory="normal"), model, batch, autocast_name(precision), device)
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return int(counter.get_total_flops())


def profile_title(r: dict) -> str:
    """One line naming what a profile measured (job, size, shapes, precision, threads)."""
    return (f"{r['job']} {r['size']}, batch {r['batch']}, {r['image_size']} px, {r['text_len']} tokens, "
            f"{r['precision']}, {r['threads']} thread(s): top {len(r['profile_ops'])} ops by self CPU time, "
            f"{r['profile']} profiled step(s), load avg {r['load_avg']}")


def child_failure(proc: subprocess.CompletedProcess) -> str:
    """Why a benchmark process failed, in one line: the signal that killed it (SIGKILL is nearly
    always the kernel's out-of-memory killer: a base model at a large image size can outgrow the
    machine), else the last line it printed."""
    if proc.returncode < 0:
        name = signal.Signals(-proc.returncode).name if -proc.returncode in signal.valid_signals() else "?"
        hint = " (most likely out of memory: the kernel's OOM killer)" if name == "SIGKILL" else ""
        return f"killed by signal {-proc.returncode} {name}{hint}"
    lines = (proc.stderr or proc.stdout).strip().splitlines()
    return lines[-1] if lines else f"exit code {proc.returncode}"


def run_job(spec: BenchSpec) -> dict:
    """Run ``spec`` in a fresh Python process (its own peak RSS) and return its measurements.

    Raises:
        M3AEError: the child's error, as its last line of output.
    """
    check_spec(spec)
    cmd = [sys.executable, "-m", "m3ae.experiments.bench", "--child", json.dumps(asdict(spec))]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise M3AEError(f"the {spec.job} benchmark failed: {child_failure(proc)}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def format_result(r: dict) -> str:
    """One readable line."""
    extras = [f"memory {r['memory']}" if r["job"] != "infer" else "", "compiled" if r["compile"] else ""]
    extras = ", ".join(e for e in extras if e)
    return (f"{r['job']} {r['size']} batch {r['batch']} ({r['image_size']} px, {r['text_len']} tokens), "
            f"{r['precision']}{', ' + extras if extras else ''}: {r['sec_per_step']:.3f} s/step "
            f"(CPU {r['cpu_sec_per_step']:.2f} s), {r['samples_per_s']:.2f} samples/s, peak RSS "
            f"{r['peak_rss_gib']:.2f} GiB"
            + (f", {r['gflop_per_step']:.4g} GFLOP/step = {r['achieved_gflops']:.4g} GFLOP/s" if "gflop_per_step" in r else "")
            + f" | {r['threads']} thread(s), CPU bf16 {'yes' if r['cpu_bf16'] else 'no'}, "
            f"load avg {r['load_avg']}")


def _child(payload: str) -> int:
    """``python -m m3ae.experiments.bench --child SPEC_JSON``: run here, print the result as one JSON line."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        result = run_here(BenchSpec(**json.loads(payload)))
    except M3AEError as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    except Exception as err:  # noqa: BLE001 - a compile failure deep inside torch, an OOM: one line
        if os.environ.get("M3AE_DEBUG"):
            raise
        text = " ".join(str(err).split())[:400]
        print(f"error: {type(err).__name__}: {text}", file=sys.stderr)
        return 2
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":  # the child process of run_job (the command itself is `m3ae bench`)
    if len(sys.argv) != 3 or sys.argv[1] != "--child":
        sys.exit("usage: python -m m3ae.experiments.bench --child SPEC_JSON (to time a job: m3ae bench --help)")
    sys.exit(_child(sys.argv[2]))
