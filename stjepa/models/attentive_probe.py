"""V-JEPA 2's attentive probe: self-attention blocks, then cross-attention pooling with a learned
query token, then a linear classifier. Names follow upstream (``pooler.query_tokens``,
``pooler.cross_attention_block.xattn.q`` ...). Upstream quirks kept: the cross-attention has no
output projection, and its block normalizes the keys/values, not the query."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .arguments import ArgumentError
from .layers import MLP, Block
from .vision_transformer import init_weights, rescale_residual_branches


class CrossAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)

    def forward(self, q: Tensor, x: Tensor) -> Tensor:
        B, n, C = q.shape
        N, H = x.shape[1], self.num_heads
        q = self.q(q).view(B, n, H, C // H).transpose(1, 2)
        k, v = self.kv(x).view(B, N, 2, H, C // H).permute(2, 0, 3, 1, 4)
        return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, n, C)


class CrossAttentionBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 norm_eps: float = 1e-5):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.xattn = CrossAttention(dim, num_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = MLP(dim, int(dim * mlp_ratio))

    def forward(self, q: Tensor, x: Tensor) -> Tensor:
        q = q + self.xattn(q, self.norm1(x))
        return q + self.mlp(self.norm2(q))


class AttentivePooler(nn.Module):
    def __init__(self, embed_dim: int, num_heads: int = 16, depth: int = 1, num_queries: int = 1,
                 mlp_ratio: float = 4.0, init_std: float = 0.02, norm_eps: float = 1e-5):
        super().__init__()
        if embed_dim % num_heads:
            raise ArgumentError(f"{{num_heads}} does not divide the encoder width {embed_dim}.", num_heads=num_heads)
        self.query_tokens = nn.Parameter(torch.zeros(1, num_queries, embed_dim))
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio, norm_eps=norm_eps) for _ in range(depth - 1))
        self.cross_attention_block = CrossAttentionBlock(embed_dim, num_heads, mlp_ratio, norm_eps=norm_eps)
        nn.init.trunc_normal_(self.query_tokens, std=init_std)
        self.apply(lambda m: init_weights(m, init_std))
        rescale_residual_branches(self.blocks)
        self.cross_attention_block.mlp.fc2.weight.data.div_(math.sqrt(2.0 * max(len(self.blocks), 1)))

    def forward(self, x: Tensor) -> Tensor:
        for blk in self.blocks:
            x = blk(x)
        return self.cross_attention_block(self.query_tokens.expand(x.shape[0], -1, -1), x)


class AttentiveClassifier(nn.Module):
    """(B, N, D) tokens -> (B, num_classes) logits. ``norm_eps``: upstream's probe uses
    LayerNorm's 1e-5; transformers' port of the released probes uses the encoder's 1e-6."""

    def __init__(self, embed_dim: int, num_classes: int, num_heads: int = 16, depth: int = 1,
                 mlp_ratio: float = 4.0, init_std: float = 0.02, norm_eps: float = 1e-5):
        super().__init__()
        self.pooler = AttentivePooler(embed_dim, num_heads, depth, 1, mlp_ratio, init_std, norm_eps)
        self.linear = nn.Linear(embed_dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(self.pooler(x).squeeze(1))
