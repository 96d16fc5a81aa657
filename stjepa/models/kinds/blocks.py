"""Block-sparse attention by gathering, for kinds whose pattern is block-granular (sliding tile,
top-k blocks): tokens sit in blocks of C slots, every query block attends to a list of m key
blocks, and those are gathered into one dense (m * C)-key set per query block, so attention is
plain SDPA on (B, heads * blocks, C, dim) queries: flash kernels on CUDA, no mask at all when
every slot holds a token. It costs m copies of K and V."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def gather_blocks(x: Tensor, key_blocks: Tensor) -> Tensor:
    """(B, heads, blocks, C, ...) -> (B, heads, blocks, m * C, ...): the listed blocks of every
    query block side by side. ``key_blocks`` is (blocks, m), the same for every sample and head,
    or (B, heads, blocks, m)."""
    B, heads, nb, C = x.shape[:4]
    m = key_blocks.shape[-1]
    if key_blocks.dim() == 2:
        out = x.index_select(2, key_blocks.reshape(-1))
    else:
        index = key_blocks.reshape(B, heads, nb * m).view(B, heads, nb * m, *[1] * (x.dim() - 3))
        out = x.gather(2, index.expand(B, heads, nb * m, *x.shape[3:]))
    return out.reshape(B, heads, nb, m * C, *x.shape[4:])


def attend_key_blocks(q: Tensor, k: Tensor, v: Tensor, key_blocks: Tensor, valid: Tensor | None = None) -> Tensor:
    """Attention of (B, heads, blocks, C, D) query blocks over their key blocks (see
    :func:`gather_blocks`). ``valid`` (B or 1, blocks, C) marks the slots that hold tokens (None:
    all do); empty slots are never keys, and their query rows are left to the caller to drop."""
    B, heads, nb, C, D = q.shape
    mask = None
    if valid is not None:
        per_head = key_blocks.dim() == 4  # gather needs the index's batch size
        slots = valid.to(torch.bool)[:, None].expand(B if per_head else valid.shape[0], heads, nb, C)
        key_valid = gather_blocks(slots, key_blocks)[..., None, :]  # (B, heads, blocks, 1, m * C)
        # an empty query slot may see every key (its row is dropped), so no row is fully masked
        mask = key_valid | ~slots[..., None]
        mask = mask.expand(B, heads, nb, C, mask.shape[-1]).reshape(B, heads * nb, C, -1)
    out = F.scaled_dot_product_attention(q.reshape(B, heads * nb, C, D),
                                         gather_blocks(k, key_blocks).reshape(B, heads * nb, -1, D),
                                         gather_blocks(v, key_blocks).reshape(B, heads * nb, -1, D), attn_mask=mask)
    return out.view(B, heads, nb, C, D)
