"""Typed run configuration: recipes are YAML files of these dataclasses, overridden by dotted flags.

A recipe has five sections, each a dataclass: ``model`` (`ModelArgs`), ``data``
(`m3ae.data.DataConfig`), ``optim`` (`OptimArgs`), ``train`` (`TrainArgs`), ``eval``
(`EvalArgs`) and ``task`` (`TaskArgs`). ``--optim.lr 5e-6`` overrides one field; values are parsed
against the field's type, and an unknown key is an error that lists the valid ones.
"""
from __future__ import annotations

import ast
import dataclasses
import inspect
import math
import textwrap
import types
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml

from m3ae.errors import M3AEError
from m3ae.hardware import PRECISIONS  # auto, fp32, bf16, fp16

TASKS = ("pretrain", "vqa", "cls", "irtr")
MEMORY_MODES = ("auto", "normal", "lean", "low")
GROUPINGS = ("rule", "paper")


@dataclass
class ModelArgs:
    """Which model to build and which weights to start from."""

    name: str = "m3ae-tiny"
    """Model preset (`m3ae.list_models()`), e.g. m3ae-base or m3ae-tiny."""
    pretrained: str | None = None
    """Start from this m3ae folder or upstream .ckpt (position embeddings are resized on load)."""
    vision_weights: str | None = None
    """Initialise the vision tower from a local CLIP ViT-B/16 file or folder (pre-training from scratch)."""
    text_weights: str | None = None
    """Initialise the text tower from a local Hugging Face RoBERTa/BERT folder."""
    tokenizer: str | None = None
    """Tokenizer folder; None = the packaged RoBERTa files."""
    fresh: list = field(default_factory=list)
    """Parts of model.pretrained that keep their fresh initialisation instead (`m3ae.weights.factory.
    FRESH_PARTS`): e.g. [fusion, poolers, modality_embed, text_proj] fine-tunes the pre-trained vision
    tower with a new fusion (docs/learning.md, section 11)."""
    freeze: list = field(default_factory=list)
    """Towers to freeze (no gradients, no dropout): any of vision_encoder, text_encoder."""
    text_cache_mb: int = 512
    """With a frozen text tower: keep each distinct text's features (up to this many MiB) so repeated
    texts skip the tower, e.g. every question after the first epoch. Exact; 0 = off."""
    grad_checkpointing: bool = False
    """Recompute activations in the backward pass (less memory, ~30% slower)."""
    config: dict = field(default_factory=dict)
    """Overrides of ModelConfig fields, dotted (e.g. {"fusion.dropout": 0.0, "mim_layer": 3})."""

    def __post_init__(self) -> None:
        if self.text_cache_mb < 0:
            raise M3AEError(f"model.text_cache_mb must be >= 0 (0 = off), got {self.text_cache_mb}")


@dataclass
class OptimArgs:
    """AdamW, parameter groups and the learning-rate schedule (warm-up, then linear decay to 0)."""

    lr: float = 1e-5
    """Base learning rate (the vision and text towers use it as is)."""
    lr_multipliers: dict = field(default_factory=lambda: {"fusion": 5.0, "heads": 5.0})
    """LR multiplier per module set: fusion = projections, fusion layers, poolers; heads = model.heads."""
    weight_decay: float = 0.01
    """AdamW decoupled weight decay (never on tensors with < 2 dims or model.no_weight_decay())."""
    betas: tuple = (0.9, 0.98)
    """AdamW betas."""
    eps: float = 1e-8
    """AdamW epsilon."""
    grouping: str = "rule"
    """"rule" (ours, above) or "paper" (the original's substring rules, incl. its quirks)."""
    warmup_steps: int | None = None
    """Warm-up length in optimisation steps; give this or warmup_ratio, not both."""
    warmup_ratio: float | None = 0.1
    """Warm-up length as a fraction of all optimisation steps."""
    clip_grad_norm: float | None = None
    """Clip the global gradient norm to this value (None = no clipping, as the original)."""

    def __post_init__(self) -> None:
        if self.warmup_steps is not None and self.warmup_ratio is not None:
            raise M3AEError(
                "optim: give either warmup_steps or warmup_ratio, not both "
                "(set the other to null, e.g. --optim.warmup_ratio null)"
            )
        if self.grouping not in GROUPINGS:
            raise M3AEError(f"optim.grouping must be one of {GROUPINGS} (got {self.grouping!r})")
        if self.warmup_ratio is not None and not 0.0 <= self.warmup_ratio < 1.0:
            raise M3AEError(f"optim.warmup_ratio must be in [0, 1) (got {self.warmup_ratio})")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise M3AEError(f"optim.warmup_steps must be >= 0 (got {self.warmup_steps})")
        self.betas = tuple(float(b) for b in self.betas)
        _check_range("optim.lr", self.lr, low=0.0)  # 0 only for evaluation-only recipes, see RunConfig
        _check_range("optim.weight_decay", self.weight_decay, low=0.0)
        _check_range("optim.eps", self.eps, low=0.0, low_open=True)
        _check_range("optim.clip_grad_norm", self.clip_grad_norm, low=0.0, low_open=True)
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise M3AEError(f"optim.betas must be two numbers in [0, 1) (got {list(self.betas)})")
        for name, mult in self.lr_multipliers.items():
            _check_range(f"optim.lr_multipliers.{name}", mult, low=0.0)


