"""Several kinds in one transformer (attention ``stages``): an encoder with area, neighborhood and
sliding-tile layers against the same blocks run layer by layer on tokens in the caller's order
with explicit masks from the hand-written rules of each kind's tests."""
import pytest
import torch

from stjepa.errors import ConfigError
from stjepa.networks import build_encoder
from stjepa.models import AttentionSettings, vit
from stjepa.models.flops import layer_pairs
from stjepa.models.grid import gather_tokens, grid_positions
from test_neighborhood import reference_mask as neighborhood_mask
from test_neighborhood import sparse_ids
from test_shifted_area import MaskLayout, hand_areas
from test_sliding_tile import reference_mask as tile_mask

F64 = torch.float64
GRID = (4, 6, 6)
STAGES = dict(temporal_splits=2, spatial_splits=2, area_end=2, stages=[
    dict(kind="neighborhood", window=[3, 3, 3], area_start=2, area_end=3),
    dict(kind="sliding_tile", tile=[2, 2, 3], tile_window=[1, 3, 1], area_layers=[4]),
])


def reference_masks(ids):
    """Per layer of a depth-6 encoder: area, area, neighborhood, global, sliding tile, global."""
    area = hand_areas(ids, GRID, (2, 2, 2), shifted=False)
    same_area = area[:, :, None] == area[:, None, :]
    return [same_area, same_area, neighborhood_mask(ids, GRID, (3, 3, 3), (1, 1, 1)), None,
            tile_mask(ids, GRID, (2, 2, 3), (1, 3, 1)), None]


@pytest.mark.parametrize("version", ["2.0", "2.1"])  # every kind works in V-JEPA 2.1 models as in 2.0
@pytest.mark.parametrize("keep", [50, 144])  # sparse context tokens, every token
def test_an_encoder_with_three_kinds_matches_explicit_masks_layer_by_layer(keep, version):
    torch.manual_seed(0)
    model = vit("vit_tiny", img_size=96, num_frames=8, depth=6, attention=STAGES, version=version).double()
    assert [None if p is None else p.kind for p in model.layer_entries] == [
        "area", "area", "neighborhood", None, "sliding_tile", None]
    x = torch.randn(2, 3, 8, 96, 96, dtype=F64)
    ids = sparse_ids(GRID, 2, keep, seed=keep)

    def reference():
        tokens = gather_tokens(model.embed(x)[0], ids)
        rope = model.rope_style.tables(*grid_positions(ids, GRID), GRID, model.head_dim, F64)
        for blk, mask in zip(model.blocks, reference_masks(ids)):
            tokens = blk(tokens, rope, None if mask is None else MaskLayout(mask))
        return model.norm(tokens) if version == "2.0" else model.norms_block[-1](tokens)

    weights = torch.randn(2, keep, model.embed_dim, dtype=F64)
    grads = []
    for forward in (lambda: model(x, ids), reference):
        model.zero_grad()
        out = forward()
        (out * weights).sum().backward()
        grads.append((out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (out, got), (expected, want) = grads
    torch.testing.assert_close(out, expected)
    assert set(got) == set(want) and {f"blocks.{i}.attn.qkv.weight" for i in range(6)} <= set(want)
    for name in want:
        torch.testing.assert_close(got[name], want[name], msg=name)


def test_the_flop_counter_counts_each_layer_by_its_kind():
    model = vit("vit_tiny", img_size=96, num_frames=8, depth=6, attention=STAGES)
    ids = sparse_ids(GRID, 2, 50, seed=1)
    expected = [2 * 50 * 50 if m is None else int(m.sum()) for m in reference_masks(ids)]
    assert layer_pairs(ids, GRID, model) == expected


def test_the_tag_names_every_kind_with_its_layers():
    assert AttentionSettings.create(STAGES).tag == "area-t2h2w2-L0:2+nbhd3x3x3-L2:3+sta2x2x3w1x3x1-L4"
    # a global first entry with one local stage
    assert AttentionSettings.create(dict(stages=[dict(kind="neighborhood", window=[1, 3, 3])])).tag == "nbhd1x3x3-L0:auto"


@pytest.mark.parametrize("stages, message", [
    ([dict(kind="neighborhood", window=[3, 3, 3], area_start=1, area_end=3)],
     "attention.stages=[{'kind': 'neighborhood', 'area_start': 1, 'area_end': 3}] put layer 1 in two layer ranges, "
     "area-t2h2w2 (layers 0, 1) and nbhd3x3x3 (layers 1, 2); give each layer at most one kind"),
    ([dict(kind="neighborhood", window=[3, 4, 3], area_start=2, area_end=3)],
     "attention.stages.0.window=[3, 4, 3] needs odd sizes"),
    ([dict(kind="neighborhood", window=[3, 3, 3], area_start=2, area_end=9)],
     "attention.stages.0.area_start=2 / attention.stages.0.area_end=9 do not fit a depth of 6"),
    ([dict(window=[3, 3, 3], area_start=2, area_end=3)], "attention.stages={'window': [3, 3, 3], 'area_start': 2, "
                                                         "'area_end': 3} entries are mappings of attention settings "
                                                         "with a kind"),
])
def test_bad_stages_are_refused_naming_the_key(stages, message):
    attention = dict(temporal_splits=2, spatial_splits=2, area_end=2, stages=stages)
    with pytest.raises(ConfigError) as info:
        build_encoder(dict(size="vit_tiny", depth=6), attention, 96, 8)
    assert str(info.value).startswith(message)
