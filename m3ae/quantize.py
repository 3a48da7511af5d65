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

import warnings

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


def prepare_for_inference(model: nn.Module, precision: str, device: str | torch.device) -> tuple[nn.Module, Precision]:
    """Resolve an inference precision and apply it to the model.

    ``int8`` quantises the model (`quantize_int8`) and runs it without autocast; any other
    precision leaves the model as it is and is what autocast should run.

    Returns:
        (the model, the resolved precision). Autocast takes ``"fp32"`` when it is int8.

    Raises:
        M3AEError: int8 on a non-CPU device.
    """
    resolved = resolve_inference_precision(precision, device)
    if resolved.name == "int8":
        model = quantize_int8(model.to("cpu"))
    return model, resolved


def autocast_name(precision: Precision | str) -> str:
    """The autocast precision of a resolved inference precision: int8 runs its kernels in fp32."""
    name = precision.name if isinstance(precision, Precision) else precision
    return "fp32" if name == "int8" else name
