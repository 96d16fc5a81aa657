"""3D rotary position embedding, laid out exactly as the official V-JEPA 2 code does it.

The head dimension is split into three equal even parts for time, height and width
(``axis_dim = 2 * ((head_dim // 3) // 2)``); what is left at the end stays unrotated.

Within one part of size ``s`` the official code rotates adjacent pairs ``(2i, 2i+1)`` but lays
its frequencies out with ``repeat`` instead of ``repeat_interleave``: element ``j`` uses
frequency ``omega[j % (s/2)]``, so the two members of a pair usually get different
frequencies. This is the documented quirk kept for checkpoint compatibility; we reproduce it.

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


def _axis_frequencies(pos: Tensor, dim: int, dtype: torch.dtype) -> Tensor:
    """(..., N) positions -> (..., N, dim) angles, in the official 'repeat' layout."""
    omega = torch.arange(dim // 2, dtype=dtype, device=pos.device) / (dim / 2.0)
    omega = 1.0 / 10000**omega
    freq = pos.to(dtype).unsqueeze(-1) * omega
    return torch.cat([freq, freq], dim=-1)  # 'repeat', not 'repeat_interleave': the quirk


@dataclass
class RopeTables:
    """cos/sin of shape (B, 1, N, R) for the first R rotated channels of each head."""

    cos: Tensor
    sin: Tensor

    @classmethod
    def from_positions(cls, t: Tensor, h: Tensor, w: Tensor, head_dim: int, dtype: torch.dtype) -> "RopeTables":
        dim = rope_axis_dim(head_dim)
        # angles in at least fp32 (upstream uses the activation dtype, i.e. bf16 under autocast)
        exact = torch.promote_types(dtype, torch.float32)
        angles = torch.cat([_axis_frequencies(p, dim, exact) for p in (t, h, w)], dim=-1).unsqueeze(1)
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
