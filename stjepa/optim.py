"""The optimizer and its per-step schedules (V-JEPA 2 recipes).

:class:`OptimSettings` mirrors the ``optim`` config group (``conf/train.yaml`` holds the
defaults; this class has none, so there is one place to change them). Schedules are pure
functions of the optimizer step, so a resumed run picks up exactly where it stopped. ``total``
is the schedule length in steps (V-JEPA 2 stretches it to 1.25x the steps actually run via
``ipe_scale``; here ``optim.schedule_scale``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch
from torch import nn

LR_SCHEDULES = ("warmup_cosine", "linear_decay", "constant")


def warmup_cosine(step: int, total: int, warmup: int, start: float, peak: float, final: float) -> float:
    """Linear warmup from ``start`` to ``peak`` over ``warmup`` steps, then cosine to ``final``."""
    if step < warmup:
        return start + (peak - start) * step / max(warmup, 1)
    progress = min((step - warmup) / max(total - warmup, 1), 1.0)
    return final + (peak - final) * 0.5 * (1.0 + math.cos(math.pi * progress))


def linear(step: int, total: int, start: float, final: float) -> float:
    """Linear from ``start`` at step 0 to ``final`` at ``total`` (held after)."""
    return start + (final - start) * min(step / max(total, 1), 1.0)


def cosine(step: int, total: int, start: float, final: float) -> float:
    """Cosine from ``start`` to ``final`` over ``total`` steps (weight decay in V-JEPA 2)."""
    return final + (start - final) * 0.5 * (1.0 + math.cos(math.pi * min(step / max(total, 1), 1.0)))


@dataclass(frozen=True)
class OptimSettings:
    """The ``optim`` group, typed (its keys are these fields)."""

    lr: float
    start_lr: float
    final_lr: float
    warmup_steps: int
    lr_schedule: str
    schedule_scale: float
    weight_decay: float
    final_weight_decay: float
    betas: Sequence[float]
    eps: float
    ema: Sequence[float]
    loss_exp: float

    def learning_rate(self, step: int, total: int) -> float:
        if self.lr_schedule == "warmup_cosine":
            return warmup_cosine(step, total, self.warmup_steps, self.start_lr, self.lr, self.final_lr)
        if self.lr_schedule == "linear_decay":  # the V-JEPA 2 cooldown: from the peak straight down, no warmup
            return linear(step, total, self.lr, self.final_lr)
        if self.lr_schedule == "constant":
            return self.lr
        raise ValueError(f"lr_schedule={self.lr_schedule!r} is not known; allowed values are {', '.join(LR_SCHEDULES)}.")

    def schedule_length(self, steps: int) -> int:
        """Schedule length in steps for a run of ``steps`` optimizer steps."""
        return max(int(steps * self.schedule_scale), 1)

    def at(self, step: int, total: int) -> dict[str, float]:
        """lr, weight decay and EMA momentum at ``step`` of a ``total``-step schedule."""
        return {"lr": self.learning_rate(step, total),
                "wd": cosine(step, total, self.weight_decay, self.final_weight_decay),
                "ema": linear(step, total, self.ema[0], self.ema[1])}


def apply_schedule(optimizer: torch.optim.Optimizer, values: dict[str, float]) -> None:
    """Set lr on every group and weight decay on the groups that decay."""
    for group in optimizer.param_groups:
        group["lr"] = values["lr"]
        if not group.get("exclude_from_wd"):
            group["weight_decay"] = values["wd"]


def adamw(modules: Iterable[nn.Module], settings: OptimSettings, fused: bool = False) -> torch.optim.AdamW:
    """AdamW over the trainable parameters of ``modules``; no weight decay on biases and 1-D
    weights (as upstream)."""
    decay, no_decay = [], []
    for module in modules:
        for name, p in module.named_parameters():
            if p.requires_grad:
                (no_decay if p.ndim == 1 or name.endswith(".bias") else decay).append(p)
    groups = [{"params": decay, "weight_decay": settings.weight_decay},
              {"params": no_decay, "weight_decay": 0.0, "exclude_from_wd": True}]
    return torch.optim.AdamW(groups, lr=settings.lr, betas=tuple(settings.betas), eps=settings.eps, fused=fused)
