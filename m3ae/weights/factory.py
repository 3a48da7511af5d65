"""`create_model`: build from a config, then load weights from local files (never downloads).

It sits on the weights floor because it reads every source: our folders (`m3ae.models.io`),
official ``.ckpt`` files (`m3ae.weights.upstream`), CLIP (`m3ae.weights.clip`) and HF text
folders (`m3ae.weights.text`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from m3ae.errors import M3AEError
from m3ae.guards import resolve_packaged
from m3ae.models import io
from m3ae.models.config import ModelConfig
from m3ae.models.heads import init_irtr_from_itm
from m3ae.models.m3ae import M3AE
from m3ae.weights.clip import load_clip_vision
from m3ae.weights.pretrained import PRETRAINED, resolve_pretrained, shipped_names, shipped_or_given
from m3ae.weights.text import load_text_weights, text_config_from_folder
from m3ae.weights.upstream import read_upstream


def resolve_config(name_or_config: str | ModelConfig | dict[str, Any]) -> ModelConfig:
    """A preset name, a ModelConfig or its dict form -> ModelConfig."""
    if isinstance(name_or_config, ModelConfig):
        return name_or_config
    if isinstance(name_or_config, dict):
        return ModelConfig.from_dict(name_or_config)
    if isinstance(name_or_config, str):
        return ModelConfig.from_name(name_or_config)
    raise M3AEError(f"expected a model name, ModelConfig or dict, got {type(name_or_config).__name__}")


def _require(path: str | Path, what: str) -> Path:
    p = resolve_packaged(path)
    if not p.exists():
        raise M3AEError(f"{what} not found: {p} (m3ae reads local files only and never downloads)")
    return p


def resolve_source(pretrained: str | Path) -> str | Path:
    """A model shipped with m3ae (``m3ae-small-medvqa``) -> its folder; a registered `arch.tag` -> its
    local file; a Hub id -> its cached snapshot; paths unchanged."""
    pretrained = shipped_or_given(pretrained)
    if isinstance(pretrained, str) and pretrained in PRETRAINED and not Path(pretrained).exists():
        return resolve_pretrained(pretrained)
    if io.is_hub_id(pretrained):
        return io.resolve_model_dir(pretrained)  # the local Hugging Face cache only, never a download
    return pretrained


def _read_source(
    path: Path, image_size: int | None
) -> tuple[ModelConfig, dict[str, torch.Tensor], list[str]]:
    """(config, state dict under our names, notes) from one of our folders or an upstream .ckpt."""
    if path.is_dir():
        config = io.read_config(path)
        io.verify_weights(path, io.read_metadata(path))
        return config, io.read_state_dict(path), []
    cfg, sd, report = read_upstream(path, image_size=image_size)
    return cfg, sd, report.lines()


def _same_architecture(a: ModelConfig, b: ModelConfig) -> bool:
    """Same towers and fusion, ignoring image size, heads, the position table's initialisation and
    where the text weights came from."""

    def arch(c: ModelConfig) -> tuple[dict[str, Any], ...]:
        vision, text = dataclasses.asdict(c.vision), dataclasses.asdict(c.text)
        vision.pop("image_size")
        vision.pop("pos_init")  # how a table starts from scratch; loaded weights replace it
        text.pop("pretrained_path")
        return vision, text, dataclasses.asdict(c.fusion)

    return arch(a) == arch(b)


def _config_with_source(cfg: ModelConfig | None, source_cfg: ModelConfig, pretrained: Any,
                        name_or_config: Any) -> ModelConfig:
    """The checkpoint's architecture (with its heads), checked against an asked-for config."""
    if cfg is not None and not _same_architecture(cfg, source_cfg):
        raise M3AEError(
            f"{pretrained}: its architecture differs from {name_or_config!r}; "
            "pass name_or_config=None to use the checkpoint's own"
        )
    return (
        source_cfg
        if cfg is None
        else cfg.with_heads(source_cfg.heads, source_cfg.num_answers, source_cfg.num_classes)
    )


def _final_config(cfg: ModelConfig | None, text_weights: Any, heads: Any, num_answers: int | None,
                  num_classes: int | None, image_size: int | None) -> ModelConfig:
    """The config with the text tower of ``text_weights``, the asked-for heads and image size."""
    assert cfg is not None
    if text_weights is not None:
        text_cfg = text_config_from_folder(_require(text_weights, "text weights"))
        cfg = dataclasses.replace(cfg, text=text_cfg)  # a copy: the caller's config is not mutated
    if heads is not None or num_answers is not None or num_classes is not None:
        cfg = cfg.with_heads(cfg.heads if heads is None else heads, num_answers, num_classes)
    if image_size is not None:
        cfg = cfg.with_image_size(image_size)
    return cfg


FRESH_PARTS = ("vision_encoder", "vision_proj", "text_proj", "modality_embed", "fusion", "poolers", "heads")
"""Top-level parts of `M3AE` that `create_model(fresh=...)` can leave at their fresh initialisation
(the frozen text tower is never among them)."""


