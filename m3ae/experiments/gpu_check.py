"""`m3ae gpu-check`'s machinery: each check (parity CPU/CUDA, base-size steps with MFU, latency, a
torchrun NCCL run) in its own process under one time budget, and the JSON + Markdown reports. The
command's help (`m3ae.cli.gpu_check`) describes the checks."""
from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from m3ae.errors import M3AEError

CHECKS = ("parity", "pretrain", "vqa", "latency", "ddp")
# Usual seconds of each check on an H100 (process start and imports included): a check is
# skipped when the time already spent plus this would overrun the budget.
EXPECTED_S = {"parity": 60, "pretrain": 120, "vqa": 120, "latency": 90, "ddp": 90}
DEFAULT_BUDGET_MIN = 9.0
BASE_BATCH = 32  # a GPU-sized batch: the paper's 4 leaves an H100 mostly idle
# Largest allowed relative difference CPU vs CUDA, ||cpu - cuda|| / ||cpu|| per loss and per
# gradient tensor (`relative_diffs`). fp32 differs by summation order only; bf16
# keeps 8 bits of mantissa, and its rounding differs between the two devices' kernels.
PARITY_TOLERANCE = {"fp32": 1e-3, "bf16": 1e-1}

# Dense peak TFLOP/s (no sparsity) from the vendors' data sheets, by a piece of the name that
# `torch.cuda.get_device_name` gives. The first match wins, so the PCIe and NVL variants come
# before the plain name (the SXM part). fp32 is the CUDA-core rate: torch does not use TF32 for
# float32 matmuls by default.
PEAK_TFLOPS: tuple[tuple[str, float, float], ...] = (
    # (name contains, bf16, fp32)
    ("H100 PCIe", 756.0, 51.0),
    ("H100 NVL", 835.0, 60.0),
    ("H100", 989.0, 67.0),
    ("H200", 989.0, 67.0),
    ("A100", 312.0, 19.5),
)


@dataclass
class CheckResult:
    """What one check found (one record of gpu_check.json)."""

    name: str
    ok: bool | None
    """True passed, False failed, None skipped (``error`` says why)."""
    seconds: float = 0.0
    numbers: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


class CheckFailed(M3AEError):
    """A check that measured its numbers and found them wrong: they are kept in the record."""

    def __init__(self, message: str, numbers: dict[str, Any]) -> None:
        super().__init__(message)
        self.numbers = numbers


# ------------------------------------------------------------------------------ arithmetic
def peak_tflops(device_name: str, precision: str) -> float | None:
    """The device's dense peak TFLOP/s at ``precision`` (bf16 or fp32); None for a device not in
    `PEAK_TFLOPS` (then no MFU is reported rather than a made-up one)."""
    for part, bf16, fp32 in PEAK_TFLOPS:
        if part in device_name:
            return {"bf16": bf16, "fp32": fp32}.get(precision)
    return None


def mfu(flop_per_step: float, sec_per_step: float, peak: float | None) -> float | None:
    """Model FLOPs utilisation: achieved FLOP/s over the peak (a fraction, 0..1); None without a peak."""
    if peak is None or sec_per_step <= 0:
        return None
    return flop_per_step / sec_per_step / (peak * 1e12)


def budget_skip(name: str, elapsed_s: float, budget_s: float) -> str | None:
    """Why ``name`` must be skipped (its usual duration would overrun the budget), or None."""
    need = EXPECTED_S[name]
    if elapsed_s + need <= budget_s:
        return None
    return (f"skipped: would exceed the {budget_s / 60:g}-minute budget ({elapsed_s:.0f} s spent, "
            f"{budget_s - elapsed_s:.0f} s left, the check usually takes {need} s)")


def no_cuda_message(torch_version: str, available: bool) -> str:
    """The one line printed (and recorded) when there is nothing to check."""
    return f"no CUDA device: nothing to check (torch {torch_version}, cuda available {available})"


# ------------------------------------------------------------------------------ parity
PARITY_SHAPES = {"batch": 2, "image_size": 32, "text_len": 8}


