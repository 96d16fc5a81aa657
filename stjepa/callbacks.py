"""Lightning callbacks of a pretraining run: checkpoints, the non-finite policy, throughput and
FLOP logging, the official-layout and transformers-format exports, and quieter progress and summary displays."""
from __future__ import annotations

import math
import resource
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, RichModelSummary, RichProgressBar
from lightning.pytorch.strategies import FSDPStrategy
from lightning.pytorch.utilities.model_summary import get_human_readable_count
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from torch import Tensor

from .errors import NonFiniteLossError
from .models.arguments import one_of, positive_int
from .models.flops import train_step_flops
from .hf_format import export_hf, local_attention_note
from .weights import export_official

NONFINITE_ACTIONS = ("stop", "skip")


class LastCheckpoint(ModelCheckpoint):
    """Keeps ``<dirpath>/last.ckpt``: written every ``every_n_train_steps`` steps (null: never
    during training) and once more when training ends normally, whatever step that is. A run
    stopped by an exception (a non-finite loss, say) keeps the last good one."""

    def __init__(self, dirpath: str, every_n_train_steps: int | None = None, **kwargs: Any) -> None:
        if every_n_train_steps is not None:
            positive_int(every_n_train_steps, "every_n_train_steps")
        super().__init__(dirpath=dirpath, save_last=True, save_top_k=0, monitor=None,
                         every_n_train_steps=every_n_train_steps, **kwargs)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_step != self._last_global_step_saved and not trainer.sanity_checking:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


class NonFiniteGuard(L.Callback):
    """Logs the gradient norm every step and decides what a NaN/inf loss or gradient norm does:
    ``stop`` raises :class:`NonFiniteLossError` (the last checkpoint is kept); ``skip`` drops the
    step's update: its gradients are discarded, so neither the optimizer nor the EMA target
    moves, and ``train/skipped_steps`` counts it. All ranks decide together."""

    def __init__(self, action: str = "stop") -> None:
        self.action = one_of(action, "action", NONFINITE_ACTIONS)
        self.skipped = 0
        self._skip = False

    def state_dict(self) -> dict[str, Any]:
        return {"skipped": self.skipped}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped = state_dict.get("skipped", 0)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._skip = False

    def on_before_backward(self, trainer, pl_module, loss: Tensor) -> None:
        if not self._all_finite(trainer, loss.detach()):
            self._nonfinite(trainer, pl_module, "training loss")

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if grads:
            squared = torch.stack(torch._foreach_norm(grads)).square().sum()
            if isinstance(trainer.strategy, FSDPStrategy):  # each rank holds a shard of the gradients
                squared = trainer.strategy.reduce(squared, reduce_op="sum")
            norm = squared.sqrt()
            pl_module.log("train/grad_norm", norm, batch_size=1)
            if not self._skip and not self._all_finite(trainer, norm):
                self._nonfinite(trainer, pl_module, "gradient norm")
        if self._skip:
            optimizer.zero_grad(set_to_none=True)  # AdamW leaves parameters without gradients untouched

    @staticmethod
    def _all_finite(trainer: L.Trainer, value: Tensor) -> bool:
        """Whether ``value`` is finite on every rank (a host sync)."""
        return trainer.strategy.reduce_boolean_decision(bool(torch.isfinite(value).all()), all=True)

    def _nonfinite(self, trainer: L.Trainer, pl_module: L.LightningModule, what: str) -> None:
        if self.action == "stop":
            raise NonFiniteLossError(
                f"the {what} is not finite at step {trainer.global_step}; training stopped and the last checkpoint "
                f"is kept (callbacks.nonfinite_guard.action=skip skips such batches instead).")
        self._skip = True
        self.skipped += 1
        pl_module.log("train/skipped_steps", float(self.skipped), batch_size=1)


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
        tokens_per_clip = math.prod(pl_module.encoder.input_grid(batch["video"].shape))
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


