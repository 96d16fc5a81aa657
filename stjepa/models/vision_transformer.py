"""Video ViT encoder (V-JEPA 2 layout) with optional spatiotemporal area attention."""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch
import torch.nn as nn
from torch import Tensor

from .attention_settings import AttentionSettings
from .layers import Block, PatchEmbed3D
from .arguments import ArgumentError, one_of
from .grid import Grid, check_indices, gather_tokens, token_grid, valid_slots
from .stack import AttentionLayoutMixin, run_blocks
from .versions import DEFAULT_VERSION, generation, modality_embeddings

# name: (embed_dim, depth, num_heads, mlp_ratio, use_swiglu), as in V-JEPA 2. The released
# ViT-g ("vit_giant_xformers" upstream) has 22 heads and a GELU MLP: the hub passes its SiLU
# flags in the wrong case, so they never took effect. vit_giant_swiglu is the SiLU-gated variant.
VIT_SIZES: dict[str, tuple[int, int, int, float, bool]] = {
    "vit_tiny": (192, 12, 3, 4.0, False),
    "vit_small": (384, 12, 6, 4.0, False),
    "vit_base": (768, 12, 12, 4.0, False),
    "vit_large": (1024, 24, 16, 4.0, False),
    "vit_huge": (1280, 32, 16, 4.0, False),
    "vit_giant": (1408, 40, 22, 48 / 11, False),
    "vit_giant_swiglu": (1408, 40, 22, 48 / 11, True),
}


