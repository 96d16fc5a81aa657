"""Kinds of local attention, one module each: the interface they share and their registry.

The rule: a kind is one module of this package that registers its class with
:func:`register_kind`; the package is listed on first use (:func:`find_kinds`), so adding a
kind is that module plus a preset in conf/attention/, with no edit anywhere else. Every kind
computes attention through the shared backends of :mod:`stjepa.models.attention_backends`.

A kind (:class:`LocalKind`) is built from its settings: its constructor's keyword arguments,
named as the config keys (``attention.window``, ``attention.spatial_splits``; see
:func:`kind_settings`), and has

- ``name``: the value of ``attention.kind``; ``label``: the kind in words (for sweep
  groups); ``BACKENDS``: what ``backend`` may be; ``is_global``: whether these settings make
  it the same function as global attention (one area), so its layers run global;
- ``validate_settings(grid)``: refuse settings that do not fit the configured (T', H', W')
  token grid, and ``validate(grid)`` any input's grid (the same check for most kinds), raising
  :class:`~stjepa.models.arguments.ArgumentError` in the kind's own argument names;
- ``prepare(ids, grid, backend, valid)``: once per forward, from the flat grid positions
  ``ids`` (B, N) of the tokens present and ``valid`` (B, N) bool, which of them are real tokens
  (None: all; index lists padded to a fixed length have padded slots, which no token may attend
  to), ``(order, layouts)``: the token order the layers run in (None: the caller's) and the
  layouts (:class:`LocalLayout`) local layers hand to ``layout.attend(q, k, v)``, taken in turn
  (one layout for most kinds; shifted areas alternate two). Shapes come from N and the grid,
  never from reading the tokens, so a step holds no host sync and compiles once;
- ``pairs(ids, grid)``: query-key pairs per head over the batch, per layout (FLOP counter);
- ``tag``: a short name for run names;
- besides, where the positions fix the pattern, ``mask(ids, grid)``: the dense reference per
  layout, (B, N, N) booleans "query may see key" (a data-dependent kind such as
  ``topk_blocks`` builds its mask from q and k inside its layout's ``dense`` backend instead).
"""
from __future__ import annotations

import importlib
import inspect
import pkgutil
from typing import Protocol, Sequence, runtime_checkable

from torch import Tensor

from ..grid import Grid

# beyond this many tokens the dense reference's (heads, N, N) scores outgrow a CPU's memory
DENSE_MAX_TOKENS = 8192


@runtime_checkable
class LocalLayout(Protocol):
    """What a local layer gets for one forward: attention over (B, heads, N, head_dim) tensors
    in the order the kind's ``prepare`` put the tokens in."""

    backend: str

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor: ...


@runtime_checkable
class LocalKind(Protocol):
    """One kind of local attention with its settings (see the module docstring)."""

    name: str
    BACKENDS: Sequence[str]

    @property
    def label(self) -> str: ...

    @property
    def is_global(self) -> bool: ...

    @property
    def tag(self) -> str: ...

    def validate_settings(self, grid: Grid) -> None: ...

    def validate(self, grid: Grid) -> None: ...

    def prepare(self, ids: Tensor, grid: Grid, backend: str = "auto",
                valid: Tensor | None = None) -> tuple[Tensor | None, tuple[LocalLayout, ...]]: ...

    def pairs(self, ids: Tensor, grid: Grid) -> tuple[int, ...]: ...


def layout_cache(build):
    """A layout's structure built on first use and shared by all its layers (a property). Like
    ``functools.cached_property`` but without its lock, which ``torch.compile`` cannot trace."""
    slot = f"_cached_{build.__name__}"

    def get(self):
        if not hasattr(self, slot):
            setattr(self, slot, build(self))
        return getattr(self, slot)

    return property(get, doc=build.__doc__)


_REGISTRY: dict[str, type] = {}
_listed = False


def register_kind(kind: type) -> type:
    """Class decorator: make ``kind`` available as ``attention.kind=<kind.name>``."""
    _REGISTRY[kind.name] = kind
    return kind


def find_kinds() -> dict[str, type]:
    """name -> class of every registered kind (by name), the modules of this package imported first."""
    global _listed
    if not _listed:
        _listed = True
        for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
            importlib.import_module(f"{__name__}.{info.name}")
    return dict(sorted(_REGISTRY.items()))


def kind_settings(kind: type) -> dict[str, object]:
    """The settings a kind takes (its constructor's keyword arguments) and their defaults."""
    return {name: p.default for name, p in inspect.signature(kind).parameters.items()}
