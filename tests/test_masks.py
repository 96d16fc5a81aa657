import pytest
import torch

from stjepa.data.masks import MaskCollator, MaskSpec, MultiBlockMaskGenerator, V_JEPA2_MASKS


def gen(seed):
    return torch.Generator().manual_seed(seed)


def as_sets(idx):
    return [set(row.tolist()) for row in idx]


@pytest.mark.parametrize("spec", V_JEPA2_MASKS)
def test_counts_equal_across_batch_disjoint_and_in_range(spec):
    grid = (8, 16, 16)
    ctx, tgt = MultiBlockMaskGenerator(grid, spec)(6, gen(0))
    assert ctx.shape[0] == tgt.shape[0] == 6
    for c, t in zip(as_sets(ctx), as_sets(tgt)):
        assert len(c) == ctx.shape[1] and len(t) == tgt.shape[1]  # no duplicates
        assert not c & t
        assert all(0 <= i < 8 * 16 * 16 for i in c | t)
    assert (ctx.diff(dim=1) > 0).all() and (tgt.diff(dim=1) > 0).all()  # ascending, as upstream


def test_single_block_hand_count():
    # 16x16 grid, scale 0.15 -> keep = int(256 * 0.15) = 38; aspect 1 -> h = w = round(sqrt(38)) = 6;
    # full temporal extent: the target is 6 * 6 * 8 = 288 tokens, the context the other 1760.
    spec = MaskSpec(num_blocks=1, spatial_scale=(0.15, 0.15), aspect_ratio=(1.0, 1.0))
    g = MultiBlockMaskGenerator((8, 16, 16), spec)
    assert g.block_size(gen(0)) == (8, 6, 6)
    ctx, tgt = g(4, gen(1))
    assert tgt.shape == (4, 288) and ctx.shape == (4, 2048 - 288)
    # the target is one 6x6 box repeated over all 8 time steps
    for row in tgt:
        t, h, w = row // 256, (row // 16) % 16, row % 16
        assert t.unique().tolist() == list(range(8))
        assert h.max() - h.min() == 5 and w.max() - w.min() == 5


def test_truncation_to_smallest_count_and_full_complement(monkeypatch):
    # hand-made targets of different sizes on a 1x2x4 grid: row 0 predicts {0, 1, 2} (context of
    # 5), row 1 predicts {0, ..., 4} (context of 3); every row keeps its first 3 context and its
    # first 3 target tokens, ascending
    targets = torch.zeros(2, 8, dtype=torch.bool)
    targets[0, :3] = targets[1, :5] = True
    monkeypatch.setattr(MultiBlockMaskGenerator, "_target_masks", lambda self, batch, size, g: targets.clone())
    ctx, tgt = MultiBlockMaskGenerator((1, 2, 4), MaskSpec(num_blocks=1))(2, gen(2))
    assert ctx.tolist() == [[3, 4, 5], [5, 6, 7]]
    assert tgt.tolist() == [[0, 1, 2], [0, 1, 2]]
    # full_complement: the target is everything the truncated context left out
    ctx, tgt = MultiBlockMaskGenerator((1, 2, 4), MaskSpec(num_blocks=1, full_complement=True))(2, gen(2))
    assert ctx.tolist() == [[3, 4, 5], [5, 6, 7]]
    assert tgt.tolist() == [[0, 1, 2, 6, 7], [0, 1, 2, 3, 4]]
    monkeypatch.undo()
    full = MaskSpec(num_blocks=3, spatial_scale=(0.1, 0.1), full_complement=True)
    ctx2, tgt2 = MultiBlockMaskGenerator((4, 8, 8), full)(8, gen(2))
    assert ctx2.shape[1] + tgt2.shape[1] == 256
    for c, t in zip(as_sets(ctx2), as_sets(tgt2)):
        assert c | t == set(range(256))


def test_max_keep_and_max_temporal_keep():
    spec = MaskSpec(num_blocks=1, spatial_scale=(0.1, 0.1), max_keep=50, max_temporal_keep=0.5)
    ctx, tgt = MultiBlockMaskGenerator((4, 8, 8), spec)(3, gen(3))
    assert ctx.shape[1] == 50
    assert (ctx // 64 < 2).all()  # context only from the first half of the clip
    assert all(set(range(128, 256)) <= t for t in as_sets(tgt))  # later frames are all targets


def test_deterministic_under_seed_and_varies_with_seed():
    collator = MaskCollator((8, 16, 16))
    a = collator(4, gen(7))
    b = collator(4, gen(7))
    c = collator(4, gen(8))
    for x, y in zip(a[0] + a[1], b[0] + b[1]):
        assert torch.equal(x, y)
    assert any(x.shape != y.shape or not torch.equal(x, y) for x, y in zip(a[0], c[0]))


def test_bad_mask_settings():
    with pytest.raises(ValueError, match="mask.spatial_scale"):
        MaskSpec.create(dict(spatial_scale=[0.0, 0.2]))
    with pytest.raises(ValueError, match="mask.num_blocks"):
        MaskSpec.create(dict(num_blocks=0))
    with pytest.raises(ValueError, match="mask.max_temporal_keep"):
        MaskSpec.create(dict(max_temporal_keep=1.5))
