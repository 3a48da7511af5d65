"""Load a local OpenAI CLIP ViT (e.g. ViT-B/16) into our vision tower, without running its code.

Accepted sources:
* OpenAI's released `.pt` (a TorchScript archive): `data.pkl` is read with the restricted
  unpickler and the tensors are collected from the object tree; `torch.jit.load` is never used.
* a plain state dict file (`visual.*` keys, optionally under a prefix);
* a transformers `CLIPVisionModel` / `CLIPModel` folder (config.json + safetensors/bin).

Like upstream, only the first `layers` blocks are kept (CLIP's later blocks are dropped), the
final `visual.proj` is not used, and the position table is resized to the configured grid (by the
strict loader of `m3ae.models.io`, shared with every other weight source).
"""

from __future__ import annotations

import io
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from m3ae.errors import CheckpointError
from m3ae.models.io import load_state_dict_checked
from m3ae.weights.unpickle import Placeholder, RestrictedUnpickler, load_checkpoint_file

_OPENAI_RENAMES = [
    ("class_embedding", "class_embedding"),
    ("positional_embedding", "pos_embed"),
    ("conv1.weight", "patch_embed.weight"),
    ("ln_pre.", "norm_pre."),
    ("ln_post.", "norm_post."),
]
_OPENAI_BLOCK = [
    ("ln_1.", "norm1."),
    ("ln_2.", "norm2."),
    ("attn.in_proj_weight", "attn.in_proj.weight"),
    ("attn.in_proj_bias", "attn.in_proj.bias"),
    ("attn.out_proj.", "attn.out_proj."),
    ("mlp.c_fc.", "mlp.fc1."),
    ("mlp.c_proj.", "mlp.fc2."),
]


# --------------------------------------------------------------------------- readers
class _TorchScriptUnpickler(RestrictedUnpickler):
    """Reads `data.pkl` of a TorchScript archive; tensors come from `<prefix>/data/<key>`."""

    def __init__(self, file: Any, archive: zipfile.ZipFile, prefix: str) -> None:
        super().__init__(file)
        self.archive, self.prefix = archive, prefix

    def persistent_load(self, pid: Any) -> Any:
        kind, storage_cls, key, _location, _numel = pid
        if kind != "storage":
            raise CheckpointError(f"unsupported persistent id {kind!r} in TorchScript archive")
        raw = self.archive.read(f"{self.prefix}/data/{key}")
        with warnings.catch_warnings():  # the legacy storage classes warn on attribute access
            warnings.simplefilter("ignore")
            dtype = storage_cls.dtype
        untyped = torch.UntypedStorage.from_buffer(raw, dtype=torch.uint8)
        return torch.storage.TypedStorage(wrap_storage=untyped, dtype=dtype, _internal=True)


def _collect(obj: Any, prefix: str, out: dict[str, torch.Tensor]) -> None:
    """Walk a TorchScript object tree (inert placeholders whose state is an attribute dict)."""
    state = obj.state if isinstance(obj, Placeholder) else obj
    if not isinstance(state, dict):
        return
    for name, value in state.items():
        if isinstance(value, torch.Tensor):
            out[prefix + name] = value
        elif isinstance(value, (Placeholder, dict)):
            _collect(value, f"{prefix}{name}.", out)


def _read_torchscript(path: Path) -> dict[str, torch.Tensor] | None:
    """State dict of a TorchScript archive, or None when `path` is not one."""
    if not zipfile.is_zipfile(path):
        return None
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        if not any(n.endswith("/constants.pkl") for n in names):
            return None  # a regular torch.save zip
        data_pkl = next(n for n in names if n.endswith("/data.pkl"))
        prefix = data_pkl[: -len("/data.pkl")]
        root = _TorchScriptUnpickler(io.BytesIO(archive.read(data_pkl)), archive, prefix).load()
    out: dict[str, torch.Tensor] = {}
    _collect(root, "", out)
    return out