def create_model(
    name_or_config: str | ModelConfig | dict[str, Any] | None = None,
    pretrained: str | Path | bool | None = None,
    vision_weights: str | Path | None = None,
    text_weights: str | Path | None = None,
    heads: list[str] | tuple[str, ...] | None = None,
    num_answers: int | None = None,
    num_classes: int | None = None,
    image_size: int | None = None,
    fresh: tuple[str, ...] | list[str] = (),
) -> M3AE:
    """Build an M3AE and load local weights into it.

    Args:
        name_or_config: preset name ("m3ae-base", "m3ae-small", "m3ae-tiny"), ModelConfig or dict.
            Optional when `pretrained` is given (the checkpoint then defines the architecture).
        pretrained: one of our model folders, an official M3AE Lightning `.ckpt`, a registered
            name such as "m3ae_base_patch16_288.roco_medicat" (see `m3ae.weights.pretrained`), the
            name of a model shipped with m3ae ("m3ae-small-medvqa"), or True when ``name_or_config``
            is such a shipped name.
        vision_weights: local OpenAI CLIP ViT-B/16 file/folder for the vision tower.
        text_weights: local HF folder (RoBERTa/BERT/MiniLM); its config.json defines the text tower.
        heads: task heads to build (default: the config's / checkpoint's heads). New heads keep a
            fresh init (irtr is copied from itm's "match" row when possible); heads the
            checkpoint has but that are not requested are dropped.
        num_answers: VQA answer count A.
        num_classes: classification classes K.
        image_size: input resolution; the vision position table is resized to it.
        fresh: top-level parts (`FRESH_PARTS`, e.g. "fusion", "poolers") that keep their fresh
            initialisation instead of the ``pretrained`` weights: fine-tuning from a pre-trained
            vision tower with a new fusion, for instance (docs/learning.md, section 11).

    Returns:
        the model, in train mode as built by torch; `model.load_report` holds what happened.

    Raises:
        M3AEError: unknown name, missing path, or architecture mismatch.
        CheckpointError: weights that do not match.
    """
    if pretrained is True:  # create_model("m3ae-small-medvqa", pretrained=True): the name is the weights
        if not isinstance(name_or_config, str) or name_or_config not in shipped_names():
            raise M3AEError(f"pretrained=True needs the name of a model shipped with m3ae "
                            f"({shipped_names() or 'none ships yet'}), "
                            f"got {name_or_config!r}; pass a folder or checkpoint path as pretrained= instead")
        name_or_config, pretrained = None, name_or_config
    if pretrained is not None and (vision_weights is not None or text_weights is not None):
        # tower weights initialise a model from scratch; after a full checkpoint they would
        # silently overwrite its trained towers
        raise M3AEError("pass either pretrained= or vision_weights=/text_weights=, not both")
    if name_or_config is None and pretrained is None:
        name_or_config = "m3ae-base"
    cfg = resolve_config(name_or_config) if name_or_config is not None else None
    source_cfg, state_dict, notes = None, None, []
    if pretrained is not None:
        pretrained = resolve_source(pretrained)
        source_cfg, state_dict, notes = _read_source(_require(pretrained, "pretrained weights"), image_size)
        cfg = _config_with_source(cfg, source_cfg, pretrained, name_or_config)
    cfg = _final_config(cfg, text_weights, heads, num_answers, num_classes, image_size)
    model = M3AE(cfg)
    report = io.LoadReport()
    unknown = sorted(set(fresh) - set(FRESH_PARTS))
    if unknown:
        raise M3AEError(f"model.fresh: unknown part(s) {unknown}; choose among {list(FRESH_PARTS)}")
    if fresh and state_dict is None:
        raise M3AEError("model.fresh keeps parts of model.pretrained at their fresh initialisation; "
                        "it needs model.pretrained")
    kept = {k: v.detach().clone() for k, v in model.state_dict().items() if k.split(".")[0] in fresh}
    if state_dict is not None:
        external_text = not any(key.startswith("text_encoder.") for key in state_dict)
        report = _load_checkpoint(model, state_dict, str(pretrained), source_cfg, external_text)
        report.notes = notes + report.notes
        if external_text:  # saved without its (frozen, pretrained) text tower: the folder names its source
            report.notes.append(_load_external_text(model, source_cfg, pretrained))  # its folder names it
    if kept:
        model.load_state_dict(kept, strict=False)
        report.notes.append(f"kept at their fresh initialisation: {', '.join(sorted(set(fresh)))} "
                            f"({len(kept)} tensors)")
    if vision_weights is not None:
        report.notes.append(load_clip_vision(model.vision_encoder, _require(vision_weights, "CLIP weights")))
    text_path = text_weights or cfg.text.pretrained_path
    if text_path is not None and state_dict is None:
        load_text_weights(model.text_encoder, _require(text_path, "text weights"))
        report.notes.append(f"text tower loaded from {text_path}")
    model.load_report = report
    return model


def _load_external_text(model: M3AE, cfg: ModelConfig, source: Any) -> str:
    """The text tower of a folder saved without it, from the folder config's ``text.pretrained_path``."""
    if not cfg.text.pretrained_path:
        raise M3AEError(f"{source}: the weights hold no text tower and config.json names no "
                        "text.pretrained_path to load it from")
    load_text_weights(model.text_encoder, _require(cfg.text.pretrained_path, "text weights"))
    return f"text tower loaded from {cfg.text.pretrained_path} (the folder ships without it)"


def _load_checkpoint(
    model: M3AE, state_dict: dict[str, torch.Tensor], source: str, source_cfg: ModelConfig,
    external_text: bool = False,
) -> Any:
    """Load with the allow-lists "new heads may be missing", "unrequested heads may be dropped" and,
    for a folder saved without its text tower (``external_text``), "the text tower may be missing"."""
    have = set(source_cfg.heads)
    want = set(model.config.heads)
    new = tuple(f"heads.{h}." for h in sorted(want - have)) + (("text_encoder.",) if external_text else ())
    dropped = tuple(f"heads.{h}." for h in sorted(have - want))
    report = io.load_state_dict_checked(model, state_dict, source, allow_missing=new, allow_unexpected=dropped)
    if "irtr" in want - have and "heads.itm.weight" in state_dict:
        init_irtr_from_itm(model.heads, state_dict)
        report.notes.append("heads.irtr initialised from the ITM 'match' row (itm row 1)")
    return report
