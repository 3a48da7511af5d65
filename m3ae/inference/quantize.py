"""Int8 inference: dynamic quantisation of the Linear layers (`--precision int8`).

Dynamic quantisation stores each Linear weight as int8 (one scale per output channel) and
quantises the activations on the fly, per batch, so no calibration data is needed. Most of M3AE's
inference work is Linear layers of the ViT blocks and the co-attention layers, which then run on
int8 kernels (FBGEMM/oneDNN, VNNI where the CPU has it).

What stays fp32, and why:

- **The text tower and its projection.** A pretrained BERT-family text encoder has a few outlier
  hidden channels (in the demo's MiniLM the largest input channel of a layer's FFN reaches 15x the
  median channel, against under 2x in the ViT). One activation scale per tensor then spends most
  of the int8 range on those channels, and answers change: quantising the text tower alone kept
  the fp32 answer on 91.6% of VQA-RAD test questions, everything else together on 99.6%
  (`benchmarks/int8_accuracy.py --sensitivity`). At 32 tokens the text tower is a small share of
  the work next to the ViT's 577 tokens, so keeping it fp32 costs little time.
- The patch embedding (a convolution), LayerNorms, attention itself and the task heads: the heads
  are tiny, and keeping them fp32 keeps the answer scores closest to the fp32 model.

CPU only: torch has no CUDA kernels for dynamically quantised Linear layers. A quantised model
is for inference: it has no gradients and cannot be saved with `save_pretrained`.
"""
from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from m3ae.hardware import Precision, resolve_inference_precision

QUANTIZED_PARTS = ("vision_encoder", "vision_proj", "fusion", "poolers")
"""Top-level modules of `M3AE` whose Linear layers become int8; the text tower, its projection and
the heads stay fp32 (see the module docstring)."""
ALL_LINEAR_PARTS = ("vision_encoder", "text_encoder", "vision_proj", "text_proj", "fusion", "poolers")
"""Every part with Linear layers except the heads (what `benchmarks/int8_accuracy.py --sensitivity` tries)."""


def quantize_int8(model: nn.Module, parts: tuple[str, ...] = QUANTIZED_PARTS) -> nn.Module:
    """Replace the Linear layers of ``parts`` by dynamically quantised int8 ones, in place.

    In place so that the fp32 copy of a base model (1.3 GB) is not held twice at peak.

    Args:
        model: an `M3AE` (or any module with the named children) on the CPU, in eval mode.
        parts: names of the submodules to quantise, top-level (``"fusion"``) or dotted
            (``"fusion.image_layers.5"``); missing ones are skipped.

    Returns:
        The same model object, quantised, in eval mode.
    """
    if any(p.device.type != "cpu" for p in model.parameters()):
        raise ValueError("quantize_int8 needs a model on the CPU (dynamic int8 kernels are CPU-only)")
    from torch.ao.nn.quantized.dynamic import Linear as DynamicInt8Linear
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    # qconfig by module name: only these subtrees are quantised. Per-channel weight scales keep
    # the error of layers whose output channels have very different ranges small.
    spec = {name: per_channel_dynamic_qconfig for name in parts if _has_submodule(model, name)}
    model.eval()
    with warnings.catch_warnings():
        # torch >= 2.10 marks torch.ao.quantization as deprecated (its successor, torchao, is
        # another package); the eager dynamic path still works and is what we need here.
        warnings.filterwarnings("ignore", message=".*torch.ao.quantization.*deprecated.*")
        warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*deprecated.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module="torch.ao")
        # the mapping limits the swap to Linear layers (the subtrees also hold Embeddings, which
        # dynamic quantisation does not cover)
        quantize_dynamic(model, qconfig_spec=spec, dtype=torch.qint8, inplace=True,
                         mapping={nn.Linear: DynamicInt8Linear})
    return model


def _has_submodule(model: nn.Module, name: str) -> bool:
    try:
        model.get_submodule(name)
    except AttributeError:
        return False
    return True


def weight_dtype(precision: Precision | str) -> torch.dtype | None:
    """The dtype inference keeps the weights in at a resolved precision (None: as stored, fp32).

    bf16/fp16 inference holds the weights in that dtype instead of autocasting fp32 weights:
    autocast keeps the fp32 weights *and* adds low-precision copies, so it used more memory than
    fp32 (1.37x the original's at base size); bf16 weights halve it (the matrices are bf16, norms and
    small tables stay fp32: `m3ae.models.io.to_inference_dtype`). Autocast stays on around the forward
    pass: it casts each op's inputs (fp32 pixels, fp32 biases) to the op's dtype.
    """
    name = precision.name if isinstance(precision, Precision) else precision
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(name)


def prepare_for_inference(model: nn.Module, precision: str | Precision,
                          device: str | torch.device) -> tuple[nn.Module, Precision]:
    """Resolve an inference precision and apply it to the model.

    ``int8`` quantises the model (`quantize_int8`) and runs it without autocast; ``bf16``/``fp16``
    cast the weights to that dtype (`weight_dtype`; a no-op for a model loaded in it); fp32 leaves
    the model as it is. Run the model under autocast with `autocast_name` of the result.

    Returns:
        (the model, the resolved precision). Autocast takes ``"fp32"`` when it is int8.

    Raises:
        M3AEError: int8 on a non-CPU device.
    """
    resolved = precision if isinstance(precision, Precision) else resolve_inference_precision(precision, device)
    if resolved.name == "int8":
        model = quantize_int8(model.to("cpu"))
    elif weight_dtype(resolved) is not None:
        from m3ae.models.io import to_inference_dtype

        model = to_inference_dtype(model, weight_dtype(resolved))
    return model, resolved


