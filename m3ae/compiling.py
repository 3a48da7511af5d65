"""`torch.compile` for M3AE (``train.compile: true``, ``m3ae bench --compile``).

What is compiled: each transformer block of the vision tower, the text tower, the co-attention
fusion and the MIM decoder, one by one, in place (`nn.Module.compile`). Why blocks, not the whole
model:

- identical blocks share one compiled graph (their parameters are graph inputs), so compile time
  grows with the number of *kinds* of block, not with depth;
- the code between blocks (masking with its argsort, the per-pass backward of pre-training,
  activation checkpointing) stays eager, so none of it has to be traceable and checkpointing
  still wraps whole blocks;
- `nn.Module.compile` keeps parameter names unchanged (no ``_orig_mod.`` prefix), so
  checkpoints and `save_pretrained` folders are the same as without compile.

The first steps are slow (inductor generates and compiles C++ kernels with the system's C
compiler); steady-state steps are what benchmarks should time (`m3ae bench --warmup`).
"""
from __future__ import annotations

from collections.abc import Iterator

from torch import nn

from m3ae.errors import M3AEError

BACKENDS = ("inductor", "aot_eager", "eager")
"""inductor: generated kernels (the fast one); aot_eager / eager: tracing only, for tests."""


def compiled_blocks(model: nn.Module) -> Iterator[nn.Module]:
    """The transformer blocks of an `M3AE` that `compile_model` compiles."""
    yield from getattr(model.vision_encoder, "blocks", ())
    encoder = getattr(model.text_encoder, "encoder", None)  # Hugging Face RoBERTa/BERT
    yield from getattr(encoder, "layer", ())
    yield from model.fusion.text_layers
    yield from model.fusion.image_layers
    if "mim" in model.heads:
        yield from getattr(model.heads["mim"], "blocks", ())


def compile_model(model: nn.Module, backend: str = "inductor") -> nn.Module:
    """Compile the blocks of ``model`` in place with ``torch.compile``; returns the same model.

    Compilation itself happens lazily, on each block's first call.

    Raises:
        M3AEError: this torch has no ``torch.compile`` (torch < 2.2), or an unknown backend.
    """
    import torch

    if backend not in BACKENDS:
        raise M3AEError(f"compile backend must be one of {BACKENDS} (got {backend!r})")
    if not hasattr(torch, "compile") or not hasattr(nn.Module, "compile"):
        raise M3AEError(f"torch {torch.__version__} has no torch.compile / nn.Module.compile (needs "
                        "torch >= 2.2); set train.compile false")
    if backend == "inductor":
        check_cpp_compiler()
    # masked and full passes, text and image streams give blocks several token counts: mark them
    # dynamic after the first recompile instead of hitting the recompile limit
    for block in compiled_blocks(model):
        block.compile(backend=backend, dynamic=None)
    return model


def check_cpp_compiler() -> None:
    """Inductor's CPU backend writes C++ and compiles it: fail now, clearly, when no compiler exists
    (compilation is lazy, so the error would otherwise come from deep inside the first step)."""
    import shutil

    try:
        from torch._inductor import config as inductor_config

        configured = inductor_config.cpp.cxx
    except Exception:  # noqa: BLE001 - a private module: any failure means "use the defaults"
        configured = (None,)
    names = [c for c in (configured if isinstance(configured, (tuple, list)) else (configured,)) if c]
    names += ["g++", "c++", "clang++"]
    if not any(shutil.which(name) for name in names):
        raise M3AEError("torch.compile (inductor) needs a C++ compiler (g++ or clang++) on PATH; install "
                        "one, or set train.compile false / drop --compile to run eagerly")


def explain_compile_error(err: BaseException) -> M3AEError:
    """A one-line, actionable error for a failed compilation (no C compiler, unsupported op, ...)."""
    first = " ".join(str(err).split())[:300]
    return M3AEError(f"torch.compile failed ({type(err).__name__}: {first}); inductor needs a C++ "
                     "compiler (gcc or clang) on PATH. Set train.compile false (or drop --compile) to "
                     "run eagerly")
