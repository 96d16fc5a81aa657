"""3D rotary position embedding, laid out exactly as the official V-JEPA 2 and 2.1 code do it.

The head dimension is split into three equal even parts for time, height and width
(``axis_dim = 2 * ((head_dim // 3) // 2)``); what is left at the end stays unrotated. Positions
are grid cells (time: the tubelet index), frequencies ``1 / 10000^(i / (s/2))`` per part of size s.

Within one part the code rotates adjacent pairs ``(2i, 2i+1)``. V-JEPA 2.0 lays its
frequencies out with ``repeat`` instead of ``repeat_interleave``: element ``j`` uses frequency
``omega[j % (s/2)]``, so the two members of a pair usually get different frequencies (the
documented quirk, kept for 2.0 checkpoints). V-JEPA 2.1 fixes it (``interleaved``: one
frequency per pair) and, with ``reference_grid`` (its ``interpolate_rope``), rescales height and
width positions so that an axis of L cells spans 0 .. reference - 1 as the 16-cell grid of
256 px training did: ``p * (reference - 1) / (L - 1)``. The official code divides by zero on a
1-cell axis; here a 1-cell axis keeps position 0.

Tables depend only on token positions, so the encoder builds them once per forward and every
layer reuses them (the official code rebuilds sin/cos inside every layer).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def rope_axis_dim(head_dim: int) -> int:
    """Channels of one head given to each of the t, h, w axes."""
    return 2 * ((head_dim // 3) // 2)


def _axis_frequencies(pos: Tensor, dim: int, dtype: torch.dtype, interleaved: bool) -> Tensor:
    """(..., N) positions -> (..., N, dim) angles, in 2.1's interleaved or 2.0's 'repeat' layout."""
    omega = torch.arange(dim // 2, dtype=dtype, device=pos.device) / (dim / 2.0)
    omega = 1.0 / 10000**omega
    freq = pos.to(dtype).unsqueeze(-1) * omega
    if interleaved:
        return freq.repeat_interleave(2, dim=-1)
    return torch.cat([freq, freq], dim=-1)  # 'repeat', not 'repeat_interleave': the 2.0 quirk


@dataclass(frozen=True)
class RopeStyle:
    """How grid positions become angles: V-JEPA 2.0 (the defaults) or 2.1 (``interleaved``,
    ``reference_grid=16``)."""

    interleaved: bool = False
    reference_grid: int | None = None

    def scaled(self, pos: Tensor, length: int) -> Tensor:
        """Height or width positions on an axis of ``length`` cells, rescaled to the reference grid."""
        if self.reference_grid is None or length <= 1:
            return pos
        return pos * ((self.reference_grid - 1) / (length - 1))

    def tables(self, t: Tensor, h: Tensor, w: Tensor, grid: tuple[int, int, int], head_dim: int,
               dtype: torch.dtype) -> "RopeTables":
        h, w = self.scaled(h, grid[1]), self.scaled(w, grid[2])
        return RopeTables.from_positions(t, h, w, head_dim, dtype, self.interleaved)


VJEPA2_ROPE = RopeStyle()
VJEPA2_1_ROPE = RopeStyle(interleaved=True, reference_grid=16)


@dataclass
class RopeTables:
    """cos/sin of shape (B, 1, N, R) for the first R rotated channels of each head."""

    cos: Tensor
    sin: Tensor

    @classmethod
    def from_positions(cls, t: Tensor, h: Tensor, w: Tensor, head_dim: int, dtype: torch.dtype,
                       interleaved: bool = False) -> "RopeTables":
        dim = rope_axis_dim(head_dim)
        # angles in at least fp32 (upstream uses the activation dtype, i.e. bf16 under autocast)
        exact = torch.promote_types(dtype, torch.float32)
        angles = torch.cat([_axis_frequencies(p, dim, exact, interleaved) for p in (t, h, w)], dim=-1).unsqueeze(1)
        return cls(cos=angles.cos().to(dtype), sin=angles.sin().to(dtype))


def _rotate_pairs(x: Tensor) -> Tensor:
    # (x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...)
    pairs = x.unflatten(-1, (-1, 2))
    return torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)


def apply_rope(x: Tensor, tables: RopeTables) -> Tensor:
    """Rotate (B, heads, N, head_dim) queries or keys."""
    rotated = tables.cos.shape[-1]
    if rotated == x.shape[-1]:
        return x * tables.cos + _rotate_pairs(x) * tables.sin
    head, tail = x[..., :rotated], x[..., rotated:]
    return torch.cat([head * tables.cos + _rotate_pairs(head) * tables.sin, tail], dim=-1)
