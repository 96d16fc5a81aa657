"""Test-only Lightning callbacks, added to a run with ``+callbacks.<name>._target_=fault_helpers.<Class>``
(the test puts tests/ on PYTHONPATH for train.py subprocesses)."""
import os
import signal
from pathlib import Path

import lightning as L
import torch


class DumpRankState(L.Callback):
    """Each rank writes its final weights and the sample indices / masks it trained on."""

    def __init__(self, out: str):
        self.out, self.indices, self.masks, self.modalities = Path(out), [], [], []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.indices.append(batch["index"].tolist())
        self.masks.append([m.clone() for m in batch["masks_enc"]])
        self.modalities.append((batch["modality"], tuple(batch["video"].shape)))

    def on_train_end(self, trainer, pl_module):
        self.out.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
        torch.save({"state": state, "indices": self.indices, "masks": self.masks, "world": trainer.world_size,
                    "modalities": self.modalities},
                   self.out / f"rank{trainer.global_rank}.pt")


class KillAtStep(L.Callback):
    """SIGKILL this process after ``step`` optimizer steps, unless the run resumed from a
    checkpoint (so the same command, run again with resume=true, goes to the end)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step and trainer.ckpt_path is None:
            os.kill(os.getpid(), signal.SIGKILL)


class PoisonAtStep(L.Callback):
    """At optimizer step ``step``, make the loss (``what=loss``: NaN video) or a gradient
    (``what=grad``: inf) non-finite; writes the encoder weights before and after that step."""

    def __init__(self, step: int, what: str = "loss", out: str | None = None):
        self.step, self.what, self.out, self.before = step, what, out, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            self.before = {k: v.clone() for k, v in pl_module.encoder.state_dict().items()}
            self.target_before = {k: v.clone() for k, v in pl_module.target_encoder.state_dict().items()}
            if self.what == "loss":
                batch["video"][0, 0, 0, 0, 0] = float("nan")

    def on_after_backward(self, trainer, pl_module):
        if trainer.global_step == self.step and self.what == "grad":
            next(p for p in pl_module.encoder.parameters() if p.grad is not None).grad.view(-1)[0] = float("inf")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.before is not None and self.out and not Path(self.out).exists():
            after = {k: v.clone() for k, v in pl_module.encoder.state_dict().items()}
            target_after = {k: v.clone() for k, v in pl_module.target_encoder.state_dict().items()}
            torch.save({"before": self.before, "after": after, "target_before": self.target_before,
                        "target_after": target_after, "step_after": trainer.global_step}, self.out)


class RecordGradNorm(L.Callback):
    """Total gradient norm of the trained parameters before each optimizer step, computed with
    torch's own clip_grad_norm_ (infinite max norm: nothing is clipped)."""

    def __init__(self, out: str):
        self.out, self.norms = out, []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        self.norms.append(float(torch.nn.utils.clip_grad_norm_(params, float("inf"))))

    def on_train_end(self, trainer, pl_module):
        torch.save(self.norms, self.out)
