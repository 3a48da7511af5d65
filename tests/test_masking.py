"""Invariants of the pure patch / masking / position-table functions."""

from __future__ import annotations

import math

import pytest
import torch

from m3ae.models.masking import (
    num_kept,
    patchify,
    random_masking,
    resize_pos_embed,
    sincos_pos_embed_2d,
    unpatchify,
)


@pytest.mark.parametrize("channels,h,w", [(3, 32, 32), (1, 16, 24), (3, 24, 16)])
def test_patchify_unpatchify_round_trip(channels: int, h: int, w: int) -> None:
    images = torch.randn(2, channels, h, w)
    patches = patchify(images, 8)
    assert patches.shape == (2, (h // 8) * (w // 8), 8 * 8 * channels)
    assert torch.equal(unpatchify(patches, 8, channels, (h // 8, w // 8)), images)


def test_patchify_element_order_is_row_col_channel() -> None:
    p, c = 4, 3
    images = torch.randn(1, c, 8, 12)
    patches = patchify(images, p)
    gw = 12 // p
    # pixel (channel ch, row i*P+r, col j*P+q) -> patch i*gw+j, element (r*P+q)*C + ch
    for i, j, r, q, ch in [(0, 0, 0, 0, 0), (1, 2, 3, 1, 2), (0, 1, 2, 3, 1)]:
        assert patches[0, i * gw + j, (r * p + q) * c + ch] == images[0, ch, i * p + r, j * p + q]


@pytest.mark.parametrize("length,ratio", [(16, 0.75), (324, 0.75), (10, 0.15), (7, 0.5)])
def test_random_masking_keeps_floor_and_restores_order(length: int, ratio: float) -> None:
    g = torch.Generator().manual_seed(0)
    tokens = torch.randn(3, length, 5, generator=g)
    noise = torch.rand(3, length, generator=g)
    kept, mask, ids_restore = random_masking(tokens, ratio, noise=noise)
    keep = math.floor(length * (1 - ratio))
    assert keep == num_kept(length, ratio)
    assert kept.shape == (3, keep, 5)
    assert torch.equal(mask.sum(1), torch.full((3,), float(length - keep)))
    # kept tokens are the ones with the smallest noise, and the mask marks the others
    smallest = noise.argsort(1)[:, :keep]
    assert torch.equal(kept, torch.gather(tokens, 1, smallest[..., None].expand(-1, -1, 5)))
    expected_mask = torch.ones(3, length)
    expected_mask.scatter_(1, smallest, 0.0)
    assert torch.equal(mask, expected_mask)
    # ids_restore inverts the shuffle: [kept, removed] gathered back = original order
    removed = torch.gather(tokens, 1, noise.argsort(1)[:, keep:, None].expand(-1, -1, 5))
    restored = torch.gather(torch.cat([kept, removed], 1), 1, ids_restore[..., None].expand(-1, -1, 5))
    assert torch.equal(restored, tokens)


def test_random_masking_generator_is_deterministic() -> None:
    tokens = torch.randn(2, 16, 4)
    a = random_masking(tokens, 0.75, generator=torch.Generator().manual_seed(3))
    b = random_masking(tokens, 0.75, generator=torch.Generator().manual_seed(3))
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    # the generator decides, not a constant: other seeds keep other patches
    others = [random_masking(tokens, 0.75, generator=torch.Generator().manual_seed(s))[1] for s in (4, 5, 6)]
    assert any(not torch.equal(mask, a[1]) for mask in others)


def test_sincos_values_by_hand() -> None:
    # dim 8 -> 2 frequencies per half-axis: omega = [1, 1/100]; grid 2 rows x 3 cols
    table = sincos_pos_embed_2d(8, (2, 3), cls_token=True)
    assert table.shape == (1 + 6, 8)
    assert torch.equal(table[0], torch.zeros(8))  # CLS row
    row, col = 1, 2
    token = table[1 + row * 3 + col]  # row-major enumeration
    w = [1.0, 0.01]
    expected = [
        math.sin(col * w[0]),
        math.sin(col * w[1]),
        math.cos(col * w[0]),
        math.cos(col * w[1]),
        math.sin(row * w[0]),
        math.sin(row * w[1]),
        math.cos(row * w[0]),
        math.cos(row * w[1]),
    ]
    assert torch.allclose(token, torch.tensor(expected), atol=1e-6)  # first half = column (x)


def test_resize_pos_embed_identity_and_class_row() -> None:
    pos = torch.randn(1 + 16, 6)
    assert torch.equal(resize_pos_embed(pos, (4, 4)), pos)
    bigger = resize_pos_embed(pos, (6, 6))
    assert bigger.shape == (1 + 36, 6)
    assert torch.equal(bigger[0], pos[0])
    batched = resize_pos_embed(pos[None], 6)
    assert torch.equal(batched[0], bigger)
    const = torch.ones(1 + 16, 2)
    assert torch.allclose(resize_pos_embed(const, 6), torch.ones(37, 2), atol=1e-5)  # bicubic keeps constants