def init_weights(module: nn.Module, std: float = 0.02) -> None:
    if isinstance(module, (nn.Linear, nn.Conv3d)):
        nn.init.trunc_normal_(module.weight, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def rescale_residual_branches(blocks: nn.ModuleList) -> None:
    """Scale attn.proj and mlp.fc2 by 1/sqrt(2 * layer), as V-JEPA 2 does at init (for SwiGLU
    that is the gate branch, not the output projection: kept as upstream has it)."""
    for layer, blk in enumerate(blocks, start=1):
        blk.attn.proj.weight.data.div_(math.sqrt(2.0 * layer))
        blk.mlp.fc2.weight.data.div_(math.sqrt(2.0 * layer))


class VisionTransformer(AttentionLayoutMixin, nn.Module):
    """Encoder: tubelet embedding, pre-norm blocks with 3D RoPE, final LayerNorm.

    ``forward(x, masks)`` takes video (B, C, T, H, W) or images (B, C, H, W), and optionally
    the flat grid indices of the visible tokens: one (B, K) tensor or a list of them (one per
    mask set), padded slots holding :data:`~stjepa.models.grid.PAD` (no token attends to them).
    It returns the visible tokens' features in the order of the indices (garbage at padded
    slots): a tensor, or a list with one tensor per mask set.

    ``version`` names the generation (:mod:`stjepa.models.versions`), held as ``generation``.
    ``version='2.1'`` builds a V-JEPA 2.1 encoder: images (and 1-frame clips) go through
    ``patch_embed_img``, a modality embedding is added after the tokenizer, and the output is
    the last of 4 levels (``levels='all'``: the 4 levels concatenated on channels, shallow to
    deep, as training uses them; a list of level indices: those levels concatenated). Version
    2.0 repeats an image's frame to fill a tubelet.
    """

    def __init__(
        self,
        img_size: int = 224,
        num_frames: int = 16,
        patch_size: int = 16,
        tubelet_size: int = 2,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        use_swiglu: bool = False,
        norm_eps: float = 1e-6,
        init_std: float = 0.02,
        attention: AttentionSettings | Mapping[str, Any] | None = None,
        use_activation_checkpointing: bool = False,
        version: str = DEFAULT_VERSION,
        interpolate_rope: bool | None = None,
    ):
        super().__init__()
        self.generation = generation(version)
        self.version = self.generation.name
        self.rope_style = self.generation.rope_style(interpolate_rope)
        if embed_dim % num_heads:
            raise ArgumentError("{embed_dim} is not divisible by {num_heads}.", embed_dim=embed_dim, num_heads=num_heads)
        self.img_size, self.num_frames = img_size, num_frames
        self.patch_size, self.tubelet_size = patch_size, tubelet_size
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.use_activation_checkpointing = use_activation_checkpointing

        self.patch_embed = PatchEmbed3D(patch_size, tubelet_size, in_chans, embed_dim)
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, drop_rate, rates[i], use_swiglu, norm_eps)
            for i in range(depth)
        )
        self.taps = self.generation.taps(depth)
        if self.taps is None:
            self.norm = nn.LayerNorm(embed_dim, eps=norm_eps)
        else:
            self.norms_block = nn.ModuleList(nn.LayerNorm(embed_dim, eps=norm_eps) for _ in self.taps)
        if self.generation.image_tokenizer:
            self.patch_embed_img = PatchEmbed3D(patch_size, 1, in_chans, embed_dim)
        if self.generation.modality_embeddings:
            self.img_mod_embed, self.video_mod_embed = modality_embeddings(embed_dim)
        self.apply(lambda m: init_weights(m, init_std))
        rescale_residual_branches(self.blocks)
        self.set_attention(attention)

    @property
    def depth(self) -> int:
        return len(self.blocks)

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    def prepare_input(self, x: Tensor) -> Tensor:
        """Images ((B, C, H, W) or 1-frame clips) stay 1-frame clips for 2.1's image tokenizer;
        2.0 repeats the frame to fill one tubelet (as the official 2.0 encoder does)."""
        if x.dim() == 4:
            x = x.unsqueeze(2)
        if x.dim() != 5:
            raise ValueError(f"encoder input must be (B, C, T, H, W) video or (B, C, H, W) images, got {tuple(x.shape)}.")
        return self.generation.as_clip(x, self.tubelet_size)

    def is_image(self, shape: Sequence[int]) -> bool:
        """A (B, C, 1, H, W) input that the 1-frame image tokenizer (2.1) embeds."""
        return self.generation.image_tokenizer and shape[2] == 1

    def input_grid(self, shape: Sequence[int]) -> Grid:
        """Token grid of a (B, C, T, H, W) input as :meth:`prepare_input` leaves it."""
        return token_grid(tuple(shape), self.patch_size, 1 if self.is_image(shape) else self.tubelet_size)

    def embed(self, x: Tensor) -> tuple[Tensor, Grid]:
        """(B, C, T, H, W) clips -> (B, N, D) tokens (with 2.1's modality embedding) and their grid."""
        grid = self.input_grid(x.shape)
        if self.is_image(x.shape):  # the 1-frame tokenizer
            return self.patch_embed_img(x) + self.img_mod_embed, grid
        tokens = self.patch_embed(x)
        return (tokens + self.video_mod_embed if self.generation.modality_embeddings else tokens), grid

    def forward(self, x: Tensor, masks: Tensor | list[Tensor] | None = None,
                levels: str | Sequence[int] | None = None) -> Tensor | list[Tensor]:
        tokens, grid = self.embed(self.prepare_input(x))
        self.check_levels(levels)  # before any work
        B, N, _ = tokens.shape
        if masks is None:
            ids = torch.arange(N, device=x.device).expand(B, N)
            return self.forward_tokens(tokens, ids, grid, levels)
        mask_list = masks if isinstance(masks, (list, tuple)) else [masks]
        check_indices(mask_list, grid)
        for m in mask_list:
            if m.shape[0] != B:
                raise ValueError(f"mask batch size {m.shape[0]} does not match the input batch size {B}.")
        outs = self._forward_mask_sets(tokens, mask_list, grid, levels)
        return outs if isinstance(masks, (list, tuple)) else outs[0]

    @property
    def num_levels(self) -> int:
        return 1 if self.taps is None else len(self.taps)

    def check_levels(self, levels: str | Sequence[int] | None) -> tuple[int, ...]:
        """Level indices to return: None is the last, 'all' every one (2.0 has one level)."""
        if levels is None:
            return (self.num_levels - 1,)
        if levels == "all":
            return tuple(range(self.num_levels))
        chosen = tuple(levels)
        if not chosen or any(isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < self.num_levels
                             for i in chosen):
            raise ArgumentError(f"{{levels}} is not allowed; this encoder has {self.num_levels} level(s): give "
                                f"'all', null (the last) or a list of indices in 0..{self.num_levels - 1}.",
                                levels=levels)
        return chosen

    def _forward_mask_sets(self, tokens: Tensor, masks: list[Tensor], grid: Grid,
                           levels: str | Sequence[int] | None) -> list[Tensor]:
        # Mask sets of equal size share one pass (stacked along the batch); others run apart.
        outs: list[Tensor | None] = [None] * len(masks)
        by_size: dict[int, list[int]] = {}
        for i, m in enumerate(masks):
            by_size.setdefault(m.shape[1], []).append(i)
        B = tokens.shape[0]
        for members in by_size.values():
            ids = torch.cat([masks[i] for i in members], 0)
            out = self.forward_tokens(gather_tokens(tokens.repeat(len(members), 1, 1), ids), ids.clamp(min=0), grid,
                                      levels, valid=valid_slots(ids))
            for j, i in enumerate(members):
                outs[i] = out[j * B : (j + 1) * B]
        return outs  # type: ignore[return-value]

    def forward_tokens(self, tokens: Tensor, ids: Tensor, grid: Grid,
                       levels: str | Sequence[int] | None = None, valid: Tensor | None = None) -> Tensor:
        """Blocks + final norm (2.1: the chosen levels' norms, see :meth:`check_levels`) on
        already-embedded tokens at flat grid positions ``ids`` (``valid``: which are real tokens,
        None: all; see :func:`~stjepa.models.stack.run_blocks`)."""
        self.attention.validate_grid(grid)
        out = run_blocks(
            self.blocks,
            tokens,
            ids,
            grid,
            self.layer_entries,
            self.head_dim,
            activation_checkpointing=self.use_activation_checkpointing and self.training,
            rope_style=self.rope_style,
            taps=self.taps,
            valid=valid,
        )
        if self.taps is None:
            return self.norm(out)
        return torch.cat([self.norms_block[i](out[i]) for i in self.check_levels(levels)], dim=-1)


def vit(size: str = "vit_large", **overrides: Any) -> VisionTransformer:
    """Build a V-JEPA 2 size by name; keyword overrides change any constructor argument."""
    one_of(size, "size", VIT_SIZES)
    dim, depth, heads, ratio, swiglu = VIT_SIZES[size]
    kwargs: dict[str, Any] = dict(embed_dim=dim, depth=depth, num_heads=heads, mlp_ratio=ratio, use_swiglu=swiglu)
    kwargs.update({k: v for k, v in overrides.items() if v is not None})
    return VisionTransformer(**kwargs)
