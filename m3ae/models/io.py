"""Our checkpoint format, and the one strict state-dict loader every weight source uses.

A model folder describes itself:

    <dir>/model.safetensors   the state dict (module tree of `M3AE` = key names)
    <dir>/config.json         {"format": "m3ae", "format_version": 1, "model": ModelConfig.to_dict(),
                               "weights_sha256": SHA-256 of model.safetensors,
                               "preprocessing": `m3ae.preprocessing.Preprocessing`,
                               ...extra metadata: "answers", "labels", "task", ...}
    <dir>/tokenizer files     when a tokenizer was given

`read_metadata` is the one reader of a folder's ``config.json``. `check_state_dict` /
`load_state_dict_checked` are the one strict loader (used for our folders, upstream ``.ckpt``
files, CLIP and HF text weights alike): the only tolerated differences are explicit allow-lists
(new task heads, heads left behind, HF leftovers) and position tables resized by
`resize_pos_table`. Loading also verifies the checksum
(folders written before it existed have none and are not checked) and refuses NaN/Inf weights:
a flipped byte after the safetensors header would otherwise load and predict NaN.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from m3ae.errors import CheckpointError, M3AEError
from m3ae.guards import file_sha256, nonfinite_keys, save_safetensors
from m3ae.models.config import ModelConfig
from m3ae.models.masking import resize_pos_embed
from m3ae.preprocessing import Preprocessing, preprocessing_from_metadata

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


def resize_pos_table(
    state_dict: dict[str, torch.Tensor], key: str, shape: tuple[int, ...], grid: tuple[int, int]
) -> bool:
    """The one position-table resize: resample ``state_dict[key]`` in place when its shape differs.

    Args:
        state_dict: tensors to adapt (changed in place).
        key: the position table's key (``vision_encoder.pos_embed``, CLIP's ``pos_embed``, ...).
        shape: the shape the target module expects for that key.
        grid: the target patch grid (grid_h, grid_w); one class row is kept in front.

    Returns:
        True when the table was resized (a missing key or an equal shape is left alone).
    """
    if key not in state_dict or tuple(state_dict[key].shape) == tuple(shape):
        return False
    state_dict[key] = resize_pos_embed(state_dict[key], grid, num_prefix=1)
    return True


def _pos_tables(module: nn.Module) -> dict[str, tuple[int, int]]:
    """Position tables of `module` to resample on load: key -> grid (an M3AE's or a ViT's)."""
    config = getattr(module, "config", None)
    if config is not None and hasattr(config, "vision"):
        return {POS_EMBED_KEY: config.vision.grid}
    cfg = getattr(module, "cfg", None)
    if cfg is not None and hasattr(cfg, "grid") and hasattr(module, "pos_embed"):
        return {"pos_embed": cfg.grid}  # a bare VisionTransformer (CLIP loading)
    return {}


def check_state_dict(
    expected: dict[str, tuple[int, ...]],
    state_dict: dict[str, torch.Tensor],
    source: str,
    allow_missing: tuple[str, ...] = (),
    allow_unexpected: tuple[str, ...] = (),
    display: Any = None,
) -> tuple[list[str], list[str]]:
    """Compare a state dict with the expected key -> shape table, strictly.

    Args:
        expected: the target's key -> shape (a module's state dict shapes, or computed on "meta").
        state_dict: tensors under the target's key names.
        source: what is loaded (a file name), used in the error message.
        allow_missing: prefixes of expected keys that may be absent (new heads keep a fresh init).
        allow_unexpected: prefixes of source keys that may be dropped (unused heads, HF leftovers).
        display: maps one of our keys to the name shown in errors (e.g. the upstream name).

    Returns:
        (missing keys that were allowed, unexpected keys that were allowed).

    Raises:
        CheckpointError: any other missing or unexpected key, or a shape mismatch, all listed.
    """
    show = display or (lambda k: k)
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    ok_missing = [k for k in missing if allow_missing and k.startswith(allow_missing)]
    ok_unexpected = [k for k in unexpected if allow_unexpected and k.startswith(allow_unexpected)]
    bad_missing = sorted(set(missing) - set(ok_missing))
    bad_unexpected = sorted(show(k) for k in set(unexpected) - set(ok_unexpected))
    mismatched = [
        f"{show(k)}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(shape)}"
        for k, shape in expected.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(shape)
    ]
    if bad_missing or bad_unexpected or mismatched:
        raise CheckpointError(
            f"{source}: does not match the model.\n  missing keys: {bad_missing[:20]}"
            f"\n  unexpected keys: {bad_unexpected[:20]}\n  shape mismatches: {mismatched[:20]}"
        )
    return ok_missing, ok_unexpected


def low_precision_names(model: nn.Module) -> set[str]:
    """Parameters that inference holds in bf16/fp16: the weights of Linear and Conv layers and of
    vocabulary-sized embedding tables, i.e. nearly all of the memory.

    Norms, biases and the position, token-type, modality and class embeddings stay fp32 (a few
    hundred KiB): the residual streams then start and stay in the dtype autocast over fp32 weights
    gives them, and the answers stay autocast's (VQA-RAD test, m3ae-small: 99.8% the same answer
    with this split, 99.1% with every parameter in bf16; `benchmarks/int8_accuracy.py --bf16-weights`).
    """
    names = set()
    for prefix, module in model.named_modules():
        table = isinstance(module, nn.Embedding) and module.num_embeddings >= VOCABULARY_ROWS
        if isinstance(module, (nn.Linear, nn.Conv2d)) or table:
            names.add(f"{prefix}.weight" if prefix else "weight")
    return names


VOCABULARY_ROWS = 1000
"""An embedding table with at least this many rows is a vocabulary (word pieces), held at the low
precision; smaller ones are position / type / modality tables, kept fp32."""


def to_inference_dtype(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Cast the `low_precision_names` parameters to ``dtype`` and every other floating-point one
    to fp32, in place. Run the model under autocast: it casts each op's inputs to one dtype."""
    low = low_precision_names(model)
    for name, param in model.named_parameters():
        if param.is_floating_point():
            param.data = param.data.to(dtype if name in low else torch.float32)
    return model


