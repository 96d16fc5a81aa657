"""The token grid: (T', H', W') shapes, flat token indices and their (t, h, w) positions."""
from __future__ import annotations

from typing import Sequence

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


def check_indices(ids: Tensor | Sequence[Tensor], grid: Grid, what: str = "mask") -> None:
    """Refuse index tensors of the wrong shape, type or range. On the CPU the range of all of
    them is read at once and a bad one raises ValueError here. On a GPU, and inside
    ``torch.compile``, the device checks the range itself (``torch._assert_async``): no host
    sync, so the step stays asynchronous and capturable; a bad index then fails the next
    synchronizing call with a device-side assert carrying the same sentence."""
    tensors = [ids] if isinstance(ids, Tensor) else list(ids)
    for t in tensors:
        if t.dtype not in (torch.int32, torch.int64) or t.dim() != 2:
            raise ValueError(f"{what} indices must be a (batch, tokens) integer tensor, got {tuple(t.shape)} {t.dtype}.")
    ranges = [torch.stack(torch.aminmax(t)) for t in tensors if t.numel()]
    if not ranges:
        return
    numel = grid[0] * grid[1] * grid[2]
    per_tensor = torch.stack(ranges)  # (tensors, 2): min and max of each
    bounds = torch.stack([per_tensor[:, 0].min(), per_tensor[:, 1].max()])
    rule = f"{what} indices must lie in 0..{numel - 1} for a {grid[0]}x{grid[1]}x{grid[2]} token grid"
    if bounds.is_cuda or torch.compiler.is_compiling():
        torch._assert_async((bounds[0] >= 0) & (bounds[1] < numel), rule + ".")
        return
    low, high = bounds.tolist()
    if low < 0 or high >= numel:
        raise ValueError(f"{rule}; got values in {low}..{high}.")
