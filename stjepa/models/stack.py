"""A stack of transformer blocks over tokens that carry (t, h, w) grid positions.

Shared by the encoder and the predictor: the stack's attention layout (which layers use which
kind of local attention), and running the blocks, where positions, each kind's token order and
layouts, and the RoPE tables are computed once per forward and handed to every layer.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence, TypeVar

import torch
import torch.nn as nn
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from .attention_backends import KeyPaddingLayout
from .attention_settings import AttentionSettings
from .grid import Grid, gather_tokens, grid_positions
from .kinds import LocalLayout
from .rope import VJEPA2_ROPE, RopeStyle, RopeTables


class AttentionLayoutMixin:
    """Shared by encoder and predictor: the configured token grid and the attention layout.
    Expects ``num_frames``, ``tubelet_size``, ``img_size``, ``patch_size`` and ``depth``."""

    @property
    def default_grid(self) -> Grid:
        t = max(self.num_frames // self.tubelet_size, 1)
        return (t, self.img_size // self.patch_size, self.img_size // self.patch_size)

    def set_attention(self, attention: "AttentionSettings | dict | None") -> None:
        """Choose the attention layout (validated against depth and grid); parameters are unaffected.
        ``layer_entries`` holds, per layer, the entry whose local attention it uses (None: global)."""
        config = AttentionSettings.create(attention)
        layers = config.layers(self.depth)
        config.validate(self.depth, self.default_grid)
        self.attention, self.layer_entries = config, layers
        self.attention_pattern = tuple(entry is not None for entry in layers)


def _compute_dtype(x: Tensor) -> torch.dtype:
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


T = TypeVar("T")


def in_turn(layer_entries: Sequence[AttentionSettings | None],
            per_entry: Callable[[AttentionSettings], Sequence[T]]) -> list[T | None]:
    """For each layer, None where it is global, else the next of its entry's values in turn:
    ``per_entry`` is computed once per entry (this config or a stage), and that entry's layers
    take its values in turn (one value for most kinds; shifted areas alternate two). The one
    turn cycle of both the forward (layouts) and the FLOP counter (query-key pairs)."""
    cycles: list[list] = []  # [entry, its values, the next turn]
    out: list[T | None] = []
    for entry in layer_entries:
        if entry is None:
            out.append(None)
            continue
        cycle = next((c for c in cycles if c[0] is entry), None)
        if cycle is None:
            cycle = [entry, per_entry(entry), 0]
            cycles.append(cycle)
        out.append(cycle[1][cycle[2] % len(cycle[1])])
        cycle[2] += 1
    return out


@dataclass(frozen=True)
class LayerLayout:
    """What one local layer runs with in one forward: the token order its kind wants (a
    permutation of the caller's tokens; None: the caller's order) and its layout. Layers of one
    entry share the same ``order`` object."""

    order: Tensor | None
    layout: LocalLayout


def prepare_layers(ids: Tensor, grid: Grid, layer_entries: Sequence[AttentionSettings | None],
                   valid: Tensor | None = None) -> list[LayerLayout | None]:
    """What :func:`run_blocks` does once per forward before the blocks: for every layer, None
    (global) or its :class:`LayerLayout` for tokens at ``ids`` (B, N) (``valid``: which of them
    are real tokens, None: all); each entry's kind prepares once."""

    def prepare(entry: AttentionSettings) -> list[LayerLayout]:
        order, layouts = entry.built_kind.prepare(ids, grid, entry.backend, valid)
        return [LayerLayout(order, layout) for layout in layouts]

    return in_turn(layer_entries, prepare)


def run_blocks(
    blocks: Sequence[nn.Module],
    x: Tensor,
    ids: Tensor,
    grid: Grid,
    layer_entries: Sequence[AttentionSettings | None],
    head_dim: int,
    sort_by_position: bool = False,
    activation_checkpointing: bool = False,
    rope_style: RopeStyle = VJEPA2_ROPE,
    taps: Sequence[int] | None = None,
    valid: Tensor | None = None,
) -> Tensor | list[Tensor]:
    """Apply ``blocks`` to tokens ``x`` (B, N, D) at flat grid positions ``ids`` (B, N); with
    ``taps`` (block indices), the outputs of those blocks instead of the last one's.

    ``valid`` (B, N) bool marks the real tokens of index lists padded to a fixed length (None:
    all are real): in every layer, global or local, no token attends to a padded one, so the
    real tokens' outputs are those of the unpadded tokens (padded slots' outputs are garbage).

    Layers with an entry in ``layer_entries`` use that entry's local attention (area,
    neighborhood, ...), the others are global. Each kind may want its own token order (area
    attention sorts by area, then grid position): tokens are put in the first local kind's
    order before the first block and reordered where the kind changes; positions (and RoPE
    tables) travel with them. The output is in the caller's order either way.
    """
    layers = prepare_layers(ids, grid, layer_entries, valid)
    first = next((layer.order for layer in layers if layer is not None), None)
    order = ids.argsort(dim=1) if all(layer is None for layer in layers) and sort_by_position else first
    x, rope = _reordered(x, ids, grid, head_dim, rope_style, None, order)
    padded_global = _padded_global(valid, order)
    tapped = []
    for i, (blk, layer) in enumerate(zip(blocks, layers)):
        if layer is not None and layer.order is not order:
            x, rope = _reordered(x, ids, grid, head_dim, rope_style, order, layer.order)
            order = layer.order
            padded_global = _padded_global(valid, order)
        layout = padded_global if layer is None else layer.layout
        args = (x, rope, layout)
        if activation_checkpointing and torch.is_grad_enabled():
            x = checkpoint(blk, *args, use_reentrant=False)
        else:
            x = blk(*args)
        if taps is not None and i in taps:
            tapped.append(_restored(x, order))
    return tapped if taps is not None else _restored(x, order)


def _padded_global(valid: Tensor | None, order: Tensor | None) -> KeyPaddingLayout | None:
    """What a global layer runs with: plain attention (None) when every token is real, else
    attention that skips the padded keys, for tokens in permutation ``order``."""
    if valid is None:
        return None
    return KeyPaddingLayout(valid if order is None else valid.gather(1, order))


def _restored(x: Tensor, order: Tensor | None) -> Tensor:
    """Tokens ``x`` in permutation ``order`` of the caller's tokens, back in the caller's order."""
    return x if order is None else torch.empty_like(x).scatter_(1, order[..., None].expand_as(x), x)


def _reordered(x: Tensor, ids: Tensor, grid: Grid, head_dim: int, rope_style: RopeStyle, old: Tensor | None,
               new: Tensor | None) -> tuple[Tensor, RopeTables]:
    """Tokens in permutation ``old`` of the caller's tokens, put in permutation ``new``, and the
    RoPE tables of their positions in that order."""
    x = _restored(x, old)
    if new is not None:
        x, ids = gather_tokens(x, new), ids.gather(1, new)
    return x, rope_style.tables(*grid_positions(ids, grid), grid, head_dim, _compute_dtype(x))
