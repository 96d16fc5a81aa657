"""Checks of constructor arguments, raised in the model's own terms.

A message names arguments as ``{name}`` placeholders; :class:`ArgumentError` renders them as
``name=value`` by default, and a caller that exposes an argument under another name (a config
key such as ``attention.predictor.height_splits``) renders the same error with its own names
through :meth:`ArgumentError.render`.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable


class ArgumentError(ValueError):
    def __init__(self, template: str, prefix: str = "", **args: Any):
        self.template, self.prefix, self.args_ = template, prefix, args
        super().__init__(self.render())

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.prefix + n for n in self.args_)

    def render(self, name_of: Callable[[str], str] = str) -> str:
        return self.template.format(**{n: f"{name_of(self.prefix + n)}={v!r}" for n, v in self.args_.items()})

    def within(self, prefix: str) -> "ArgumentError":
        """The same error for arguments that sit under ``prefix`` (e.g. 'stages.1.')."""
        return ArgumentError(self.template, prefix=prefix + self.prefix, **self.args_)


def positive_int(value: Any, name: str, minimum: int = 1) -> int:
    """``value`` if it is an integer >= ``minimum`` (bools refused), else ArgumentError."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ArgumentError(f"{{{name}}} is not allowed; allowed values are integers >= {minimum}.", **{name: value})
    return value


def one_of(value: Any, name: str, allowed: Iterable[str]) -> str:
    allowed = tuple(allowed)
    if value not in allowed:
        raise ArgumentError(f"{{{name}}} is not known; allowed values are {', '.join(allowed)}.", **{name: value})
    return value
