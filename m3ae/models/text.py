"""BERT-family text tower (RoBERTa as upstream, or BERT/MiniLM) built from a `TextConfig`.

We wrap `transformers`' own RobertaModel/BertModel instead of vendoring a copy. Upstream only
uses the embeddings and the encoder layers (no pooler), with an additive mask on padded keys;
calling the HF model with `input_ids` + `attention_mask` computes the same thing (RoBERTa
position ids are derived from the ids and the padding index inside the embeddings).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from m3ae.errors import CheckpointError
from m3ae.models.config import TextConfig


def build_text_encoder(cfg: TextConfig) -> nn.Module:
    """A randomly initialised RobertaModel/BertModel without pooler (never reads files)."""
    from transformers import BertModel, RobertaModel

    cls = RobertaModel if cfg.model_type == "roberta" else BertModel
    return cls(cfg.to_hf_config(), add_pooling_layer=False)


def encode_text(encoder: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Run the text tower.

    Args:
        encoder: module from `build_text_encoder`.
        input_ids: [B, L_t] token ids.
        attention_mask: [B, L_t], 1 = real token, 0 = padding.

    Returns:
        [B, L_t, hidden_size] last-layer features.
    """
    return encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


# keys present in HF checkpoints that our pooler-less tower does not have
_IGNORED_HF_KEYS = ("pooler.", "embeddings.position_ids", "cls.", "lm_head.")


def load_text_weights(encoder: nn.Module, folder: str | Path) -> list[str]:
    """Load a local HF folder's weights (model.safetensors or pytorch_model.bin) into the tower.

    Strict except for the pooler/LM-head/position_ids leftovers; a `bert.`/`roberta.` prefix is
    stripped. Returns the list of ignored keys.

    Raises:
        CheckpointError: no weights file, missing keys or a shape mismatch.
    """
    folder = Path(folder)
    st_file, bin_file = folder / "model.safetensors", folder / "pytorch_model.bin"
    if st_file.is_file():
        from safetensors.torch import load_file

        sd = load_file(str(st_file))
    elif bin_file.is_file():
        sd = torch.load(bin_file, map_location="cpu", weights_only=True)
    else:
        raise CheckpointError(
            f"text weights folder {folder} has neither model.safetensors nor pytorch_model.bin"
        )
    cleaned: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        for prefix in ("bert.", "roberta."):
            key = key.removeprefix(prefix)
        cleaned[key] = value
    ignored = [k for k in cleaned if k.startswith(_IGNORED_HF_KEYS)]
    for k in ignored:
        del cleaned[k]
    own = encoder.state_dict()
    missing = sorted(set(own) - set(cleaned))
    unexpected = sorted(set(cleaned) - set(own))
    bad = [
        f"{k}: {tuple(cleaned[k].shape)} vs {tuple(own[k].shape)}"
        for k in set(own) & set(cleaned)
        if cleaned[k].shape != own[k].shape
    ]
    if missing or unexpected or bad:
        raise CheckpointError(
            f"text weights in {folder} do not match the text config: missing={missing[:5]}, "
            f"unexpected={unexpected[:5]}, shape mismatches={bad[:5]}"
        )
    encoder.load_state_dict(cleaned, strict=True)
    return ignored
