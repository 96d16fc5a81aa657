"""Multi-block 3D masks as in V-JEPA 2, vectorized over the batch.

For each mask set, every clip gets ``num_blocks`` boxes on the (T', H', W') token grid; the
union of the boxes is the prediction target and the rest is the context. As in the official
collator, one box size is drawn per batch (one uniform number drives the temporal scale, the
spatial scale and the aspect ratio together), positions are drawn per clip, frames after
``max_temporal_keep`` are removed from the context, and index lists are truncated to the
smallest count in the batch so they stack.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

from ..models.grid import Grid


@dataclass(frozen=True)
class MaskSpec:
    num_blocks: int = 8
    spatial_scale: tuple[float, float] = (0.15, 0.15)
    temporal_scale: tuple[float, float] = (1.0, 1.0)
    aspect_ratio: tuple[float, float] = (0.75, 1.5)
    max_temporal_keep: float = 1.0
    max_keep: int | None = None
    full_complement: bool = False

    @classmethod
    def create(cls, value: "MaskSpec | Mapping[str, Any]") -> "MaskSpec":
        if isinstance(value, MaskSpec):
            return value
        kwargs = dict(value)
        for key in ("spatial_scale", "temporal_scale", "aspect_ratio"):
            if key in kwargs:
                kwargs[key] = tuple(float(v) for v in kwargs[key])
        spec = cls(**kwargs)
        spec.validate()
        return spec

    def validate(self) -> None:
        def check_range(name: str, pair: tuple[float, float], low: float, high: float) -> None:
            if len(pair) != 2 or not (low < pair[0] <= pair[1] <= high):
                raise ValueError(f"mask.{name}={list(pair)} must be [min, max] with {low} < min <= max <= {high}.")

        if not isinstance(self.num_blocks, int) or self.num_blocks < 1:
            raise ValueError(f"mask.num_blocks must be an integer >= 1, got {self.num_blocks!r}.")
        check_range("spatial_scale", self.spatial_scale, 0.0, 1.0)
        check_range("temporal_scale", self.temporal_scale, 0.0, 1.0)
        check_range("aspect_ratio", self.aspect_ratio, 0.0, math.inf)
        if not 0.0 < self.max_temporal_keep <= 1.0:
            raise ValueError(f"mask.max_temporal_keep must be in (0, 1], got {self.max_temporal_keep}.")
        if self.max_keep is not None and self.max_keep < 1:
            raise ValueError(f"mask.max_keep must be null or an integer >= 1, got {self.max_keep}.")


V_JEPA2_MASKS = (
    MaskSpec(num_blocks=8, spatial_scale=(0.15, 0.15)),
    MaskSpec(num_blocks=2, spatial_scale=(0.7, 0.7)),
)


class MultiBlockMaskGenerator:
    """Draws (context, target) index tensors of shape (B, K) for one mask spec."""

    def __init__(self, grid: Grid, spec: MaskSpec | Mapping[str, Any] = MaskSpec()):
        self.grid = grid
        self.spec = MaskSpec.create(spec)
        T, H, W = grid
        t, h, w = torch.meshgrid(torch.arange(T), torch.arange(H), torch.arange(W), indexing="ij")
        self._coords = (t.reshape(-1), h.reshape(-1), w.reshape(-1))
        self.max_context_frames = max(1, int(T * self.spec.max_temporal_keep))

    @property
    def numel(self) -> int:
        return self.grid[0] * self.grid[1] * self.grid[2]

    def block_size(self, generator: torch.Generator) -> tuple[int, int, int]:
        T, H, W = self.grid
        s = self.spec
        u = float(torch.rand(1, generator=generator))
        t = max(1, int(T * (s.temporal_scale[0] + u * (s.temporal_scale[1] - s.temporal_scale[0]))))
        keep = int(H * W * (s.spatial_scale[0] + u * (s.spatial_scale[1] - s.spatial_scale[0])))
        ratio = s.aspect_ratio[0] + u * (s.aspect_ratio[1] - s.aspect_ratio[0])
        h = min(max(1, round(math.sqrt(keep * ratio))), H)
        w = min(max(1, round(math.sqrt(keep / ratio))), W)
        return t, h, w

    def _target_masks(self, batch: int, size: tuple[int, int, int], generator: torch.Generator) -> Tensor:
        """(batch, numel) bool: True where a token is predicted (covered by a block)."""
        (T, H, W), (bt, bh, bw) = self.grid, size
        n = self.spec.num_blocks

        def starts(room: int) -> Tensor:
            return torch.randint(0, room + 1, (batch, n, 1), generator=generator)

        t0, h0, w0 = starts(T - bt), starts(H - bh), starts(W - bw)
        t, h, w = self._coords
        inside = (t >= t0) & (t < t0 + bt) & (h >= h0) & (h < h0 + bh) & (w >= w0) & (w < w0 + bw)
        target = inside.any(dim=1)
        target |= t >= self.max_context_frames  # frames past the context window are predicted
        return target

    def __call__(self, batch: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        generator = generator if generator is not None else torch.Generator().manual_seed(0)
        size = self.block_size(generator)
        target = self._target_masks(batch, size, generator)
        empty = ~(~target).any(dim=1)
        while empty.any():  # a clip with no context at all is drawn again, as V-JEPA 2 does
            target[empty] = self._target_masks(int(empty.sum()), size, generator)
            empty = ~(~target).any(dim=1)
        context = ~target
        keep_ctx = int(context.sum(1).min())
        if self.spec.max_keep is not None:
            keep_ctx = min(keep_ctx, self.spec.max_keep)
        ctx_idx = _true_indices(context, keep_ctx)
        if self.spec.full_complement:
            kept = torch.zeros_like(context).scatter_(1, ctx_idx, True)
            tgt_idx = _true_indices(~kept, self.numel - keep_ctx)
        else:
            tgt_idx = _true_indices(target, int(target.sum(1).min()))
        return ctx_idx, tgt_idx


def _true_indices(mask: Tensor, keep: int) -> Tensor:
    """The first ``keep`` True positions of each row, ascending: (B, keep)."""
    order = torch.sort((~mask).to(torch.uint8), dim=1, stable=True).indices
    return order[:, :keep]


class MaskCollator:
    """Several mask specs at once: returns lists of (B, K) context and target indices."""

    def __init__(self, grid: Grid, specs: Sequence[MaskSpec | Mapping[str, Any]] = V_JEPA2_MASKS):
        if not specs:
            raise ValueError("mask: at least one mask set is needed.")
        self.generators = [MultiBlockMaskGenerator(grid, s) for s in specs]

    def __call__(self, batch: int, generator: torch.Generator) -> tuple[list[Tensor], list[Tensor]]:
        pairs = [g(batch, generator) for g in self.generators]
        return [p[0] for p in pairs], [p[1] for p in pairs]
