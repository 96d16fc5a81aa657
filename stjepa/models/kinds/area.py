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

Static shapes, no host reads: the kind takes every size a backend needs from the grid and the
token count, never from the tokens: the most tokens an area can hold (its cells, at most N),
all (sample, area) segments including empty ones (``padded``: B * A segments of that many
slots; ``varlen``: that maximum length), and ``auto`` picks ``equal`` only where it is known
without looking, i.e. every grid cell is present (the target encoder) and the splits cut every
axis evenly. Padded tokens (``valid`` False) form one more area, sorted last, that no real token
sees; ``padded`` leaves them out of its segments. A layout built by hand without those bounds
(``AreaLayout(area, num_areas)``, tests and benchmarks) reads its area sizes to the host once,
and so does an explicit ``backend='equal'`` on tokens the grid does not guarantee balanced (it
checks them; the default ``auto`` never does).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..arguments import ArgumentError, one_of, positive_int
from ..attention_backends import (create_block_mask, equal_split_attend, flex_attend, masked_attend, padded_attend,
                                 varlen_attend, varlen_attn)
from ..grid import Grid, grid_positions
from . import layout_cache, register_kind

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


@dataclass(frozen=True)
class AreaBounds:
    """What an area layout may know without reading its tokens: the most tokens one area can
    hold, and whether every area holds exactly N / A of the N tokens (no padding)."""

    max_area: int
    equal: bool
    padded: bool = False  # some tokens may be padding (the extra area ``num_areas``)


