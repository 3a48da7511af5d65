"""Text side of the pipeline: the tokenizer, padded tokenisation and MLM masking.

Masking comes in two modes. ``token`` reproduces what the original code effectively does with
RoBERTa (spec §2.2/§9.3): it used a whole-word collator whose word grouping only understands
BERT's ``##`` prefix, so with RoBERTa every padded position (specials and pads included) is a
candidate, ``max(1, round(p * padded_len))`` of them are drawn, and specials/pads are dropped
afterwards. ``word`` is real whole-word masking over the real tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from m3ae.errors import M3AEError
from m3ae.guards import resolve_packaged

ASSETS_ROBERTA = Path(__file__).resolve().parents[1] / "assets" / "roberta-base"
IGNORE_INDEX = -100
"""Label value for positions the MLM loss ignores (PyTorch cross-entropy default)."""
MASK_REPLACE_SHARE = 0.8
"""80/10/10 rule: of the chosen positions 80% become <mask>, half the rest a random id, the rest stay."""
RANDOM_REPLACE_SHARE = 0.5
BPE_WORD_START = "Ġ"  # byte-level BPE marks a leading space with this character
WORDPIECE_CONTINUATION = "##"


def load_tokenizer(path: str | Path | None = None) -> Any:
    """Load the text tokenizer, never from a hub.

    Args:
        path: None for the packaged RoBERTa-base files (``m3ae/assets/roberta-base``), or a local
            folder readable by ``AutoTokenizer.from_pretrained(..., local_files_only=True)``.

    Returns:
        A fast Hugging Face tokenizer.
    """
    from transformers import AutoTokenizer, RobertaTokenizerFast

    if path is None:
        # from_pretrained on the folder works across transformers 4.x (vocab_file=) and 5.x (vocab=)
        return RobertaTokenizerFast.from_pretrained(str(ASSETS_ROBERTA), local_files_only=True)
    folder = resolve_packaged(path)  # package:<module>/<inside> names a folder in an installed package
    if not folder.is_dir():
        raise M3AEError(f"tokenizer folder not found: {folder}")
    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as err:
        raise M3AEError(f"cannot load a tokenizer from {folder}: {err}") from err


@dataclass(frozen=True)
class TokenizerInfo:
    """What masking needs to know about a tokenizer, computed once per tokenizer."""

    mask_token_id: int
    pad_token_id: int
    vocab_size: int
    """len(tokenizer): random replacement ids are drawn uniformly in [0, vocab_size)."""
    continues_word: torch.Tensor
    """[V] bool: True where a token continues the previous word (no "Ġ", or a "##" prefix)."""


def _is_wordpiece(tokenizer: Any, vocab: dict[str, int]) -> bool:
    """True for WordPiece vocabularies ("##" continues a word), False for byte-level BPE ("Ġ" starts one)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return type(backend.model).__name__ == "WordPiece"
    # slow tokenizer: byte-level BPE vocabularies mark most entries with the word-start character
    return sum(tok.startswith(BPE_WORD_START) for tok in vocab) < len(vocab) // 10


def tokenizer_info(tokenizer: Any) -> TokenizerInfo:
    """Collect mask/pad ids, the vocabulary size and the word-continuation table of a tokenizer."""
    if tokenizer.mask_token_id is None or tokenizer.pad_token_id is None:
        raise M3AEError("the tokenizer needs a mask and a pad token for MLM")
    vocab = tokenizer.get_vocab()
    size = max(len(tokenizer), max(vocab.values()) + 1)
    continues = torch.zeros(size, dtype=torch.bool)
    wordpiece = _is_wordpiece(tokenizer, vocab)
    for tok, idx in vocab.items():
        if wordpiece:
            continues[idx] = tok.startswith(WORDPIECE_CONTINUATION)
        else:
            continues[idx] = not tok.startswith(BPE_WORD_START)
    return TokenizerInfo(int(tokenizer.mask_token_id), int(tokenizer.pad_token_id), len(tokenizer), continues)


def tokenize(tokenizer: Any, texts: list[str], max_len: int) -> dict[str, torch.Tensor]:
    """Tokenise with padding to ``max_len`` and truncation.

    Returns:
        ``input_ids``, ``attention_mask`` and ``special_tokens_mask``, each [N, L_t] long.
    """
    enc = tokenizer(
        list(texts),
        padding="max_length",
        truncation=True,
        max_length=max_len,
        return_special_tokens_mask=True,
        return_tensors="pt",
    )
    return {k: enc[k].long() for k in ("input_ids", "attention_mask", "special_tokens_mask")}


