"""Our checkpoint format: a folder that describes itself.

    <dir>/model.safetensors   the state dict (module tree of `M3AE` = key names)
    <dir>/config.json         {"format": "m3ae", "format_version": 1, "model": ModelConfig.to_dict(),
                               "weights_sha256": SHA-256 of model.safetensors,
                               ...extra metadata: "answers", "labels", "preprocessing", ...}
    <dir>/tokenizer files     when a tokenizer was given

Loading is strict; the only tolerated differences are explicit allow-lists (new task heads,
heads left behind) and a resized vision position table. Loading also verifies the checksum
(folders written before it existed have none and are not checked) and refuses NaN/Inf weights:
a flipped byte after the safetensors header would otherwise load and predict NaN.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from m3ae.errors import CheckpointError, M3AEError
from m3ae.guards import file_sha256, nonfinite_keys
from m3ae.models.config import ModelConfig
from m3ae.models.masking import resize_pos_embed

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
FORMAT = "m3ae"
FORMAT_VERSION = 1
POS_EMBED_KEY = "vision_encoder.pos_embed"
CHECKSUM_KEY = "weights_sha256"
RESERVED_KEYS = {"format", "format_version", "model", CHECKSUM_KEY}


@dataclass
class LoadReport:
    """What happened when a state dict was loaded into a model."""

    loaded: int = 0
    """Number of tensors copied into the model."""
    missing_allowed: list[str] = field(default_factory=list)
    """Model keys absent from the source but allowed (new heads); they keep their fresh init."""
    unexpected_allowed: list[str] = field(default_factory=list)
    """Source keys the model does not have but allowed to be dropped (e.g. pre-training heads)."""
    resized: list[str] = field(default_factory=list)
    """Keys whose tensors were resampled (vision position table)."""
    notes: list[str] = field(default_factory=list)
    """Free-form remarks (e.g. irtr initialised from itm)."""

    def summary(self) -> str:
        """Human-readable multi-line summary."""
        lines = [f"loaded {self.loaded} tensors"]
        for title, keys in (
            ("new (fresh init)", self.missing_allowed),
            ("dropped", self.unexpected_allowed),
            ("resized", self.resized),
        ):
            if keys:
                lines.append(f"{title}: {len(keys)}: " + ", ".join(_compress(keys)))
        lines += self.notes
        return "\n".join(lines)


def _compress(keys: list[str], limit: int = 12) -> list[str]:
    """Group keys by their first two name components to keep reports short."""
    groups: dict[str, int] = {}
    for k in keys:
        prefix = ".".join(k.split(".")[:2])
        groups[prefix] = groups.get(prefix, 0) + 1
    items = [f"{p}.* ({n})" if n > 1 else p for p, n in groups.items()]
    return items[:limit] + ([f"... {len(items) - limit} more groups"] if len(items) > limit else [])


def adapt_pos_embed(state_dict: dict[str, torch.Tensor], model: nn.Module) -> list[str]:
    """Resize the vision position table in `state_dict` (in place) to the model's grid."""
    own = model.state_dict()
    if (
        POS_EMBED_KEY in state_dict
        and POS_EMBED_KEY in own
        and state_dict[POS_EMBED_KEY].shape != own[POS_EMBED_KEY].shape
    ):
        grid = model.config.vision.grid
        state_dict[POS_EMBED_KEY] = resize_pos_embed(state_dict[POS_EMBED_KEY], grid, num_prefix=1)
        return [POS_EMBED_KEY]
    return []


def load_state_dict_checked(
    model: nn.Module,
    state_dict: dict[str, torch.Tensor],
    source: str,
    allow_missing: tuple[str, ...] = (),
    allow_unexpected: tuple[str, ...] = (),
) -> LoadReport:
    """Strictly load `state_dict`, tolerating only keys under the allowed prefixes.

    Args:
        model: target model.
        state_dict: tensors under our key names (the position table is resized first).
        source: the file name, used in error messages.
        allow_missing: prefixes of model keys that may be absent (new heads).
        allow_unexpected: prefixes of source keys that may be dropped (unused heads).

    Raises:
        CheckpointError: any other missing or unexpected key, or a shape mismatch.
    """
    report = LoadReport(resized=adapt_pos_embed(state_dict, model))
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    report.missing_allowed = [k for k in missing if k.startswith(allow_missing)] if allow_missing else []
    report.unexpected_allowed = (
        [k for k in unexpected if k.startswith(allow_unexpected)] if allow_unexpected else []
    )
    bad_missing = sorted(set(missing) - set(report.missing_allowed))
    bad_unexpected = sorted(set(unexpected) - set(report.unexpected_allowed))
    mismatched = [
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state_dict and state_dict[k].shape != own[k].shape
    ]
    if bad_missing or bad_unexpected or mismatched:
        raise CheckpointError(
            f"{source}: does not match the model.\n  missing keys: {bad_missing[:20]}"
            f"\n  unexpected keys: {bad_unexpected[:20]}\n  shape mismatches: {mismatched[:20]}"
        )
    kept = {k: v for k, v in state_dict.items() if k in own}
    model.load_state_dict(kept, strict=False)
    report.loaded = len(kept)
    return report


