"""Batch collation: stack the items, tag the batch, and draw the V-JEPA masks (as the official
mask collator does).

Every batch holds the model input under ``video``: (B, 3, T, H, W) clips, or images as 1-frame
clips (B, 3, 1, H, W), with ``modality`` ("video" or "image") and, in a mixture, ``source``
(the source's name). One batch never mixes modalities.

Masks are drawn from a generator seeded by the base seed and the indices of the samples in
the batch, so they do not depend on which worker collates the batch, differ between ranks
(which hold different samples) and repeat exactly when a resumed run replays a batch.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch.utils.data import default_collate

from .masks import STATIC_SLOTS, MaskCollator, MaskSpec


def batch_seed(seed: int, indices: Sequence[int]) -> int:
    """A 63-bit seed from the base seed and the sample indices (stable across processes)."""
    h = 1469598103934665603 ^ (seed & 0xFFFFFFFFFFFF)
    for i in indices:
        h = ((h ^ (int(i) & 0xFFFFFFFFFFFF)) * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return h >> 1


class Collate:
    """default_collate the items; image items become 1-frame clips under ``video``."""

    def __init__(self, source: str | None = None):
        self.source = source

    def __call__(self, samples: list[dict]) -> dict:
        batch = default_collate(samples)
        batch["modality"] = "image" if "image" in batch else "video"
        if "image" in batch:
            batch["video"] = batch.pop("image").unsqueeze(2)
        if self.source is not None:
            batch["source"] = self.source
        return batch


class MaskingCollate(Collate):
    """Collate, then add ``masks_enc`` / ``masks_pred`` (lists of (B, K) index tensors, one per
    mask set) for a token grid of ``grid``; with ``pad`` (static shapes), every list padded to its
    mask set's fixed length under the ``slots`` rule (see :mod:`stjepa.data.masks`)."""

    def __init__(self, grid: tuple[int, int, int], mask_sets: Sequence[MaskSpec | Mapping[str, Any]], seed: int = 0,
                 source: str | None = None, pad: bool = False, slots: str | float = STATIC_SLOTS):
        super().__init__(source)
        self.masks = MaskCollator(grid, mask_sets, pad, slots)
        self.seed = seed

    def __call__(self, samples: list[dict]) -> dict:
        batch = super().__call__(samples)
        g = torch.Generator().manual_seed(batch_seed(self.seed, batch["index"].tolist()))
        batch["masks_enc"], batch["masks_pred"] = self.masks(len(samples), g)
        return batch
