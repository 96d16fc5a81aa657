"""Forward FLOP counts (multiply-add = 2 FLOPs) for the encoder and predictor.

Linear parts (patch embedding, qkv/proj, MLP, predictor embed/proj) scale with the number of
tokens; the attention core (QK^T and AV, 4 * width FLOPs per query-key pair) scales with the
number of pairs, which is what local attention (area, neighborhood, ...) cuts. A training
step costs about 3x the forward of the modules that get gradients (forward + 2x backward)
plus the target encoder's forward.

Index lists padded to a fixed length (:data:`~stjepa.models.grid.PAD` slots) count their real
tokens only: the FLOPs are those of the unpadded step (what the padding costs on top is
measured, not counted).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from torch import Tensor

from .predictor import VisionTransformerPredictor
from .grid import Grid, valid_slots
from .stack import in_turn
from .vision_transformer import VisionTransformer


@dataclass
class Flops:
    linear: float = 0.0
    attention: float = 0.0
    attention_if_full: float = 0.0  # what the attention core would cost with only global layers

    @property
    def total(self) -> float:
        return self.linear + self.attention

    def __add__(self, other: "Flops") -> "Flops":
        return Flops(
            self.linear + other.linear,
            self.attention + other.attention,
            self.attention_if_full + other.attention_if_full,
        )

    def scale(self, factor: float) -> "Flops":
        return Flops(self.linear * factor, self.attention * factor, self.attention_if_full * factor)


def _linear_macs(module: nn.Module) -> int:
    return sum(m.in_features * m.out_features for m in module.modules() if isinstance(m, nn.Linear))


def layer_pairs(ids: Tensor, grid: Grid, model: VisionTransformer | VisionTransformerPredictor) -> list[int]:
    """Query-key pairs per head over the batch in each layer when tokens at ``ids`` (B, N) run
    through the model: all N^2 per sample in global layers, the kind's count in local layers
    (each entry's layers take its layouts' counts in turn, as the forward takes its layouts)."""
    full = ids.shape[0] * ids.shape[1] ** 2
    ids = ids.cpu()
    pairs = in_turn(model.layer_entries, lambda entry: entry.built_kind.pairs(ids, grid))
    return [full if p is None else p for p in pairs]


def real_rows(*ids: Tensor) -> list[tuple[Tensor, ...]]:
    """The rows of (B, N_i) index tensors of one batch without their padded slots, rows with the
    same real counts (in every tensor) stacked: a list of tuples of (b, n_i) host tensors."""
    ids = tuple(i.cpu() for i in ids)
    counts = torch.stack([valid_slots(i).sum(1) for i in ids], 1)  # (B, tensors)
    groups = []
    for key in counts.unique(dim=0):
        rows = (counts == key).all(1)
        groups.append(tuple(i[rows][valid_slots(i[rows])].view(int(rows.sum()), int(n)) for i, n in zip(ids, key)))
    return groups


def _blocks_flops(blocks: nn.ModuleList, width: int, tokens: int, full: int, pairs: list[int]) -> Flops:
    linear = 2.0 * tokens * sum(_linear_macs(b) for b in blocks)
    return Flops(linear, 4.0 * width * sum(pairs), 4.0 * width * full * len(pairs))


def patch_embed_flops(encoder: VisionTransformer, batch: int, grid: Grid, image: bool = False) -> Flops:
    """Forward FLOPs of the patch embedding (``image``: 2.1's 1-frame tokenizer); it runs once per
    clip on every tubelet, before masking."""
    pe = (encoder.patch_embed_img if image else encoder.patch_embed).proj
    patch_macs = pe.in_channels * pe.out_channels * pe.kernel_size[0] * pe.kernel_size[1] * pe.kernel_size[2]
    return Flops(linear=2.0 * batch * grid[0] * grid[1] * grid[2] * patch_macs)


def encoder_flops(
    encoder: VisionTransformer, batch: int, grid: Grid, ids: Tensor | None = None, embed: bool = True,
    image: bool = False,
) -> Flops:
    """Forward FLOPs of the encoder on ``batch`` clips with token grid ``grid``; ``ids`` (B, N)
    are the visible tokens (all tokens when None); ``embed=False`` leaves out the patch embedding
    (several mask sets of one clip share it); ``image``: 2.1's 1-frame tokenizer embeds."""
    if ids is None:
        n = grid[0] * grid[1] * grid[2]
        ids = torch.arange(n).expand(batch, n)
    blocks = Flops()
    for (rows,) in real_rows(ids):
        b, n_visible = rows.shape
        blocks = blocks + _blocks_flops(encoder.blocks, encoder.embed_dim, b * n_visible, b * n_visible**2,
                                        layer_pairs(rows, grid, encoder))
    return patch_embed_flops(encoder, batch, grid, image) + blocks if embed else blocks


def predictor_flops(predictor: VisionTransformerPredictor, masks_x: Tensor, masks_y: Tensor, grid: Grid) -> Flops:
    """Forward FLOPs of the predictor for one mask set (B, Nc) context, (B, Nt) targets."""
    width = predictor.predictor_norm.normalized_shape[0]
    context_out = 0 if predictor.predictor_proj_context is None else _linear_macs(predictor.predictor_proj_context)
    total = Flops()
    for mx, my in real_rows(masks_x, masks_y):
        batch, ids = mx.shape[0], torch.cat([mx, my], 1)
        n = ids.shape[1]
        io = 2.0 * (batch * mx.shape[1] * (_linear_macs(predictor.predictor_embed) + context_out)
                    + batch * my.shape[1] * _linear_macs(predictor.predictor_proj))
        total = total + Flops(linear=io) + _blocks_flops(predictor.predictor_blocks, width, batch * n, batch * n**2,
                                                         layer_pairs(ids, grid, predictor))
    return total


def train_step_flops(encoder: VisionTransformer, predictor: VisionTransformerPredictor,
                     target_encoder: VisionTransformer, clip_shape: tuple[int, ...],
                     masks_enc: list[Tensor], masks_pred: list[Tensor]) -> Flops:
    """FLOPs of one JEPA training step on clips of ``clip_shape`` (B, C, T, H, W): 3x (forward +
    backward) for the context encoder and the predictor, 1x for the target encoder's forward.
    The context encoder embeds each clip once, whatever the number of mask sets."""
    batch = clip_shape[0]
    grid, image = encoder.input_grid(clip_shape), encoder.is_image(clip_shape)
    trained = patch_embed_flops(encoder, batch, grid, image)
    for mx, my in zip(masks_enc, masks_pred):
        mx, my = mx.cpu(), my.cpu()
        trained = trained + encoder_flops(encoder, batch, grid, mx, embed=False)
        trained = trained + predictor_flops(predictor, mx, my, grid)
    return encoder_flops(target_encoder, batch, grid, image=image) + trained.scale(3.0)
