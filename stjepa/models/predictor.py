"""V-JEPA 2 predictor: a narrow ViT that fills target positions from context features."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
import torch.nn as nn
from torch import Tensor

from .attention_settings import AttentionSettings
from .layers import Block
from .arguments import ArgumentError, one_of, positive_int
from .grid import Grid, check_indices, valid_slots
from .stack import AttentionLayoutMixin, run_blocks
from .versions import DEFAULT_VERSION, generation, modality_embeddings
from .vision_transformer import init_weights, rescale_residual_branches

MODALITIES = ("video", "image")


class VisionTransformerPredictor(AttentionLayoutMixin, nn.Module):
    """Embed context features to the predictor width, append a learnable mask token at each
    target position, run the blocks over context + targets (ordered by grid position, or by
    area then grid position with area layers), and project the targets back to encoder width.
    Fully vectorized over the batch.

    ``version='2.1'`` builds the V-JEPA 2.1 predictor: context features hold ``levels`` encoder
    levels concatenated (4 x ``embed_dim``), fused by Linear(4D, D), GELU, Linear(D, P) (one
    Linear for 1 level); modality embeddings are added to every token; ``predictor_proj`` (and,
    with ``predict_context``, ``predictor_proj_context`` for the context tokens) predicts
    ``levels`` x ``out_embed_dim`` features (``out_embed_dim``: the target width, e.g. a
    distillation teacher's; default ``embed_dim``)."""

    def __init__(
        self,
        img_size: int = 224,
        num_frames: int = 16,
        patch_size: int = 16,
        tubelet_size: int = 2,
        embed_dim: int = 1024,
        predictor_embed_dim: int = 384,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        use_swiglu: bool = False,
        norm_eps: float = 1e-6,
        init_std: float = 0.02,
        num_mask_tokens: int = 10,
        zero_init_mask_tokens: bool = True,
        attention: AttentionSettings | Mapping[str, Any] | None = None,
        use_activation_checkpointing: bool = False,
        version: str = DEFAULT_VERSION,
        levels: int | None = None,
        out_embed_dim: int | None = None,
        predict_context: bool | None = None,
        interpolate_rope: bool | None = None,
    ):
        super().__init__()
        self.generation = generation(version)
        self.version = self.generation.name
        self.rope_style = self.generation.rope_style(interpolate_rope)
        deep, context = self.generation.deep_supervision, self.generation.context_loss
        self.levels = positive_int(self.generation.levels if levels is None else levels, "levels")
        if (not deep and (self.levels != 1 or out_embed_dim is not None)) or (predict_context and not context):
            raise ArgumentError("{version} predictors have one level, the encoder's width and no context output; "
                                "levels, out_embed_dim and predict_context are V-JEPA 2.1 settings.", version=version)
        if predictor_embed_dim % num_heads:
            raise ArgumentError("{predictor_embed_dim} is not divisible by {num_heads}.",
                                predictor_embed_dim=predictor_embed_dim, num_heads=num_heads)
        self.img_size, self.num_frames = img_size, num_frames
        self.patch_size, self.tubelet_size = patch_size, tubelet_size
        self.num_heads = num_heads
        self.head_dim = predictor_embed_dim // num_heads
        self.use_activation_checkpointing = use_activation_checkpointing

        self.predictor_embed_width = embed_dim  # the encoder width of one level
        if self.levels > 1:
            self.predictor_embed = nn.Sequential(nn.Linear(self.levels * embed_dim, embed_dim), nn.GELU(),
                                                 nn.Linear(embed_dim, predictor_embed_dim))
        else:
            self.predictor_embed = nn.Linear(embed_dim, predictor_embed_dim)
        self.mask_tokens = nn.ParameterList(
            nn.Parameter(torch.zeros(1, 1, predictor_embed_dim)) for _ in range(num_mask_tokens)
        )
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.predictor_blocks = nn.ModuleList(
            Block(predictor_embed_dim, num_heads, mlp_ratio, qkv_bias, drop_rate, rates[i], use_swiglu, norm_eps)
            for i in range(depth)
        )
        self.predictor_norm = nn.LayerNorm(predictor_embed_dim, eps=norm_eps)
        out_width = self.levels * (embed_dim if out_embed_dim is None else positive_int(out_embed_dim, "out_embed_dim"))
        self.predictor_proj = nn.Linear(predictor_embed_dim, out_width)
        self.predictor_proj_context = None
        if context and predict_context is not False:
            self.predictor_proj_context = nn.Linear(predictor_embed_dim, out_width)
        if self.generation.modality_embeddings:
            self.img_mod_embed, self.video_mod_embed = modality_embeddings(predictor_embed_dim)
        self.apply(lambda m: init_weights(m, init_std))
        rescale_residual_branches(self.predictor_blocks)
        if not zero_init_mask_tokens:
            for token in self.mask_tokens:
                nn.init.trunc_normal_(token, std=init_std)
        self.set_attention(attention)

    @property
    def depth(self) -> int:
        return len(self.predictor_blocks)

    def forward(
        self,
        x: Tensor | list[Tensor],
        masks_x: Tensor | list[Tensor],
        masks_y: Tensor | list[Tensor],
        mask_index: int | Sequence[int] = 0,
        grid: Grid | None = None,
        modality: str = "video",
        return_context: bool = False,
    ) -> Tensor | list[Tensor] | tuple:
        """Predict target features.

        ``x`` (B, Nc, D) are context features at flat grid indices ``masks_x`` (B, Nc);
        ``masks_y`` (B, Nt) are the target indices; padded slots of either hold
        :data:`~stjepa.models.grid.PAD` (no token attends to them, their outputs are garbage).
        Returns (B, Nt, D) in the order of ``masks_y``. Lists (one entry per mask set) give a list; ``mask_index`` is then one
        index for all sets (what V-JEPA 2 training does) or one per set. 2.1: ``modality``
        ('video' or 'image') picks the modality embedding; ``return_context`` returns
        (target predictions, context predictions), each a tensor or a list as above.
        """
        grid = grid or self.default_grid
        self.attention.validate_grid(grid)
        one_of(modality, "modality", MODALITIES)
        if return_context and self.predictor_proj_context is None:
            raise ArgumentError("{return_context} needs a V-JEPA 2.1 predictor built with predict_context.",
                                return_context=return_context)
        if isinstance(x, (list, tuple)):
            check_indices([*masks_x, *masks_y], grid, "context or target mask")
            indices = [mask_index] * len(x) if isinstance(mask_index, int) else list(mask_index)
            outs = [self._predict(*args, grid, modality, return_context) for args in zip(x, masks_x, masks_y, indices)]
            return ([o[0] for o in outs], [o[1] for o in outs]) if return_context else [o[0] for o in outs]
        check_indices([masks_x, masks_y], grid, "context or target mask")
        out = self._predict(x, masks_x, masks_y, mask_index, grid, modality, return_context)
        return out if return_context else out[0]

    def _predict(self, x: Tensor, masks_x: Tensor, masks_y: Tensor, mask_index: int, grid: Grid,
                 modality: str, with_context: bool) -> tuple[Tensor, Tensor | None]:
        B, n_ctx, _ = x.shape
        context = self.predictor_embed(x)
        token = self.mask_tokens[mask_index % len(self.mask_tokens)]
        targets = token.to(context.dtype).expand(B, masks_y.shape[1], -1)
        tokens = torch.cat([context, targets], dim=1)
        if self.generation.modality_embeddings:  # on every token, mask tokens included
            tokens = tokens + (self.img_mod_embed if modality == "image" else self.video_mod_embed)
        ids = torch.cat([masks_x, masks_y], dim=1)
        valid = valid_slots(ids)
        out = run_blocks(
            self.predictor_blocks,
            tokens,
            ids.clamp(min=0),
            grid,
            self.layer_entries,
            self.head_dim,
            sort_by_position=True,
            valid=valid,
            activation_checkpointing=self.use_activation_checkpointing and self.training,
            rope_style=self.rope_style,
        )
        if not with_context:
            return self.predictor_proj(self.predictor_norm(out[:, n_ctx:])), None
        out = self.predictor_norm(out)
        return self.predictor_proj(out[:, n_ctx:]), self.predictor_proj_context(out[:, :n_ctx])
