"""Multi-block 3D masks as in V-JEPA 2, vectorized over the batch.

For each mask set, every clip gets ``num_blocks`` boxes on the (T', H', W') token grid; the
union of the boxes is the prediction target and the rest is the context. As in the official
collator, one box size is drawn per batch (one uniform number drives the temporal scale, the
spatial scale and the aspect ratio together), positions are drawn per clip, frames after
``max_temporal_keep`` are removed from the context, and index lists are truncated to the
smallest count in the batch so they stack.

Static shapes: with ``pad`` every index list has a fixed number of slots per mask set,
:meth:`MultiBlockMaskGenerator.slots`, so every batch of a run has the same shapes (a compiled
step never recompiles, a CUDA graph can hold it). A list keeps ``min(batch minimum, slots)`` real
tokens (the official truncation, then the slots) and is padded with :data:`PAD` (-1) up to the
slots. ``ids >= 0`` is the validity mask (True = a real token) the models, the loss and the FLOP
counter read; an index list cannot disagree with it. The slots come from the mask config, the
grid and the batch size (never from the data), by one of two rules (``static_slots``):

- ``bound``: the most tokens any draw can keep, an exact worst case: nothing is ever cut beyond the
  official truncation, but the bound is exact for one block (every block of a draw can land on the
  same cells), so it is loose for the union of many: 54-75% of the context and 27-42% of the target
  slots are padding at the published sizes (BENCHMARKS.md), compute spent on nothing.
- ``q`` in (0, 1]: the ceil(q * 256)-th smallest official (batch-minimum) count over 256 draws of
  this generator at this batch size from a fixed seed: about a fraction q of batches are padded,
  the others cut below the official count (their last tokens go, as in the official truncation).
  No q is both unpadded and uncut, because the batch minimum varies a lot between batches (one
  block size per batch). :data:`STATIC_SLOTS` = 0.75 is the default, chosen from the measured
  trade-off (BENCHMARKS.md, "Tighter slots"): at the published sizes 15-27% of the context slots
  are padding and 1.3-3.3% of the official context tokens are cut, so the context encoder runs on
  1.14-1.35x the official tokens (the bound: 2.2-3.8x); lower q cut far more (0.5: 5-19%).

The batch size is the drawn batch's: every training batch has the per-device size, and a shorter
last validation batch, whose shapes differ anyway, gets its own slots.

A ``full_complement`` target is everything the kept context leaves out, so it keeps the bound's
slots under either rule (it must hold the whole complement). ``max_keep`` caps the context slots.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError

from ..models.grid import PAD, Grid

# u in [0, 1) is cut into this many pieces to bound the block size on each (a valid bound for any
# number of pieces; more pieces make it tighter, down to the exact range of the drawn sizes)
BOUND_PIECES = 4096
# the default static_slots rule: "bound" or a quantile q in (0, 1] (the module docstring says why 0.75)
STATIC_SLOTS: str | float = 0.75
# quantile slots: this many draws of the generator, from this seed
SLOT_DRAWS, SLOT_SEED = 256, 27


def check_slots_rule(rule) -> str | float:
    """``rule`` if it is "bound" or a number q with 0 < q <= 1, else a ValueError saying so."""
    if rule == "bound" or (not isinstance(rule, bool) and isinstance(rule, (int, float)) and 0 < rule <= 1):
        return rule
    raise ValueError(f"static_slots={rule!r} is not allowed; allowed values are bound (the most tokens any draw "
                     "can keep) or a quantile q with 0 < q <= 1 of the batch-minimum token count.")


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
    """Draws (context, target) index tensors of shape (B, K) for one mask spec; with ``pad``,
    of the fixed shapes (B, slots) (see the module docstring)."""

    def __init__(self, grid: Grid, spec: MaskSpec | Mapping[str, Any] = MaskSpec(), pad: bool = False,
                 slots: str | float = STATIC_SLOTS):
        self.grid = grid
        self.spec = MaskSpec.create(spec)
        self.pad = pad
        self.slots_rule = check_slots_rule(slots)
        T, H, W = grid
        t, h, w = torch.meshgrid(torch.arange(T), torch.arange(H), torch.arange(W), indexing="ij")
        self._coords = (t.reshape(-1), h.reshape(-1), w.reshape(-1))
        self.max_context_frames = max(1, int(T * self.spec.max_temporal_keep))

    @property
    def numel(self) -> int:
        return self.grid[0] * self.grid[1] * self.grid[2]

    def block_size(self, generator: torch.Generator) -> tuple[int, int, int]:
        u = float(torch.rand(1, generator=generator))
        return self._block_dims(u, u)

    def _block_dims(self, u_size: float, u_ratio: float) -> tuple[int, int, int]:
        """(t, h, w) of a block with the scales drawn at ``u_size`` and the aspect ratio at
        ``u_ratio`` (a draw uses one u for both). t and h grow with u; w grows with u_size and
        shrinks with u_ratio (every step is monotone, float rounding included)."""
        T, H, W = self.grid
        s = self.spec
        t = max(1, int(T * (s.temporal_scale[0] + u_size * (s.temporal_scale[1] - s.temporal_scale[0]))))
        keep = int(H * W * (s.spatial_scale[0] + u_size * (s.spatial_scale[1] - s.spatial_scale[0])))
        ratio = s.aspect_ratio[0] + u_ratio * (s.aspect_ratio[1] - s.aspect_ratio[0])
        h = min(max(1, round(math.sqrt(keep * ratio))), H)
        w = min(max(1, round(math.sqrt(keep / ratio))), W)
        return t, h, w

    def _count_bounds(self) -> tuple[int, int]:
        """(most target tokens, fewest target tokens) of any draw, from the config and the grid:
        on each piece [u0, u1] of u the block is at most (t(u1), h(u1), w(u1, u0)) and at least
        (t(u0), h(u0), w(u0, u1)). The target is the frames past the context window plus the
        blocks' cells inside it: at most num_blocks blocks' worth, at least one block placed as
        late as it can go."""
        T, H, W = self.grid
        window, late = self.max_context_frames, (T - self.max_context_frames) * H * W
        most, fewest = 0, self.numel
        for i in range(BOUND_PIECES):
            u0, u1 = i / BOUND_PIECES, (i + 1) / BOUND_PIECES
            t_hi, h_hi, _ = self._block_dims(u1, u1)
            t_lo, h_lo, _ = self._block_dims(u0, u0)
            w_hi, w_lo = self._block_dims(u1, u0)[2], self._block_dims(u0, u1)[2]
            most = max(most, late + min(window * H * W, self.spec.num_blocks * h_hi * w_hi * min(t_hi, window)))
            fewest = min(fewest, late + h_lo * w_lo * max(0, window - T + t_lo))
        return most, fewest

    def bound(self) -> tuple[int, int]:
        """(context, target): the most context and target tokens a draw can keep on this grid (a
        config that leaves no context in any draw is refused here)."""
        return _bound(self.grid, self.spec)

    def slots(self, batch: int) -> tuple[int, int]:
        """(context slots, target slots) of a batch of ``batch`` clips under this generator's
        rule: the fixed lengths its index lists have (see the module docstring)."""
        ctx, tgt = self.bound()
        if self.slots_rule == "bound":
            return ctx, tgt
        q_ctx, q_tgt = _quantile_slots(self.grid, self.spec, batch, float(self.slots_rule))
        # a full complement must fit whatever the kept context leaves out: the bound's target
        return q_ctx, max(tgt, self.numel - q_ctx) if self.spec.full_complement else q_tgt

    def official_counts(self, target: Tensor) -> tuple[int, int]:
        """(context, target) tokens the official truncation keeps of a batch's target masks."""
        keep_ctx = int((~target).sum(1).min())
        if self.spec.max_keep is not None:
            keep_ctx = min(keep_ctx, self.spec.max_keep)
        return keep_ctx, self.numel - keep_ctx if self.spec.full_complement else int(target.sum(1).min())

    def _bound(self) -> tuple[int, int]:
        most, fewest = self._count_bounds()
        context = self.numel - fewest
        if context < 1:
            s = self.spec
            raise ConfigError(f"mask.spatial_scale={list(s.spatial_scale)} with temporal_scale={list(s.temporal_scale)} "
                              f"and max_temporal_keep={s.max_temporal_keep} predicts every token of the "
                              f"{'x'.join(map(str, self.grid))} token grid in every draw, so no context token can be "
                              "kept; allowed are scales that leave part of the grid as context.")
        if self.spec.max_keep is not None:
            context = min(context, self.spec.max_keep)
        target = min(most, self.numel - 1)  # a draw without context is drawn again
        if self.spec.full_complement:  # everything the kept context leaves out
            fewest_context = max(1, self.numel - most)
            if self.spec.max_keep is not None:
                fewest_context = min(fewest_context, self.spec.max_keep)
            target = self.numel - fewest_context
        return context, target

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

    def draw(self, batch: int, generator: torch.Generator) -> Tensor:
        """(batch, numel) bool target masks of one batch (a clip without context drawn again)."""
        size = self.block_size(generator)
        target = self._target_masks(batch, size, generator)
        empty = ~(~target).any(dim=1)
        while empty.any():  # a clip with no context at all is drawn again, as V-JEPA 2 does
            target[empty] = self._target_masks(int(empty.sum()), size, generator)
            empty = ~(~target).any(dim=1)
        return target

    def __call__(self, batch: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        generator = generator if generator is not None else torch.Generator().manual_seed(0)
        target = self.draw(batch, generator)
        context = ~target
        keep_ctx, keep_tgt = self.official_counts(target)
        if self.pad:
            ctx_slots, tgt_slots = self.slots(batch)
            keep_ctx, keep_tgt = min(keep_ctx, ctx_slots), min(keep_tgt, tgt_slots)
        ctx_idx = _true_indices(context, keep_ctx)
        if self.spec.full_complement:
            kept = torch.zeros_like(context).scatter_(1, ctx_idx, True)
            tgt_idx = _true_indices(~kept, self.numel - keep_ctx)
        else:
            tgt_idx = _true_indices(target, keep_tgt)
        if not self.pad:
            return ctx_idx, tgt_idx
        return _padded(ctx_idx, ctx_slots), _padded(tgt_idx, tgt_slots)


@lru_cache(maxsize=None)
def _bound(grid: Grid, spec: MaskSpec) -> tuple[int, int]:
    """:meth:`MultiBlockMaskGenerator.bound`, computed once per (grid, spec) in a process."""
    return MultiBlockMaskGenerator(grid, spec)._bound()


@lru_cache(maxsize=None)
def _quantile_slots(grid: Grid, spec: MaskSpec, batch: int, q: float) -> tuple[int, int]:
    """(context, target): the ceil(q * SLOT_DRAWS)-th smallest official count over SLOT_DRAWS
    seeded draws of a batch of ``batch`` clips, once per (grid, spec, batch, q) in a process."""
    gen, g = MultiBlockMaskGenerator(grid, spec), torch.Generator().manual_seed(SLOT_SEED)
    counts = torch.tensor([gen.official_counts(gen.draw(batch, g)) for _ in range(SLOT_DRAWS)])
    k = max(1, math.ceil(q * SLOT_DRAWS))
    return tuple(int(c) for c in counts.kthvalue(k, dim=0).values)


def _padded(ids: Tensor, slots: int) -> Tensor:
    """(B, K) indices padded with :data:`PAD` to (B, slots)."""
    if ids.shape[1] > slots:  # the lists are cut to the slots first: reaching this is a bug here
        raise AssertionError(f"a draw kept {ids.shape[1]} tokens, more than the {slots} slots bounded for it.")
    return F.pad(ids, (0, slots - ids.shape[1]), value=PAD)


def _true_indices(mask: Tensor, keep: int) -> Tensor:
    """The first ``keep`` True positions of each row, ascending: (B, keep)."""
    order = torch.sort((~mask).to(torch.uint8), dim=1, stable=True).indices
    return order[:, :keep]


class MaskCollator:
    """Several mask specs at once: returns lists of (B, K) context and target indices."""

    def __init__(self, grid: Grid, specs: Sequence[MaskSpec | Mapping[str, Any]] = V_JEPA2_MASKS, pad: bool = False,
                 slots: str | float = STATIC_SLOTS):
        if not specs:
            raise ValueError("mask: at least one mask set is needed.")
        self.generators = [MultiBlockMaskGenerator(grid, s, pad, slots) for s in specs]
        if pad:
            for g in self.generators:
                g.bound()  # a config without a bound is refused here, before any batch

    def __call__(self, batch: int, generator: torch.Generator) -> tuple[list[Tensor], list[Tensor]]:
        pairs = [g(batch, generator) for g in self.generators]
        return [p[0] for p in pairs], [p[1] for p in pairs]