def parity_step(model, batch: dict, job: str, precision: str, device) -> tuple[dict[str, float], dict]:
    """The losses and gradients of one training step (forward and backward, no update) of ``job``
    on ``device``: the task's own `forward_backward`, under the loop's autocast.

    Returns:
        (name -> loss, parameter name -> gradient as float32 on the CPU)
    """
    from m3ae.hardware import autocast_context, to_device
    from m3ae.tasks import make_task

    model.zero_grad(set_to_none=True)
    with autocast_context(precision, device):
        losses = make_task(job).forward_backward(model, to_device(batch, device), lambda loss: loss)
    grads = {n: p.grad.detach().float().cpu() for n, p in model.named_parameters() if p.grad is not None}
    return {k: float(v.float()) for k, v in losses.items()}, grads


def relative_diffs(ref: dict, other: dict) -> dict[str, float]:
    """Per key, ||ref - other|| / ||ref|| (the absolute difference when ``ref`` is all zeros).

    Norms rather than the largest element: a gradient tensor with a few near-zero entries would
    otherwise read as far off while the tensor as a whole agrees.

    Raises:
        M3AEError: the two sides do not have the same keys (a gradient missing on one device).
    """
    import torch

    if ref.keys() != other.keys():
        raise M3AEError(f"the two devices disagree on which tensors exist: {sorted(ref.keys() ^ other.keys())[:5]}")
    out = {}
    for k, a in ref.items():
        a, b = torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(other[k], dtype=torch.float32)
        scale = float(a.norm())
        out[k] = float((a - b).norm()) / (scale if scale > 0 else 1.0)
    return out


@contextlib.contextmanager
def full_fp32():
    """cuDNN convolutions (the patch embedding) in full fp32 for the parity check: torch lets them
    use TF32 (10-bit mantissa) by default, which alone is ~1e-3 off the CPU. Float32 matmuls are
    full fp32 by default already."""
    import torch

    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):  # torch >= 2.9: the new API, which
        old = conv.fp32_precision  # refuses to be mixed with the legacy flag below
        conv.fp32_precision = "ieee"
        try:
            yield
        finally:
            conv.fp32_precision = old
        return
    old = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = old


def parity_diff(job: str, precision: str, device_a: str = "cpu", device_b: str = "cuda",
                perturb: str | None = None) -> dict[str, Any]:
    """One training step of m3ae-tiny on ``device_a`` and on ``device_b`` from the same weights and
    batch; the largest relative difference of the losses and of the gradients.

    The models run in eval mode: dropout draws its masks from each device's own generator, so
    with it on the two sides would differ by design. ``perturb`` names a parameter to shift by
    0.1 on side b only (the test that the comparison catches a real difference).
    """
    import copy

    import torch

    from m3ae.experiments.bench import BenchSpec, bench_model, synthetic_batch
    from m3ae.experiments.bench_core import NUM_ANSWERS

    spec = BenchSpec(job=job, size="m3ae-tiny", **PARITY_SHAPES)
    model_a, batch_size, _, text_len = bench_model(spec, "cpu")
    model_b = copy.deepcopy(model_a)
    if perturb is not None:
        with torch.no_grad():
            dict(model_b.named_parameters())[perturb].add_(0.1)
    batch = synthetic_batch(job, model_a.config, batch_size, text_len, NUM_ANSWERS, "cpu")
    sides = []
    with full_fp32():
        for model, device in ((model_a, device_a), (model_b, device_b)):
            device = torch.device(device)
            sides.append(parity_step(model.to(device).eval(), batch, job, precision, device))
    (loss_a, grad_a), (loss_b, grad_b) = sides
    loss_d, grad_d = relative_diffs(loss_a, loss_b), relative_diffs(grad_a, grad_b)
    worst = max(grad_d, key=grad_d.get)
    return {"loss": loss_a["loss"], "loss_rel_diff": max(loss_d.values()),
            "grad_rel_diff": grad_d[worst], "worst_grad": worst, "grads": len(grad_d)}


def check_parity_numbers(diff: dict[str, Any], precision: str) -> None:
    """Raises `M3AEError` when a difference of `parity_diff` is above the precision's tolerance."""
    tol = PARITY_TOLERANCE[precision]
    if not diff["loss_rel_diff"] <= tol or not diff["grad_rel_diff"] <= tol:  # `not <=` catches NaN
        raise M3AEError(f"{precision}: loss differs by {diff['loss_rel_diff']:.3g}, gradient "
                        f"{diff['worst_grad']} by {diff['grad_rel_diff']:.3g} (relative; tolerance {tol:g})")


