"""Checkpoints that survive crashes: atomic writes, and a ``last.ckpt`` kept current every N
steps and at the end of training, so ``resume=true`` after a kill loses at most N steps."""
from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from .checkpoint import atomic_save


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file in the same directory, fsyncs it and renames
    it over the old one. A process killed mid-save leaves the previous file intact (Lightning's
    own writer goes through a temporary file in ``/tmp``, which is a copy, not a rename, when
    ``/tmp`` is another filesystem)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options.")
        atomic_save(checkpoint, path)


class LastCheckpoint(ModelCheckpoint):
    """Keeps ``<dirpath>/last.ckpt``: written every ``every_n_train_steps`` steps (null: never
    during training) and once more when training ends normally, whatever step that is. A run
    stopped by an exception (a non-finite loss, say) keeps the last good one."""

    def __init__(self, dirpath: str, every_n_train_steps: int | None = None, **kwargs: Any) -> None:
        if every_n_train_steps is not None and (isinstance(every_n_train_steps, bool)
                                                or not isinstance(every_n_train_steps, int) or every_n_train_steps < 1):
            raise ValueError(f"callbacks.last_checkpoint.every_n_train_steps={every_n_train_steps!r} is not allowed; allowed values are "
                             "integers >= 1, or null to save only when training ends.")
        super().__init__(dirpath=dirpath, save_last=True, save_top_k=0, monitor=None,
                         every_n_train_steps=every_n_train_steps, **kwargs)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_step != self._last_global_step_saved and not trainer.sanity_checking:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
