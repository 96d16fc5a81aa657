"""Attention backends: the ways a kind of local attention computes attention over its tokens.

The rule: a kind of local attention (:mod:`stjepa.models.kinds`) decides *which* keys each
query sees; how that is computed lives here, once, and every kind imports what it uses from
this module. All functions take and return (B, heads, N, head_dim) tensors unless stated. The
backends, with their trade-offs:

``attend``              the one entry point of a layer: global SDPA without a layout, the
                        layout's local attention with one
``KeyPaddingLayout``    global attention when some tokens are padding (index lists padded to
                        a fixed length): a key mask, so no query sees a padded key
``masked_attend``       an explicit boolean "query may see key" mask and SDPA (the reference
                        every kind is tested against; O(N^2) memory)
``equal_split_attend``  every segment holds N / S tokens in a row: a reshape to
                        (B*S, heads, N/S, dim) and plain SDPA (no mask, no copies)
``padded_attend``       segments of unequal size padded to a fixed width, SDPA with a key
                        padding mask (CPU-friendly; padding costs compute)
``varlen_attend``       torch ``varlen_attn`` (flash) over the flattened batch with cumulative
                        segment lengths (CUDA and torch >= 2.9 only; no padding)
``flex_attend``         FlexAttention with a block mask (:func:`create_block_mask`) over the
                        flattened batch: block-sparse, compiled on CUDA (eager on the CPU is the
                        slow reference path and has no backward there)
``attend_key_blocks``   block-granular patterns by gathering: each query block's key blocks
                        copied into one dense key set, plain SDPA on regular shapes (flash on
                        CUDA, no mask when every slot holds a token); costs a copy of K and V
                        per key block
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

__all__ = ["attend", "KeyPaddingLayout", "masked_attend", "equal_split_attend", "padded_attend", "varlen_attn", "varlen_attend",
           "flex_attention_for", "flex_attend", "create_block_mask", "flatten_tokens", "unflatten_tokens",
           "gather_blocks", "attend_key_blocks"]


def attend(q: Tensor, k: Tensor, v: Tensor, layout=None) -> Tensor:
    """Global SDPA without a layout; with one (any kind's layout), its local attention."""
    if layout is None:
        return F.scaled_dot_product_attention(q, k, v)
    return layout.attend(q, k, v)


class KeyPaddingLayout:
    """The layout of a global layer over padded tokens: ``valid`` (B, N) marks the real ones.
    A padded query sees the real keys (its row is never fully masked; its output is unused)."""

    backend = "global"

    def __init__(self, valid: Tensor):
        self.key_mask = valid[:, None, None, :]

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return masked_attend(q, k, v, self.key_mask)


def masked_attend(q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
    """SDPA with a boolean mask that broadcasts to (B, heads, N, N): True where a query sees a key."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def equal_split_attend(q: Tensor, k: Tensor, v: Tensor, segments: int) -> Tensor:
    """Attention inside each of ``segments`` equal runs of consecutive tokens."""
    B, Hh, N, D = q.shape
    S = segments

    def split(x: Tensor) -> Tensor:
        return x.reshape(B, Hh, S, N // S, D).transpose(1, 2).reshape(B * S, Hh, N // S, D)

    out = F.scaled_dot_product_attention(split(q), split(k), split(v))
    return out.reshape(B, S, Hh, N // S, D).transpose(1, 2).reshape(B, Hh, N, D)


def flatten_tokens(x: Tensor) -> Tensor:
    """(B, heads, N, D) -> (B*N, heads, D): the batch as one token sequence."""
    B, Hh, N, D = x.shape
    return x.transpose(1, 2).reshape(B * N, Hh, D)


def unflatten_tokens(x: Tensor, B: int) -> Tensor:
    """The inverse of :func:`flatten_tokens` for a batch of ``B``."""
    return x.reshape(B, -1, *x.shape[1:]).transpose(1, 2)


def padded_attend(q: Tensor, k: Tensor, v: Tensor, token_slot: Tensor, slot_token: Tensor,
                  slot_valid: Tensor) -> Tensor:
    """Attention inside segments of ``width`` slots each: ``slot_valid`` (segments, width) marks
    the slots that hold tokens, ``slot_token`` (segments * width,) is the flattened token each
    slot holds (any token for an empty slot: it is never a key) and ``token_slot`` (B*N,) each
    flattened token's slot (a token of no segment may point anywhere: its output is unused).
    Shapes come from these index tensors only, so nothing is read to the host."""
    B, Hh, N, D = q.shape
    segments, width = slot_valid.shape

    def pack(x: Tensor) -> Tensor:
        return flatten_tokens(x).index_select(0, slot_token).view(segments, width, Hh, D).transpose(1, 2)

    # an empty query slot may see every slot, so no row is fully masked (its output is dropped)
    mask = slot_valid[:, None, None, :] | ~slot_valid[:, None, :, None]
    out = F.scaled_dot_product_attention(pack(q), pack(k), pack(v), attn_mask=mask)
    out = out.transpose(1, 2).reshape(segments * width, Hh, D).index_select(0, token_slot)
    return unflatten_tokens(out, B)


def varlen_attn():
    """torch's ``varlen_attn``, or None where this torch has none (< 2.9)."""
    try:
        from torch.nn.attention.varlen import varlen_attn as fn
    except ImportError:  # torch < 2.9
        return None
    return fn


def varlen_attend(q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Tensor, max_len: int) -> Tensor:
    """Attention inside consecutive segments of the flattened batch, given by their cumulative
    lengths ``cu_seqlens`` (int32, segments + 1) and the longest ``max_len``."""
    out = varlen_attn()(flatten_tokens(q), flatten_tokens(k), flatten_tokens(v), cu_seqlens, cu_seqlens, max_len,
                        max_len)
    return unflatten_tokens(out, q.shape[0])


_COMPILED_FLEX = None


def flex_attention_for(device: torch.device):
    """FlexAttention compiled on CUDA (eager flex is the slow reference path), eager elsewhere."""
    if device.type == "cuda":
        global _COMPILED_FLEX
        if _COMPILED_FLEX is None:
            _COMPILED_FLEX = torch.compile(flex_attention, dynamic=False)
        return _COMPILED_FLEX
    return flex_attention


def flex_attend(q: Tensor, k: Tensor, v: Tensor, block_mask, flatten: bool = True) -> Tensor:
    """FlexAttention under ``block_mask``; with ``flatten`` the batch is one sequence of B*N
    tokens (the mask then also keeps samples apart), else the mask is per (B, heads, N, N)."""
    if not flatten:
        return flex_attention_for(q.device)(q, k, v, block_mask=block_mask)

    def flat(x: Tensor) -> Tensor:
        return flatten_tokens(x).transpose(0, 1).unsqueeze(0)  # (1, heads, B*N, D)

    out = flex_attention_for(q.device)(flat(q), flat(k), flat(v), block_mask=block_mask)
    return unflatten_tokens(out[0].transpose(0, 1), q.shape[0])


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