def check_parity() -> dict[str, Any]:
    """CPU vs CUDA for both jobs and both precisions; every pair is measured before any fails."""
    numbers, failures = {}, []
    for job in ("pretrain", "vqa"):
        for precision in ("fp32", "bf16"):
            diff = parity_diff(job, precision)
            numbers[f"{job}_{precision}_loss_rel_diff"] = diff["loss_rel_diff"]
            numbers[f"{job}_{precision}_grad_rel_diff"] = diff["grad_rel_diff"]
            try:
                check_parity_numbers(diff, precision)
            except M3AEError as err:
                failures.append(f"{job} {err}")
    if failures:
        raise CheckFailed("; ".join(failures), numbers)
    return numbers


# ------------------------------------------------------------------------------ base-size steps
def device_name() -> str:
    """The CUDA device's name ("NVIDIA H100 80GB HBM3"), or "cpu"."""
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


def check_training(job: str, batch: int = BASE_BATCH) -> dict[str, Any]:
    """One m3ae-base training step of ``job`` at the device's precision (``auto``: bf16 where the GPU
    has it, fp16 otherwise; the record says which), timed by `m3ae bench` (its own process, paper
    image size and text length), with its model FLOPs (``--flops``) and the MFU."""
    from m3ae.experiments.bench import BenchSpec, run_job

    r = run_job(BenchSpec(job=job, size="m3ae-base", batch=batch, steps=5, warmup=2, precision="auto",
                          device="cuda", flops=True))
    peak = peak_tflops(device_name(), r["precision"])
    return {"batch": r["batch"], "image_size": r["image_size"], "precision": r["precision"],
            "sec_per_step": r["sec_per_step"], "samples_per_s": r["samples_per_s"],
            "gflop_per_step": r["gflop_per_step"], "achieved_tflops": r["achieved_gflops"] / 1e3,
            "peak_tflops": peak, "mfu": mfu(r["gflop_per_step"] * 1e9, r["sec_per_step"], peak),
            "peak_gpu_gib": r["peak_cuda_gib"]}


def check_latency() -> dict[str, Any]:
    """VQA inference of one question with m3ae-base, in fp32 and at the device's half precision
    (``auto``: bf16 where the GPU has it, else fp16), median of 20 after 5 warm-up; keyed by the
    precision that ran."""
    from m3ae.experiments.bench import BenchSpec, run_job

    numbers = {}
    for precision in ("fp32", "auto"):
        r = run_job(BenchSpec(job="infer", size="m3ae-base", steps=20, warmup=5, precision=precision,
                              device="cuda"))
        numbers[f"{r['precision']}_ms"] = r["sec_per_step"] * 1e3
        numbers[f"{r['precision']}_peak_gpu_gib"] = r["peak_cuda_gib"]
    return numbers


# ------------------------------------------------------------------------------ DDP smoke run
DDP_STEPS = 3


