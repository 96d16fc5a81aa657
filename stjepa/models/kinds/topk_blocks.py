"""Top-k block attention (MoBA / VMoBA style): each query block picks the key blocks it attends to.

Tokens are sorted by tile of ``block`` = (bt, bh, bw) grid cells (tiles t-major, then grid
position) and that sequence is cut into blocks of bt * bh * bw tokens: on a full grid every
block is one tile; with sparse (masked) tokens blocks are runs of the tile-sorted sequence, all
full but the last. In every layer and head, a query block attends to its own block and to the
``top_k`` other blocks whose mean key has the largest dot product with the block's mean query.
The selection is computed without gradient (as in MoBA); attention inside the selected blocks
is differentiated. A forward with fewer than ``top_k + 1`` blocks (few visible tokens) lets
every block see every block.

Padded tokens (``valid`` False, index lists of a fixed length) are sorted after the real ones
and are never keys: a block's mean counts its real tokens only, a block with none is never
chosen over one with some, and every shape comes from the token count (no host reads).

Backends compute the same function:

``gather``  each query block's k + 1 key blocks gathered into one key set, plain SDPA on
            (B, heads * blocks, block, dim): regular shapes, flash kernels on CUDA, k + 1 copies
            of K and V in memory. ``auto`` picks it everywhere.
``dense``   the reference: an explicit (B, heads, N, N) mask from the selection, SDPA.
``flex``    FlexAttention with a block mask built from the selection in every layer (compiled
            on CUDA); no copies, but a block mask per layer.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..arguments import ArgumentError, one_of, positive_int
from ..attention_backends import attend_key_blocks, create_block_mask, flex_attend, masked_attend
from ..grid import Grid
from . import register_kind
from .sliding_tile import check_tiles, tile_sizes, tile_sorted


class TopkBlockLayout:
    """Blocks of ``block_size`` consecutive tokens (in the order attention runs in) for one
    forward; ``attend`` selects and attends per layer."""

    def __init__(self, tokens: int, block_size: int, top_k: int, backend: str, valid: Tensor | None = None):
        self.tokens, self.block_size = tokens, block_size
        self.num_blocks = -(-tokens // block_size)
        self.chosen = min(top_k, self.num_blocks - 1) + 1  # own block first, then the top k
        self.backend = "gather" if backend == "auto" else backend
        self.valid = valid  # (B, N) real tokens in attention order (padded ones last), None: all

    def _blocks(self, x: Tensor) -> Tensor:
        """(B, heads, N, D) -> (B, heads, blocks, block_size, D), the last block zero-padded."""
        pad = self.num_blocks * self.block_size - self.tokens
        return F.pad(x, (0, 0, 0, pad)).unflatten(2, (self.num_blocks, self.block_size))

    def _valid(self, device: torch.device) -> Tensor:
        """(B or 1, blocks, block_size): which slots hold real tokens."""
        if self.valid is None:
            slots = torch.arange(self.num_blocks * self.block_size, device=device)
            return (slots < self.tokens).view(1, self.num_blocks, self.block_size)
        pad = self.num_blocks * self.block_size - self.tokens
        return F.pad(self.valid, (0, pad)).view(-1, self.num_blocks, self.block_size)

    def select(self, q: Tensor, k: Tensor) -> Tensor:
        """(B, heads, blocks, k + 1) key blocks of every query block: its own, then the top k by
        mean query . mean key (blocks without a real token last)."""
        with torch.no_grad():
            valid = self._valid(q.device)[:, None, :, :, None]  # (B or 1, 1, blocks, block_size, 1)
            sizes = valid.sum(3, dtype=torch.float32).clamp(min=1)
            q_mean = (self._blocks(q).float() * valid).sum(3) / sizes
            k_mean = (self._blocks(k).float() * valid).sum(3) / sizes
            score = q_mean @ k_mean.transpose(-1, -2)
            if self.valid is not None:
                score = score.masked_fill(~valid.any(3).squeeze(-1)[:, :, None, :], float("-inf"))
            score.diagonal(dim1=-2, dim2=-1).fill_(float("inf"))
            # ties (zero-initialised mask tokens score 0 everywhere) go to the lower block, whatever
            # the number of blocks (topk breaks them by its own, size-dependent, order)
            return score.sort(dim=-1, descending=True, stable=True).indices[..., :self.chosen]

    def block_mask(self, q: Tensor, k: Tensor) -> Tensor:
        """(B, heads, blocks, blocks): query block may see key block."""
        chosen = self.select(q, k)
        return torch.zeros(*chosen.shape[:-1], self.num_blocks, dtype=torch.bool, device=q.device).scatter_(
            -1, chosen, True)

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return _BACKEND_FNS[self.backend](self, q, k, v)


def _gather(layout: TopkBlockLayout, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    B, heads, N, D = q.shape
    # the last block's empty slots, and padded tokens
    valid = layout._valid(q.device) if N % layout.block_size or layout.valid is not None else None
    out = attend_key_blocks(layout._blocks(q), layout._blocks(k), layout._blocks(v), layout.select(q, k), valid)
    return out.reshape(B, heads, -1, D)[:, :, :N]


def _dense(layout: TopkBlockLayout, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    block_of = torch.arange(q.shape[2], device=q.device) // layout.block_size
    seen = layout.block_mask(q, k)[:, :, block_of][:, :, :, block_of]
    if layout.valid is not None:  # no padded key; a padded query sees every key (its output is unused)
        seen = seen & layout.valid[:, None, None, :] | ~layout.valid[:, None, :, None]
    return masked_attend(q, k, v, seen)


def _flex(layout: TopkBlockLayout, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    seen, size = layout.block_mask(q, k), layout.block_size
    valid = torch.ones_like(q[:, 0, :, 0], dtype=torch.bool) if layout.valid is None else layout.valid

    def selected(b, head, q_idx, kv_idx):  # a padded query's row may be empty: flex outputs 0
        return seen[b, head, q_idx // size, kv_idx // size] & valid[b, kv_idx]

    B, heads, N, _ = q.shape
    mask = create_block_mask(selected, B, heads, N, N, device=q.device)
    return flex_attend(q, k, v, mask, flatten=False)


_BACKEND_FNS = {"gather": _gather, "dense": _dense, "flex": _flex}


@register_kind
class TopkBlocksKind:
    name = "topk_blocks"
    BACKENDS = ("auto", *_BACKEND_FNS)
    label = "topk blocks"
    is_global = False  # its layers always differ from global attention

    def __init__(self, block: Sequence[int], top_k: int):
        self.block = tile_sizes(block, "block")
        self.top_k = positive_int(top_k, "top_k")

    @property
    def block_size(self) -> int:
        return self.block[0] * self.block[1] * self.block[2]

    @property
    def tag(self) -> str:
        return f"topk{'x'.join(map(str, self.block))}k{self.top_k}"

    def validate(self, grid: Grid) -> None:
        tiles = check_tiles(self.block, grid, "block")
        blocks = tiles[0] * tiles[1] * tiles[2]
        if self.top_k >= blocks:
            raise ArgumentError(f"{{top_k}} is not fewer than the {blocks} blocks of the grid; allowed values are "
                                f"1..{blocks - 1} (each block also sees itself).", top_k=self.top_k)

    validate_settings = validate  # the configured grid is checked as any input grid

    def pairs(self, ids: Tensor, grid: Grid) -> tuple[int]:
        """Query-key pairs computed per head over the batch, counting every chosen block as full
        (only the last block of a forward can hold fewer tokens)."""
        B, N = ids.shape
        blocks = -(-N // self.block_size)
        return (B * N * min(N, (min(self.top_k, blocks - 1) + 1) * self.block_size),)

    def prepare(self, ids: Tensor, grid: Grid, backend: str = "auto",
                valid: Tensor | None = None) -> tuple[Tensor, tuple[TopkBlockLayout]]:
        one_of(backend, "backend", self.BACKENDS)
        order, _ = tile_sorted(ids, grid, self.block, valid)
        return order, (TopkBlockLayout(ids.shape[1], self.block_size, self.top_k, backend,
                                       None if valid is None else valid.gather(1, order)),)
