"""The token grid: (T', H', W') shapes, flat token indices and their (t, h, w) positions."""
from __future__ import annotations

import torch
from torch import Tensor

from .arguments import ArgumentError

Grid = tuple[int, int, int]


def token_grid(shape: tuple[int, ...], patch_size: int, tubelet_size: int) -> Grid:
    """(B, C, T, H, W) input shape -> (T', H', W') token grid, refusing sizes that do not divide."""
    _, _, T, H, W = shape
    if T % tubelet_size:
        raise ArgumentError(f"input of {T} frames is not a multiple of {{tubelet_size}}.", tubelet_size=tubelet_size)
    for name, size in (("height", H), ("width", W)):
        if size % patch_size:
            raise ArgumentError(f"input {name} {size} is not a multiple of {{patch_size}}.", patch_size=patch_size)
    return T // tubelet_size, H // patch_size, W // patch_size


def grid_positions(ids: Tensor, grid: Grid) -> tuple[Tensor, Tensor, Tensor]:
    """Flat token index (t-major, then h, then w) -> (t, h, w) coordinates."""
    _, H, W = grid
    return ids // (H * W), (ids // W) % H, ids % W


def gather_tokens(x: Tensor, index: Tensor) -> Tensor:
    """x (B, N, ...) -> x[b, index[b]] for (B, K) indices."""
    idx = index.reshape(*index.shape, *([1] * (x.dim() - 2))).expand(*index.shape, *x.shape[2:])
    return x.gather(1, idx)


def check_indices(ids: Tensor, grid: Grid, what: str = "mask") -> None:
    """Refuse index tensors of the wrong shape, type or range (one host sync for the range)."""
    numel = grid[0] * grid[1] * grid[2]
    if ids.dtype not in (torch.int32, torch.int64) or ids.dim() != 2:
        raise ValueError(f"{what} indices must be a (batch, tokens) integer tensor, got {tuple(ids.shape)} {ids.dtype}.")
    if not ids.numel():
        return
    low, high = torch.stack(torch.aminmax(ids)).tolist()
    if low < 0 or high >= numel:
        raise ValueError(
            f"{what} indices must lie in 0..{numel - 1} for a {grid[0]}x{grid[1]}x{grid[2]} token grid; "
            f"got values in {low}..{high}."
        )
