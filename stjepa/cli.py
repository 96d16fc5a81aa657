"""What the thin entry points share: .env loading, config resolvers, a check of the command
line's keys, and turning user errors and numerical faults into one line.

This module imports only the standard library, omegaconf and :mod:`stjepa.errors` (and Hydra,
which the entry points load anyway, inside the functions that compose), so ``python train.py
--help`` and a mistyped key answer without importing torch or Lightning."""
from __future__ import annotations

import difflib
import shutil
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from omegaconf import OmegaConf

from .errors import CollapseError, NonFiniteLossError, RunComplete, UserError
from .resolvers import register_resolvers

__all__ = ["check_command_line", "load_env", "register_resolvers", "run_or_exit", "user_error_message"]

# keys that moved; the old spelling gets a pointer instead of Hydra's "not in struct"
MOVED_KEYS = {"module.on_nonfinite": "callbacks.nonfinite_guard.action",
              "module.log_flops_every_n_steps": "callbacks.flop_counter.every_n_train_steps"}


def load_env() -> None:
    """Read secrets and paths from ./.env (never overriding the real environment)."""
    try:
        import dotenv
    except ImportError:
        return
    dotenv.load_dotenv(dotenv.find_dotenv(usecwd=True), override=False)


def known_top_keys(config_dir: Path, config_name: str) -> set[str]:
    """Top-level keys and config groups a command line may name for ``config_name``."""
    root = OmegaConf.load(config_dir / f"{config_name}.yaml")
    groups = {p.name for p in config_dir.iterdir() if p.is_dir()}
    return {str(k) for k in root if k != "defaults"} | groups | {"hydra"}


def unknown_key_message(override: str, known: set[str]) -> str | None:
    """A sentence for an override whose first key is unknown (None when it is known)."""
    if override.startswith(("+", "~", "-")) or "=" not in override:
        return None
    key = override.split("=", 1)[0]
    if key in MOVED_KEYS:
        return f"{key} is now {MOVED_KEYS[key]}; write {MOVED_KEYS[key]}={override.split('=', 1)[1]}."
    top = key.split(".", 1)[0].split("/", 1)[0].split("@", 1)[0]  # group@package names the group
    if top in known:
        return None
    close = difflib.get_close_matches(top, sorted(known), n=1)
    hint = f"did you mean {close[0]}{key[len(top):]}={override.split('=', 1)[1]}?" if close else (
        f"known ones are {', '.join(sorted(k for k in known if k != 'hydra'))}.")
    return f"{key} is not a config group or key; {hint}"


def _first_of_sweeps(overrides: list[str]) -> dict[str, str] | None:
    """The overrides with each sweep (``a=1,2``, ``range(...)``) replaced by its first value, so
    one composition checks the keys of a multirun, each mapped to the override as given; None
    when Hydra cannot parse them (it says why)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception:
        return None
    plain = {}
    for given, override in zip(overrides, parsed):
        text = given
        if override.is_sweep_override():
            try:
                text = f"{given.split('=', 1)[0]}={next(iter(override.sweep_string_iterator()))}"
            except Exception:  # a glob or an interval: left for Hydra
                continue
        plain[text] = given
    return plain


def _compose(config_dir: Path, config_name: str, overrides: list[str]) -> Any:
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(Path(config_dir).resolve()), version_base="1.3"):
        return compose(config_name, overrides=overrides, return_hydra_config=True)


def _node_name(cfg: Any, path: str, config_name: str) -> str:
    """``data (data=images)`` for a node a group option fills, ``trainer``, or ``the train config``."""
    if not path:
        return f"the {config_name} config"
    choice = OmegaConf.select(cfg, "hydra.runtime.choices", default={}).get(path)
    return f"{path} ({path}={choice})" if choice else path


def _example(node: Any) -> str:
    """``{video:0.75,images:0.25}`` or ``[0.3,1.0]``: a node's value as a command line writes it."""
    value = OmegaConf.to_container(node, resolve=False)
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{v}" for k, v in value.items()) + "}"
    return "[" + ",".join(str(v) for v in value) + "]"


