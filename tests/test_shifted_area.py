"""Shifted area attention (area settings with shift=true) against hand-made areas and an encoder
run layer by layer with explicit masks."""
import math
from collections import Counter

import pytest
import torch
import torch.nn.functional as F

from stjepa.models import AreaSplits, AttentionSettings, vit
from stjepa.models.kinds.area import AreaKind, shifted_area_index
from stjepa.models.grid import gather_tokens, grid_positions
from stjepa.models.rope import RopeTables
from test_area_attention import reference_area_attention
from test_neighborhood import sparse_ids

F64 = torch.float64


def test_shifted_slices_by_hand():
    # length 8 in 2 slices: boundaries move from 4 to 2 and 6 (half slices at both ends)
    p = torch.arange(8)
    area, count = shifted_area_index(p * 0, p, p * 0, (1, 8, 1), AreaSplits(1, 2, 1))
    assert area.tolist() == [0, 0, 1, 1, 1, 1, 2, 2] and count == 3
    # 6 cells in 3 slices of 2: boundaries at 1, 3, 5
    p = torch.arange(6)
    area, count = shifted_area_index(p, p * 0, p * 0, (6, 1, 1), AreaSplits(3, 1, 1))
    assert area.tolist() == [0, 1, 1, 2, 2, 3] and count == 4


def hand_areas(ids, grid, splits, shifted):
    """Area ids computed cell by cell with the boundary rule written out."""
    T, H, W = grid
    out = []
    for row in ids.tolist():
        r = []
        for i in row:
            coords, sizes = [], []
            for p, n, s in zip((i // (H * W), i // W % H, i % W), grid, splits):
                if shifted and s > 1:
                    coords.append(math.floor(p * s / n + 0.5))
                    sizes.append(s + 1)
                else:
                    coords.append(p * s // n)
                    sizes.append(s)
            r.append((coords[0] * sizes[1] + coords[1]) * sizes[2] + coords[2])
        out.append(r)
    return torch.tensor(out)


@pytest.mark.parametrize("backend", ["dense", "padded"])
@pytest.mark.parametrize("reorder", ["once", "per_layer"])
def test_both_layouts_match_the_reference_on_sparse_tokens(backend, reorder):
    grid, splits = (4, 6, 8), (2, 2, 2)
    kind = AreaKind(*splits, reorder=reorder, shift=True)
    ids = sparse_ids(grid, 3, 70, seed=7)
    order, layouts = kind.prepare(ids, grid, backend)
    assert len(layouts) == 2
    ids = ids if order is None else ids.gather(1, order)
    g = torch.Generator().manual_seed(8)
    q, k, v = (torch.randn(3, 2, 70, 8, generator=g, dtype=F64).requires_grad_() for _ in range(3))
    for layout, shifted in zip(layouts, (False, True)):
        expected = reference_area_attention(q, k, v, hand_areas(ids, grid, splits, shifted))
        out = layout.attend(q, k, v)
        torch.testing.assert_close(out, expected)
        for a, b in zip(torch.autograd.grad(out.sum(), (q, k, v)), torch.autograd.grad(expected.sum(), (q, k, v))):
            torch.testing.assert_close(a, b)
    # attending (query, key) pairs: every area of n tokens gives n * n, counted from the hand-made areas
    assert kind.pairs(ids, grid) == tuple(sum(n * n for row in hand_areas(ids, grid, splits, shifted).tolist()
                                              for n in Counter(row).values()) for shifted in (False, True))


class MaskLayout:
    """A layout that is nothing but an explicit mask (the reference)."""

    def __init__(self, mask):
        self.mask = mask

    def attend(self, q, k, v):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask[:, None])


def test_encoder_alternates_plain_and_shifted_areas_in_its_area_layers():
    torch.manual_seed(0)
    attention = dict(temporal_splits=2, height_splits=2, width_splits=2, shift=True, area_end=3)
    model = vit("vit_tiny", img_size=96, num_frames=8, depth=4, attention=attention).double()
    assert AttentionSettings.create(attention).tag == "area-t2h2w2-shift-L0:3"
    grid = (4, 6, 6)
    x = torch.randn(2, 3, 8, 96, 96, dtype=F64)
    ids = sparse_ids(grid, 2, 60, seed=9)
    # reference: tokens in the caller's order, explicit masks per layer (plain, shifted, plain, global)
    tokens = gather_tokens(model.patch_embed(x), ids)
    rope = RopeTables.from_positions(*grid_positions(ids, grid), model.head_dim, F64)
    masks = [hand_areas(ids, grid, (2, 2, 2), shifted) for shifted in (False, True, False)]
    for j, blk in enumerate(model.blocks):
        layout = MaskLayout(masks[j][:, :, None] == masks[j][:, None, :]) if j < 3 else None
        tokens = blk(tokens, rope, layout)
    torch.testing.assert_close(model(x, ids), model.norm(tokens))