def save_model(
    model: nn.Module, directory: str | Path, tokenizer: Any = None, extra: dict[str, Any] | None = None
) -> Path:
    """Write a model folder (see module docstring). Returns the folder path."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    extra = dict(extra or {})
    clash = RESERVED_KEYS & set(extra)
    if clash:
        raise ValueError(f"extra metadata may not use the reserved keys {sorted(clash)}")
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    bad = nonfinite_keys(state)
    if bad:  # a diverged or corrupt model is not worth a folder that looks fine
        raise CheckpointError(f"refusing to save {directory}: NaN/Inf in {len(bad)} tensor(s), e.g. {bad[:3]}")
    save_file(state, str(directory / WEIGHTS_NAME), metadata={"format": "pt"})
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "model": model.config.to_dict(),
            CHECKSUM_KEY: file_sha256(directory / WEIGHTS_NAME), **extra}
    (directory / CONFIG_NAME).write_text(json.dumps(meta, indent=2, allow_nan=False) + "\n")
    if tokenizer is not None:
        tokenizer.save_pretrained(str(directory))
    return directory


def read_metadata(directory: str | Path) -> dict[str, Any]:
    """The whole `config.json` of a model folder (model config under "model", extras beside it)."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"{directory}: not an m3ae model folder (no {CONFIG_NAME})")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: invalid JSON at line {err.lineno}: {err.msg}") from err
    if meta.get("format") != FORMAT or "model" not in meta:
        raise CheckpointError(f"{path}: not an m3ae config (format={meta.get('format')!r})")
    return meta


def read_config(directory: str | Path) -> ModelConfig:
    """The `ModelConfig` stored in a model folder.

    Raises:
        CheckpointError: a model section with unknown keys or values of the wrong type.
    """
    try:
        return ModelConfig.from_dict(read_metadata(directory)["model"])
    except (TypeError, ValueError, KeyError, AttributeError, M3AEError) as err:
        # e.g. "layers": "two" fails as a TypeError inside a __post_init__ comparison
        raise CheckpointError(f"{Path(directory) / CONFIG_NAME}: invalid model config "
                              f"({type(err).__name__}: {err})") from None


def verify_weights(directory: str | Path, meta: dict[str, Any]) -> None:
    """Compare model.safetensors with the checksum in config.json (when the folder has one).

    Raises:
        CheckpointError: the file changed since it was saved (corrupt download, flipped bytes).
    """
    expected = meta.get(CHECKSUM_KEY)
    path = Path(directory) / WEIGHTS_NAME
    if expected is None or not path.is_file():
        return
    if file_sha256(path) != expected:
        raise CheckpointError(f"{path}: SHA-256 differs from the one in {CONFIG_NAME}: the file is corrupt "
                              "or was modified (verify=False loads it anyway)")


def read_state_dict(
    directory: str | Path, map_location: str | torch.device = "cpu"
) -> dict[str, torch.Tensor]:
    """The tensors of a model folder.

    Raises:
        CheckpointError: a missing, truncated or unreadable file, or NaN/Inf in any tensor.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(directory) / WEIGHTS_NAME
    if not path.is_file():
        raise CheckpointError(f"{directory}: missing {WEIGHTS_NAME}")
    try:
        state = load_file(str(path), device=str(map_location))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{path}: not a readable safetensors file ({type(err).__name__}: {err})") from None
    bad = nonfinite_keys(state)
    if bad:
        raise CheckpointError(f"{path}: NaN/Inf in {len(bad)} tensor(s), e.g. {bad[:3]}: the weights are "
                              "corrupt or diverged")
    return state


def load_model(
    directory: str | Path, image_size: int | None = None, map_location: str | torch.device = "cpu",
    verify: bool = True,
) -> nn.Module:
    """Build the model described by a folder and load its weights strictly.

    Args:
        directory: a folder written by `save_model`.
        image_size: resize the vision position table to this input size.
        map_location: device the tensors are read to.
        verify: check the weights' SHA-256 against config.json first (False skips it for speed).
    """
    from m3ae.models.m3ae import M3AE

    cfg = read_config(directory)
    if verify:
        verify_weights(directory, read_metadata(directory))
    if image_size is not None:
        cfg = cfg.with_image_size(image_size)
    model = M3AE(cfg)
    load_state_dict_checked(model, read_state_dict(directory, map_location), source=str(directory))
    return model
