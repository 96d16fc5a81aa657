"""Errors a user can cause, each raised with one sentence naming the key, file or value and
what is allowed. The entry points print the sentence and exit without a traceback; importing
this module costs nothing, so they can catch these errors without importing the world."""
from __future__ import annotations


class UserError(Exception):
    """Base of the errors below: bad input, reported as one line (exit status 2)."""


class ConfigError(UserError, ValueError):
    """A configuration value that cannot work; the message names the key."""


class CheckpointError(UserError, ValueError):
    """A checkpoint file that cannot be used, with the reason in one message."""


class ManifestError(UserError, ValueError):
    """A manifest that cannot be used, with the file and line in one message."""


class NoUsableVideoError(UserError, RuntimeError):
    """Every video tried is bad: the manifest(s) cannot feed training."""


class RunComplete(Exception):
    """There is nothing to do: the run to resume already reached its end (exit status 0)."""


class NonFiniteLossError(RuntimeError):
    """The loss or the gradients are NaN/inf; training stops and the last checkpoint is kept
    (exit status 1: the input was fine, the run failed)."""


class CollapseError(RuntimeError):
    """The monitored feature rank fell below its set fraction of the running maximum with
    ``action: stop``; training stops and the last checkpoint is kept (exit status 1)."""
