"""Spatiotemporal area attention (ST-A²): area ids, the per-forward token layout, the kind.

Tokens are split into areas by their (t, h, w) grid position: along an axis of length L cut
into S splits, a token at position p is in slice ``floor(p * S / L)``. A token attends only to
tokens of its own area in the same sample.

The encoder sorts its visible tokens by area once per forward (positions travel with the
tokens, so RoPE attention is unaffected) and builds one :class:`AreaLayout`; every area layer
then runs on contiguous areas. Backends (from :mod:`~stjepa.models.attention_backends`)
compute the same function:

``dense``   boolean same-area mask over all tokens, SDPA (the reference; O(N^2) memory)
``padded``  each non-empty area padded to the largest, SDPA with a key padding mask
``flex``    FlexAttention with a block-sparse same-area mask over the flattened batch
``varlen``  torch ``varlen_attn`` (flash) over the flattened batch (CUDA only)
``equal``   all areas hold N / A tokens: a reshape to (B*A, heads, N/A, dim) and plain SDPA
``auto``    ``equal`` when it applies, else ``varlen`` (CUDA) / ``flex`` (CUDA, older torch) /
            ``padded`` (CPU)

Host syncs: a layout reads its area sizes to the host once (the backends take their shapes
from them and ``auto`` chooses by them), and the ``padded``, ``varlen`` and ``flex`` backends
gather the non-empty areas with a boolean mask, one sync more. A training step with area
layers in the encoder adds one layout per encoder pass (the target encoder's, and one per
context mask-set size) to the two index-range checks every step makes
(``tests/test_host_syncs.py`` counts them).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch
import torch.nn.functional as F
from torch import Tensor

from ..arguments import ArgumentError, one_of, positive_int
from ..attention_backends import (create_block_mask, equal_split_attend, flex_attend, masked_attend, padded_attend,
                                 varlen_attend, varlen_attn)
from ..grid import Grid, grid_positions
from . import register_kind

BACKENDS = ("auto", "dense", "padded", "flex", "varlen", "equal")
REORDERS = ("once", "per_layer")


@dataclass(frozen=True)
class AreaSplits:
    """How many slices each grid axis is cut into."""

    temporal: int = 1
    height: int = 1
    width: int = 1

    @property
    def num_areas(self) -> int:
        return self.temporal * self.height * self.width

    @property
    def tag(self) -> str:
        """e.g. 't2h2w2'."""
        return f"t{self.temporal}h{self.height}w{self.width}"

    def validate(self, grid: tuple[int, int, int] | None = None) -> None:
        for name, value, axis in zip(
            ("temporal_splits", "height_splits", "width_splits"),
            (self.temporal, self.height, self.width),
            grid if grid is not None else (None, None, None),
        ):
            positive_int(value, name)
            if axis is not None and value > axis:
                raise ArgumentError(f"{{{name}}} is more splits than the {axis} grid cells on that axis; "
                                    f"allowed values are 1..{axis}.", **{name: value})


def area_index(t: Tensor, h: Tensor, w: Tensor, grid: tuple[int, int, int], splits: AreaSplits) -> Tensor:
    """Area id of each token from its grid coordinates (same shapes as the inputs)."""
    T, H, W = grid
    at = torch.div(t * splits.temporal, T, rounding_mode="floor")
    ah = torch.div(h * splits.height, H, rounding_mode="floor")
    aw = torch.div(w * splits.width, W, rounding_mode="floor")
    return (at * splits.height + ah) * splits.width + aw


class AreaLayout:
    """Where each area's tokens sit, for one forward pass.

    ``area`` is (B, N) area ids in the order the tokens have when attention runs. All
    backends but ``dense`` need that order to be area-sorted (each area contiguous).
    ``backend`` is one of :data:`BACKENDS` (checked where layouts are configured, by
    :class:`~stjepa.models.attention_settings.AttentionSettings`). ``reorder`` (optional, (B, N))
    makes attention sort by area itself and restore the order afterwards, in every layer: the
    published ST-A² behaviour, kept for comparison and tests.
    """

    def __init__(self, area: Tensor, num_areas: int, backend: str = "auto", reorder: Tensor | None = None):
        self.num_areas = num_areas
        self.reorder = reorder
        self.area = area if reorder is None else area.gather(1, reorder)
        B, N = self.area.shape
        counts = torch.zeros(B, num_areas, dtype=torch.long, device=area.device)
        counts.scatter_add_(1, self.area, torch.ones_like(self.area))
        self.counts = counts
        self.counts_host = counts.cpu()  # the layout's host sync (see the module docstring)
        self.backend = self._resolve(backend)

    # -- facts derived from the counts -------------------------------------------------
    @property
    def tokens(self) -> int:
        return self.area.shape[1]

    @cached_property
    def is_equal(self) -> bool:
        c = self.counts_host
        return bool(self.tokens % self.num_areas == 0 and (c == self.tokens // self.num_areas).all())

    @cached_property
    def max_area(self) -> int:
        return int(self.counts_host.max()) if self.counts_host.numel() else 0

    def _resolve(self, backend: str) -> str:
        if backend != "auto":
            if backend == "equal" and not self.is_equal:
                raise ArgumentError(
                    "{backend} needs every area to hold the same number of tokens; area sizes here range "
                    f"{int(self.counts_host.min())}..{self.max_area}; use 'auto'.", backend=backend)
            if backend == "varlen" and (self.area.device.type != "cuda" or varlen_attn() is None):
                raise ArgumentError("{backend} needs a CUDA device and torch >= 2.9; use 'auto'.", backend=backend)
            return backend
        if self.is_equal:
            return "equal"
        if self.area.device.type == "cuda":
            return "varlen" if varlen_attn() is not None else "flex"
        return "padded"

    # -- per-backend structures, built on first use and shared by all layers ---------------
    @cached_property
    def _segments(self) -> tuple[Tensor, Tensor, Tensor]:
        """Non-empty (sample, area) segments: compact id per token, slot in segment, sizes."""
        B, N = self.area.shape
        A = self.num_areas
        flat_counts = self.counts.reshape(-1)
        nonempty = flat_counts > 0
        compact = torch.cumsum(nonempty.long(), 0) - 1  # segment id of each (sample, area)
        starts = torch.cumsum(self.counts, 1) - self.counts  # first slot of each area, per sample
        seg_of_token = (torch.arange(B, device=self.area.device)[:, None] * A + self.area).reshape(-1)
        slot = torch.arange(N, device=self.area.device).expand(B, N) - starts.gather(1, self.area)
        return compact[seg_of_token], slot.reshape(-1), flat_counts[nonempty]

    @cached_property
    def _padded_index(self) -> tuple[Tensor, Tensor, int]:
        segment, slot, sizes = self._segments
        width = self.max_area
        key_valid = torch.arange(width, device=sizes.device)[None, :] < sizes[:, None]
        return segment * width + slot, key_valid[:, None, None, :], sizes.numel()

    @cached_property
    def _cu_seqlens(self) -> Tensor:
        sizes = self._segments[2]
        return F.pad(torch.cumsum(sizes, 0), (1, 0)).to(torch.int32)

    @cached_property
    def _flex_block_mask(self):
        segment = self._segments[0]
        total = segment.numel()

        def same_area(b, h, q_idx, kv_idx):
            return segment[q_idx] == segment[kv_idx]

        return create_block_mask(same_area, None, None, total, total, device=segment.device)

    # -- attention ---------------------------------------------------------------------------
    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Area attention for (B, heads, N, head_dim) tensors in layout order."""
        if self.reorder is None:
            return _BACKEND_FNS[self.backend](self, q, k, v)
        idx = self.reorder[:, None, :, None].expand_as(q)
        out = _BACKEND_FNS[self.backend](self, q.gather(2, idx), k.gather(2, idx), v.gather(2, idx))
        return torch.empty_like(out).scatter_(2, idx, out)


