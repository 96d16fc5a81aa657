"""Lightning callbacks: throughput/memory logging and the official-layout export."""
from __future__ import annotations

import resource
import time
from pathlib import Path

import lightning as L
import torch

from .checkpoint import export_official


class ThroughputMonitor(L.Callback):
    """Logs per step: wall time between consecutive steps, clips/s and tokens/s (over all
    devices), and peak memory (CUDA allocator, or the process's peak RSS on CPU)."""

    def __init__(self) -> None:
        self._last: float | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._last is None:
            self._last = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = time.perf_counter()
        step_time, self._last = now - self._last, now
        clips = batch["video"].shape[0] * trainer.world_size
        T, H, W = batch["video"].shape[-3:]
        enc = pl_module.encoder
        tokens_per_clip = (T // enc.tubelet_size) * (H // enc.patch_size) * (W // enc.patch_size)
        if torch.cuda.is_available() and batch["video"].is_cuda:
            peak = torch.cuda.max_memory_allocated() / 2**30
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
        pl_module.log_dict(
            {"perf/step_time_s": step_time, "perf/clips_per_s": clips / step_time,
             "perf/tokens_per_s": clips * tokens_per_clip / step_time, "perf/peak_memory_gib": peak},
            batch_size=batch["video"].shape[0],
        )

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._last = None  # do not count validation or data start-up as a step


class ExportOfficial(L.Callback):
    """At the end of training, write encoder / predictor / target encoder with the official
    V-JEPA 2 keys (``module.backbone.`` prefixes) to ``<dirpath>/vjepa2_official.pt``."""

    def __init__(self, dirpath: str, filename: str = "vjepa2_official.pt") -> None:
        self.path = Path(dirpath) / filename

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            export_official(self.path, pl_module.encoder, pl_module.predictor, pl_module.target_encoder,
                            step=trainer.global_step)
