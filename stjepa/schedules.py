"""Per-step schedules for learning rate, weight decay and EMA momentum (V-JEPA 2 recipes).

All are pure functions of the optimizer step, so a resumed run picks up exactly where it
stopped. ``total`` is the schedule length in steps (V-JEPA 2 stretches it to 1.25x the steps
actually run via ``ipe_scale``; here ``optim.schedule_scale``).
"""
from __future__ import annotations

import math

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


def learning_rate(kind: str, step: int, total: int, warmup: int, start: float, peak: float, final: float) -> float:
    if kind == "warmup_cosine":
        return warmup_cosine(step, total, warmup, start, peak, final)
    if kind == "linear_decay":  # the V-JEPA 2 cooldown: from the peak straight down, no warmup
        return linear(step, total, peak, final)
    if kind == "constant":
        return peak
    raise ValueError(f"optim.lr_schedule={kind!r} is not known; allowed values are {', '.join(LR_SCHEDULES)}.")