def composition_message(cause: Exception, override: str, cfg: Any, config_name: str) -> str | None:
    """The sentence for an override Hydra could not apply, read from the config composed
    without it (``cfg``): a key its node does not have, with the closest key of that node (or
    all of them); a list given where the config holds a mapping or the other way round, with
    an example of the shape it wants. None for other failures (Hydra's own text stays)."""
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ConfigTypeError

    full_key, (key, value) = str(getattr(cause, "full_key", "") or ""), override.split("=", 1)
    parent, _, name = full_key.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else cfg
    if isinstance(cause, (ConfigAttributeError, ConfigKeyError)) and "not in struct" in str(cause) and full_key:
        if not OmegaConf.is_dict(node):
            return None
        keys = sorted(str(k) for k in node if not str(k).startswith("_") and not (k == "hydra" and not parent))
        close = difflib.get_close_matches(name, keys, n=1)
        where = _node_name(cfg, parent, config_name)
        prefix, rest = f"{parent}." if parent else "", key[len(full_key):]
        if close:
            return f"{key} is not a key of {where}; did you mean {prefix}{close[0]}{rest}={value}?"
        return f"{key} is not a key of {where}; its keys are {', '.join(keys)}."
    target = OmegaConf.select(cfg, full_key) if full_key else None
    if isinstance(cause, ConfigTypeError) and "Cannot merge" in str(cause) and OmegaConf.is_config(target):
        given, wanted = ("a list", "a mapping") if OmegaConf.is_dict(target) else ("a mapping", "a list")
        where = _node_name(cfg, parent, config_name)
        return (f"{key}={value} is {given}, but in {where} {key} is {wanted}; give it in that shape, for "
                f"example {key}={_example(target)}.")
    return None


def check_composition(argv: Sequence[str], config_dir: Path, config_name: str) -> str | None:
    """Compose the config as Hydra will; for an override it cannot apply (see
    :func:`composition_message`), the sentence."""
    from hydra.errors import ConfigCompositionException

    if any(a.startswith(("--config", "-c")) for a in argv):  # another config than ``config_name``
        return None
    given = _first_of_sweeps([a for a in argv if not a.startswith("-") and ("=" in a or a.startswith("~"))])
    if not given:
        return None
    overrides = list(given)
    try:
        _compose(config_dir, config_name, overrides)
        return None
    except ConfigCompositionException as exc:
        cause = exc.__cause__
    key = str(getattr(cause, "full_key", "") or "")
    culprit = next((o for o in overrides if "=" in o and not o.startswith(("+", "~")) and
                    (o.split("=", 1)[0] == key or o.split("=", 1)[0].startswith(key + "."))), None)
    if cause is None or not key or culprit is None:
        return None
    try:  # the node as it is without the override (other overrides may fail too: then Hydra speaks)
        cfg = _compose(config_dir, config_name, [o for o in overrides if o != culprit])
    except Exception:
        return None
    return composition_message(cause, given[culprit], cfg, config_name)


def check_command_line(argv: Sequence[str], config_dir: Path, config_name: str) -> None:
    """Refuse mistyped groups and keys with a suggestion, and values of the wrong shape with an
    example, before Hydra runs anything: top-level names are read from the config files, keys
    at any depth from the config composed as Hydra will compose it."""
    known = known_top_keys(config_dir, config_name)
    messages = (unknown_key_message(arg, known) for arg in argv)
    message = next((m for m in messages if m), None) or check_composition(argv, config_dir, config_name)
    if message:
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


def remove_empty_run_dir(output_dir: str | None) -> None:
    """A job that stopped before any work leaves no run directory behind (only the config
    Hydra saved and an empty log were in it)."""
    if not output_dir:
        return
    folder = Path(output_dir)
    if folder.is_dir() and all(p.name == ".hydra" or (p.suffix == ".log" and p.is_file()) for p in folder.iterdir()):
        shutil.rmtree(folder, ignore_errors=True)


def user_error_message(exc: UserError) -> str:
    """The one sentence of a UserError: errors raised in DataLoader workers arrive with the
    worker's traceback in the message, ending in "<ErrorClass>: sentence"."""
    message = str(exc).strip().splitlines()[-1]
    if ":" in message and type(exc).__name__ in message.split(":", 1)[0]:
        message = message.split(":", 1)[1].strip()
    return message


def run_or_exit(fn: Callable[..., Any], cfg: Any) -> Any:
    """Run ``fn(cfg)``; bad input exits with status 2 and one sentence, no traceback; a
    non-finite loss or a collapse stop exits with status 1; a run with nothing left to do says so and exits 0.
    The first and the last leave no empty run directory behind."""
    try:
        return fn(cfg)
    except UserError as exc:
        remove_empty_run_dir(OmegaConf.select(cfg, "paths.output_dir", default=None))
        print(f"error: {user_error_message(exc)}", file=sys.stderr)
        sys.exit(2)
    except RunComplete as exc:
        remove_empty_run_dir(OmegaConf.select(cfg, "paths.output_dir", default=None))
        print(str(exc), file=sys.stderr)
        sys.exit(0)
    except (NonFiniteLossError, CollapseError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
