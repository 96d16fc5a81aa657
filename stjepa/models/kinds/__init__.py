"""Kinds of local attention besides area attention (:mod:`stjepa.models.area`), one module each.

A kind module defines ``KIND``: a class built from its settings (keyword arguments named as
the config keys) with

- ``validate(grid)``: refuse settings that do not fit the (T', H', W') token grid, raising
  :class:`~stjepa.models.arguments.ArgumentError` in the kind's own argument names;
- ``prepare(ids, grid, backend)``: once per forward, from the flat grid positions ``ids``
  (B, N) of the tokens present, ``(order, layouts)``: the token order the layers run in (None:
  the caller's) and the layouts local layers hand to ``layout.attend(q, k, v)``, taken in turn
  (one layout for most kinds; shifted areas alternate two);
- ``mask(ids, grid)``: the dense reference per layout, (B, N, N) booleans "query may see key",
  for kinds whose pattern the positions fix (a data-dependent kind such as ``topk_blocks``
  builds its mask from q and k inside its layout's ``dense`` backend instead);
- ``pairs(ids, grid)``: query-key pairs per head over the batch, per layout (FLOP counter);
- ``tag``: a short name for run names; ``BACKENDS``: what ``backend`` may be.

Modules here are found by name: adding a kind is a new module plus a preset in conf/attention/.
Modules without ``KIND`` (``blocks``: block-sparse attention by gathering) are shared helpers.
"""
from __future__ import annotations

import importlib
import pkgutil

# beyond this many tokens the dense reference's (heads, N, N) scores outgrow a CPU's memory
DENSE_MAX_TOKENS = 8192


def find_kinds() -> dict[str, type]:
    """name -> KIND class of every module in this package."""
    kinds = {}
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(module, "KIND"):
            kinds[module.KIND.name] = module.KIND
    return kinds
