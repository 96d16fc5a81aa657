"""Top-k block attention against an independent reference: blocks cut by hand from a tile-sorted
list of positions, block means and the top-k choice written as loops, an explicit masked softmax."""
import pytest
import torch

from stjepa.models import ArgumentError, AttentionSettings, vit
from stjepa.models.kinds.topk_blocks import TopkBlocksKind
from test_neighborhood import F64, assert_same_attention, reference_attention, sparse_ids


def hand_blocks(row, grid, block):
    """Blocks of one sample as lists of indices into ``row``: positions sorted by tile (t-major),
    then position, cut into runs of bt * bh * bw."""
    T, H, W = grid

    def key(j):
        i = row[j]
        cell = (i // (H * W), i // W % H, i % W)
        return tuple(c // s for c, s in zip(cell, block)), i

    ordered = sorted(range(len(row)), key=key)
    size = block[0] * block[1] * block[2]
    return [ordered[s:s + size] for s in range(0, len(ordered), size)]


def reference_mask(ids, grid, block, top_k, q, k):
    """(B, heads, N, N) in the caller's token order: a query sees the keys of its own block and of
    the top_k other blocks by (mean query of its block) . (mean key of the block)."""
    B, heads, N, _ = q.shape
    out = torch.zeros(B, heads, N, N, dtype=torch.bool)
    for b, row in enumerate(ids.tolist()):
        blocks = hand_blocks(row, grid, block)
        for h in range(heads):
            q_mean = [q[b, h, idx].mean(0) for idx in blocks]
            k_mean = [k[b, h, idx].mean(0) for idx in blocks]
            for qb, idx in enumerate(blocks):
                others = sorted((kb for kb in range(len(blocks)) if kb != qb),
                                key=lambda kb: float(q_mean[qb] @ k_mean[kb]), reverse=True)
                for kb in [qb] + others[:top_k]:
                    for i in idx:
                        out[b, h, i, blocks[kb]] = True
    return out


def run_layout(kind, ids, grid, backend, q, k, v):
    """The kind's attention in its own token order, returned in the caller's order."""
    order, (layout,) = kind.prepare(ids, grid, backend)
    index = order[:, None, :, None].expand_as(q)
    out = layout.attend(q.gather(2, index), k.gather(2, index), v.gather(2, index))
    return torch.empty_like(out).scatter(2, index, out), layout


CASES = [  # grid, block, top_k, visible tokens: whole blocks, a partial last block, fewer blocks than k + 1
    ((4, 8, 8), (2, 2, 2), 3, 64),
    ((4, 6, 6), (1, 3, 2), 2, 50),
    ((2, 8, 8), (2, 4, 4), 3, 40),
    ((4, 4, 4), (1, 2, 2), 2, 64),
]


@pytest.mark.parametrize("backend", ["gather", "dense", "flex"])
@pytest.mark.parametrize("grid, block, top_k, keep", CASES)
def test_backends_match_the_hand_made_selection(grid, block, top_k, keep, backend):
    kind = TopkBlocksKind(block, top_k)
    kind.validate(grid)
    ids = sparse_ids(grid, 2, keep, seed=keep)
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 3, keep, 8, generator=g, dtype=F64).requires_grad_(backend != "flex")
               for _ in range(3))
    expected = reference_attention(q, k, v, reference_mask(ids, grid, block, top_k, q.detach(), k.detach()))
    out, layout = run_layout(kind, ids, grid, backend, q, k, v)
    assert layout.backend == backend
    assert_same_attention(out, expected, q, k, v)


def test_on_a_full_grid_every_block_is_one_tile_and_auto_gathers():
    grid, block = (4, 4, 4), (2, 2, 2)
    full = torch.arange(64)[None]
    order, (layout,) = TopkBlocksKind(block, 2).prepare(full, grid)
    tiles = [(i // 16 // 2, i // 4 % 4 // 2, i % 4 // 2) for i in order[0].tolist()]
    assert [len(set(tiles[s:s + 8])) for s in range(0, 64, 8)] == [1] * 8
    assert len(set(tiles)) == 8 and layout.backend == "gather"
    # counted pairs: every query sees its block and two more, 8 tokens each
    assert TopkBlocksKind(block, 2).pairs(full, grid) == (64 * 3 * 8,)


def test_top_k_of_every_other_block_is_full_attention():
    torch.manual_seed(0)
    full = vit("vit_tiny", img_size=64, num_frames=8, depth=2).double()
    local = vit("vit_tiny", img_size=64, num_frames=8, depth=2,
                attention=dict(kind="topk_blocks", block=[2, 2, 2], top_k=7, area_end=2)).double()
    local.load_state_dict(full.state_dict())
    x = torch.randn(2, 3, 8, 64, 64, dtype=F64)
    masks = sparse_ids((4, 4, 4), 2, 37, seed=3)
    torch.testing.assert_close(local(x, masks), full(x, masks))
    assert local.attention.tag == "topk2x2x2k7-L0:2"


def test_a_few_blocks_is_local_attention_in_the_encoder():
    """With k = 1 of 8 blocks the encoder's output differs from full attention (the layer is used)."""
    torch.manual_seed(0)
    full = vit("vit_tiny", img_size=64, num_frames=8, depth=2).double()
    local = vit("vit_tiny", img_size=64, num_frames=8, depth=2,
                attention=dict(kind="topk_blocks", block=[2, 2, 2], top_k=1)).double()
    local.load_state_dict(full.state_dict())
    x = torch.randn(1, 3, 8, 64, 64, dtype=F64)
    assert not torch.allclose(local(x), full(x))


@pytest.mark.parametrize("settings, message", [
    (dict(block=[2, 2, 2], top_k=8), r"^top_k=8 is not fewer than the 8 blocks of the grid; allowed values are 1\.\.7"),
    (dict(block=[3, 2, 2], top_k=1), r"^block=\[3, 2, 2\] does not divide the 4 cells of the t axis"),
    (dict(block=[2, 2], top_k=1), r"^block=\[2, 2\] must be three sizes \[t, h, w\]"),
    (dict(block=[2, 2, 2], top_k=0), r"^top_k=0 is not allowed; allowed values are integers >= 1"),
])
def test_bad_settings_are_refused_naming_the_key(settings, message):
    with pytest.raises(ArgumentError, match=message):
        AttentionSettings.create(dict(kind="topk_blocks", **settings)).validate(4, (4, 4, 4))
