"""BERT-family text tower (RoBERTa as upstream, or BERT/MiniLM) built from a `TextConfig`.

We wrap `transformers`' own RobertaModel/BertModel instead of vendoring a copy. Upstream only
uses the embeddings and the encoder layers (no pooler), with an additive mask on padded keys;
calling the HF model with `input_ids` + `attention_mask` computes the same thing (RoBERTa
position ids are derived from the ids and the padding index inside the embeddings).
Reading HF folders (config and weights) is a foreign format: see `m3ae.weights.text`.
"""

from __future__ import annotations

import torch
from torch import nn

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
