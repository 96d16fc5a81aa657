"""Which layers use local attention, of which kind, with which settings and backend."""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from functools import cached_property
from typing import Any, Mapping, Sequence

from .kinds.area import AreaKind, AreaSplits
from .arguments import ArgumentError, one_of, positive_int
from .kinds import find_kinds

REORDERS = ("once", "per_layer")
DEFAULT_AREA_FRACTION = 18 / 24  # ST-A²: area layers [0, 18) of a 24-layer ViT-L, the rest global
KINDS = find_kinds()
AREA_SETTINGS = ("temporal_splits", "height_splits", "width_splits", "spatial_splits", "reorder", "shift")


@dataclass
class AttentionConfig:
    """Attention layout of one transformer (encoder or predictor).

    ``kind`` names the local attention (``area``, or a module of :mod:`stjepa.models.kinds`,
    e.g. ``neighborhood``); its own settings (``window``, ``dilation``, ...) go in
    ``options``. Layers ``[area_start, area_end)`` use it (``area_end`` defaults to 18/24 of the
    depth), or exactly ``area_layers`` when that list is given; all other layers are global.

    Area settings: with one area (every split 1) every layer is global (one area is the same
    function as full attention). ``height_splits`` / ``width_splits`` of None mean 1;
    ``spatial_splits`` is shorthand for both, and giving it together with a different height or
    width split is refused rather than letting one silently win. ``shift`` moves the area
    boundaries by half an area in every other area layer (Swin-style). ``reorder='once'`` sorts
    tokens by area once per forward; ``'per_layer'`` sorts inside every area layer as the
    published ST-A² code did. Errors are :class:`~stjepa.models.arguments.ArgumentError`
    naming these fields.
    """

    kind: str = "area"
    temporal_splits: int = 1
    height_splits: int | None = None
    width_splits: int | None = None
    spatial_splits: int | None = None
    area_start: int = 0
    area_end: int | None = None
    area_layers: Sequence[int] | None = None
    backend: str = "auto"
    reorder: str = "once"
    shift: bool = False
    stages: tuple["AttentionConfig", ...] = ()
    options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def create(cls, value: "AttentionConfig | Mapping[str, Any] | None") -> "AttentionConfig":
        if value is None:
            return cls()
        if isinstance(value, AttentionConfig):
            return value
        known = [f.name for f in fields(cls) if f.name != "options"]
        kwargs = dict(value)
        kind = one_of(kwargs.get("kind", "area"), "kind", KINDS)
        # settings of other kinds: null ones are simply not in use; others are the kind's options
        extra = {k: kwargs.pop(k) for k in sorted(set(kwargs) - set(known))}
        options = {k: v for k, v in extra.items() if v is not None}
        if kind == "area" and options:
            name = next(iter(options))
            raise ArgumentError(f"{{{name}}} is not an area attention setting; known settings are "
                                f"{', '.join(known)}.", **{name: options[name]})
        if kwargs.get("area_layers") is not None:
            kwargs["area_layers"] = [int(i) for i in kwargs["area_layers"]]
        kwargs["stages"] = tuple(cls._stage(i, stage) for i, stage in enumerate(kwargs.get("stages") or ()))
        return cls(**kwargs, options=options)

    @classmethod
    def _stage(cls, index: int, stage: Any) -> "AttentionConfig":
        """One entry of ``stages``; its errors name it (``stages.1.window``)."""
        if not isinstance(stage, Mapping) or "stages" in stage or "kind" not in stage:
            raise ArgumentError("{stages} entries are mappings of attention settings with a kind (kind, its "
                                "settings, area_start/area_end or area_layers, backend), without stages of their "
                                "own.", stages=stage)
        try:
            return cls.create(stage)
        except ArgumentError as exc:
            raise exc.within(f"stages.{index}.") from None

    @property
    def splits(self) -> AreaSplits:
        h, w = self.height_splits, self.width_splits
        if self.spatial_splits is not None:
            h = w = self.spatial_splits
        return AreaSplits(self.temporal_splits, 1 if h is None else h, 1 if w is None else w)

    @cached_property
    def local_kind(self):
        """The kind object: ``prepare``, ``mask``, ``pairs``, ``validate`` (see stjepa.models.kinds)."""
        if self.kind == "area":
            return AreaKind(self.splits, self.reorder, self.shift)
        try:
            return KINDS[self.kind](**self.options)
        except TypeError as exc:  # a setting the kind does not take
            raise ArgumentError(f"{{kind}} does not take these settings ({exc}).", kind=self.kind) from None

    @property
    def own_local(self) -> bool:
        """Whether this entry's own layers can differ from global attention (an area layout
        needs two areas); ``stages`` not counted."""
        return self.kind != "area" or self.splits.num_areas > 1

    @property
    def is_local(self) -> bool:
        """Whether any layer can differ from global attention."""
        return self.own_local or any(stage.is_local for stage in self.stages)

    @property
    def parts(self) -> tuple["AttentionConfig", ...]:
        """This entry and its stages."""
        return (self, *self.stages)

    @property
    def tag(self) -> str:
        """Short name of the layout, e.g. 'full', 'area-t2h2w2-L0:18' or, with stages,
        'area-t1h2w2-L0:12+nbhd3x7x7-L12:18' (for run names and tags)."""
        tags = []
        for part in self.parts:
            if part.own_local:
                layers = f"L{','.join(map(str, part.area_layers))}" if part.area_layers is not None else (
                    f"L{part.area_start}:{'auto' if part.area_end is None else part.area_end}")
                tags.append(f"{part.local_kind.tag}-{layers}")
        return "+".join(tags) or "full"

    def validate_grid(self, grid: tuple[int, int, int]) -> None:
        """Refuse an input grid the local attention does not fit (checked at every forward)."""
        for i, part in enumerate(self.parts):
            if part.own_local:
                try:
                    part.local_kind.validate(grid)
                except ArgumentError as exc:
                    raise exc.within(f"stages.{i - 1}." if i else "") from None

    def layers(self, depth: int) -> tuple["AttentionConfig | None", ...]:
        """For each layer, the entry (this one or a stage) whose local attention it uses; None
        for global layers."""
        self.validate(depth)
        out: list[AttentionConfig | None] = [None] * depth
        for part in self.parts:
            for layer in part._own_layers(depth):
                if out[layer] is not None:
                    both = " and ".join(f"{p.local_kind.tag} (layers {', '.join(map(str, p._own_layers(depth)))})"
                                        for p in (out[layer], part))
                    raise ArgumentError(f"{{stages}} put layer {layer} in two layer ranges, {both}; give each "
                                        f"layer at most one kind (ranges may not overlap).",
                                        stages=[dict(kind=p.kind, area_start=p.area_start, area_end=p.area_end)
                                                for p in self.stages])
                out[layer] = part
        return tuple(out)

    def pattern(self, depth: int) -> tuple[bool, ...]:
        """True for each layer that uses local attention."""
        return tuple(part is not None for part in self.layers(depth))

    def _own_layers(self, depth: int) -> list[int]:
        if not self.own_local:
            return []
        if self.area_layers is not None:
            return sorted(set(self.area_layers))
        end = self.default_end(depth) if self.area_end is None else self.area_end
        return list(range(self.area_start, end))

    @staticmethod
    def default_end(depth: int) -> int:
        return round(depth * DEFAULT_AREA_FRACTION)

    def validate(self, depth: int, grid: tuple[int, int, int] | None = None) -> None:
        """Raise ArgumentError naming the first bad field."""
        self._validate_own(depth, grid)
        for i, stage in enumerate(self.stages):
            try:
                stage.validate(depth, grid)
            except ArgumentError as exc:
                raise exc.within(f"stages.{i}.") from None

    def _validate_own(self, depth: int, grid: tuple[int, int, int] | None) -> None:
        one_of(self.reorder, "reorder", REORDERS)
        if self.kind != "area":
            used = [n for n in AREA_SETTINGS if getattr(self, n) != AttentionConfig.__dataclass_fields__[n].default]
            if used:
                raise ArgumentError(f"{{{used[0]}}} is an area attention setting, which {{kind}} does not use.",
                                    **{used[0]: getattr(self, used[0])}, kind=self.kind)
        one_of(self.backend, "backend", self.local_kind.BACKENDS)
        self._validate_spatial(grid)
        self.splits.validate(grid)
        if grid is not None and self.own_local:
            self.local_kind.validate(grid)
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
