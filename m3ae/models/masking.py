"""Pure patch and masking operations with shape contracts (MAE conventions, any C and grid).

Patch element order is (row-in-patch, col-in-patch, channel), as in MAE and upstream M3AE, so
targets computed here line up with the pixel decoder's output of P*P*C values per patch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from m3ae.errors import M3AEError


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Cut images into flattened non-overlapping patches.

    Args:
        images: [B, C, H, W], H and W multiples of `patch_size`.
        patch_size: P.

    Returns:
        [B, L_i, P*P*C] with L_i = (H/P)*(W/P) enumerated row-major.
    """
    b, c, h, w = images.shape
    p = patch_size
    if h % p or w % p:
        raise M3AEError(f"image size {h}x{w} is not a multiple of the patch size {p}")
    gh, gw = h // p, w // p
    x = images.reshape(b, c, gh, p, gw, p)  # [B, C, gh, P, gw, P]
    x = torch.einsum("bchpwq->bhwpqc", x)  # [B, gh, gw, P, P, C]
    return x.reshape(b, gh * gw, p * p * c)  # [B, L_i, P*P*C]


def unpatchify(patches: torch.Tensor, patch_size: int, channels: int, grid: tuple[int, int]) -> torch.Tensor:
    """Inverse of `patchify`.

    Args:
        patches: [B, L_i, P*P*C].
        patch_size: P.
        channels: C.
        grid: (grid_h, grid_w) with grid_h * grid_w == L_i.

    Returns:
        [B, C, grid_h*P, grid_w*P].
    """
    b, n, d = patches.shape
    p, c = patch_size, channels
    gh, gw = grid
    if n != gh * gw or d != p * p * c:
        raise M3AEError(f"patches {tuple(patches.shape)} do not fit grid {grid}, P={p}, C={c}")
    x = patches.reshape(b, gh, gw, p, p, c)  # [B, gh, gw, P, P, C]
    x = torch.einsum("bhwpqc->bchpwq", x)  # [B, C, gh, P, gw, P]
    return x.reshape(b, c, gh * p, gw * p)


def num_kept(length: int, mask_ratio: float) -> int:
    """Tokens kept by `random_masking`: floor(L * (1 - r)), as upstream's int() cast."""
    return int(length * (1 - mask_ratio))


def random_masking(
    tokens: torch.Tensor,
    mask_ratio: float,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """MAE per-sample random masking: keep the tokens with the smallest noise.

    Args:
        tokens: [B, L, D] (no CLS token; the caller keeps CLS aside).
        mask_ratio: fraction r of tokens to remove.
        noise: optional [B, L] uniform noise; drawn with `generator` when None.
        generator: RNG for the noise (deterministic tests).

    Returns:
        kept [B, floor(L(1-r)), D]; mask [B, L] with 1 = removed, in the original order;
        ids_restore [B, L] such that gathering [kept, removed] with it restores the order.
    """
    b, length, d = tokens.shape
    if noise is None:
        noise = torch.rand(
            b, length, generator=generator, device=tokens.device if generator is None else generator.device
        ).to(tokens.device)
    if noise.shape != (b, length):
        raise M3AEError(f"image_noise has shape {tuple(noise.shape)}, expected {(b, length)}")
    keep = num_kept(length, mask_ratio)
    ids_shuffle = torch.argsort(noise, dim=1)  # ascending: small noise is kept
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :keep]
    kept = torch.gather(tokens, 1, ids_keep.unsqueeze(-1).expand(-1, -1, d))  # [B, keep, D]
    mask = torch.ones(b, length, device=tokens.device, dtype=tokens.dtype)
    mask[:, :keep] = 0
    mask = torch.gather(mask, 1, ids_restore)  # back to the original patch order
    return kept, mask, ids_restore


def sincos_pos_embed_2d(dim: int, grid: tuple[int, int] | int, cls_token: bool = True) -> torch.Tensor:
    """Fixed 2-D sine-cosine position table in MAE's layout.

    The first half of the channels encodes the column (x) index, the second half the row (y)
    index; each half is [sin(pos*w_i), cos(pos*w_i)] with w_i = 1/10000^(i/(dim/4)).
    Patches are enumerated row-major; the optional CLS row is all zeros.

    Args:
        dim: embedding width, a multiple of 4.
        grid: (grid_h, grid_w) or a single side.
        cls_token: prepend a zero row for CLS.

    Returns:
        [(1 if cls_token else 0) + grid_h*grid_w, dim], float32.
    """
    if dim % 4:
        raise M3AEError(f"sin-cos position embedding needs a width divisible by 4, got {dim}")
    gh, gw = (grid, grid) if isinstance(grid, int) else grid
    rows, cols = torch.meshgrid(
        torch.arange(gh, dtype=torch.float64), torch.arange(gw, dtype=torch.float64), indexing="ij"
    )

    def axis(pos: torch.Tensor) -> torch.Tensor:  # [N] -> [N, dim/2]
        omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))
        angles = pos.reshape(-1, 1) * omega.reshape(1, -1)
        return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)

    table = torch.cat([axis(cols), axis(rows)], dim=1)  # [gh*gw, dim]
    if cls_token:
        table = torch.cat([torch.zeros(1, dim, dtype=table.dtype), table], dim=0)
    return table.float()


def resize_pos_embed(pos: torch.Tensor, new_grid: tuple[int, int] | int, num_prefix: int = 1) -> torch.Tensor:
    """Bicubically resample a learned square position table to another grid.

    Args:
        pos: [num_prefix + g*g, D] or [1, num_prefix + g*g, D].
        new_grid: (grid_h, grid_w) or a single side.
        num_prefix: leading rows (CLS) copied unchanged.

    Returns:
        same rank as `pos`, with num_prefix + grid_h*grid_w rows.
    """
    batched = pos.dim() == 3
    table = pos[0] if batched else pos
    gh, gw = (new_grid, new_grid) if isinstance(new_grid, int) else new_grid
    prefix, grid_rows = table[:num_prefix], table[num_prefix:]
    old = round(grid_rows.shape[0] ** 0.5)
    if old * old != grid_rows.shape[0]:
        raise M3AEError(f"position table with {grid_rows.shape[0]} grid rows is not a square grid")
    if (old, old) == (gh, gw):
        return pos.clone()
    d = table.shape[1]
    x = grid_rows.reshape(1, old, old, d).permute(0, 3, 1, 2).float()  # [1, D, g, g]
    x = F.interpolate(x, size=(gh, gw), mode="bicubic", align_corners=False)
    x = x.permute(0, 2, 3, 1).reshape(gh * gw, d).to(table.dtype)  # row-major flatten
    out = torch.cat([prefix, x], dim=0)
    return out.unsqueeze(0) if batched else out
