"""Sliding tile attention (STA): the grid is cut into (tt, th, tw) tiles, and every token of a
tile attends to all tokens of the tiles within a (wt, wh, ww) window of tiles around it. The
window is the neighborhood rule one level up, on the grid of tiles (odd sizes, shifted inward
at the borders), so it is tile-granular: in a tile-sorted token order it is block-sparse, which
is what FlexAttention's block mask exploits. With sparse (masked) tokens only the tokens
present in those tiles count. Tile sizes must divide the grid.

Backends compute the same function:

``dense``   the reference: an explicit (B, 1, N, N) mask and SDPA (O(N^2) memory)
``flex``    FlexAttention with a block mask over the flattened batch (compiled on CUDA)
``gather``  tokens packed per tile, every tile's window of tiles gathered into one key set, plain
            SDPA (:func:`~stjepa.models.attention_backends.attend_key_blocks`). With every token
            present (target encoder, probes) all tiles are full, so there is no mask and no
            padding; with sparse tokens each tile gets a tile's worth of slots (at most N), known
            from the grid, so nothing is read to the host. It costs wt * wh * ww copies of K and V, which on the CPU
            makes it slower than the dense path at the published sizes (BENCHMARKS.md); it is the
            path that fits where dense does not.
``auto``    ``flex`` on CUDA; on the CPU ``dense`` up to ``DENSE_MAX_TOKENS`` tokens, else ``gather``.
"""
from __future__ import annotations

from typing import Sequence


import torch
import torch.nn.functional as F
from torch import Tensor

from ..arguments import ArgumentError, one_of, positive_int
from ..attention_backends import attend_key_blocks
from ..grid import Grid
from . import DENSE_MAX_TOKENS, layout_cache, register_kind
from .neighborhood import (AXES, WindowLayout, axis_window_start, cells_of, odd_window, window_mask,
                           window_pairs)

NO_DILATION = (1, 1, 1)


def tile_sizes(value: Sequence[int] | None, name: str) -> tuple[int, int, int]:
    """Three positive tile sizes [t, h, w] in grid cells (the setting ``name``), else ArgumentError."""
    if value is None or len(value) != 3:
        raise ArgumentError(f"{{{name}}} must be three sizes [t, h, w] in grid cells.", **{name: value})
    return tuple(positive_int(s, name) for s in value)


