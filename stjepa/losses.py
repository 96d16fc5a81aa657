"""The JEPA regression losses of V-JEPA 2 and 2.1 (pure PyTorch).

2.0: ``L = mean |pred - target|^p / p`` at the target positions, targets being the EMA target
encoder's layer-normed features. 2.1 adds deep self-supervision and a context term:
``L = L_pred + lambda(step) * L_ctx``. Targets are the target encoder's levels, each
layer-normed (non-affine) on its own D-wide chunk; ``L_ctx`` regresses them at the context
positions too, each context token weighted by ``1 / sqrt(d)`` with d the Euclidean (t, h, w)
grid distance to the nearest target token of its sample (time in tubelets, as upstream), and
averaged as a plain mean (not normalised by the weights). lambda is 0 until ``ramp[0]``,
linear to ``weight`` at ``ramp[1]``, then held (official ViT-L: 0.5 over steps 15,000 to 30,000;
the cooldown holds 0.5 from step 0 without distance weighting).

Index lists padded to a fixed length (:data:`~stjepa.models.grid.PAD` slots, static shapes)
change nothing: every mean is over the real tokens only, and a padded target is never the
nearest target of a context token. :func:`step_loss` is the whole loss of one step, one
function a compiled step compiles once.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .models.arguments import ArgumentError
from .models.grid import Grid, gather_tokens, grid_positions, valid_slots


def jepa_loss(predictions: Sequence[Tensor], targets: Sequence[Tensor], loss_exp: float = 1.0,
              weights: Sequence[Tensor] | None = None, valid: Sequence[Tensor] | None = None) -> Tensor:
    """mean |pred - target|^p / p per mask set (each token times its weight, (B, N), when given),
    averaged over mask sets (p = 1: L1). ``valid`` (B, N) per set: the tokens the mean is over
    (None: all)."""
    per_set = []
    for i, (p, t) in enumerate(zip(predictions, targets)):
        error = (p - t).abs().pow(loss_exp)
        if weights is not None:
            error = error * weights[i].to(error.dtype)[..., None]
        if valid is None:
            per_set.append(error.mean() / loss_exp)
            continue
        real = valid[i][..., None]
        error = torch.where(real, error, 0.0)  # not a product: a padded slot's garbage never reaches the sum
        per_set.append(error.sum() / (real.sum() * error.shape[-1]) / loss_exp)
    return torch.stack(per_set).mean()


def step_loss(preds: Sequence[Tensor], h: Tensor, context_preds: Sequence[Tensor] | None,
              masks_enc: Sequence[Tensor], masks_pred: Sequence[Tensor], grid: Grid, loss_exp: float,
              lam: Tensor | None = None, distance_weighting: bool = False) -> tuple[Tensor, Tensor, Tensor | None]:
    """The loss of one step, from the predictions at the target tokens (one per mask set), the
    target features ``h`` (B, N, D) and, with a context loss (2.1), the predictions at the
    context tokens and ``lam`` (a tensor, so a compiled step does not recompile as it moves):
    (loss, prediction term, context term or None)."""
    targets = [gather_tokens(h, m) for m in masks_pred]
    loss_pred = jepa_loss(preds, targets, loss_exp, valid=[valid_slots(m) for m in masks_pred])
    if context_preds is None:
        return loss_pred, loss_pred, None
    weights = None
    if distance_weighting:
        weights = [context_weights(mx, my, grid) for mx, my in zip(masks_enc, masks_pred)]
    loss_ctx = jepa_loss(context_preds, [gather_tokens(h, m) for m in masks_enc], loss_exp, weights,
                         valid=[valid_slots(m) for m in masks_enc])
    return loss_pred + lam * loss_ctx, loss_pred, loss_ctx


def level_norm(features: Tensor, levels: int) -> Tensor:
    """Layer norm (non-affine) of each of ``levels`` equal chunks of the last dimension."""
    chunks = features.chunk(levels, dim=-1)
    return torch.cat([F.layer_norm(c, (c.shape[-1],)) for c in chunks], dim=-1)


def nearest_target_distance(context_ids: Tensor, target_ids: Tensor, grid: Grid) -> Tensor:
    """(B, Nc): Euclidean (t, h, w) distance of each context token to the nearest target token
    of its own sample, in grid cells (padded target slots are no target; a padded context
    slot gets some finite distance)."""
    def cells(ids: Tensor) -> Tensor:
        return torch.stack(grid_positions(ids.clamp(min=0), grid), dim=-1).float()

    distance = torch.cdist(cells(context_ids), cells(target_ids))
    return distance.masked_fill(~valid_slots(target_ids)[:, None, :], float("inf")).amin(dim=-1)


def context_weights(context_ids: Tensor, target_ids: Tensor, grid: Grid) -> Tensor:
    """(B, Nc) weights 1 / sqrt(distance to the nearest target); context and target tokens are
    disjoint, so every distance is at least 1."""
    return nearest_target_distance(context_ids, target_ids, grid).clamp(min=1.0).rsqrt()


@dataclass(frozen=True)
class ContextLoss:
    """The 2.1 context term's settings (the ``loss`` config group)."""

    weight: float
    ramp: Sequence[int]
    distance_weighting: bool

    @classmethod
    def create(cls, loss: "ContextLoss | Mapping[str, Any]") -> "ContextLoss":
        """From the ``loss`` group's keys (context_weight, context_ramp, distance_weighting)."""
        if isinstance(loss, ContextLoss):
            return loss
        return cls(loss.get("context_weight"), loss.get("context_ramp"), loss.get("distance_weighting"))

    def __post_init__(self):
        if isinstance(self.weight, bool) or not isinstance(self.weight, (int, float)) or self.weight < 0:
            raise ArgumentError("{context_weight} must be a number >= 0.", context_weight=self.weight)
        ramp = list(self.ramp) if self.ramp is not None else None
        if (ramp is None or len(ramp) != 2 or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in ramp)
                or ramp[1] < ramp[0]):
            raise ArgumentError("{context_ramp} must be [start, end] steps with 0 <= start <= end (lambda is 0 before "
                                "start and reaches context_weight at end).", context_ramp=ramp)

    def group(self) -> dict[str, Any]:
        """The settings under the ``loss`` group's keys (what a checkpoint stores)."""
        return {"context_weight": self.weight, "context_ramp": list(self.ramp),
                "distance_weighting": self.distance_weighting}

    def weight_at(self, step: int) -> float:
        """lambda at optimizer step ``step``."""
        start, end = self.ramp
        if step >= end:
            return float(self.weight)
        if step < start:
            return 0.0
        return float(self.weight) * (step - start) / (end - start)
