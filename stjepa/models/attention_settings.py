"""Which layers use local attention, of which kind, with which settings and backend.

The rule: an entry here knows the layer ranges, the backend and the stages; everything else
in an attention mapping is a setting of the entry's kind, read by that kind's constructor
(:func:`~stjepa.models.kinds.kind_settings`), so no kind is special here.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from functools import cached_property
from inspect import Parameter
from typing import Any, Mapping, Sequence

from .arguments import ArgumentError, one_of
from .kinds import LocalKind, find_kinds, kind_settings

DEFAULT_KIND = "area"  # the kind of a mapping that names none (conf/attention/full.yaml names it)
DEFAULT_AREA_FRACTION = 18 / 24  # ST-A²: local layers [0, 18) of a 24-layer ViT-L, the rest global


def attention_keys() -> frozenset[str]:
    """Every key an attention mapping may hold: an entry's fields and every kind's settings."""
    return frozenset(f.name for f in fields(AttentionSettings)) - {"settings"} | frozenset(
        name for kind in find_kinds().values() for name in kind_settings(kind))


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


@dataclass
class AttentionSettings:
    """Attention layout of one transformer (encoder or predictor).

    ``kind`` names the local attention (a module of :mod:`stjepa.models.kinds`, e.g. ``area``
    or ``neighborhood``); its own settings (``spatial_splits``, ``window``, ...) go in
    ``settings``. Layers ``[area_start, area_end)`` use it (``area_end`` defaults to 18/24 of
    the depth), or exactly ``area_layers`` when that list is given; all other layers are
    global, and so are all layers of a kind whose settings make it global (one area). Errors
    are :class:`~stjepa.models.arguments.ArgumentError` naming these fields and settings.
    """

    kind: str = DEFAULT_KIND
    area_start: int = 0
    area_end: int | None = None
    area_layers: Sequence[int] | None = None
    backend: str = "auto"
    stages: tuple["AttentionSettings", ...] = ()
    settings: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def create(cls, value: "AttentionSettings | Mapping[str, Any] | None") -> "AttentionSettings":
        """An entry from an attention mapping (the config's keys; null ones are not in use)."""
        if value is None:
            return cls()
        if isinstance(value, AttentionSettings):
            return value
        own = [f.name for f in fields(cls) if f.name != "settings"]
        kwargs = dict(value)
        kind = one_of(kwargs.get("kind", DEFAULT_KIND), "kind", find_kinds())
        settings = {k: kwargs.pop(k) for k in sorted(set(kwargs) - set(own))}
        settings = {k: v for k, v in settings.items() if v is not None}
        known_keys = attention_keys()
        unknown = [k for k in settings if k not in known_keys]
        if unknown:
            name, known = unknown[0], own + list(kind_settings(find_kinds()[kind]))
            raise ArgumentError(f"{{{name}}} is not {_article(kind)} {kind} attention setting; known settings are "
                                f"{', '.join(known)}.", **{name: settings[name]})
        if kwargs.get("area_layers") is not None:
            kwargs["area_layers"] = [int(i) for i in kwargs["area_layers"]]
        kwargs["stages"] = tuple(cls._stage(i, stage) for i, stage in enumerate(kwargs.get("stages") or ()))
        return cls(**kwargs, settings=settings)

    @classmethod
    def _stage(cls, index: int, stage: Any) -> "AttentionSettings":
        """One entry of ``stages``; its errors name it (``stages.1.window``)."""
        if not isinstance(stage, Mapping) or "stages" in stage or "kind" not in stage:
            raise ArgumentError("{stages} entries are mappings of attention settings with a kind (kind, its "
                                "settings, area_start/area_end or area_layers, backend), without stages of their "
                                "own.", stages=stage)
        try:
            return cls.create(stage)
        except ArgumentError as exc:
            raise exc.within(f"stages.{index}.") from None

    @cached_property
    def built_kind(self) -> LocalKind:
        """The kind built from its settings: ``prepare``, ``pairs``, ``validate`` (see stjepa.models.kinds)."""
        kind = find_kinds()[self.kind]
        takes = kind_settings(kind)
        missing = [name for name, default in takes.items() if default is Parameter.empty and name not in self.settings]
        if missing:
            raise ArgumentError(f"{{kind}} needs {{{missing[0]}}} to be set.", kind=self.kind, **{missing[0]: None})
        return kind(**{k: v for k, v in self.settings.items() if k in takes})

    def _foreign_settings(self) -> None:
        """Refuse settings of another kind that this kind does not use (at their defaults they
        are simply not in use: a preset lists them all)."""
        takes = kind_settings(find_kinds()[self.kind])
        for name, value in self.settings.items():
            if name in takes:
                continue
            owner = next(k for k in find_kinds().values() if name in kind_settings(k))
            if value != kind_settings(owner)[name]:
                raise ArgumentError(f"{{{name}}} is {_article(owner.name)} {owner.name} attention setting, which "
                                    f"{{kind}} does not use.", **{name: value}, kind=self.kind)

    @property
    def restricts_own_layers(self) -> bool:
        """Whether this entry's own layers can differ from global attention (an area layout
        needs two areas); ``stages`` not counted."""
        return not self.built_kind.is_global

    @property
    def has_local_layers(self) -> bool:
        """Whether any layer can differ from global attention."""
        return self.restricts_own_layers or any(stage.has_local_layers for stage in self.stages)

    @property
    def entries(self) -> tuple["AttentionSettings", ...]:
        """This entry and its stages."""
        return (self, *self.stages)

    @property
    def tag(self) -> str:
        """Short name of the layout, e.g. 'full', 'area-t2h2w2-L0:18' or, with stages,
        'area-t1h2w2-L0:12+nbhd3x7x7-L12:18' (for run names and tags)."""
        tags = []
        for entry in self.entries:
            if entry.restricts_own_layers:
                layers = f"L{','.join(map(str, entry.area_layers))}" if entry.area_layers is not None else (
                    f"L{entry.area_start}:{'auto' if entry.area_end is None else entry.area_end}")
                tags.append(f"{entry.built_kind.tag}-{layers}")
        return "+".join(tags) or "full"

    def validate_grid(self, grid: tuple[int, int, int]) -> None:
        """Refuse an input grid the local attention does not fit (checked at every forward)."""
        for i, entry in enumerate(self.entries):
            if entry.restricts_own_layers:
                try:
                    entry.built_kind.validate(grid)
                except ArgumentError as exc:
                    raise exc.within(f"stages.{i - 1}." if i else "") from None

    def layers(self, depth: int) -> tuple["AttentionSettings | None", ...]:
        """For each layer, the entry (this one or a stage) whose local attention it uses; None
        for global layers."""
        self.validate(depth)
        out: list[AttentionSettings | None] = [None] * depth
        for entry in self.entries:
            for layer in entry._own_layers(depth):
                if out[layer] is not None:
                    both = " and ".join(f"{p.built_kind.tag} (layers {', '.join(map(str, p._own_layers(depth)))})"
                                        for p in (out[layer], entry))
                    raise ArgumentError(f"{{stages}} put layer {layer} in two layer ranges, {both}; give each "
                                        f"layer at most one kind (ranges may not overlap).",
                                        stages=[dict(kind=p.kind, area_start=p.area_start, area_end=p.area_end)
                                                for p in self.stages])
                out[layer] = entry
        return tuple(out)

    def local_layer_flags(self, depth: int) -> tuple[bool, ...]:
        """True for each layer that uses local attention."""
        return tuple(part is not None for part in self.layers(depth))

    def _own_layers(self, depth: int) -> list[int]:
        if not self.restricts_own_layers:
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
        self._foreign_settings()
        one_of(self.backend, "backend", self.built_kind.BACKENDS)
        if grid is not None:
            self.built_kind.validate_settings(grid)
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