def check_tiles(tile: Sequence[int], grid: Grid, name: str) -> Grid:
    """The number of tiles per axis when ``tile`` (the setting ``name``) divides the grid, else
    ArgumentError."""
    for axis, size, length in zip(AXES, tile, grid):
        if length % size:
            raise ArgumentError(f"{{{name}}} does not divide the {length} cells of the {axis} axis; allowed "
                                f"sizes there divide {length}.", **{name: list(tile)})
    return tuple(length // size for length, size in zip(grid, tile))


def tile_sorted(ids: Tensor, grid: Grid, tile: Sequence[int],
                valid: Tensor | None = None) -> tuple[Tensor, tuple[Tensor, ...]]:
    """The permutation that sorts tokens at ``ids`` (B, N) by tile (t-major over tiles), then grid
    position, so each tile is one run of the order, padded tokens (``valid`` False) last; and the
    tokens' tile coordinates in that order."""
    cells, tiles = cells_of(ids, grid, tile)
    tile_id = (cells[0] * tiles[1] + cells[1]) * tiles[2] + cells[2]
    if valid is not None:
        tile_id = torch.where(valid, tile_id, tiles[0] * tiles[1] * tiles[2])
    order = (tile_id * (grid[0] * grid[1] * grid[2]) + ids).argsort(dim=1)
    return order, tuple(c.gather(1, order) for c in cells)


class TileWindowLayout(WindowLayout):
    """A window layout over tiles for tile-sorted tokens, with the ``gather`` backend besides
    the window layout's ``dense`` and ``flex``."""

    def __init__(self, tile_cells: tuple[Tensor, ...], tile: Sequence[int], grid: Grid, tile_window: Sequence[int],
                 backend: str, valid: Tensor | None = None):
        tiles = tuple(length // size for length, size in zip(grid, tile))
        self.num_tiles, self.tile_volume = tiles[0] * tiles[1] * tiles[2], tile[0] * tile[1] * tile[2]
        # every tile holds tile_volume tokens (every cell present, tile-sorted)
        self.full = valid is None and tile_cells[0].shape[1] == self.num_tiles * self.tile_volume
        if backend == "auto":
            cpu_choice = "dense" if tile_cells[0].shape[1] <= DENSE_MAX_TOKENS else "gather"
            backend = "flex" if tile_cells[0].device.type == "cuda" else cpu_choice
        super().__init__(tile_cells, tiles, tile_window, NO_DILATION, backend, valid)

    @layout_cache
    def window_table(self) -> Tensor:
        """(tiles, wt * wh * ww): the tiles in each tile's window (flat, t-major)."""
        device = self.cells[0].device
        members = [axis_window_start(torch.arange(n, device=device), n, k, 1)[:, None] + torch.arange(k, device=device)
                   for n, k in zip(self.grid, self.window)]  # per axis: (tiles on the axis, k)
        _, th, tw = self.grid
        table = ((members[0][:, None, None, :, None, None] * th + members[1][None, :, None, None, :, None]) * tw
                 + members[2][None, None, :, None, None, :])
        return table.reshape(self.num_tiles, -1)

    @layout_cache
    def _slots(self) -> tuple[Tensor, int, Tensor | None]:
        """Slot of each token when tiles are packed C slots apart (C: a tile's cells, at most N;
        padded tokens go to a last slot past the tiles), C, and which slots hold tokens (None
        when all do). Shapes from the grid only: no host read."""
        t, h, w = self.cells
        B, N = t.shape
        if self.full:  # tile-sorted and every tile full: token i sits in slot i
            return torch.arange(N, device=t.device).expand(B, N), self.tile_volume, None
        tile_id = (t * self.grid[1] + h) * self.grid[2] + w
        if self.valid is not None:
            tile_id = torch.where(self.valid, tile_id, self.num_tiles)  # the padding: one more "tile"
        counts = torch.zeros(B, self.num_tiles + 1, dtype=torch.long, device=t.device).scatter_add_(
            1, tile_id, torch.ones_like(tile_id))
        width = min(self.tile_volume, N)
        rank = torch.arange(N, device=t.device) - (counts.cumsum(1) - counts).gather(1, tile_id)
        slot = torch.where(tile_id < self.num_tiles, tile_id * width + rank, self.num_tiles * width)
        valid = torch.arange(width, device=t.device) < counts[:, :self.num_tiles, None]
        return slot, width, valid

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        if self.backend != "gather":
            return super().attend(q, k, v)
        slot, width, valid = self._slots
        B, heads, N, D = q.shape
        index = slot[:, None, :, None].expand(B, heads, N, D)

        def pack(x: Tensor) -> Tensor:  # padded tokens land in the one slot past the tiles, then dropped
            if valid is None:
                return x.view(B, heads, self.num_tiles, width, D)
            packed = x.new_zeros(B, heads, self.num_tiles * width + 1, D).scatter(2, index, x)
            return packed[:, :, :-1].view(B, heads, self.num_tiles, width, D)

        out = attend_key_blocks(pack(q), pack(k), pack(v), self.window_table, valid)
        return F.pad(out.reshape(B, heads, -1, D), (0, 0, 0, 1)).gather(2, index)


@register_kind
class SlidingTileKind:
    name = "sliding_tile"
    BACKENDS = ("auto", "dense", "flex", "gather")
    label = "sliding tile"
    is_global = False  # its layers always differ from global attention

    def __init__(self, tile: Sequence[int], tile_window: Sequence[int]):
        self.tile = tile_sizes(tile, "tile")
        self.tile_window = odd_window(tile_window, "tile_window")

    @property
    def tag(self) -> str:
        return f"sta{'x'.join(map(str, self.tile))}w{'x'.join(map(str, self.tile_window))}"

    def validate(self, grid: Grid) -> None:
        tiles = check_tiles(self.tile, grid, "tile")  # tiles first: the window is counted in them
        for axis, k, count in zip(AXES, self.tile_window, tiles):
            if k > count:
                raise ArgumentError(f"{{tile_window}} does not fit the {count} tiles of the {axis} axis; "
                                    f"allowed window sizes there are odd and at most {count}.",
                                    tile_window=list(self.tile_window))

    validate_settings = validate  # the configured grid is checked as any input grid

    def mask(self, ids: Tensor, grid: Grid) -> tuple[Tensor]:
        cells, tiles = cells_of(ids, grid, self.tile)
        return (window_mask(cells, tiles, self.tile_window, NO_DILATION),)

    def pairs(self, ids: Tensor, grid: Grid) -> tuple[int]:
        return (window_pairs(ids, grid, self.tile, self.tile_window, NO_DILATION),)

    def prepare(self, ids: Tensor, grid: Grid, backend: str = "auto",
                valid: Tensor | None = None) -> tuple[Tensor, tuple[WindowLayout]]:
        """Tokens sorted by tile (t-major over tiles), then grid position: each tile is a run of
        the order, so the window over tiles is block-sparse."""
        one_of(backend, "backend", self.BACKENDS)
        order, sorted_tiles = tile_sorted(ids, grid, self.tile, valid)
        return order, (TileWindowLayout(sorted_tiles, self.tile, grid, self.tile_window, backend,
                                        None if valid is None else valid.gather(1, order)),)
