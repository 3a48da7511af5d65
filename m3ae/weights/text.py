"""Local Hugging Face text-model folders (RoBERTa, BERT, MiniLM): their config and their weights.

A foreign format, so it lives here and not on the model floor: `text_config_from_folder` reads
the folder's ``config.json`` into a `TextConfig`, `load_text_weights` loads its
``model.safetensors`` / ``pytorch_model.bin`` into a text tower through the strict loader.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from m3ae.errors import CheckpointError, M3AEError
from m3ae.models.config import TextConfig
from m3ae.models.io import load_state_dict_checked

IGNORED_HF_KEYS = ("pooler.", "embeddings.position_ids", "cls.", "lm_head.")
"""Keys present in HF checkpoints that our pooler-less tower does not have (the only allow-list)."""


def text_config_from_folder(path: str | Path) -> TextConfig:
    """Read a local HF folder's `config.json` (RoBERTa, BERT, MiniLM) into a TextConfig.

    Raises:
        M3AEError: the folder or its config.json is missing, or the model type is unsupported.
    """
    cfg_file = Path(path) / "config.json"
    if not cfg_file.is_file():
        raise M3AEError(f"text weights folder {path} has no config.json")
    try:
        hf = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as err:
        raise M3AEError(f"{cfg_file}: not valid JSON ({err})") from err
    model_type = hf.get("model_type")
    if model_type not in ("roberta", "bert"):
        raise M3AEError(f"{cfg_file}: model_type {model_type!r} is not supported (roberta or bert)")
    return TextConfig(
        model_type=model_type,
        vocab_size=hf["vocab_size"],
        hidden_size=hf["hidden_size"],
        num_layers=hf["num_hidden_layers"],
        num_heads=hf["num_attention_heads"],
        intermediate_size=hf["intermediate_size"],
        max_position_embeddings=hf["max_position_embeddings"],
        pad_token_id=hf.get("pad_token_id", 1 if model_type == "roberta" else 0),
        type_vocab_size=hf.get("type_vocab_size", 1 if model_type == "roberta" else 2),
        layer_norm_eps=hf.get("layer_norm_eps", 1e-12),
        dropout=hf.get("hidden_dropout_prob", 0.1),
        pretrained_path=str(path),
    )


def read_hf_state_dict(folder: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a local HF folder: ``model.safetensors``, else ``pytorch_model.bin``.

    Raises:
        CheckpointError: the folder has neither file.
    """
    folder = Path(folder)
    st_file, bin_file = folder / "model.safetensors", folder / "pytorch_model.bin"
    if st_file.is_file():
        from safetensors.torch import load_file

        return load_file(str(st_file))
    if bin_file.is_file():
        return torch.load(bin_file, map_location="cpu", weights_only=True)
    raise CheckpointError(f"{folder}: has neither model.safetensors nor pytorch_model.bin")


def load_text_weights(encoder: nn.Module, folder: str | Path) -> list[str]:
    """Load a local HF folder's weights into the text tower.

    Strict except for the pooler/LM-head/position_ids leftovers (`IGNORED_HF_KEYS`); a
    ``bert.``/``roberta.`` prefix is stripped. Returns the ignored keys.

    Raises:
        CheckpointError: no weights file, missing keys or a shape mismatch.
    """
    cleaned = {key.removeprefix("bert.").removeprefix("roberta."): value
               for key, value in read_hf_state_dict(folder).items()}
    report = load_state_dict_checked(encoder, cleaned, f"text weights in {folder}",
                                     allow_unexpected=IGNORED_HF_KEYS)
    return report.unexpected_allowed
