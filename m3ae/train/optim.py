"""AdamW parameter groups (by rule, or the original's grouping) and the warm-up + linear-decay schedule."""
from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable

import torch
from torch import nn

from m3ae.errors import M3AEError
from m3ae.train.config import OptimArgs

# Module sets that lr multipliers refer to, as prefixes of our parameter names. "fusion" is the
# cross-modal part the original trains at 5x (its "multi_modal_*" modules): the two projections,
# the co-attention layers and the poolers. The modality (type) embedding is not in it: the original's
# name for it lacks "multi_modal", so it trained at the base lr, and we keep that in both groupings.
MODULE_SETS: dict[str, tuple[str, ...]] = {
    "fusion": ("vision_proj.", "text_proj.", "fusion.", "poolers."),
    "heads": ("heads.",),
}


def _module_set(name: str, sets: dict[str, tuple[str, ...]]) -> str | None:
    for set_name, prefixes in sets.items():
        if name.startswith(prefixes):
            return set_name
    return None


def _no_weight_decay_names(model: nn.Module) -> set[str]:
    fn = getattr(model, "no_weight_decay", None)
    return set(fn()) if callable(fn) else set()


def rule_decays(name: str, param: torch.Tensor, skip: set[str]) -> bool:
    """Our rule (nanoGPT/timm): decay only matrices and kernels, never listed tokens/embeddings."""
    return param.ndim >= 2 and name not in skip


# Our names of the LayerNorms whose upstream names matched the original's no-decay substrings
# ("LayerNorm.*", "norm.*"): Hugging Face LayerNorms in the text tower, the fusion layers and the
# MLM head, and the MIM decoder's final `decoder_norm`.
_PAPER_NO_DECAY_NORMS = ("text_encoder.", "fusion.", "heads.mlm.transform.norm.", "heads.mim.decoder_norm.")


def paper_decays(name: str, param: torch.Tensor, skip: set[str]) -> bool:
    """The original's decay rule (spec §4, §9.6), expressed on our parameter names.

    Upstream skipped decay when its parameter name contained ``bias``, ``LayerNorm.*``, ``norm.*``,
    ``norm1.*`` or ``norm2.*``. On its names that meant: every bias; the Hugging Face LayerNorms
    (text tower, fusion layers, MLM head) and the MIM ``decoder_norm``. CLIP's ``ln_*`` LayerNorms,
    the MIM decoder's block LayerNorms, the LayerNorm inside the VQA/cls heads, the class/position
    embeddings, the mask token and the modality embedding *were* decayed (a quirk kept here).
    """
    if name.endswith("bias"):
        return False
    is_norm = "LayerNorm" in name or ".norm." in name or name.startswith("heads.mim.decoder_norm.")
    if is_norm and name.startswith(_PAPER_NO_DECAY_NORMS):
        return False
    return True


def param_groups(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    lr_multipliers: dict[str, float] | None = None,
    grouping: str = "rule",
    module_sets: dict[str, tuple[str, ...]] | None = None,
) -> list[dict]:
    """Splits trainable parameters into AdamW groups by (module set, decay or not).

    Every trainable parameter lands in exactly one group; frozen parameters in none.

    Args:
        model: the model (names follow `model.named_parameters()`).
        lr: base learning rate.
        weight_decay: decay for the decayed groups.
        lr_multipliers: ``{"fusion": 5, "heads": 5}``; a set not listed gets 1.
        grouping: "rule" (ours) or "paper" (the original's substring rules).
        module_sets: prefixes of each module set (default `MODULE_SETS`).

    Returns:
        Groups with ``params``, ``names``, ``lr``, ``initial_lr``, ``lr_multiplier``, ``weight_decay``.
    """
    mults = dict(lr_multipliers or {})
    sets = module_sets or getattr(model, "lr_module_sets", None) or MODULE_SETS
    unknown = sorted(set(mults) - set(sets))
    if unknown:
        raise M3AEError(f"optim.lr_multipliers: unknown module sets {unknown}; known: {sorted(sets)}")
    skip = _no_weight_decay_names(model)
    decays = paper_decays if grouping == "paper" else rule_decays
    buckets: dict[tuple[str, bool], list[tuple[str, nn.Parameter]]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        set_name = _module_set(name, sets)  # the paper grouping uses the same module sets
        key = (set_name or "base", decays(name, p, skip))
        buckets.setdefault(key, []).append((name, p))
    groups = []
    for (set_name, decay), items in sorted(buckets.items()):
        mult = float(mults.get(set_name, 1.0))
        groups.append({
            "params": [p for _, p in items],
            "names": [n for n, _ in items],
            "group": f"{set_name}/{'decay' if decay else 'no_decay'}",
            "lr": lr * mult,
            "initial_lr": lr * mult,
            "lr_multiplier": mult,
            "weight_decay": weight_decay if decay else 0.0,
        })
    return groups


def build_optimizer(model: nn.Module, args: OptimArgs) -> torch.optim.AdamW:
    """AdamW over `param_groups`; the fused kernel where this torch has it (CUDA and CPU).

    Fused AdamW updates each tensor in place without the full-size temporaries of the
    ``foreach`` path (one extra copy of all parameters at peak), which matters for peak memory.
    """
    groups = param_groups(model, args.lr, args.weight_decay, args.lr_multipliers, args.grouping)
    if not groups:
        raise M3AEError("the model has no trainable parameters")
    kwargs = dict(lr=args.lr, betas=tuple(args.betas), eps=args.eps)
    if "fused" in inspect.signature(torch.optim.AdamW).parameters:
        try:
            return torch.optim.AdamW(groups, fused=True, **kwargs)
        except (RuntimeError, ValueError):  # a device/dtype without a fused kernel
            pass
    return torch.optim.AdamW(groups, foreach=False, **kwargs)


def warmup_steps_for(args: OptimArgs, total_steps: int) -> int:
    """Warm-up length in steps from ``warmup_steps`` or ``warmup_ratio`` (int(total * ratio), as upstream)."""
    if args.warmup_steps is not None:
        return int(args.warmup_steps)
    return int(total_steps * (args.warmup_ratio or 0.0))


def lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """Linear warm-up from 0, then linear decay to 0 at ``total_steps``.

    Same values as `transformers.get_polynomial_decay_schedule_with_warmup(power=1, lr_end=0)`
    that the original used: ``step`` is the number of optimisation steps already taken.
    """
    if step < warmup_steps:
        return step / max(1, warmup_steps)
    if step >= total_steps:
        return 0.0
    return (total_steps - step) / max(1, total_steps - warmup_steps)


def set_lr(optimizer: torch.optim.Optimizer, factor: float) -> None:
    """Sets every group's lr to its ``initial_lr`` times ``factor``."""
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * factor


def trainable_named(model: nn.Module) -> Iterable[tuple[str, nn.Parameter]]:
    """The trainable parameters, by name."""
    return ((n, p) for n, p in model.named_parameters() if p.requires_grad)


ScheduleFn = Callable[[int], float]
