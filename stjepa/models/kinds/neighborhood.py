"""Neighborhood attention (NATTEN style) on the token grid.

A query at cell (t, h, w) sees the keys whose cells lie in a (kt, kh, kw) window around it.
As in NATTEN, the window is shifted inward near the grid border instead of cut, so on a full
grid every query sees exactly kt * kh * kw cells; with dilation d along an axis the window
takes every d-th cell of the query's own residue class (p mod d). Along an axis of length L,
for a query at i with kernel k and dilation d: the class holds G = ceil((L - i mod d) / d)
cells, the window starts at ``clamp(i // d - k // 2, 0, G - k)`` in class units and holds k of
them. With sparse (masked) tokens the window is the same set of cells; only the tokens present
are attended to; padded tokens (``valid`` False, index lists of a fixed length) are never keys.
Every shape comes from the token count: no host reads.

Backends: ``dense`` (the reference: an explicit (B, 1, N, N) mask and SDPA), ``flex``
(FlexAttention with a block mask over the flattened batch, compiled on CUDA); ``auto`` picks
flex on CUDA and dense on the CPU.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from ..arguments import ArgumentError, one_of, positive_int
from ..attention_backends import create_block_mask, flex_attend, masked_attend
from ..grid import Grid, grid_positions
from . import layout_cache, register_kind

AXES = ("t", "h", "w")


def axis_window_start(pos: Tensor, length: int, kernel: int, dilation: int) -> Tensor:
    """First cell (in units of the query's residue class) of each query's window on one axis."""
    residue = pos % dilation
    group = torch.div(length - residue + dilation - 1, dilation, rounding_mode="floor")
    return (torch.div(pos, dilation, rounding_mode="floor") - kernel // 2).clamp(min=0).minimum(group - kernel)


def in_window(q_pos: Sequence[Tensor], k_pos: Sequence[Tensor], grid: Grid, window: Sequence[int],
              dilation: Sequence[int]) -> Tensor:
    """True where the key cell lies in the query cell's window; per-axis positions broadcast."""
    inside = None
    for qp, kp, length, kernel, dil in zip(q_pos, k_pos, grid, window, dilation):
        start = axis_window_start(qp, length, kernel, dil)
        unit = torch.div(kp, dil, rounding_mode="floor")
        ok = ((kp % dil) == (qp % dil)) & (unit >= start) & (unit < start + kernel)
        inside = ok if inside is None else inside & ok
    return inside


def window_mask(cells: Sequence[Tensor], grid: Grid, window: Sequence[int], dilation: Sequence[int]) -> Tensor:
    """(..., N, N) window mask among cells given per axis as (..., N) positions."""
    return in_window([c[..., :, None] for c in cells], [c[..., None, :] for c in cells], grid, window, dilation)


def cells_of(ids: Tensor, grid: Grid, cell: Sequence[int]) -> tuple[tuple[Tensor, ...], Grid]:
    """Per-axis cell coordinates of tokens when the grid is cut into cells of ``cell`` tokens
    ((1, 1, 1): the tokens' own positions; tiles for sliding-tile attention), and the cell grid."""
    pos = grid_positions(ids, grid)
    return (tuple(torch.div(p, c, rounding_mode="floor") for p, c in zip(pos, cell)),
            tuple(length // c for length, c in zip(grid, cell)))


class WindowLayout:
    """What a window kind hands its layers for one forward: each token's cell coordinates and
    the window rule over cells, ``valid`` (B, N) the real tokens (None: all); ``attend`` for
    (B, heads, N, D) in the same token order."""

    def __init__(self, cells: tuple[Tensor, ...], grid: Grid, window: Sequence[int], dilation: Sequence[int],
                 backend: str, valid: Tensor | None = None):
        self.cells, self.grid, self.window, self.dilation = cells, grid, tuple(window), tuple(dilation)
        self.valid = valid
        self.backend = backend if backend != "auto" else ("flex" if cells[0].device.type == "cuda" else "dense")

    @layout_cache
    def dense_mask(self) -> Tensor:
        mask = window_mask(self.cells, self.grid, self.window, self.dilation)
        if self.valid is not None:  # no padded key; a padded query sees every key (its output is unused)
            mask = mask & self.valid[:, None, :] | ~self.valid[:, :, None]
        return mask[:, None]

    @layout_cache
    def block_mask(self):
        B, N = self.cells[0].shape
        flat = [c.reshape(-1) for c in self.cells]
        sample = torch.arange(B, device=flat[0].device).repeat_interleave(N)
        valid = torch.ones(B * N, dtype=torch.bool, device=sample.device) if self.valid is None else self.valid.reshape(-1)
        grid, window, dilation = self.grid, self.window, self.dilation

        def same_sample_in_window(b, head, q_idx, kv_idx):  # a padded query's row is empty: flex outputs 0
            q_pos, k_pos = [c[q_idx] for c in flat], [c[kv_idx] for c in flat]
            return (sample[q_idx] == sample[kv_idx]) & valid[kv_idx] & in_window(q_pos, k_pos, grid, window, dilation)

        return create_block_mask(same_sample_in_window, None, None, B * N, B * N, device=flat[0].device)

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        if self.backend == "dense":
            return masked_attend(q, k, v, self.dense_mask)
        return flex_attend(q, k, v, self.block_mask)


def window_pairs(ids: Tensor, grid: Grid, cell: Sequence[int], window: Sequence[int], dilation: Sequence[int]) -> int:
    """Query-key pairs over the batch without the N x N mask: the rule is separable per axis, so
    the tokens present in every cell's window are one einsum of per-axis (L, L) window matrices
    over the token occupancy grid."""
    axis = []
    for length, size, kernel, dil in zip(grid, cell, window, dilation):
        token_cell = torch.div(torch.arange(length), size, rounding_mode="floor")
        axis.append(window_mask([token_cell], (length // size,), (kernel,), (dil,)).double())
    occupancy = torch.zeros(ids.shape[0], grid[0] * grid[1] * grid[2], dtype=torch.float64)
    occupancy.scatter_(1, ids.cpu(), 1.0)
    seen = torch.einsum("at,bh,cw,nthw->nabc", *axis, occupancy.view(-1, *grid)).reshape(ids.shape[0], -1)
    return int(round(float((seen * occupancy).sum())))


def odd_window(value: Sequence[int] | None, name: str) -> tuple[int, int, int]:
    """Three odd positive sizes [kt, kh, kw] (a window is centred on its query), else ArgumentError."""
    if value is None or len(value) != 3:
        raise ArgumentError(f"{{{name}}} must be three odd window sizes [kt, kh, kw].", **{name: value})
    sizes = tuple(positive_int(k, name) for k in value)
    if any(k % 2 == 0 for k in sizes):
        raise ArgumentError(f"{{{name}}} needs odd sizes (a window is centred on its query); allowed values are "
                            "1, 3, 5, ...", **{name: list(sizes)})
    return sizes


@register_kind
class NeighborhoodKind:
    name = "neighborhood"
    BACKENDS = ("auto", "dense", "flex")
    label = "neighborhood"
    is_global = False  # its layers always differ from global attention

    def __init__(self, window: Sequence[int], dilation: Sequence[int] | None = None):
        self.window = odd_window(window, "window")
        dilation = (1, 1, 1) if dilation is None else dilation
        if len(dilation) != 3:
            raise ArgumentError("{dilation} must be three integers >= 1 [dt, dh, dw], or null.", dilation=dilation)
        self.dilation = tuple(positive_int(d, "dilation") for d in dilation)

    @property
    def tag(self) -> str:
        dil = "" if self.dilation == (1, 1, 1) else "d" + "x".join(map(str, self.dilation))
        return f"nbhd{'x'.join(map(str, self.window))}{dil}"

    def covers(self, grid: Grid) -> bool:
        """Whether every window is the whole grid (the kind then equals full attention)."""
        return all(k >= length and d == 1 for k, d, length in zip(self.window, self.dilation, grid))

    def validate(self, grid: Grid) -> None:
        for axis, k, d, length in zip(AXES, self.window, self.dilation, grid):
            smallest_class = length // d  # cells of the smallest residue class along the axis
            if k > smallest_class:
                raise ArgumentError(
                    f"{{window}} with {{dilation}} does not fit the {length} cells of the {axis} axis; a window of "
                    f"k cells every d needs k <= {length} // d.", window=list(self.window),
                    dilation=list(self.dilation))

    validate_settings = validate  # the configured grid is checked as any input grid

    def mask(self, ids: Tensor, grid: Grid) -> tuple[Tensor]:
        return (window_mask(grid_positions(ids, grid), grid, self.window, self.dilation),)

    def pairs(self, ids: Tensor, grid: Grid) -> tuple[int]:
        return (window_pairs(ids, grid, (1, 1, 1), self.window, self.dilation),)

    def prepare(self, ids: Tensor, grid: Grid, backend: str = "auto",
                valid: Tensor | None = None) -> tuple[Tensor, tuple[WindowLayout]]:
        """Tokens in grid order (t-major): neighbours sit close together, so flex's block mask is sparse."""
        one_of(backend, "backend", self.BACKENDS)
        order = ids.argsort(dim=1)
        return order, (WindowLayout(grid_positions(ids.gather(1, order), grid), grid, self.window, self.dilation,
                                    backend, None if valid is None else valid.gather(1, order)),)
