"""The frozen-text feature cache: exact, computes only unseen rows, bounded in memory."""
from __future__ import annotations

import pytest
import torch

from m3ae.models import M3AE, ModelConfig
from m3ae.models.feature_cache import FrozenFeatureCache


def _tiny() -> M3AE:
    torch.manual_seed(0)
    return M3AE(ModelConfig.from_name("m3ae-tiny").with_heads(["vqa"], num_answers=4)).eval()


def _texts(lengths: list[int], width: int = 9, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 1000, (len(lengths), width), generator=g)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    ids[mask == 0] = 1  # <pad>
    return ids, mask


def test_cached_text_features_equal_the_tower_and_skip_seen_rows():
    model = _tiny()
    ids, mask = _texts([9, 5, 3, 7])
    reference = model.embed_text(ids, mask)  # [B, L, D], no cache
    model.freeze("text_encoder")
    model.cache_frozen_text(max_mb=1)
    calls = []
    tower = model.text_encoder.forward
    model.text_encoder.forward = lambda *a, **k: calls.append(k["input_ids"].shape[0]) or tower(*a, **k)
    first = model.embed_text(ids, mask)
    # the same rows in another order, padded to another length, with one new row
    new_ids, new_mask = _texts([6], seed=1)
    ids2 = torch.cat([ids[[2, 0]], new_ids])[:, :9]
    mask2 = torch.cat([mask[[2, 0]], new_mask])[:, :9]
    second = model.embed_text(ids2, mask2)
    real = mask.bool()
    assert torch.allclose(first[real], reference[real], atol=1e-5)
    assert torch.allclose(second[0][mask2[0].bool()], reference[2][mask[2].bool()], atol=1e-5)
    assert calls == [4, 1]  # the second batch ran the tower on its one unseen row only
    assert model.text_cache.hits == 2 and model.text_cache.misses == 5


def test_cache_evicts_oldest_rows_past_its_bound_and_stays_exact():
    rows = []
    cache = FrozenFeatureCache(max_mb=2 * 9 * 4 / 2**20)  # room for two rows of 9 x 1 floats

    def compute(ids, mask):
        rows.append(ids.shape[0])
        return ids.float()[..., None] * mask[..., None]

    ids, mask = _texts([9, 9, 9])
    out = cache(compute, ids, mask)
    assert len(cache) == 2 and cache.bytes <= cache.max_bytes
    assert torch.equal(out[..., 0], ids.float())
    again = cache(compute, ids, mask)  # the first row was evicted: computed again
    assert torch.equal(again, out) and rows == [3, 1]


def test_cache_needs_a_frozen_text_tower():
    with pytest.raises(ValueError, match="frozen"):
        _tiny().cache_frozen_text()