def _dense(layout: AreaLayout, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    return masked_attend(q, k, v, layout.area[:, None, :, None] == layout.area[:, None, None, :])


def _equal(layout: AreaLayout, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    return equal_split_attend(q, k, v, layout.num_areas)


def _padded(layout: AreaLayout, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    index, key_valid, segments = layout._padded_index
    return padded_attend(q, k, v, index, key_valid, segments, layout.max_area)


def _varlen(layout: AreaLayout, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    return varlen_attend(q, k, v, layout._cu_seqlens, layout.max_area)


def _flex(layout: AreaLayout, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    return flex_attend(q, k, v, layout._flex_block_mask)


_BACKEND_FNS = {"dense": _dense, "equal": _equal, "padded": _padded, "varlen": _varlen, "flex": _flex}


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


def shifted_area_index(t: Tensor, h: Tensor, w: Tensor, grid: Grid, splits: AreaSplits) -> tuple[Tensor, int]:
    """Area ids with every split boundary moved by half an area (Swin-style, without wrapping):
    along an axis of length L cut into S > 1 slices, a token at p is in slice
    ``floor(p * S / L + 1/2)`` of S + 1 (the first and last are half slices); unsplit axes stay
    whole. Returns the ids and the number of areas."""
    sizes = []
    coords = []
    for p, length, s in zip((t, h, w), grid, (splits.temporal, splits.height, splits.width)):
        if s == 1:
            coords.append(torch.zeros_like(p))
            sizes.append(1)
        else:
            coords.append(torch.div(2 * p * s + length, 2 * length, rounding_mode="floor"))
            sizes.append(s + 1)
    return (coords[0] * sizes[1] + coords[1]) * sizes[2] + coords[2], sizes[0] * sizes[1] * sizes[2]


@register_kind
class AreaKind:
    """Area attention as a kind of local attention (see :mod:`stjepa.models.kinds`).

    Settings: ``temporal_splits``, ``height_splits``, ``width_splits`` (None: 1);
    ``spatial_splits`` is shorthand for height and width, and giving it together with a
    different height or width split is refused rather than letting one silently win. With one
    area (every split 1) the kind is global attention. ``shift`` makes every other area layer
    use the areas of :func:`shifted_area_index`, so information crosses area borders without a
    global layer; those layers sort by their own areas inside attention (the ``reorder``
    mechanism) and restore the order after. ``reorder='once'`` sorts tokens by area once per
    forward; ``'per_layer'`` sorts inside every area layer as the published ST-A² code did.
    """

    name = "area"
    BACKENDS = BACKENDS

    def __init__(self, temporal_splits: int = 1, height_splits: int | None = None, width_splits: int | None = None,
                 spatial_splits: int | None = None, reorder: str = "once", shift: bool = False):
        one_of(reorder, "reorder", REORDERS)
        if spatial_splits is not None:
            positive_int(spatial_splits, "spatial_splits")
            for name, value in (("height_splits", height_splits), ("width_splits", width_splits)):
                if value is not None and value != spatial_splits:
                    raise ArgumentError(f"{{spatial_splits}} and {{{name}}} both set the {name.split('_')[0]} "
                                        f"splits; give one of them.", spatial_splits=spatial_splits, **{name: value})
            height_splits = width_splits = spatial_splits
        self.spatial_splits = spatial_splits
        self.splits = AreaSplits(temporal_splits, 1 if height_splits is None else height_splits,
                                 1 if width_splits is None else width_splits)
        self.splits.validate()
        self.reorder, self.shift = reorder, bool(shift)

    @property
    def is_global(self) -> bool:
        """One area is the same function as full attention."""
        return self.splits.num_areas == 1

    @property
    def tag(self) -> str:
        return f"area-{self.splits.tag}" + ("-shift" if self.shift else "")

    @property
    def label(self) -> str:
        return "shifted area" if self.shift else "area"

    def validate_settings(self, grid: Grid) -> None:
        """:meth:`validate` for the configured grid, naming ``spatial_splits`` where it was given."""
        spatial = self.spatial_splits
        if spatial is not None and spatial > min(grid[1:]):
            raise ArgumentError(f"{{spatial_splits}} is more splits than the {min(grid[1:])} grid cells of the "
                                f"shorter spatial axis; allowed values are 1..{min(grid[1:])}.",
                                spatial_splits=spatial)
        self.validate(grid)

    def validate(self, grid: Grid) -> None:
        self.splits.validate(grid)

    def _area_ids(self, ids: Tensor, grid: Grid) -> list[tuple[Tensor, int]]:
        pos = grid_positions(ids, grid)
        plain = [(area_index(*pos, grid, self.splits), self.splits.num_areas)]
        return plain + [shifted_area_index(*pos, grid, self.splits)] if self.shift else plain

    def prepare(self, ids: Tensor, grid: Grid, backend: str = "auto") -> tuple[Tensor | None, tuple[AreaLayout, ...]]:
        numel = grid[0] * grid[1] * grid[2]
        if self.reorder == "per_layer":  # attention sorts and restores in every layer, as the published code
            order = None
        else:
            order, layout = sorted_area_layout(ids, grid, self.splits, backend)
            if not self.shift:
                return order, (layout,)
            ids = ids.gather(1, order)
        layouts = []
        for i, (area, count) in enumerate(self._area_ids(ids, grid)):
            if i == 0 and order is not None:
                layouts.append(layout)  # already in its own sorted order
                continue
            layouts.append(AreaLayout(area, count, backend, reorder=(area * numel + ids).argsort(dim=1)))
        return order, tuple(layouts)

    def mask(self, ids: Tensor, grid: Grid) -> tuple[Tensor, ...]:
        return tuple(area[:, :, None] == area[:, None, :] for area, _ in self._area_ids(ids, grid))

    def pairs(self, ids: Tensor, grid: Grid) -> tuple[int, ...]:
        out = []
        for area, count in self._area_ids(ids.cpu(), grid):
            counts = torch.zeros(ids.shape[0], count, dtype=torch.long)
            counts.scatter_add_(1, area, torch.ones_like(area))
            out.append(int((counts ** 2).sum()))
        return tuple(out)