INIT_FUNCTIONS = ("normal_", "uniform_", "zeros_", "ones_", "constant_", "trunc_normal_", "xavier_uniform_",
                  "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_")
"""The `torch.nn.init` functions `skip_init` turns into no-ops."""


@contextmanager
def skip_init() -> Iterator[None]:
    """Build modules without drawing their random initial weights (``torch.nn.init`` is a no-op inside).

    For a model whose every parameter is loaded next (`load_folder_weights` is strict): drawing the
    weights only to overwrite them cost time and, at base size, 0.4 GiB of peak memory (freed
    temporaries and pages the allocator kept). Not thread-safe: it patches the module functions.
    """
    saved = {name: getattr(nn.init, name) for name in INIT_FUNCTIONS}
    for name in INIT_FUNCTIONS:
        setattr(nn.init, name, lambda tensor, *args, **kwargs: tensor)
    try:
        yield
    finally:
        for name, function in saved.items():
            setattr(nn.init, name, function)


@contextmanager
def default_dtype(dtype: torch.dtype | None) -> Iterator[None]:
    """Create floating-point parameters in ``dtype`` inside the block (None: leave the default).

    A bf16 inference model built this way never exists in fp32 first, so its peak memory is its
    bf16 size (half of a base model's 1.3 GiB), not the fp32 one.
    """
    if dtype is None:
        yield
        return
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def load_state_dict_checked(
    model: nn.Module,
    state_dict: dict[str, torch.Tensor],
    source: str,
    allow_missing: tuple[str, ...] = (),
    allow_unexpected: tuple[str, ...] = (),
) -> LoadReport:
    """Strictly load `state_dict`, tolerating only keys under the allowed prefixes.

    The module's position table (an M3AE's ``vision_encoder.pos_embed``, a bare vision tower's
    ``pos_embed``) is resampled to its grid first; then `check_state_dict` decides.

    Args:
        model: target module (an `M3AE`, a vision or a text tower).
        state_dict: tensors under the module's key names (changed in place by the resize).
        source: the file name, used in error messages.
        allow_missing: prefixes of model keys that may be absent (new heads).
        allow_unexpected: prefixes of source keys that may be dropped (unused heads).

    Raises:
        CheckpointError: any other missing or unexpected key, or a shape mismatch.
    """
    own = model.state_dict()
    resized = [key for key, grid in _pos_tables(model).items()
               if key in own and resize_pos_table(state_dict, key, tuple(own[key].shape), grid)]
    missing, unexpected = check_state_dict(
        {k: tuple(v.shape) for k, v in own.items()}, state_dict, source, allow_missing, allow_unexpected
    )
    kept = {k: v for k, v in state_dict.items() if k in own}
    model.load_state_dict(kept, strict=not missing)
    return LoadReport(loaded=len(kept), missing_allowed=missing, unexpected_allowed=unexpected, resized=resized)