class FlopCounter(L.Callback):
    """Every ``every_n_train_steps`` steps, logs the step's FLOPs counted from the batch's masks
    (``flops/step_total``, ``flops/attention``) and what the attention core would cost with
    global attention only (``flops/attention_if_full``, ``flops/attention_ratio``)."""

    def __init__(self, every_n_train_steps: int = 10) -> None:
        self.every = positive_int(every_n_train_steps, "every_n_train_steps")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step % self.every:
            return
        flops = train_step_flops(pl_module.encoder, pl_module.predictor, pl_module.target_encoder,
                                 tuple(batch["video"].shape), batch["masks_enc"], batch["masks_pred"])
        pl_module.log_dict({"flops/step_total": flops.total * 1.0, "flops/attention": flops.attention,
                            "flops/attention_if_full": flops.attention_if_full,
                            "flops/attention_ratio": flops.attention / max(flops.attention_if_full, 1.0)},
                           batch_size=batch["video"].shape[0])


class ExportOfficial(L.Callback):
    """At the end of training, write encoder / predictor / target encoder with the official
    V-JEPA 2 keys (``module.backbone.`` prefixes) to ``<dirpath>/vjepa2_official.pt``."""

    def __init__(self, dirpath: str, filename: str = "vjepa2_official.pt") -> None:
        self.path = Path(dirpath) / filename

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            export_official(self.path, pl_module.encoder, pl_module.predictor, pl_module.target_encoder,
                            step=trainer.global_step)


class ExportHF(L.Callback):
    """At the end of training, write the target encoder and the predictor in transformers'
    V-JEPA 2 format to ``<dirpath>/<folder>`` (config.json, model.safetensors; see
    :mod:`stjepa.hf_format`). Only for models that have that format (train.py leaves it out for
    V-JEPA 2.1 and SwiGLU models, saying so once at the start). A local-attention model is
    written with its layout in config.json, and the note that transformers runs it globally."""

    def __init__(self, dirpath: str, folder: str = "vjepa2_hf") -> None:
        self.path = Path(dirpath) / folder

    def on_train_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        group = pl_module.attention.group
        export_hf(self.path, pl_module.target_encoder, pl_module.predictor, group)
        note = local_attention_note(group)
        if note:
            rank_zero_info(f"{self.path}: {note}")


class StepProgressBar(RichProgressBar):
    """Lightning's rich progress bar, without the ``Epoch 0/-2`` it shows in step-limited runs
    (``max_epochs=-1``): there the description is the epoch and the step budget."""

    def _get_train_description(self, current_epoch: int) -> str:
        trainer = self.trainer
        if trainer.max_epochs is not None and trainer.max_epochs > 0:
            return super()._get_train_description(current_epoch)
        return f"Epoch {current_epoch} (max {trainer.max_steps} steps)"


class ParameterSummary(RichModelSummary):
    """Lightning's rich model summary without the FLOPs column and total (they read 0: Lightning
    counts FLOPs only from an example input; :class:`FlopCounter` logs the real ones) and
    without the train/eval module counts."""

    @staticmethod
    def summarize(summary_data: list[tuple[str, list[str]]], total_parameters: int, trainable_parameters: int,
                  model_size: float, total_training_modes: dict[str, int], total_flops: int,
                  **summarize_kwargs: Any) -> None:
        from rich import get_console
        from rich.table import Table

        columns = dict(summary_data)
        table = Table(header_style=summarize_kwargs.get("header_style", "bold magenta"))
        for name in ("Name", "Type", "Params"):
            table.add_column(name, justify="right" if name == "Params" else "left")
        for row in zip(columns["Name"], columns["Type"], columns["Params"]):
            table.add_row(*row)
        console = get_console()
        console.print(table)
        console.print(f"[bold]Trainable params[/]: {get_human_readable_count(int(trainable_parameters))}   "
                      f"[bold]Frozen params[/]: {get_human_readable_count(int(total_parameters - trainable_parameters))}"
                      f"   [bold]Size[/]: {model_size:.1f} MB")