class AreaLayout:
    """Where each area's tokens sit, for one forward pass.

    ``area`` is (B, N) area ids in the order the tokens have when attention runs; a padded token
    has id ``num_areas`` (an extra area no real token sees). All backends but ``dense`` need that
    order to be area-sorted (each area contiguous, the padded tokens last). ``backend`` is one of
    :data:`BACKENDS` (checked where layouts are configured, by
    :class:`~stjepa.models.attention_settings.AttentionSettings`). ``reorder`` (optional, (B, N))
    makes attention sort by area itself and restore the order afterwards, in every layer: the
    published ST-A² behaviour, kept for comparison and tests. ``bounds`` (:class:`AreaBounds`)
    are the static sizes the kind derives from the grid; without them the layout reads its area
    sizes to the host (one sync).
    """

    def __init__(self, area: Tensor, num_areas: int, backend: str = "auto", reorder: Tensor | None = None,
                 bounds: AreaBounds | None = None):
        self.num_areas = num_areas
        self.reorder = reorder
        self.area = area if reorder is None else area.gather(1, reorder)
        B, N = self.area.shape
        counts = torch.zeros(B, num_areas + 1, dtype=torch.long, device=area.device)  # the last: padding
        counts.scatter_add_(1, self.area, torch.ones_like(self.area))
        self.counts = counts
        self.bounds = bounds if bounds is not None else self._measured_bounds()
        self.backend = self._resolve(backend)

    def _read_sizes(self) -> tuple[bool, int, int]:
        """Whether every area holds N / A tokens, and the smallest and largest area's size, read
        to the host (one sync)."""
        c = self.counts[:, :self.num_areas].cpu()
        if not c.numel():
            return False, 0, 0
        return self.tokens % self.num_areas == 0 and bool((c == self.tokens // self.num_areas).all()), int(c.min()), \
            int(c.max())

    def _measured_bounds(self) -> AreaBounds:
        equal, _, largest = self._read_sizes()  # a layout built without bounds
        return AreaBounds(largest, equal)

    @property
    def tokens(self) -> int:
        return self.area.shape[1]

    @property
    def is_equal(self) -> bool:
        return self.bounds.equal

    @property
    def max_area(self) -> int:
        return self.bounds.max_area

    def _resolve(self, backend: str) -> str:
        if backend != "auto":
            if backend == "equal" and not self.is_equal:
                # asked for on tokens not known to be balanced: checked on the host (one sync; 'auto'
                # picks 'equal' only where the grid guarantees it)
                equal, smallest, largest = self._read_sizes()
                if not equal:
                    raise ArgumentError(
                        "{backend} needs every area to hold the same number of tokens; area sizes here range "
                        f"{smallest}..{largest} over {self.tokens} tokens; use 'auto'.", backend=backend)
                self.bounds = AreaBounds(self.tokens // self.num_areas, True, self.bounds.padded)
            if backend == "varlen" and (self.area.device.type != "cuda" or varlen_attn() is None):
                raise ArgumentError("{backend} needs a CUDA device and torch >= 2.9; use 'auto'.", backend=backend)
            return backend
        if self.is_equal:
            return "equal"
        if self.area.device.type == "cuda":
            return "varlen" if varlen_attn() is not None else "flex"
        return "padded"

    # -- per-backend structures, built on first use and shared by all layers ---------------
    @layout_cache
    def _starts(self) -> Tensor:
        """(B, A + 1): the first position of each area (and of the padding) in its sample."""
        return torch.cumsum(self.counts, 1) - self.counts

    @layout_cache
    def _padded_index(self) -> tuple[Tensor, Tensor, Tensor]:
        """Every (sample, area) segment, empty ones included, gets ``max_area`` slots: the slot
        of each token (flattened; padded tokens point at slot 0, their output is unused), the
        token of each slot (empty slots point at a token of their sample, their keys are masked)
        and which slots hold tokens, (B * A, max_area)."""
        B, N = self.area.shape
        A, width, device = self.num_areas, self.max_area, self.area.device
        rank = torch.arange(N, device=device) - self._starts.gather(1, self.area)
        sample = torch.arange(B, device=device)[:, None]
        token_slot = torch.where(self.area < A, (sample * A + self.area) * width + rank, 0).reshape(-1)
        within = torch.arange(width, device=device)
        slot_valid = within < self.counts[:, :A, None]
        slot_token = (sample[..., None] * N + (self._starts[:, :A, None] + within).clamp(max=N - 1)).reshape(-1)
        return token_slot, slot_token, slot_valid.reshape(B * A, width)

    @layout_cache
    def _cu_seqlens(self) -> Tensor:
        """Cumulative lengths of every (sample, area) segment and each sample's padding, in the
        flattened batch (empty segments included)."""
        return F.pad(torch.cumsum(self.counts.reshape(-1), 0), (1, 0)).to(torch.int32)

    @property
    def _longest_segment(self) -> int:
        return max(self.max_area, self.tokens if self.bounds.padded else 0)

    @layout_cache
    def _flex_block_mask(self):
        B, N = self.area.shape
        segment = (torch.arange(B, device=self.area.device)[:, None] * (self.num_areas + 1) + self.area).reshape(-1)
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
    return padded_attend(q, k, v, *layout._padded_index)


def _varlen(layout: AreaLayout, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    return varlen_attend(q, k, v, layout._cu_seqlens, layout._longest_segment)


def _flex(layout: AreaLayout, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    return flex_attend(q, k, v, layout._flex_block_mask)


_BACKEND_FNS = {"dense": _dense, "equal": _equal, "padded": _padded, "varlen": _varlen, "flex": _flex}


def area_sort(area: Tensor, ids: Tensor, grid: Grid) -> Tensor:
    """The permutation that sorts tokens at ``ids`` (B, N) by (area, grid position)."""
    return (area * (grid[0] * grid[1] * grid[2]) + ids).argsort(dim=1)


def slice_sizes(length: int, splits: int, shifted: bool = False) -> list[int]:
    """Cells of each slice when an axis of ``length`` cells is cut into ``splits`` (``shifted``:
    the slices of :func:`shifted_area_index`), counted from the rule on the host."""
    sizes: dict[int, int] = {}  # plain loops and ints: traced as constants under torch.compile
    for p in range(length):
        cut = (2 * p * splits + length) // (2 * length) if shifted and splits > 1 else p * splits // length
        sizes[cut] = sizes.get(cut, 0) + 1
    return list(sizes.values())


def area_bounds(grid: Grid, splits: AreaSplits, tokens: int, shifted: bool, padded: bool) -> AreaBounds:
    """:class:`AreaBounds` for ``tokens`` tokens (padding included) on ``grid``, from the grid
    alone: an area holds at most its cells, and N / A each when all cells are present and every
    axis is cut evenly."""
    cells, even = 1, True
    for length, s in zip(grid, (splits.temporal, splits.height, splits.width)):
        sizes = slice_sizes(length, s, shifted)
        cells *= max(sizes)
        even = even and min(sizes) == max(sizes)
    all_present = not padded and tokens == grid[0] * grid[1] * grid[2]
    return AreaBounds(min(cells, tokens), even and all_present, padded)


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

    def _area_ids(self, ids: Tensor, grid: Grid, valid: Tensor | None = None) -> list[tuple[Tensor, int, AreaBounds]]:
        """Per layout in turn (plain areas, then shifted ones with ``shift``): each token's area
        id (padded tokens: the extra id ``count``), the number of areas and the static bounds."""
        pos = grid_positions(ids, grid)
        kinds = [(area_index(*pos, grid, self.splits), self.splits.num_areas, False)]
        if self.shift:
            kinds.append((*shifted_area_index(*pos, grid, self.splits), True))
        out = []
        for area, count, shifted in kinds:
            if valid is not None:
                area = torch.where(valid, area, count)
            out.append((area, count, area_bounds(grid, self.splits, ids.shape[1], shifted, valid is not None)))
        return out

    def prepare(self, ids: Tensor, grid: Grid, backend: str = "auto",
                valid: Tensor | None = None) -> tuple[Tensor | None, tuple[AreaLayout, ...]]:
        layouts = self._area_ids(ids, grid, valid)
        if self.reorder == "per_layer":  # attention sorts and restores in every layer, as the published code
            order = None
        else:
            area, count, bounds = layouts[0]
            order = area_sort(area, ids, grid)
            first = AreaLayout(area.gather(1, order), count, backend, bounds=bounds)
            if not self.shift:
                return order, (first,)
            ids, layouts = ids.gather(1, order), [(a.gather(1, order), c, b) for a, c, b in layouts]
        built = [first] if order is not None else []  # the first is already in its own sorted order
        for area, count, bounds in layouts[len(built):]:
            built.append(AreaLayout(area, count, backend, reorder=area_sort(area, ids, grid), bounds=bounds))
        return order, tuple(built)

    def mask(self, ids: Tensor, grid: Grid) -> tuple[Tensor, ...]:
        return tuple(area[:, :, None] == area[:, None, :] for area, _, _ in self._area_ids(ids, grid))

    def pairs(self, ids: Tensor, grid: Grid) -> tuple[int, ...]:
        out = []
        for area, count, _ in self._area_ids(ids.cpu(), grid):
            counts = torch.zeros(ids.shape[0], count, dtype=torch.long)
            counts.scatter_add_(1, area, torch.ones_like(area))
            out.append(int((counts ** 2).sum()))
        return tuple(out)
