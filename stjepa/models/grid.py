"""The token grid: (T', H', W') shapes, flat token indices and their (t, h, w) positions."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from .arguments import ArgumentError

Grid = tuple[int, int, int]

# an index slot that holds no token: index lists padded to a fixed length (static shapes) fill
# their empty slots with it, and ``ids >= 0`` is their validity mask (True = a real token)
PAD = -1


def valid_slots(ids: Tensor) -> Tensor:
    """(B, N) bool: True where ``ids`` holds a token, False at :data:`PAD` slots."""
    return ids >= 0


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
    """x (B, N, ...) -> x[b, index[b]] for (B, K) indices; a :data:`PAD` slot reads token 0 (its
    value is never used)."""
    index = index.clamp(min=0)
    idx = index.reshape(*index.shape, *([1] * (x.dim() - 2))).expand(*index.shape, *x.shape[2:])
    return x.gather(1, idx)


def check_indices(ids: Tensor | Sequence[Tensor], grid: Grid, what: str = "mask") -> None:
    """Refuse index tensors of the wrong shape, type or range (:data:`PAD` is allowed: an empty
    slot). The device checks the range itself (``torch._assert_async``): no host read, so the
    step stays asynchronous and capturable. On a GPU a bad index fails the next synchronizing
    call with a device-side assert carrying the sentence; on the CPU (eager) the assert fails at
    once and is raised as ValueError with the values found."""
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
    rule = (f"{what} indices must lie in 0..{numel - 1} for a {grid[0]}x{grid[1]}x{grid[2]} token grid "
            f"({PAD}: an empty slot)")
    ok = (bounds[0] >= PAD) & (bounds[1] < numel)
    if bounds.is_cuda or torch.compiler.is_compiling():
        torch._assert_async(ok, rule + ".")
        return
    try:
        torch._assert_async(ok, rule + ".")  # on the CPU the check runs here, in the dispatcher
    except RuntimeError:
        low, high = bounds.tolist()  # the input is refused: reading it costs nothing that matters
        raise ValueError(f"{rule}; got values in {low}..{high}.") from None
