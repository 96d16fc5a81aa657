"""What the thin entry points share: .env loading and turning config errors into one line."""
from __future__ import annotations

import sys
from typing import Any, Callable

from .checkpoint import CheckpointError
from .config import ConfigError


def load_env() -> None:
    """Read secrets and paths from ./.env (never overriding the real environment)."""
    try:
        import dotenv
    except ImportError:
        return
    dotenv.load_dotenv(dotenv.find_dotenv(usecwd=True), override=False)


def run_or_exit(fn: Callable[..., Any], *args: Any) -> Any:
    """Run ``fn``; a bad config or checkpoint exits with status 2 and one sentence, no traceback."""
    try:
        return fn(*args)
    except (ConfigError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
