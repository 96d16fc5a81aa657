"""Sliding tile attention against an independent reference: tiles and windows of tiles listed by
hand, and an explicit masked softmax."""
import pytest
import torch

from stjepa.models import ArgumentError, AttentionSettings, vit
from stjepa.models.kinds.sliding_tile import SlidingTileKind
from test_neighborhood import F64, assert_same_attention, natten_cells, reference_attention, sparse_ids


def reference_mask(ids, grid, tile, tile_window):
    """A key is seen when its tile lies in the window of tiles around the query's tile."""
    T, H, W = grid
    tiles = [n // s for n, s in zip(grid, tile)]
    out = torch.zeros(ids.shape[0], ids.shape[1], ids.shape[1], dtype=torch.bool)
    for b, row in enumerate(ids.tolist()):
        tile_of = [tuple(c // s for c, s in zip((i // (H * W), i // W % H, i % W), tile)) for i in row]
        for qi, q in enumerate(tile_of):
            seen = [natten_cells(c, n, k, 1) for c, n, k in zip(q, tiles, tile_window)]
            for ki, key in enumerate(tile_of):
                out[b, qi, ki] = all(c in s for c, s in zip(key, seen))
    return out


CASES = [((4, 8, 8), (2, 2, 2), (1, 3, 3)), ((6, 6, 9), (2, 3, 3), (3, 1, 3)), ((4, 4, 8), (1, 2, 4), (3, 1, 1))]


@pytest.mark.parametrize("grid, tile, tile_window", CASES)
def test_mask_and_pairs_match_the_listed_tiles(grid, tile, tile_window):
    kind = SlidingTileKind(tile, tile_window)
    kind.validate(grid)
    full = torch.arange(grid[0] * grid[1] * grid[2])[None]
    for ids in (full, sparse_ids(grid, 2, full.shape[1] // 3, seed=0)):
        expected = reference_mask(ids, grid, tile, tile_window)
        assert torch.equal(kind.mask(ids, grid)[0], expected)
        assert kind.pairs(ids, grid) == (int(expected.sum()),)
    # on a full grid every token sees the tokens of exactly wt * wh * ww whole tiles
    per_tile = tile[0] * tile[1] * tile[2]
    assert (kind.mask(full, grid)[0].sum(-1) == per_tile * tile_window[0] * tile_window[1] * tile_window[2]).all()


@pytest.mark.parametrize("keep", [60, 256])  # sparse tokens (unequal and empty tiles), every token
@pytest.mark.parametrize("backend", ["dense", "flex", "gather"])
def test_backends_on_tile_sorted_tokens_match_the_reference(backend, keep):
    grid, tile, tile_window = CASES[0]
    kind = SlidingTileKind(tile, tile_window)
    ids = sparse_ids(grid, 2, keep, seed=4)
    order, (layout,) = kind.prepare(ids, grid, backend)
    ids = ids.gather(1, order)
    tiles = [[tuple(c // s for c, s in zip((i // 64, i // 8 % 8, i % 8), tile)) for i in row] for row in ids.tolist()]
    assert all(row == sorted(row) for row in tiles)  # each tile is one run of the order
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(2, 2, keep, 8, generator=g, dtype=F64).requires_grad_(backend != "flex") for _ in range(3))
    expected = reference_attention(q, k, v, reference_mask(ids, grid, tile, tile_window))
    assert_same_attention(layout.attend(q, k, v), expected, q, k, v)


def test_gather_pads_only_sparse_tokens_and_auto_is_dense_on_a_small_cpu_grid():
    grid, tile, tile_window = CASES[0]
    kind = SlidingTileKind(tile, tile_window)
    _, (full,) = kind.prepare(torch.arange(256)[None], grid, "gather")
    _, (sparse,) = kind.prepare(sparse_ids(grid, 1, 60, seed=4), grid, "gather")
    assert full._slots[2] is None and sparse._slots[2] is not None
    assert kind.prepare(torch.arange(256)[None], grid)[1][0].backend == "dense"
    # the window table against the listed windows: tile (0, 0, 0) sees h, w tiles 0..2 of t tile 0
    assert sorted(full.window_table[0].tolist()) == [h * 4 + w for h in range(3) for w in range(3)]


def test_a_tile_window_covering_the_grid_is_full_attention():
    torch.manual_seed(0)
    full = vit("vit_tiny", img_size=96, num_frames=6, depth=2).double()
    local = vit("vit_tiny", img_size=96, num_frames=6, depth=2,
                attention=dict(kind="sliding_tile", tile=[1, 2, 2], tile_window=[3, 3, 3], area_end=2)).double()
    local.load_state_dict(full.state_dict())
    x = torch.randn(2, 3, 6, 96, 96, dtype=F64)
    masks = sparse_ids((3, 6, 6), 2, 50, seed=6)
    torch.testing.assert_close(local(x, masks), full(x, masks))
    assert AttentionSettings.create(dict(kind="sliding_tile", tile=[1, 2, 2], tile_window=[3, 3, 3])).tag.startswith(
        "sta1x2x2w3x3x3-")


@pytest.mark.parametrize("settings, message", [
    (dict(tile=[2, 3, 2], tile_window=[1, 1, 1]), r"^tile=\[2, 3, 2\] does not divide the 4 cells of the h axis"),
    (dict(tile=[2, 2, 2], tile_window=[1, 3, 3]), r"^tile_window=\[1, 3, 3\] does not fit the 2 tiles of the h axis"),
    (dict(tile=[2, 2, 2], tile_window=[1, 2, 1]), r"^tile_window=\[1, 2, 1\] needs odd sizes"),
    (dict(tile=[2, 2], tile_window=[1, 1, 1]), r"^tile=\[2, 2\] must be three sizes \[t, h, w\]"),
])
def test_bad_settings_name_the_argument(settings, message):
    with pytest.raises(ArgumentError, match=message):
        vit("vit_tiny", img_size=64, num_frames=8, depth=2, attention=dict(kind="sliding_tile", **settings))