def save_model(
    model: nn.Module, directory: str | Path, tokenizer: Any = None, extra: dict[str, Any] | None = None
) -> Path:
    """Write a model folder (see module docstring). Returns the folder path.

    ``extra["preprocessing"]`` (a `Preprocessing` or its dict) is validated and stored; without one
    the folder records the model's image size with the CLIP defaults.
    """
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
    save_safetensors(state, directory / WEIGHTS_NAME, metadata={"format": "pt"})
    pre = extra.pop("preprocessing", None)
    if isinstance(pre, dict):  # a partial record is completed with the model's image size
        pre = Preprocessing.from_dict({"image_size": model.config.vision.image_size, **pre})
    pre = pre or Preprocessing(image_size=model.config.vision.image_size)
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "model": model.config.to_dict(),
            CHECKSUM_KEY: file_sha256(directory / WEIGHTS_NAME), "preprocessing": pre.to_dict(), **extra}
    (directory / CONFIG_NAME).write_text(json.dumps(meta, indent=2, allow_nan=False) + "\n")
    if tokenizer is not None:
        tokenizer.save_pretrained(str(directory))
    return directory


def read_metadata(directory: str | Path) -> dict[str, Any]:
    """The whole `config.json` of a model folder (model config under "model", extras beside it).

    The one reader of a folder's config: the loaders, inference, the CLI and the demo all use it.

    Raises:
        CheckpointError: a missing folder or file, invalid JSON, or a config of another format.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"model folder not found: {directory} (not an m3ae model folder)")
    path = directory / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"{directory}: not an m3ae model folder ({CONFIG_NAME} not found; "
                              "write one with save_pretrained)")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: invalid JSON at line {err.lineno}: {err.msg}") from err
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or "model" not in meta:
        fmt = meta.get("format") if isinstance(meta, dict) else None
        raise CheckpointError(f"{path}: not an m3ae config (format={fmt!r})")
    return meta


def read_preprocessing(directory: str | Path, meta: dict[str, Any] | None = None) -> Preprocessing:
    """The `Preprocessing` a model folder records (older folders: derived from what they have)."""
    return preprocessing_from_metadata(read_metadata(directory) if meta is None else meta)


def read_config(directory: str | Path) -> ModelConfig:
    """The `ModelConfig` stored in a model folder.

    Raises:
        CheckpointError: a model section with unknown keys or values of the wrong type.
    """
    model = read_metadata(directory)["model"]
    try:
        return ModelConfig.from_dict(model)
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


SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                      "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
                      "U8": torch.uint8, "BOOL": torch.bool}
"""The safetensors dtype names a model folder may hold."""


def read_safetensors_header(path: Path) -> tuple[dict[str, dict[str, Any]], int]:
    """The tensor table of a safetensors file (key -> dtype, shape, data_offsets) and the byte
    where the data starts.

    Raises:
        CheckpointError: a header that is not safetensors.
    """
    try:
        with open(path, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(size)) if 0 < size < 100_000_000 else None
    except (OSError, ValueError):
        header = None
    if isinstance(header, dict):
        header.pop("__metadata__", None)
    if not isinstance(header, dict) or not all(
            isinstance(info, dict) and {"dtype", "shape", "data_offsets"} <= set(info) for info in header.values()):
        raise CheckpointError(f"{path}: not a readable safetensors file (bad header)")
    return header, 8 + size


def iter_safetensors(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """(key, tensor) of a safetensors file, each read with plain file reads into its own buffer.

    Not memory-mapped: the pages of a mapped file count in the process's resident memory for as
    long as it stays open, so a mapped 1.3 GB file doubled a base model's measured peak.

    Raises:
        CheckpointError: a header that is not safetensors, an unknown dtype, or a truncated file.
    """
    header, start = read_safetensors_header(path)
    with open(path, "rb") as f:
        for key, info in header.items():
            dtype = SAFETENSORS_DTYPES.get(info.get("dtype")) if isinstance(info, dict) else None
            if dtype is None:
                raise CheckpointError(f"{path}: tensor {key} has an unsupported dtype {info!r}")
            begin, end = info["data_offsets"]
            raw = torch.empty(end - begin, dtype=torch.uint8)
            f.seek(start + begin)
            if f.readinto(raw.numpy()) != end - begin:
                raise CheckpointError(f"{path}: truncated (tensor {key} ends past the end of the file)")
            yield key, raw.view(dtype).reshape(info["shape"])


def _finite_tensors(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """`iter_safetensors`, refusing a NaN/Inf tensor (checked before any cast: fp16 may overflow)."""
    for key, tensor in iter_safetensors(path):
        if nonfinite_keys({key: tensor}):
            raise CheckpointError(f"{path}: NaN/Inf in tensor {key}: the weights are corrupt or diverged")
        yield key, tensor


def load_folder_weights(model: nn.Module, directory: str | Path) -> None:
    """Load a folder's ``model.safetensors`` into ``model`` one tensor at a time (strict, as
    `load_state_dict_checked`; NaN/Inf refused), each cast to the dtype of the parameter it fills.

    Peak memory is the model plus one tensor, not the model plus a whole state dict (2.6 GiB for a
    base model in fp32). A folder whose position table needs resampling to the model's grid is read
    whole (each tensor cast as it is read) and goes through `load_state_dict_checked`.

    Raises:
        CheckpointError: a missing or unreadable file, a key or shape mismatch, or NaN/Inf weights.
    """
    path = Path(directory) / WEIGHTS_NAME
    if not path.is_file():
        raise CheckpointError(f"{directory}: missing {WEIGHTS_NAME}")
    own = model.state_dict(keep_vars=True)
    header, _ = read_safetensors_header(path)
    stored = {k: torch.empty(info["shape"], device="meta") for k, info in header.items()}  # shapes only
    if any(key in own and tuple(stored[key].shape) != tuple(own[key].shape) for key in _pos_tables(model)):
        state = {k: t.to(own[k].dtype) if k in own and t.is_floating_point() else t for k, t in _finite_tensors(path)}
        load_state_dict_checked(model, state, source=str(directory))
        return
    check_state_dict({k: tuple(v.shape) for k, v in own.items()}, stored, str(directory))
    with torch.no_grad():
        for key, tensor in _finite_tensors(path):
            own[key].copy_(tensor)


# --------------------------------------------------------------------------- where a folder is
# what a Hub repo id looks like: "name" or "org/name" (letters, digits, '-', '_', '.')
REPO_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*$")


def is_hub_id(name: str | Path) -> bool:
    """True when ``name`` is not an existing path and has the shape of a Hub repo id (org/name)."""
    text = str(name)
    return not Path(text).expanduser().exists() and "/" in text and bool(REPO_ID.match(text))


def _cache_dir(cache_dir: str | Path | None) -> str | None:
    # read at call time: huggingface_hub reads HF_HUB_CACHE once, when it is first imported
    return str(cache_dir) if cache_dir is not None else os.environ.get("HF_HUB_CACHE") or None


def resolve_model_dir(
    name_or_path: str | Path,
    allow_download: bool = False,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
) -> Path:
    """A local model folder, or the cached snapshot of a Hub model id.

    Args:
        name_or_path: a folder written by `save_pretrained`, or a Hub id such as "org/m3ae-vqa-rad".
        allow_download: fetch the repository when it is not cached (off by default: m3ae never
            touches the network unless asked).
        revision: branch, tag or commit (default: the cached "main").
        cache_dir: the Hugging Face cache (default: ``HF_HUB_CACHE``, else huggingface_hub's).

    Returns:
        The folder holding ``config.json`` and ``model.safetensors``.

    Raises:
        M3AEError: a path that does not exist, or a Hub id that is not in the cache.
    """
    path = Path(name_or_path).expanduser()
    if path.exists() or not is_hub_id(name_or_path):
        return path  # a local path (missing files are reported by the loader, naming the folder)
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    cache = _cache_dir(cache_dir)
    try:
        folder = snapshot_download(str(name_or_path), revision=revision, cache_dir=cache,
                                   local_files_only=not allow_download)
    except LocalEntryNotFoundError:
        where = cache or "the default Hugging Face cache"
        raise M3AEError(
            f"{name_or_path}: not a local folder, and not in the Hugging Face cache ({where}); "
            "download it first (huggingface-cli download "
            f"{name_or_path}) or pass allow_download=True"
        ) from None
    except Exception as err:  # offline mode, a missing repo or revision: one clear line
        raise M3AEError(f"{name_or_path}: could not resolve on the Hugging Face Hub: {err}") from None
    return Path(folder)
