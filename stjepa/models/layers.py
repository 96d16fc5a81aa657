"""Transformer building blocks. Module and parameter names follow the official V-JEPA 2 code
so that its checkpoints load strictly (``attn.qkv``, ``attn.proj``, ``mlp.fc1`` ...)."""
from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .attention_backends import attend
from .kinds import LocalLayout
from .arguments import ArgumentError
from .rope import RopeTables, apply_rope


class PatchEmbed3D(nn.Module):
    """(B, C, T, H, W) video -> (B, T/tubelet * H/patch * W/patch, dim) tokens, t-major."""

    def __init__(self, patch_size: int = 16, tubelet_size: int = 2, in_chans: int = 3, embed_dim: int = 768):
        super().__init__()
        self.patch_size = patch_size
        self.tubelet_size = tubelet_size
        kernel = (tubelet_size, patch_size, patch_size)
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=kernel, stride=kernel)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention with 3D RoPE. Global or local attention is decided per call by
    the layout argument (any kind's), so global and local layers have exactly the same parameters."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, proj_drop: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ArgumentError("{dim} is not divisible by {num_heads}.", dim=dim, num_heads=num_heads)
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: Tensor, rope: RopeTables | None = None, layout: LocalLayout | None = None) -> Tensor:
        B, N, C = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        if rope is not None:
            q, k = apply_rope(q, rope), apply_rope(k, rope)
        out = attend(q, k, v, layout).transpose(1, 2).reshape(B, N, C)
        return self.proj_drop(self.proj(out))


class MLP(nn.Module):
    def __init__(self, dim: int, hidden_dim: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class SwiGLU(nn.Module):
    """SiLU-gated MLP used by ViT-giant: fc3(silu(fc1(x)) * fc2(x))."""

    def __init__(self, dim: int, hidden_dim: int, drop: float = 0.0, wide: bool = True):
        super().__init__()
        if wide:  # as the official 'wide_SiLU': 2/3 of the hidden width, rounded up to a multiple of 8
            hidden_dim = 8 * ((int(2 * hidden_dim / 3) + 7) // 8)
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.fc2 = nn.Linear(dim, hidden_dim)
        self.fc3 = nn.Linear(hidden_dim, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc3(F.silu(self.fc1(x)) * self.fc2(x)))


class DropPath(nn.Module):
    """Stochastic depth: drop the residual branch per sample."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop: float = 0.0,
        drop_path: float = 0.0,
        use_swiglu: bool = False,
        norm_eps: float = 1e-6,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, proj_drop=drop)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        hidden = int(dim * mlp_ratio)
        self.mlp = SwiGLU(dim, hidden, drop) if use_swiglu else MLP(dim, hidden, drop)

    def forward(self, x: Tensor, rope: RopeTables | None = None, layout: LocalLayout | None = None) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), rope, layout))
        return x + self.drop_path(self.mlp(self.norm2(x)))