@dataclass
class TaskArgs:
    """What is trained: the task and its loss weights."""

    name: str = "vqa"
    """One of pretrain, vqa, cls, irtr."""
    mlm_weight: float = 1.0
    """Pre-training: weight of the masked language modelling loss."""
    mim_weight: float = 1.0
    """Pre-training: weight of the masked image modelling loss."""
    itm_weight: float = 1.0
    """Pre-training: weight of the image-text matching loss."""
    mask_ratio: float = 0.75
    """Pre-training: share of image patches removed for MIM."""
    norm_pix_loss: bool = True
    """Pre-training: MIM targets normalised per patch (as the original)."""
    image_input: str = "pixels"
    """VQA/cls: "pixels" (the model) or "none" (question-only baseline: no vision tower, the image
    stream is one token that carries no image)."""
    loss: str = "paper"
    """VQA: "paper" (BCE x answers, as the original) or "ce" (softmax cross-entropy over answers;
    learns much faster in few epochs, see docs/learning.md)."""
    itc_weight: float = 0.0
    """Retrieval and pre-training: weight of an added image-text contrastive loss (ALBEF's ITC) on the
    towers; > 0 builds heads.itc, the dual encoder that two-stage retrieval ranks with and that hard ITM
    negatives are drawn by (0 = the original's losses only)."""
    itm_negatives: str = "random"
    """Pre-training: where ITM's mismatched pairs come from: "random" (the original: another image
    for half of the texts), "batch" (in-batch negatives, one per text and one per image, never one whose
    text equals the anchor's) or "hard" (the same, drawn by ITC similarity, as ALBEF)."""

    def __post_init__(self) -> None:
        if self.name not in TASKS:
            raise M3AEError(f"task.name must be one of {TASKS} (got {self.name!r})")
        if self.image_input not in ("pixels", "none"):
            raise M3AEError(f"task.image_input must be pixels or none (got {self.image_input!r})")
        if self.loss not in ("paper", "ce"):
            raise M3AEError(f"task.loss must be paper or ce (got {self.loss!r})")
        from m3ae.tasks import get_task

        if self.itc_weight < 0 or (self.itc_weight and "itc_weight" not in get_task(self.name).options):
            raise M3AEError(f"task.itc_weight must be >= 0 and applies to irtr and pretrain only (got "
                            f"{self.itc_weight} for {self.name!r})")
        from m3ae.tasks.pretrain import ITM_NEGATIVES

        if self.itm_negatives not in ITM_NEGATIVES:
            raise M3AEError(f"task.itm_negatives must be one of {ITM_NEGATIVES} (got {self.itm_negatives!r})")


