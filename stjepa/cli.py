"""What the thin entry points share: .env loading, config resolvers, and turning config errors
and numerical faults into one line."""
from __future__ import annotations

import sys
from typing import Any, Callable

from omegaconf import OmegaConf

from .checkpoint import CheckpointError
from .config import ConfigError, default_precision, launcher_value
from .data.manifests import ManifestError
from .data.video_dataset import NoUsableVideoError
from .pretrain import NonFiniteLossError


def register_resolvers() -> None:
    OmegaConf.register_new_resolver("launcher", launcher_value, replace=True)
    OmegaConf.register_new_resolver("default_precision", default_precision, replace=True)


def load_env() -> None:
    """Read secrets and paths from ./.env (never overriding the real environment)."""
    try:
        import dotenv
    except ImportError:
        return
    dotenv.load_dotenv(dotenv.find_dotenv(usecwd=True), override=False)


def run_or_exit(fn: Callable[..., Any], *args: Any) -> Any:
    """Run ``fn``; a bad config, checkpoint or data source exits with status 2 and one sentence,
    no traceback."""
    try:
        return fn(*args)
    except (ConfigError, CheckpointError, ManifestError, NoUsableVideoError) as exc:
        # errors raised in DataLoader workers arrive with the worker's traceback in the message
        message = str(exc).strip().splitlines()[-1]
        if isinstance(exc, NoUsableVideoError) and ":" in message and "NoUsableVideoError" in message:
            message = message.split(":", 1)[1].strip()
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
    except NonFiniteLossError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