def _read_hf_folder(folder: Path) -> dict[str, torch.Tensor]:
    """A transformers CLIP folder converted to OpenAI `visual.*` names."""
    if (folder / "model.safetensors").is_file():
        from safetensors.torch import load_file

        sd = load_file(str(folder / "model.safetensors"))
    elif (folder / "pytorch_model.bin").is_file():
        sd = torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    else:
        raise CheckpointError(f"{folder}: no model.safetensors or pytorch_model.bin")
    sd = {k.split("vision_model.", 1)[1]: v for k, v in sd.items() if "vision_model." in k}
    out = {
        "visual.class_embedding": sd["embeddings.class_embedding"],
        "visual.conv1.weight": sd["embeddings.patch_embedding.weight"],
        "visual.positional_embedding": sd["embeddings.position_embedding.weight"],
    }
    for p in ("weight", "bias"):
        out[f"visual.ln_pre.{p}"] = sd[f"pre_layrnorm.{p}"]
        out[f"visual.ln_post.{p}"] = sd[f"post_layernorm.{p}"]
    n = 0
    while f"encoder.layers.{n}.layer_norm1.weight" in sd:
        src, dst = f"encoder.layers.{n}.", f"visual.transformer.resblocks.{n}."
        for p in ("weight", "bias"):
            out[f"{dst}attn.in_proj_{p}"] = torch.cat([sd[f"{src}self_attn.{x}_proj.{p}"] for x in "qkv"])
            out[f"{dst}attn.out_proj.{p}"] = sd[f"{src}self_attn.out_proj.{p}"]
            out[f"{dst}ln_1.{p}"] = sd[f"{src}layer_norm1.{p}"]
            out[f"{dst}ln_2.{p}"] = sd[f"{src}layer_norm2.{p}"]
            out[f"{dst}mlp.c_fc.{p}"] = sd[f"{src}mlp.fc1.{p}"]
            out[f"{dst}mlp.c_proj.{p}"] = sd[f"{src}mlp.fc2.{p}"]
        n += 1
    return out


def read_clip_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """OpenAI-named (`visual.*`) tensors from any accepted source."""
    path = Path(path)
    if path.is_dir():
        return _read_hf_folder(path)
    sd = _read_torchscript(path)
    if sd is None:
        obj = load_checkpoint_file(path)
        sd = obj.get("state_dict", obj)
    # accept prefixes such as "module." or "vision_encoder."
    visual = {
        k[k.index("visual.") :]: v for k, v in sd.items() if isinstance(v, torch.Tensor) and "visual." in k
    }
    if not visual:
        raise CheckpointError(f"{path}: no CLIP visual tower ('visual.*' keys) found")
    return visual


# --------------------------------------------------------------------------- conversion
def clip_to_vision_state_dict(
    sd: dict[str, torch.Tensor], tower: nn.Module
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Map `visual.*` keys onto a `VisionTransformer`, keeping only its first `layers` blocks."""
    cfg = tower.cfg
    out: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    for key, value in sd.items():
        name = key[len("visual.") :]
        new = None
        for src, dst in _OPENAI_RENAMES:
            if name.startswith(src):
                new = dst + name[len(src) :]
        if name.startswith("transformer.resblocks."):
            index, rest = name[len("transformer.resblocks.") :].split(".", 1)
            if int(index) >= cfg.layers:
                dropped.append(key)  # upstream builds one block fewer than CLIP has
                continue
            for src, dst in _OPENAI_BLOCK:
                if rest.startswith(src):
                    new = f"blocks.{index}.{dst}{rest[len(src) :]}"
        if new is None:
            dropped.append(key)  # visual.proj: the joint-space projection is not used
            continue
        out[new] = value.float()
    return out, dropped  # the position table is resized to the tower's grid by the loader


def load_clip_vision(tower: nn.Module, path: str | Path) -> str:
    """Load CLIP weights into `tower` strictly; returns a one-line summary.

    Raises:
        CheckpointError: missing blocks, missing keys or shape mismatches.
    """
    sd, dropped = clip_to_vision_state_dict(read_clip_state_dict(path), tower)
    report = load_state_dict_checked(tower, sd, f"{path} (CLIP weights for the vision config)")
    return f"vision tower loaded from {path} ({report.loaded} tensors, {len(dropped)} CLIP tensors not used)"