@dataclass
class TrainArgs:
    """Length, batch, precision and bookkeeping of the one training loop."""

    batch_size: int = 32
    """Effective (global) batch size per optimisation step; reached by gradient accumulation."""
    per_device_batch_size: int = 16
    """Samples per forward pass on one device (process)."""
    max_steps: int | None = None
    """Stop after this many optimisation steps (takes precedence over max_epochs)."""
    max_epochs: int | None = 10
    """Epochs to train when max_steps is None."""
    precision: str = "auto"
    """auto (bf16 where the hardware runs it natively, fp16 on CUDA without bf16, else fp32), fp32,
    bf16 (autocast, CPU or CUDA) or fp16 (CUDA only, with a GradScaler)."""
    seed: int = 0
    """Seed for initialisation, data order, masking and dropout."""
    deterministic: bool = True
    """Use PyTorch's deterministic kernels (`torch.use_deterministic_algorithms`, warning where an op has
    none), so that a rerun with the same seed on the same machine gives the same losses. Without it, two
    runs of the shipped pre-training recipe on 2 CPU cores parted after 80-118 steps; with it, 170 steps
    agreed, at the same speed. Restored to its previous setting when training ends."""
    log_every: int = 10
    """Write a log.jsonl line every N optimisation steps."""
    checkpoint_every: int = 1000
    """Save a resumable checkpoint every N optimisation steps (and always at the end)."""
    keep_checkpoints: int = 2
    """How many step checkpoints to keep on disk."""
    device: str = "auto"
    """auto (cuda when available), cpu or cuda."""
    progress: bool = True
    """Show a tqdm progress bar (rank 0 only)."""
    tensorboard: bool = True
    """Write TensorBoard events when torch.utils.tensorboard works."""
    compile: bool = False
    """torch.compile the transformer blocks (inductor; needs a C++ compiler). The first steps are
    slow while kernels compile; see m3ae.compiling."""
    memory: str = "auto"
    """auto (default): lean when it is not slower than normal on this machine, else normal, measured
    on the run's first micro-batch (a few forward + backward passes, cached per machine and job in
    ~/.cache/m3ae/memory_modes.json; the run log says which and why); normal; lean: activation checkpointing in the two towers (~3% slower, ~1.2 GiB less for
    pre-training at base size); or low: checkpointing in every tower, the fusion and the MIM
    decoder, freed memory returned to the OS, and the optimizer step inside backward (each gradient
    freed once applied) when the step allows it: one micro-batch per step, no clipping, no fp16
    loss scaling, one process. lean and low also turn off autocast's bf16/fp16 weight cache (0.6 GiB
    less in bf16 lean pre-training at base size). See m3ae.train.memory."""

    def __post_init__(self) -> None:
        if self.memory not in MEMORY_MODES:
            raise M3AEError(f"train.memory must be one of {MEMORY_MODES} (got {self.memory!r})")
        if self.precision not in PRECISIONS:
            raise M3AEError(f"train.precision must be one of {PRECISIONS} (got {self.precision!r})")
        if self.batch_size <= 0 or self.per_device_batch_size <= 0:
            raise M3AEError("train.batch_size and train.per_device_batch_size must be positive")
        if self.max_steps is None and self.max_epochs is None:
            raise M3AEError("train: set max_steps or max_epochs")
        _check_range("train.max_steps", self.max_steps, low=0)  # 0 = evaluate only, see RunConfig
        for name in ("max_epochs", "log_every", "checkpoint_every", "keep_checkpoints"):
            _check_range(f"train.{name}", getattr(self, name), low=1)


@dataclass
class EvalArgs:
    """Validation during training, model selection and the final test."""

    val_split: str | None = "val"
    """Split used to choose the best checkpoint (None = keep the last one)."""
    test_split: str | None = "test"
    """Split evaluated with the best model at the end (written to metrics.json)."""
    every_steps: int | None = None
    """Validate every N optimisation steps; None = at the end of each epoch."""
    batch_size: int = 32
    """Batch size for evaluation forward passes."""
    monitor: str = "auto"
    """Metric that picks the best checkpoint (higher is better); auto = overall (VQA), accuracy (cls),
    r_mean (retrieval), -loss (pre-training)."""
    retrieval_text_batch: int = 64
    """Retrieval: captions scored per forward pass against one image."""
    retrieval: str = "full"
    """Retrieval protocol: full (the original: the cross-encoder on every pair) or two-stage (the dual
    encoder of heads.itc ranks every candidate, the cross-encoder re-ranks the top_k)."""
    top_k: int = 128
    """Two-stage retrieval: candidates per query that the cross-encoder re-ranks."""

    def __post_init__(self) -> None:
        if self.retrieval not in ("full", "two-stage"):
            raise M3AEError(f"eval.retrieval must be full or two-stage (got {self.retrieval!r})")
        if self.top_k < 1:
            raise M3AEError(f"eval.top_k must be at least 1 (got {self.top_k})")
        for name in ("every_steps", "batch_size", "retrieval_text_batch"):
            _check_range(f"eval.{name}", getattr(self, name), low=1)
        for name in ("val_split", "test_split"):
            if getattr(self, name) is not None and not str(getattr(self, name)).strip():
                raise M3AEError(f"eval.{name} is empty; give a split name or null")


