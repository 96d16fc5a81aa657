"""A stack of transformer blocks over tokens that carry (t, h, w) grid positions.

Shared by the encoder and the predictor: the stack's attention layout (which layers are area
layers), and running the blocks, where positions, the area sort and the RoPE tables are
computed once per forward and handed to every layer.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from .area import AreaLayout, AreaSplits, area_index
from .attention_config import AttentionConfig
from .grid import Grid, gather_tokens, grid_positions
from .rope import RopeTables


class AttentionLayoutMixin:
    """Shared by encoder and predictor: the configured token grid and the attention layout.
    Expects ``num_frames``, ``tubelet_size``, ``img_size``, ``patch_size`` and ``depth``."""

    @property
    def default_grid(self) -> Grid:
        t = max(self.num_frames // self.tubelet_size, 1)
        return (t, self.img_size // self.patch_size, self.img_size // self.patch_size)

    def set_attention(self, attention: "AttentionConfig | dict | None") -> None:
        """Choose the attention layout (validated against depth and grid); parameters are unaffected."""
        config = AttentionConfig.create(attention)
        pattern = config.pattern(self.depth)
        config.validate(self.depth, self.default_grid)
        self.attention, self.attention_pattern = config, pattern


def _compute_dtype(x: Tensor) -> torch.dtype:
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


def area_order(ids: Tensor, grid: Grid, splits: AreaSplits) -> tuple[Tensor, Tensor]:
    """For tokens at flat grid positions ``ids`` (B, N): the permutation that sorts them by
    (area, grid position), and each token's area id (in the given order)."""
    area = area_index(*grid_positions(ids, grid), grid, splits)
    return (area * (grid[0] * grid[1] * grid[2]) + ids).argsort(dim=1), area


def sorted_area_layout(ids: Tensor, grid: Grid, splits: AreaSplits, backend: str = "auto") -> tuple[Tensor, AreaLayout]:
    """The area sort of ``ids`` and the layout area layers get once tokens are in that order
    (what the encoder builds once per forward with ``reorder='once'``)."""
    order, area = area_order(ids, grid, splits)
    return order, AreaLayout(area.gather(1, order), splits.num_areas, backend)


def run_blocks(
    blocks: Sequence[nn.Module],
    x: Tensor,
    ids: Tensor,
    grid: Grid,
    attention: AttentionConfig,
    pattern: Sequence[bool],
    head_dim: int,
    sort_by_position: bool = False,
    activation_checkpointing: bool = False,
) -> Tensor:
    """Apply ``blocks`` to tokens ``x`` (B, N, D) at flat grid positions ``ids`` (B, N).

    Layers flagged in ``pattern`` use area attention. With ``attention.reorder='once'`` the
    tokens are sorted by (area, grid position) before the first layer and restored after the
    last one, so the output is in the caller's order either way.
    """
    layout, order = None, None
    if any(pattern) and attention.reorder == "per_layer":  # attention sorts and restores in every layer
        order, area = area_order(ids, grid, attention.splits)
        layout, order = AreaLayout(area, attention.splits.num_areas, attention.backend, reorder=order), None
    elif any(pattern):
        order, layout = sorted_area_layout(ids, grid, attention.splits, attention.backend)
    elif sort_by_position:
        order = ids.argsort(dim=1)
    if order is not None:
        x, ids = gather_tokens(x, order), ids.gather(1, order)
    t, h, w = grid_positions(ids, grid)
    rope = RopeTables.from_positions(t, h, w, head_dim, _compute_dtype(x))
    for blk, is_area in zip(blocks, pattern):
        args = (x, rope, layout if is_area else None)
        if activation_checkpointing and torch.is_grad_enabled():
            x = checkpoint(blk, *args, use_reentrant=False)
        else:
            x = blk(*args)
    if order is not None:
        x = torch.empty_like(x).scatter_(1, order[..., None].expand_as(x), x)
    return x
