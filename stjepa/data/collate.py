"""Batch collation that also draws the V-JEPA masks (as the official mask collator does).

Masks are drawn from a generator seeded by the base seed and the indices of the samples in
the batch, so they do not depend on which worker collates the batch, differ between ranks
(which hold different samples) and repeat exactly when a resumed run replays a batch.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch.utils.data import default_collate

from .masks import MaskCollator, MaskSpec


def batch_seed(seed: int, indices: Sequence[int]) -> int:
    """A 63-bit seed from the base seed and the sample indices (stable across processes)."""
    h = 1469598103934665603 ^ (seed & 0xFFFFFFFFFFFF)
    for i in indices:
        h = ((h ^ (int(i) & 0xFFFFFFFFFFFF)) * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return h >> 1


class MaskingCollate:
    """default_collate the samples, then add ``masks_enc`` / ``masks_pred`` (lists of (B, K)
    index tensors, one per mask set) for a token grid of ``grid``."""

    def __init__(self, grid: tuple[int, int, int], mask_sets: Sequence[MaskSpec | Mapping[str, Any]], seed: int = 0):
        self.masks = MaskCollator(grid, mask_sets)
        self.seed = seed

    def __call__(self, samples: list[dict]) -> dict:
        batch = default_collate(samples)
        g = torch.Generator().manual_seed(batch_seed(self.seed, batch["index"].tolist()))
        batch["masks_enc"], batch["masks_pred"] = self.masks(len(samples), g)
        return batch
