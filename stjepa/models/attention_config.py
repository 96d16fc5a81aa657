"""Which layers use area attention, with which splits and backend."""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Mapping, Sequence

from .area import BACKENDS, AreaSplits
from .arguments import ArgumentError, one_of, positive_int

REORDERS = ("once", "per_layer")
DEFAULT_AREA_FRACTION = 18 / 24  # ST-A²: area layers [0, 18) of a 24-layer ViT-L, the rest global


@dataclass
class AttentionConfig:
    """Attention layout of one transformer (encoder or predictor).

    With more than one area (any split > 1), layers ``[area_start, area_end)`` use area
    attention (``area_end`` defaults to 18/24 of the depth), or exactly ``area_layers`` when
    that list is given; all other layers are global. With one area every layer is global
    (one area is the same function as full attention).

    ``height_splits`` / ``width_splits`` of None mean 1; ``spatial_splits`` is shorthand for
    both, and giving it together with a different height or width split is refused rather
    than letting one silently win. ``reorder='once'`` sorts tokens by area once per forward;
    ``'per_layer'`` sorts inside every area layer as the published ST-A² code did.
    Errors are :class:`~stjepa.models.arguments.ArgumentError` naming these fields.
    """

    temporal_splits: int = 1
    height_splits: int | None = None
    width_splits: int | None = None
    spatial_splits: int | None = None
    area_start: int = 0
    area_end: int | None = None
    area_layers: Sequence[int] | None = None
    backend: str = "auto"
    reorder: str = "once"

    @classmethod
    def create(cls, value: "AttentionConfig | Mapping[str, Any] | None") -> "AttentionConfig":
        if value is None:
            return cls()
        if isinstance(value, AttentionConfig):
            return value
        known = [f.name for f in fields(cls)]
        kwargs = dict(value)
        unknown = sorted(set(kwargs) - set(known))
        if unknown:
            raise ArgumentError(f"{{{unknown[0]}}} is not an attention setting; known settings are "
                                f"{', '.join(known)}.", **{unknown[0]: kwargs[unknown[0]]})
        if kwargs.get("area_layers") is not None:
            kwargs["area_layers"] = [int(i) for i in kwargs["area_layers"]]
        return cls(**kwargs)

    @property
    def splits(self) -> AreaSplits:
        h, w = self.height_splits, self.width_splits
        if self.spatial_splits is not None:
            h = w = self.spatial_splits
        return AreaSplits(self.temporal_splits, 1 if h is None else h, 1 if w is None else w)

    @property
    def is_area(self) -> bool:
        return self.splits.num_areas > 1

    @property
    def tag(self) -> str:
        """Short name of the layout, e.g. 'full' or 'area-t2h2w2-L0:18' (for run names and tags)."""
        if not self.is_area:
            return "full"
        layers = f"L{','.join(map(str, self.area_layers))}" if self.area_layers is not None else (
            f"L{self.area_start}:{'auto' if self.area_end is None else self.area_end}")
        return f"area-{self.splits.tag}-{layers}"

    def pattern(self, depth: int) -> tuple[bool, ...]:
        """True for each layer that uses area attention."""
        self.validate(depth)
        if not self.is_area:
            return (False,) * depth
        if self.area_layers is not None:
            chosen = set(self.area_layers)
        else:
            end = self.default_end(depth) if self.area_end is None else self.area_end
            chosen = set(range(self.area_start, end))
        return tuple(i in chosen for i in range(depth))

    @staticmethod
    def default_end(depth: int) -> int:
        return round(depth * DEFAULT_AREA_FRACTION)

    def validate(self, depth: int, grid: tuple[int, int, int] | None = None) -> None:
        """Raise ArgumentError naming the first bad field."""
        one_of(self.backend, "backend", BACKENDS)
        one_of(self.reorder, "reorder", REORDERS)
        self._validate_spatial(grid)
        self.splits.validate(grid)
        if self.area_layers is not None:
            bad = [i for i in self.area_layers if not 0 <= i < depth]
            if bad or not self.area_layers:
                raise ArgumentError(f"{{area_layers}} does not fit a depth of {depth}; give a non-empty list of "
                                    f"layer indices in 0..{depth - 1}.", area_layers=list(self.area_layers))
            return
        end = self.default_end(depth) if self.area_end is None else self.area_end
        if not (isinstance(self.area_start, int) and isinstance(end, int) and 0 <= self.area_start < end <= depth):
            raise ArgumentError(f"{{area_start}} / {{area_end}} do not fit a depth of {depth}; need "
                                f"0 <= area_start < area_end <= {depth} (end exclusive).",
                                area_start=self.area_start, area_end=end)

    def _validate_spatial(self, grid: tuple[int, int, int] | None) -> None:
        """spatial_splits is checked under its own name, and may not contradict height/width."""
        spatial = self.spatial_splits
        if spatial is None:
            return
        positive_int(spatial, "spatial_splits")
        for name in ("height_splits", "width_splits"):
            value = getattr(self, name)
            if value is not None and value != spatial:
                raise ArgumentError(f"{{spatial_splits}} and {{{name}}} both set the {name.split('_')[0]} splits; "
                                    f"give one of them.", spatial_splits=spatial, **{name: value})
        if grid is not None and spatial > min(grid[1:]):
            raise ArgumentError(f"{{spatial_splits}} is more splits than the {min(grid[1:])} grid cells of the "
                                f"shorter spatial axis; allowed values are 1..{min(grid[1:])}.",
                                spatial_splits=spatial)