def load_for_inference(model_dir: str | Path, precision: str, device: str | torch.device,
                       **load_options: Any) -> tuple[nn.Module, Precision]:
    """`M3AE.from_pretrained` at an inference precision, on ``device``, in eval mode.

    bf16/fp16 models are built and read in that dtype (`M3AE.from_pretrained(dtype=...)`), so the
    fp32 weights never sit in memory; int8 is quantised after an fp32 load.
    """
    from m3ae.models import M3AE

    resolved = resolve_inference_precision(precision, device)
    model = M3AE.from_pretrained(model_dir, dtype=weight_dtype(resolved), **load_options)
    model, resolved = prepare_for_inference(model.eval(), resolved, device)
    return model.to(device), resolved


def autocast_name(precision: Precision | str) -> str:
    """The autocast precision of a resolved inference precision: int8 runs its kernels in fp32."""
    name = precision.name if isinstance(precision, Precision) else precision
    return "fp32" if name == "int8" else name


# ------------------------------------------------------------------- precision auto, by measurement
AUTO_AGREEMENT = 99.0
"""``precision auto`` keeps a precision only when it gives the fp32 answer on at least this share
(percent) of the probe questions."""
AUTO_CANDIDATES = ("bf16", "int8")
"""What ``auto`` may pick instead of fp32 on a CPU (bf16 only where the CPU runs it natively)."""
PRECISION_CACHE = "inference_precision"
"""`m3ae.hardware.measured_path` name of the measured choices (~/.cache/m3ae/inference_precision.json)."""
AUTO_TIMED = 3
"""Timed single-question calls per precision (median), after one untimed call."""


def measure_precisions(model: nn.Module, task: Any, probe: dict[str, torch.Tensor],
                       single: dict[str, torch.Tensor]) -> dict[str, dict[str, float]]:
    """Seconds per single-question call and answer agreement with fp32 on ``probe``, per precision.

    ``model`` is the fp32 model on the CPU (left unchanged: each candidate runs on its own copy).
    bf16 is tried only where the CPU has native bf16 (emulated bf16 was 3-5x slower than fp32).
    """
    import copy

    from m3ae.hardware import autocast_context, cpu_bf16
    from m3ae.models.io import to_inference_dtype

    cpu = torch.device("cpu")

    def run(candidate: nn.Module, name: str, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        with torch.no_grad(), autocast_context(autocast_name(name), cpu):
            return task.logits(candidate, batch).float()

    def timed(candidate: nn.Module, name: str) -> float:
        run(candidate, name, single)
        times = []
        for _ in range(AUTO_TIMED):
            start = time.perf_counter()
            run(candidate, name, single)
            times.append(time.perf_counter() - start)
        return sorted(times)[len(times) // 2]

    reference = run(model, "fp32", probe).argmax(-1)
    results = {"fp32": {"seconds": timed(model, "fp32"), "same_answer_pct": 100.0}}
    for name in AUTO_CANDIDATES:
        if name == "bf16" and not cpu_bf16():
            continue
        candidate = copy.deepcopy(model)
        candidate = quantize_int8(candidate) if name == "int8" else to_inference_dtype(candidate, torch.bfloat16)
        same = 100.0 * float((run(candidate, name, probe).argmax(-1) == reference).float().mean())
        results[name] = {"seconds": timed(candidate, name), "same_answer_pct": same}
        del candidate
    return results


def pick_precision(results: dict[str, dict[str, float]]) -> tuple[str, str]:
    """The fastest precision with at least `AUTO_AGREEMENT` percent of fp32's answers, and why."""
    kept = {name: r for name, r in results.items() if r["same_answer_pct"] >= AUTO_AGREEMENT}
    best = min(kept, key=lambda name: kept[name]["seconds"])
    summary = ", ".join(f"{name} {r['seconds'] * 1000:.0f} ms ({r['same_answer_pct']:.0f}% fp32's answers)"
                        for name, r in results.items())
    return best, f"auto: fastest with >= {AUTO_AGREEMENT:g}% of fp32's answers on this machine: {summary}"


def cached_precision(key: str) -> tuple[str, str] | None:
    """A measured choice for ``key`` (machine + model), or None."""
    from m3ae.hardware import read_measured

    entry = read_measured(PRECISION_CACHE).get(key)
    if not isinstance(entry, dict) or entry.get("precision") not in ("fp32", *AUTO_CANDIDATES):
        return None
    return entry["precision"], entry["why"]


def remember_precision(key: str, name: str, why: str, results: dict[str, Any]) -> None:
    """Add a measured choice to the cache (`m3ae.hardware.remember_measured`)."""
    from m3ae.hardware import remember_measured

    remember_measured(PRECISION_CACHE, key, {"precision": name, "why": why, "results": results})
