"""What the thin entry points share: .env loading, config resolvers, a check of the command
line's keys, and turning user errors and numerical faults into one line.

This module imports only the standard library, omegaconf and :mod:`stjepa.errors`, so
``python train.py --help`` and a mistyped key answer without importing torch or Lightning."""
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


def check_command_line(argv: Sequence[str], config_dir: Path, config_name: str) -> None:
    """Refuse mistyped groups and keys with a suggestion, before Hydra composes anything."""
    known = known_top_keys(config_dir, config_name)
    for arg in argv:
        message = unknown_key_message(arg, known)
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
