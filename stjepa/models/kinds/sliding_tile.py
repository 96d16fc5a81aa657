"""Sliding tile attention (STA): the grid is cut into (tt, th, tw) tiles, and every token of a
tile attends to all tokens of the tiles within a (wt, wh, ww) window of tiles around it. The
window is the neighborhood rule one level up, on the grid of tiles (odd sizes, shifted inward
at the borders), so it is tile-granular: in a tile-sorted token order it is block-sparse, which
is what FlexAttention's block mask exploits. With sparse (masked) tokens only the tokens
present in those tiles count. Tile sizes must divide the grid.

Backends as for neighborhood attention: ``dense`` (reference mask + SDPA), ``flex``; ``auto``
picks flex on CUDA and dense on the CPU.
"""
from __future__ import annotations

from typing import Sequence

from torch import Tensor

from ..arguments import ArgumentError, one_of, positive_int
from ..grid import Grid
from .neighborhood import AXES, NeighborhoodKind, WindowLayout, cells_of, odd_window, window_mask, window_pairs

NO_DILATION = (1, 1, 1)


class SlidingTileKind:
    name = "sliding_tile"
    BACKENDS = NeighborhoodKind.BACKENDS

    def __init__(self, tile: Sequence[int], tile_window: Sequence[int]):
        if tile is None or len(tile) != 3:
            raise ArgumentError("{tile} must be three tile sizes [tt, th, tw] in grid cells.", tile=tile)
        self.tile = tuple(positive_int(s, "tile") for s in tile)
        self.tile_window = odd_window(tile_window, "tile_window")

    @property
    def tag(self) -> str:
        return f"sta{'x'.join(map(str, self.tile))}w{'x'.join(map(str, self.tile_window))}"

    def validate(self, grid: Grid) -> None:
        for axis, size, length in zip(AXES, self.tile, grid):  # tiles first: the window is counted in them
            if length % size:
                raise ArgumentError(f"{{tile}} does not divide the {length} cells of the {axis} axis; allowed tile "
                                    f"sizes there divide {length}.", tile=list(self.tile))
        for axis, size, k, length in zip(AXES, self.tile, self.tile_window, grid):
            if k > length // size:
                raise ArgumentError(f"{{tile_window}} does not fit the {length // size} tiles of the {axis} axis; "
                                    f"allowed window sizes there are odd and at most {length // size}.",
                                    tile_window=list(self.tile_window))

    def mask(self, ids: Tensor, grid: Grid) -> tuple[Tensor]:
        cells, tiles = cells_of(ids, grid, self.tile)
        return (window_mask(cells, tiles, self.tile_window, NO_DILATION),)

    def pairs(self, ids: Tensor, grid: Grid) -> tuple[int]:
        return (window_pairs(ids, grid, self.tile, self.tile_window, NO_DILATION),)

    def prepare(self, ids: Tensor, grid: Grid, backend: str = "auto") -> tuple[Tensor, tuple[WindowLayout]]:
        """Tokens sorted by tile (t-major over tiles), then grid position: each tile is a run of
        the order, so the window over tiles is block-sparse."""
        one_of(backend, "backend", self.BACKENDS)
        cells, tiles = cells_of(ids, grid, self.tile)
        tile_id = (cells[0] * tiles[1] + cells[1]) * tiles[2] + cells[2]
        order = (tile_id * (grid[0] * grid[1] * grid[2]) + ids).argsort(dim=1)
        sorted_cells = tuple(c.gather(1, order) for c in cells)
        return order, (WindowLayout(sorted_cells, tiles, self.tile_window, NO_DILATION, backend),)


KIND = SlidingTileKind