def _check_range(name: str, value: float | int | None, low: float, low_open: bool = False) -> None:
    """Numeric options are finite and at least ``low`` (above it with ``low_open``); None = unset.

    Raises:
        M3AEError: naming the option, the bound and the value given.
    """
    if value is None:
        return
    if not math.isfinite(value) or value < low or (low_open and value == low):
        bound = f"> {low:g}" if low_open else f">= {low:g}"
        raise M3AEError(f"{name} must be finite and {bound} (got {value})")


@dataclass
class RunConfig:
    """One recipe: every setting of a pre-training or fine-tuning run."""

    model: ModelArgs = field(default_factory=ModelArgs)
    data: Any = field(default_factory=lambda: _data_config_cls()())
    optim: OptimArgs = field(default_factory=OptimArgs)
    task: TaskArgs = field(default_factory=TaskArgs)
    train: TrainArgs = field(default_factory=TrainArgs)
    eval: EvalArgs = field(default_factory=EvalArgs)

    def __post_init__(self) -> None:
        # max_steps 0 evaluates a given model without training (zero-shot retrieval). Without
        # model.pretrained it would save a randomly initialised best/ with a model card.
        if self.train.max_steps == 0 and not self.model.pretrained:
            raise M3AEError("train.max_steps 0 (evaluate without training) needs model.pretrained; "
                            "give train.max_steps >= 1 to train")
        if self.optim.lr == 0 and self.train.max_steps != 0:
            raise M3AEError("optim.lr must be > 0 (0 is only for evaluation-only recipes, train.max_steps 0)")

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (tuples become lists) for YAML/JSON."""
        return _to_plain(self)


SECTIONS = ("model", "data", "optim", "task", "train", "eval")


def _data_config_cls() -> type:
    from m3ae.data import DataConfig  # the data package owns this dataclass

    return DataConfig


def _to_plain(obj: Any) -> Any:
    if is_dataclass(obj):
        return {f.name: _to_plain(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [_to_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _to_plain(v) for k, v in obj.items()}
    return obj


def _type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    """Builds dataclass ``cls`` from a dict, rejecting unknown keys and coercing types."""
    if not isinstance(data, dict):
        raise M3AEError(f"{where}: expected a mapping, got {type(data).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise M3AEError(f"{where}: unknown keys {unknown}; valid keys: {sorted(known)}")
    hints = _type_hints(cls)
    values = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    if cls is OptimArgs and values.get("warmup_steps") is not None and "warmup_ratio" not in values:
        values["warmup_ratio"] = None  # a recipe that gives steps means steps, not the default ratio
    return cls(**values)


def config_from_dict(data: dict[str, Any], where: str = "config") -> RunConfig:
    """Builds a `RunConfig` from a nested dict (a parsed recipe)."""
    data = dict(data or {})
    unknown = sorted(set(data) - set(SECTIONS))
    if unknown:
        raise M3AEError(f"{where}: unknown sections {unknown}; valid sections: {list(SECTIONS)}")
    classes = {
        "model": ModelArgs, "data": _data_config_cls(), "optim": OptimArgs,
        "task": TaskArgs, "train": TrainArgs, "eval": EvalArgs,
    }
    return RunConfig(**{s: _build(classes[s], data.get(s) or {}, f"{where}: {s}") for s in SECTIONS})


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Reads a YAML recipe and applies dotted overrides (``["--optim.lr", "5e-6", ...]``).

    Raises:
        M3AEError: missing file, bad YAML, unknown key or a value of the wrong type.
    """
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise M3AEError(f"config file not found: {p}")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as err:
            raise M3AEError(f"{p}: invalid YAML: {err}") from None
        if not isinstance(data, dict):
            raise M3AEError(f"{p}: the recipe must be a mapping of sections")
    where = str(path) if path is not None else "config"
    cfg = config_from_dict(data, where)
    return apply_overrides(cfg, overrides or [], where)