def check_ddp(timeout_s: float) -> dict[str, Any]:
    """`torchrun --nproc_per_node 1` running `ddp_worker` with NCCL; its JSON line is the result."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
           "-m", "m3ae.experiments.gpu_check", "--ddp-worker"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    if proc.returncode != 0:
        from m3ae.experiments.bench import child_failure

        raise M3AEError(f"torchrun failed: {child_failure(proc)}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def ddp_worker(backend: str = "nccl", device: str = "cuda") -> dict[str, Any]:
    """One rank of the smoke run (under torchrun): join the process group, train m3ae-tiny for
    `DDP_STEPS` steps through the training loop's `train_step`, then run the collectives the
    loop uses (all-reduce of a gradient bucket, broadcast, gathering of objects).

    `m3ae.distributed.init_distributed` joins a group only for two ranks or more (one rank has
    nobody to talk to), so this joins it itself: with one GPU that is the only way to make NCCL
    run. The loop's own averaging stays a no-op at world size 1; the explicit collectives stand
    in for it.
    """
    import torch
    import torch.distributed as dist

    from m3ae import distributed as D
    from m3ae.experiments.bench import BenchSpec, bench_model, synthetic_batch
    from m3ae.experiments.bench_core import NUM_ANSWERS
    from m3ae.tasks import make_task
    from m3ae.train.config import OptimArgs
    from m3ae.train.loop import train_step
    from m3ae.train.optim import build_optimizer

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "cuda":
        torch.cuda.set_device(local_rank)
    dev = torch.device(device, local_rank) if device == "cuda" else torch.device(device)
    dist.init_process_group(backend=backend)
    try:
        spec = BenchSpec(job="vqa", size="m3ae-tiny", **PARITY_SHAPES)
        model, batch_size, _, text_len = bench_model(spec, dev)
        D.broadcast_parameters(model)
        batch = synthetic_batch("vqa", model.config, batch_size, text_len, NUM_ANSWERS, dev)
        opt = build_optimizer(model, OptimArgs(lr=1e-3, warmup_steps=0, warmup_ratio=None))
        losses = [train_step(make_task("vqa"), model.train(), opt, [batch], step=i, seed=0, precision="auto",
                             device=dev, scaler=None, clip_grad_norm=1.0)["loss"] for i in range(DDP_STEPS)]
        world = dist.get_world_size()
        grads = torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None])
        summed = grads.clone()
        dist.all_reduce(summed, op=dist.ReduceOp.SUM)  # the bucket all-reduce of average_gradients
        token = torch.tensor([float(dist.get_rank())], device=dev)
        dist.broadcast(token, src=0)
        gathered = [None] * world
        dist.all_gather_object(gathered, {"rank": dist.get_rank()})
        if not all(math.isfinite(v) for v in losses):
            raise M3AEError(f"non-finite training loss under torchrun: {losses}")
        if not torch.allclose(summed, grads * world):
            raise M3AEError("NCCL all-reduce of the gradients did not return their sum over ranks")
        return {"backend": dist.get_backend(), "world_size": world, "steps": DDP_STEPS, "losses": losses,
                "allreduce_numel": grads.numel(), "gathered_ranks": [g["rank"] for g in gathered]}
    finally:
        dist.destroy_process_group()


# ------------------------------------------------------------------------------ running checks
def _run_child_check(name: str, timeout_s: float) -> dict[str, Any]:
    """The body of check ``name`` (in the child process); its numbers."""
    from m3ae.experiments.bench_core import JOBS

    if name == "parity":
        return check_parity()
    if name in JOBS:  # a check named after a bench job times that job
        return check_training(name)
    if name == "latency":
        return check_latency()
    if name == "ddp":
        return check_ddp(timeout_s)
    raise M3AEError(f"unknown check {name!r}; choose from {CHECKS}")


def run_check(name: str, timeout_s: float) -> CheckResult:
    """Run check ``name`` in a fresh process (its own CUDA context and peak memory), stopped
    with everything it started after ``timeout_s``."""
    cmd = [sys.executable, "-m", "m3ae.experiments.gpu_check", "--child", name, str(timeout_s)]
    t0 = time.perf_counter()
    # a session of its own, so that a timeout also ends the processes the check started
    # (`m3ae bench` children, torchrun and its rank)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return CheckResult(name, False, time.perf_counter() - t0,
                           error=f"stopped at the budget after {timeout_s:.0f} s")
    seconds = time.perf_counter() - t0
    lines = out.strip().splitlines()
    try:
        record = json.loads(lines[-1]) if lines else {}
    except json.JSONDecodeError:
        record = {}
    if proc.returncode == 0 and "numbers" in record:
        return CheckResult(name, True, seconds, record["numbers"])
    from m3ae.experiments.bench import child_failure

    error = record.get("error") or child_failure(subprocess.CompletedProcess(cmd, proc.returncode, out, err))
    return CheckResult(name, False, seconds, record.get("numbers", {}), error)


def run_checks(names: list[str], budget_s: float, runner: Callable[[str, float], CheckResult] = run_check,
               clock: Callable[[], float] = time.monotonic) -> list[CheckResult]:
    """Each check in turn, whatever the earlier ones gave; skipped when it would overrun the budget."""
    start, results = clock(), []
    for name in names:
        elapsed = clock() - start
        reason = budget_skip(name, elapsed, budget_s)
        if reason:
            results.append(CheckResult(name, None, 0.0, error=reason))
        else:
            results.append(runner(name, budget_s - elapsed))
        print(result_line(results[-1]), flush=True)
    return results


def result_line(r: CheckResult) -> str:
    """One line per check for the console."""
    state = {True: "ok", False: "FAILED", None: "skipped"}[r.ok]
    text = f"{r.name}: {state} ({r.seconds:.1f} s)"
    return text + (f": {r.error}" if r.error else "")


# ------------------------------------------------------------------------------ reports
def environment() -> dict[str, Any]:
    """What the numbers were measured on (the report's header)."""
    import torch

    return {"device": device_name(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return str(value)


def markdown_report(results: list[CheckResult], env: dict[str, Any]) -> str:
    """The results as a Markdown table, with the device, torch and CUDA versions above it."""
    lines = [f"GPU check on {env['device']} (torch {env['torch']}, CUDA {env['cuda']}, {env['date']})", "",
             "| check | result | seconds | numbers | error |", "|---|---|---:|---|---|"]
    for r in results:
        state = {True: "ok", False: "**failed**", None: "skipped"}[r.ok]
        numbers = ", ".join(f"{k} {_fmt(v)}" for k, v in r.numbers.items())
        error = (r.error or "").replace("|", "\\|")
        lines.append(f"| {r.name} | {state} | {r.seconds:.1f} | {numbers} | {error} |")
    return "\n".join(lines) + "\n"


def write_reports(results: list[CheckResult], out_dir: str | Path, env: dict[str, Any]) -> tuple[Path, Path]:
    """gpu_check.json (environment + one record per check) and gpu_check.md in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / "gpu_check.json", out / "gpu_check.md"
    json_path.write_text(json.dumps({**env, "checks": [asdict(r) for r in results]}, indent=2) + "\n")
    md_path.write_text(markdown_report(results, env))
    return json_path, md_path


def default_out() -> str:
    """$OUT (the folder a GPU machine sends back) when set, else runs/gpu_check."""
    return os.environ.get("OUT") or "runs/gpu_check"


def run_gpu_check(only: list[str] | None = None, budget_minutes: float = DEFAULT_BUDGET_MIN, out: str | None = None) -> int:
    """What `m3ae gpu-check` runs: exit 0 when every check that ran passed (or there is no
    CUDA device), 1 when one failed."""
    import torch

    if budget_minutes <= 0:
        raise M3AEError(f"--budget-minutes must be positive (got {budget_minutes:g})")
    out, env = out or default_out(), environment()
    if not torch.cuda.is_available():
        message = no_cuda_message(torch.__version__, False)
        print(message, flush=True)
        write_reports([CheckResult("cuda", None, 0.0, error=message)], out, env)
        return 0
    print(f"GPU check on {env['device']}, budget {budget_minutes:g} min, results in {out}", flush=True)
    results = run_checks(list(only or CHECKS), budget_minutes * 60)
    json_path, md_path = write_reports(results, out, env)
    print(f"wrote {json_path} and {md_path}", flush=True)
    return 1 if any(r.ok is False for r in results) else 0


def _child(name: str, timeout_s: float) -> int:
    """``python -m m3ae.experiments.gpu_check --child NAME TIMEOUT``: run one check here and print its record
    (numbers, or error and the numbers measured before it) as one JSON line."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # random weights only: nothing may be downloaded
    try:
        record = {"numbers": _run_child_check(name, timeout_s)}
    except CheckFailed as err:
        record = {"error": str(err), "numbers": err.numbers}
    except Exception as err:  # noqa: BLE001 - an OOM or a CUDA error deep inside torch: one line
        record = {"error": f"{type(err).__name__}: {' '.join(str(err).split())[:400]}"}
    print(json.dumps(record), flush=True)
    return 0 if "error" not in record else 1


def main(argv: list[str] | None = None) -> int:
    """``python -m m3ae.experiments.gpu_check --child NAME TIMEOUT`` or ``--ddp-worker``: the child
    processes of `m3ae gpu-check` (the command itself: `m3ae gpu-check`, scripts/gpu_check.sh)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) == 3 and argv[0] == "--child":
        return _child(argv[1], float(argv[2]))
    if argv == ["--ddp-worker"]:
        print(json.dumps(ddp_worker()), flush=True)
        return 0
    print("usage: python -m m3ae.experiments.gpu_check --child NAME TIMEOUT | --ddp-worker "
          "(to run the checks: m3ae gpu-check --help)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
