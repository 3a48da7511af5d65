"""What this machine can do: native bf16, the cores this process may use, and the precision to run at.

Machines differ: on a CPU without native bf16 (no AVX512-BF16, no AMX) autocast to bf16 is
emulated and was measured 3-5x *slower* than fp32 (a VQA step 3x, inference 5x), while on one with
AMX it is faster. So precision is chosen from the hardware (`precision: auto`), never assumed.
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from m3ae.errors import M3AEError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
"""Autocast precisions, accepted by every command: auto = bf16 where native, fp16 on CUDA without
bf16, else fp32."""

INFERENCE_PRECISIONS = (*PRECISIONS, "int8")
"""What inference commands (predict, serve, evaluate, bench --job infer) accept: the autocast
precisions plus int8, dynamic int8 quantisation of the Linear layers (`m3ae.inference.quantize`). Training
never takes int8: the quantised layers have no gradients."""

_warned: set[str] = set()


@functools.lru_cache(maxsize=1)
def cpu_bf16() -> bool:
    """True when this CPU runs bf16 matrix work natively (AVX512-BF16 or AMX), by torch's own checks.

    Cached: autocast resolves ``auto`` on every micro-batch, and the CPU does not change.
    """
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(cpu, name)()) for name in checks if hasattr(cpu, name))


@functools.lru_cache(maxsize=1)
def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``; else `platform.processor`), to key measured choices."""
    import platform

    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo", encoding="utf-8", errors="replace"):
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown CPU"


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity), not the machine's count or its load."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def machine_key() -> str:
    """What a measured speed depends on besides the job: the CPU model, the usable cores, torch."""
    return f"{cpu_name()}|cores={usable_cores()}|torch={torch.__version__}"


def measured_path(name: str) -> Path:
    """The file that keeps one kind of measured choice on this machine:
    ``$M3AE_CACHE_DIR/<name>.json`` (default ``~/.cache/m3ae``)."""
    root = os.environ.get("M3AE_CACHE_DIR") or Path.home() / ".cache" / "m3ae"
    return Path(root).expanduser() / f"{name}.json"


def read_measured(name: str) -> dict[str, Any]:
    """The measured choices of `measured_path` (key -> entry), {} when missing or unreadable: a
    cache is never worth an error, the next run only measures again."""
    try:
        data = json.loads(measured_path(name).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def remember_measured(name: str, key: str, entry: dict[str, Any]) -> None:
    """Add one measured choice, atomically (`m3ae.guards.atomic_write_text`); a read-only home is ignored."""
    from m3ae.guards import atomic_write_text

    path = measured_path(name)
    data = read_measured(name)
    data[key] = entry
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True) + "\n")
    except OSError:
        pass


@dataclass(frozen=True)
class Precision:
    """A resolved precision and why it was chosen (written to run logs and model cards)."""

    name: str
    """fp32, bf16 or fp16: what autocast runs."""
    reason: str
    """One sentence: what was asked and what the hardware has."""


def resolve_precision(requested: str, device: str | torch.device = "cpu") -> Precision:
    """``auto`` -> what this device runs fastest without losing accuracy; an explicit choice stays.

    auto: bf16 on CUDA with bf16, fp16 (with loss scaling) on CUDA without it, bf16 on a CPU with
    native bf16, fp32 otherwise. An explicit ``bf16`` on a CPU without native bf16 is kept but warns
    once (it is emulated there and several times slower than fp32).
    """
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {requested!r}")
    kind = torch.device(device).type
    if kind == "cuda":
        has_bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        if requested == "auto":
            return (Precision("bf16", "auto: this CUDA device supports bf16") if has_bf16
                    else Precision("fp16", "auto: this CUDA device lacks bf16, so fp16 with loss scaling"))
        return Precision(requested, f"{requested} as asked")
    native = cpu_bf16()
    if requested == "auto":
        return (Precision("bf16", "auto: this CPU has native bf16 (AVX512-BF16/AMX)") if native
                else Precision("fp32", "auto: this CPU has no native bf16 (no AVX512-BF16/AMX); "
                                       "emulated bf16 is several times slower than fp32"))
    if requested == "bf16" and not native and "bf16-cpu" not in _warned:
        _warned.add("bf16-cpu")
        warnings.warn("precision bf16 on a CPU without native bf16 (no AVX512-BF16/AMX): it is emulated and "
                      "typically 3-5x slower than fp32; use precision auto or fp32", stacklevel=2)
    return Precision(requested, f"{requested} as asked")


def resolve_inference_precision(requested: str, device: str | torch.device = "cpu") -> Precision:
    """`resolve_precision` plus ``int8``, which is CPU-only (torch's dynamic quantised kernels
    are FBGEMM/oneDNN CPU kernels; there is no CUDA implementation).

    Raises:
        ValueError: an unknown precision.
        M3AEError: int8 on a non-CPU device (a user choice the user can change).
    """
    if requested != "int8":
        if requested not in INFERENCE_PRECISIONS:
            raise ValueError(f"precision must be one of {INFERENCE_PRECISIONS}, got {requested!r}")
        return resolve_precision(requested, device)
    kind = torch.device(device).type
    if kind != "cpu":
        from m3ae.errors import M3AEError

        raise M3AEError(f"precision int8 (dynamic quantisation) runs on CPU only, not on {kind}; "
                         "use precision auto, bf16 or fp16 there, or --device cpu")
    return Precision("int8", "int8 as asked: dynamic int8 Linear layers of the vision tower and the "
                             "fusion (weights int8, activations quantised per batch); the text tower "
                             "and everything else fp32")


def describe() -> str:
    """One line for logs and benchmark output: cores, torch threads, CPU bf16 and load average."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{usable_cores()} usable core(s), {torch.get_num_threads()} torch thread(s), "
            f"CPU native bf16: {'yes' if cpu_bf16() else 'no'}, load average {load:.2f}")


def autocast_context(precision: str, device: torch.device, weight_cache: bool = True
                     ) -> contextlib.AbstractContextManager:
    """Autocast for bf16/fp16 (``auto`` resolved for this device); fp16 needs CUDA (and a GradScaler).

    ``weight_cache=False`` casts a weight again at each use instead of keeping its low-precision
    copy for the whole context: the memory modes of training turn it off (see
    `m3ae.train.memory.autocast_weight_cache`).
    """
    precision = resolve_precision(precision, device).name
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "fp16" and device.type != "cuda":
        raise M3AEError("train.precision fp16 needs a CUDA device; use auto on CPU (bf16 where native)")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype, cache_enabled=weight_cache)


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Moves the tensors of a batch to ``device``."""
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