def _token_mode_selection(
    input_ids: torch.Tensor,
    special: torch.Tensor,
    info: TokenizerInfo,
    probability: float,
    gen: torch.Generator,
) -> torch.Tensor:
    """Upstream's effective selection: a fixed budget over the padded row, then drop specials/pads.

    # [L_t] -> [L_t] bool
    """
    length = input_ids.shape[0]
    budget = max(1, round(probability * length))  # Python round, as upstream (round-half-even)
    chosen = torch.zeros(length, dtype=torch.bool)
    chosen[torch.randperm(length, generator=gen)[:budget]] = True
    return chosen & ~special.bool() & input_ids.ne(info.pad_token_id)


def word_ids(input_ids: torch.Tensor, special: torch.Tensor, info: TokenizerInfo) -> torch.Tensor:
    """Word index of each real token, -1 for specials/pads.

    A token starts a new word when it has the word-start mark or follows a special token.
    # [L_t] -> [L_t] long
    """
    real = ~special.bool() & input_ids.ne(info.pad_token_id)
    ids = torch.full_like(input_ids, -1)
    word, prev_real = -1, False
    for pos in range(input_ids.shape[0]):
        if not real[pos]:
            prev_real = False
            continue
        if not prev_real or not bool(info.continues_word[input_ids[pos]]):
            word += 1
        ids[pos] = word
        prev_real = True
    return ids


def _word_mode_selection(
    input_ids: torch.Tensor,
    special: torch.Tensor,
    info: TokenizerInfo,
    probability: float,
    gen: torch.Generator,
) -> torch.Tensor:
    """Whole-word masking: shuffle words, take whole words until the token budget is reached."""
    words = word_ids(input_ids, special, info)
    num_real = int(words.ge(0).sum())
    chosen = torch.zeros_like(input_ids, dtype=torch.bool)
    if num_real == 0:
        return chosen
    budget = max(1, round(probability * num_real))
    taken = 0
    for w in torch.randperm(int(words.max()) + 1, generator=gen).tolist():
        members = words.eq(w)
        size = int(members.sum())
        if taken + size > budget:  # a word never gets split; try a shorter one
            continue
        chosen |= members
        taken += size
        if taken >= budget:
            break
    return chosen


def mask_text_tokens(
    input_ids: torch.Tensor,
    special_tokens_mask: torch.Tensor,
    info: TokenizerInfo,
    probability: float = 0.15,
    mode: str = "token",
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked language modelling inputs and labels with the 80/10/10 rule.

    Args:
        input_ids: [B, L_t] padded token ids.
        special_tokens_mask: [B, L_t], 1 at special tokens (<s>, </s>, <pad>).
        info: from ``tokenizer_info``.
        probability: selection share (0.15).
        mode: "token" (upstream-effective) or "word" (whole words).
        generator: source of every random draw, for determinism.

    Returns:
        ``mlm_input_ids`` [B, L_t] and ``mlm_labels`` [B, L_t] (original id where chosen, -100 elsewhere).
    """
    if mode not in ("token", "word"):
        raise M3AEError(f"mlm mode must be 'token' or 'word' (got {mode!r})")
    select = _token_mode_selection if mode == "token" else _word_mode_selection
    squeeze = input_ids.dim() == 1
    ids = input_ids.reshape(-1, input_ids.shape[-1])  # [B, L_t]
    special = special_tokens_mask.reshape(ids.shape)
    chosen = torch.stack(
        [select(ids[b], special[b], info, probability, generator) for b in range(ids.shape[0])]
    )
    labels = torch.where(chosen, ids, torch.full_like(ids, IGNORE_INDEX))
    masked = ids.clone()
    draw = torch.rand(ids.shape, generator=generator)
    to_mask = chosen & (draw < MASK_REPLACE_SHARE)
    to_random = chosen & ~to_mask & (torch.rand(ids.shape, generator=generator) < RANDOM_REPLACE_SHARE)
    masked[to_mask] = info.mask_token_id
    random_ids = torch.randint(info.vocab_size, ids.shape, generator=generator, dtype=ids.dtype)
    masked[to_random] = random_ids[to_random]
    if squeeze:
        return masked[0], labels[0]
    return masked, labels
