"""Model generations (V-JEPA 2.0, 2.1): what differs between them, in one place.

A :class:`Generation` is a spec that the networks, the loss, the weight files and the config
checks ask for properties (``encoder.generation.image_fills_clip``, ``.deep_supervision``, ...);
no other module compares ``model.version`` strings. :data:`GENERATIONS` holds the known ones,
keyed by the ``model.version`` string; :func:`generation` reads such a string.

2.1 keeps 2.0's blocks and adds: deep self-supervision (the encoder taps 4 blocks, each through
its own LayerNorm ``norms_block.{i}``, instead of one final ``norm``), a 1-frame image tokenizer
(``patch_embed_img``) and learnable modality embeddings, RoPE with one frequency per rotated
pair and h/w positions rescaled to the 16-cell grid of 256 px training, and a predictor that
fuses the concatenated levels and predicts every level (for the context tokens too, which the
loss regresses with a ramped weight). 2.0 has no image tokenizer: an image fills a clip.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Mapping, Sequence

import torch
from torch import Tensor, nn

from .arguments import ArgumentError, one_of
from .rope import VJEPA2_1_ROPE, VJEPA2_ROPE, RopeStyle


@dataclass(frozen=True)
class Generation:
    """One model generation, as the modules that build, train and load it ask for it.

    ``name``                 the ``model.version`` string
    ``rope``                 its RoPE (``interpolate_rope=false`` drops its reference grid; true needs one)
    ``levels``               encoder outputs: 1 (one final ``norm``), or taps each through ``norms_block.{i}``
    ``image_tokenizer``      images (1-frame clips) go through the 1-frame ``patch_embed_img``;
                             without one an image fills a clip
    ``modality_embeddings``  learnable image / video embeddings: the encoder's after the tokenizer,
                             the predictor's on every token
    ``context_loss``         the predictor also predicts the context tokens (``predictor_proj_context``)
                             and the loss adds lambda(step) * L_ctx (the ``loss`` config group)
    ``signature``            state-dict key prefixes that only this generation's networks have
    ``official_taps``        the blocks the official code taps, by encoder depth
    """

    name: str
    rope: RopeStyle
    levels: int
    image_tokenizer: bool
    modality_embeddings: bool
    context_loss: bool
    signature: tuple[str, ...] = ()
    official_taps: Mapping[int, tuple[int, ...]] = field(default_factory=dict, compare=False)

    @property
    def image_fills_clip(self) -> bool:
        """Without an image tokenizer an image is repeated to fill a clip (as the official 2.0 code does)."""
        return not self.image_tokenizer

    @property
    def deep_supervision(self) -> bool:
        """Several levels: the encoder taps blocks, the predictor fuses the levels and predicts
        every one (level count and target width are predictor settings), each target level is
        layer-normed on its own."""
        return self.levels > 1

    def taps(self, depth: int) -> tuple[int, ...] | None:
        """The blocks (0-based) whose outputs are the levels, None for one level (the last block,
        through ``norm``): the official table, or (depths it lacks, e.g. ViT-H's 32; upstream
        crashes there) evenly spaced blocks ending with the last."""
        if not self.deep_supervision:
            return None
        if depth in self.official_taps:
            return self.official_taps[depth]
        if depth < self.levels:
            raise ArgumentError(f"{{depth}} is too shallow for V-JEPA {self.name}'s {self.levels} levels; allowed "
                                f"depths are >= {self.levels}.", depth=depth)
        return tuple(round(depth * (i + 1) / self.levels) - 1 for i in range(self.levels))

    def rope_style(self, interpolate_rope: bool | None = None) -> RopeStyle:
        """The RoPE of a network; ``interpolate_rope`` None keeps the generation's default."""
        if interpolate_rope and self.rope.reference_grid is None:
            raise ArgumentError("{interpolate_rope} is a V-JEPA 2.1 setting; {version} models do not rescale "
                                "positions.", interpolate_rope=interpolate_rope, version=self.name)
        return replace(self.rope, reference_grid=None) if interpolate_rope is False else self.rope

    def clip_shape(self, shape: Sequence[int], frames: int) -> tuple[int, ...]:
        """The (B, C, T, H, W) shape a network sees for an input of ``shape``: an image (T = 1)
        fills ``frames`` frames when the generation has no image tokenizer."""
        if shape[2] == 1 and self.image_fills_clip:
            return (*shape[:2], frames, *shape[3:])
        return tuple(shape)

    def as_clip(self, x: Tensor, frames: int) -> Tensor:
        """``x`` (B, C, T, H, W) as :meth:`clip_shape` says: ``x`` itself, or an image's frame
        repeated as a view."""
        shape = self.clip_shape(x.shape, frames)
        return x if shape == tuple(x.shape) else x.expand(shape)

    def has_signature(self, state: Mapping[str, object]) -> bool:
        return bool(self.signature) and any(k.startswith(self.signature) for k in state)


GENERATIONS: dict[str, Generation] = {gen.name: gen for gen in (
    Generation("2.0", rope=VJEPA2_ROPE, levels=1, image_tokenizer=False, modality_embeddings=False,
               context_loss=False),
    Generation("2.1", rope=VJEPA2_1_ROPE, levels=4, image_tokenizer=True, modality_embeddings=True, context_loss=True,
               signature=("norms_block.", "video_mod_embed"),
               official_taps={12: (2, 5, 8, 11), 24: (5, 11, 17, 23), 40: (9, 19, 29, 39), 48: (11, 23, 37, 47)}),
)}
DEFAULT_VERSION = "2.0"  # what a constructor builds when no version is given


def generation(version: str | float) -> Generation:
    """The generation of a ``model.version`` ('2.1'; a config may hand the number 2.1), else ArgumentError."""
    if isinstance(version, float):
        version = str(version)
    return GENERATIONS[one_of(version, "version", GENERATIONS)]


def generation_of_state(state: Mapping[str, object]) -> Generation:
    """The generation of an encoder or predictor state dict: the newest whose signature keys it
    has, else the one without a signature (2.0)."""
    for gen in reversed(GENERATIONS.values()):
        if gen.has_signature(state):
            return gen
    return next(gen for gen in GENERATIONS.values() if not gen.signature)


def modality_embeddings(width: int) -> tuple[nn.Parameter, nn.Parameter]:
    """Learnable image and video embeddings, (1, 1, width) each, initialised N(0, 1e-6)."""
    return tuple(nn.Parameter(torch.randn(1, 1, width) * 1e-6) for _ in range(2))