def parse_override_list(items: list[str]) -> list[tuple[str, str]]:
    """``["--optim.lr", "5e-6", "--train.max_steps=10"]`` -> ``[("optim.lr", "5e-6"), ...]``."""
    out: list[tuple[str, str]] = []
    i = 0
    while i < len(items):
        item = items[i]
        if not item.startswith("--") or "." not in item.split("=", 1)[0]:
            raise M3AEError(f"unexpected argument {item!r}; overrides look like --section.key VALUE")
        key = item[2:]
        if "=" in key:
            key, value = key.split("=", 1)
            i += 1
        else:
            if i + 1 >= len(items):
                raise M3AEError(f"override --{key} needs a value")
            value = items[i + 1]
            i += 2
        out.append((key, value))
    return out


def apply_overrides(cfg: RunConfig, overrides: list[str] | list[tuple[str, str]], where: str = "config"):
    """Returns a new `RunConfig` with dotted overrides applied (values parsed as YAML scalars)."""
    pairs = parse_override_list(overrides) if overrides and isinstance(overrides[0], str) else overrides
    data = cfg.to_dict()
    for key, raw in pairs:
        section, _, name = key.partition(".")
        if section not in SECTIONS:
            raise M3AEError(f"--{key}: unknown section {section!r}; valid sections: {list(SECTIONS)}")
        sub = data[section]
        if section == "model" and name.startswith("config."):
            sub["config"][name[len("config."):]] = _yaml_value(raw)
            continue
        if name not in sub:
            raise M3AEError(f"--{key}: unknown key {name!r} in {section}; valid keys: {sorted(sub)}")
        sub[name] = _yaml_value(raw)
    return config_from_dict(data, where + " (with overrides)")


def _yaml_value(raw: str) -> Any:
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Checks/converts ``value`` to the annotated type (int, float, bool, str, Optional, tuple, dict)."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except M3AEError as err:
                errors.append(str(err))
        raise M3AEError(errors[0] if errors else f"{where}: bad value {value!r}")
    if hint is Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise M3AEError(f"{where}: expected true/false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise M3AEError(f"{where}: expected an integer, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise M3AEError(f"{where}: expected a number, got {value!r}")
    if hint is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise M3AEError(f"{where}: expected a string, got {value!r}")
    if hint is tuple or origin is tuple:
        if isinstance(value, (list, tuple)):
            return tuple(value)
        raise M3AEError(f"{where}: expected a list, got {value!r}")
    if hint is dict or origin is dict:
        if isinstance(value, dict):
            return dict(value)
        raise M3AEError(f"{where}: expected a mapping, got {value!r}")
    return value


def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings of a dataclass (the string literal after each field), for ``--help``."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):
        return {}
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    docs: dict[str, str] = {}
    for prev, node in zip(body, body[1:]):
        if (
            isinstance(prev, ast.AnnAssign) and isinstance(prev.target, ast.Name)
            and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            docs[prev.target.id] = " ".join(node.value.value.split())
    return docs


def add_override_help(parser: Any, defaults: RunConfig | None = None) -> None:
    """Adds one documented ``--section.key`` option per config field to an argparse parser.

    The options are only for ``--help`` and validation; values are applied by `apply_overrides`
    so that the recipe's value wins unless the flag is given (argparse.SUPPRESS default).
    """
    import argparse

    cfg = defaults or RunConfig()
    for section in SECTIONS:
        sub = getattr(cfg, section)
        group = parser.add_argument_group(f"{section} overrides ({type(sub).__name__})")
        docs = field_docs(type(sub))
        for f in fields(sub):
            default = getattr(sub, f.name)
            group.add_argument(
                f"--{section}.{f.name}", dest=f"override__{section}__{f.name}", default=argparse.SUPPRESS,
                metavar="VALUE", help=f"{docs.get(f.name, '')} (default: {_to_plain(default)!r})".replace("%", "%%"),
            )


def overrides_from_args(args: Any) -> list[tuple[str, str]]:
    """Collects the ``--section.key`` values argparse stored by `add_override_help`."""
    pairs = []
    for name, value in vars(args).items():
        if name.startswith("override__"):
            _, section, key = name.split("__", 2)
            pairs.append((f"{section}.{key}", value))
    return pairs


def save_config(cfg: RunConfig, path: str | Path) -> None:
    """Writes the resolved recipe as YAML (the run folder's ``config.yaml``)."""
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def replace(obj: Any, **changes: Any) -> Any:
    """`dataclasses.replace` re-exported for recipes built in Python."""
    return dataclasses.replace(obj, **changes)
