"""Checks of single config values, each refusing with one sentence that names the key (a
:class:`~stjepa.errors.ConfigError`). The config checker and the data modules both use them, so
this module imports nothing from stjepa but :mod:`stjepa.errors`: the data layer never imports
the config checker. The sentences read as those of :mod:`stjepa.models.arguments`, whose
checks name constructor arguments instead of config keys."""
from __future__ import annotations

from typing import Any

from .errors import ConfigError


def check_int(value: Any, key: str, minimum: int = 1) -> int:
    """``value`` if it is an integer >= ``minimum`` (bools refused), else a ConfigError naming ``key``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{key}={value!r} is not allowed; allowed values are integers >= {minimum}.")
    return value


def check_ints(group: str, **values: tuple[Any, int]) -> None:
    """``name=(value, minimum)`` for keys of one config group: each an integer >= its minimum,
    else a ConfigError naming ``<group>.<name>``."""
    for name, (value, minimum) in values.items():
        check_int(value, f"{group}.{name}", minimum)


def check_choice(value: Any, key: str, allowed: tuple[Any, ...]) -> Any:
    """``value`` if it is one of ``allowed``, else a ConfigError naming ``key``."""
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not known; allowed values are {', '.join(map(str, allowed))}.")
    return value
