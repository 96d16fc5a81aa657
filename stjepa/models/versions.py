"""What differs between V-JEPA 2.0 and V-JEPA 2.1 networks, in one place.

2.1 keeps 2.0's blocks and adds: deep self-supervision (the encoder taps 4 blocks, each through
its own LayerNorm ``norms_block.{i}``, instead of one final ``norm``), a 1-frame image tokenizer
(``patch_embed_img``) and learnable modality embeddings, RoPE with one frequency per rotated
pair and h/w positions rescaled to the 16-cell grid of 256 px training, and a predictor that
fuses the concatenated levels and predicts every level (for the context tokens too).
"""
from __future__ import annotations

import torch
from torch import nn

from .arguments import ArgumentError, one_of
from .rope import VJEPA2_1_ROPE, VJEPA2_ROPE, RopeStyle

VERSIONS = ("2.0", "2.1")
# official 2.1 taps (0-based blocks whose outputs are the levels) for the depths it supports
OFFICIAL_TAPS = {12: (2, 5, 8, 11), 24: (5, 11, 17, 23), 40: (9, 19, 29, 39), 48: (11, 23, 37, 47)}
LEVELS = 4


def check_version(version: str | float) -> str:
    """The version as a string ('2.1'; a config may hand the number 2.1), else ArgumentError."""
    if isinstance(version, float):
        version = str(version)
    return one_of(version, "version", VERSIONS)


def level_taps(depth: int) -> tuple[int, ...]:
    """The blocks a 2.1 encoder of ``depth`` taps: the official table, or (depths it lacks, e.g.
    ViT-H's 32; upstream crashes there) four evenly spaced blocks ending with the last."""
    if depth in OFFICIAL_TAPS:
        return OFFICIAL_TAPS[depth]
    if depth < LEVELS:
        raise ArgumentError(f"{{depth}} is too shallow for V-JEPA 2.1's {LEVELS} levels; allowed depths are "
                            f">= {LEVELS}.", depth=depth)
    return tuple(round(depth * (i + 1) / LEVELS) - 1 for i in range(LEVELS))


def rope_style(version: str, interpolate_rope: bool | None = None) -> RopeStyle:
    """The version's RoPE; ``interpolate_rope`` None keeps the version's default (2.1: on)."""
    if version == "2.0":
        if interpolate_rope:
            raise ArgumentError("{interpolate_rope} is a V-JEPA 2.1 setting; {version} models do not rescale "
                                "positions.", interpolate_rope=interpolate_rope, version=version)
        return VJEPA2_ROPE
    if interpolate_rope is False:
        return RopeStyle(interleaved=True)
    return VJEPA2_1_ROPE


def modality_embeddings(width: int) -> tuple[nn.Parameter, nn.Parameter]:
    """2.1's learnable image and video embeddings, (1, 1, width) each, initialised N(0, 1e-6)."""
    return tuple(nn.Parameter(torch.randn(1, 1, width) * 1e-6) for _ in range(2))
