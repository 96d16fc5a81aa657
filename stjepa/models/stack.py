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

    Layers flagged in ``pattern`` use the layout's local attention (area, neighborhood, ...);
    the others are global. The kind may reorder the tokens once per forward (area attention
    sorts by area, then grid position); the output is in the caller's order either way.
    """
    layouts, order = (), None
    if any(pattern):  # the kind of local attention orders the tokens and builds what its layers need
        order, layouts = attention.local_kind.prepare(ids, grid, attention.backend)
    elif sort_by_position:
        order = ids.argsort(dim=1)
    if order is not None:
        x, ids = gather_tokens(x, order), ids.gather(1, order)
    t, h, w = grid_positions(ids, grid)
    rope = RopeTables.from_positions(t, h, w, head_dim, _compute_dtype(x))
    local_index = 0  # local layers take the kind's layouts in turn
    for blk, is_local in zip(blocks, pattern):
        layout = layouts[local_index % len(layouts)] if is_local else None
        local_index += is_local
        args = (x, rope, layout)
        if activation_checkpointing and torch.is_grad_enabled():
            x = checkpoint(blk, *args, use_reentrant=False)
        else:
            x = blk(*args)
    if order is not None:
        x = torch.empty_like(x).scatter_(1, order[..., None].expand_as(x), x)
    return x
