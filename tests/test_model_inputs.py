"""Bad settings and inputs give one clear ValueError; FLOP counts against a hand count;
activation checkpointing and image inputs."""
import pytest
import torch

from stjepa.models import ArgumentError, AreaSplits, AttentionSettings, VisionTransformerPredictor, vit
from stjepa.models.flops import encoder_flops, predictor_flops


def tiny(**kw):
    return vit("vit_tiny", img_size=64, num_frames=4, depth=4, **kw)


@pytest.mark.parametrize(
    "attention, message",
    [
        (dict(spatial_splits=0), r"^spatial_splits=0 is not allowed; allowed values are integers >= 1"),
        (dict(temporal_splits=0), r"^temporal_splits=0 is not allowed; allowed values are integers >= 1"),
        (dict(height_splits=5), r"^height_splits=5 is more splits than the 4 grid cells"),
        (dict(spatial_splits=5), r"^spatial_splits=5 is more splits than the 4 grid cells of the shorter"),
        (dict(temporal_splits=3), r"^temporal_splits=3 is more splits than the 2 grid cells"),
        (dict(spatial_splits=2, height_splits=3), r"^spatial_splits=2 and height_splits=3 both set the height"),
        (dict(backend="magic"), r"^backend='magic' is not known; allowed values are auto"),
        (dict(spatial_splits=2, area_end=9), r"^area_start=0 / area_end=9 do not fit a depth of 4"),
        (dict(spatial_splits=2, area_start=2, area_end=2), r"need 0 <= area_start < area_end <= 4"),
        (dict(area_layers=[0, 7]), r"^area_layers=\[0, 7\] does not fit a depth of 4"),
        (dict(spatial_split=2), r"^spatial_split=2 is not an area attention setting"),
    ],
)
def test_bad_attention_settings_name_the_constructor_argument(attention, message):
    # model code speaks in its own terms (no config keys); the config layer renames (test_train.py)
    with pytest.raises(ArgumentError, match=message):
        tiny(attention=attention)


def test_spatial_splits_sets_height_and_width_unless_they_say_otherwise():
    assert AttentionSettings.create(dict(spatial_splits=3)).built_kind.splits == AreaSplits(1, 3, 3)
    agreeing = AttentionSettings.create(dict(spatial_splits=3, height_splits=3))
    assert agreeing.built_kind.splits == AreaSplits(1, 3, 3)  # agreeing: fine
    assert AttentionSettings.create(dict(height_splits=2)).built_kind.splits == AreaSplits(1, 2, 1)
    assert AttentionSettings.create(dict()).built_kind.splits == AreaSplits(1, 1, 1)


def test_bad_inputs():
    model = tiny()
    with pytest.raises(ValueError, match="input of 3 frames is not a multiple of tubelet_size=2"):
        model(torch.randn(1, 3, 3, 64, 64))
    with pytest.raises(ValueError, match="input height 60 is not a multiple of patch_size=16"):
        model(torch.randn(1, 3, 4, 60, 64))
    with pytest.raises(ValueError, match=r"mask indices must lie in 0..31 .* got values in 0..32"):
        model(torch.randn(1, 3, 4, 64, 64), torch.tensor([[0, 32]]))
    with pytest.raises(ValueError, match="mask indices must be a \\(batch, tokens\\) integer tensor"):
        model(torch.randn(1, 3, 4, 64, 64), torch.tensor([0.0, 1.0]))
    area = tiny(attention=dict(spatial_splits=4))
    with pytest.raises(ValueError, match="height_splits=4 is more splits than the 2"):
        area(torch.randn(1, 3, 4, 32, 32))  # a smaller input than the model was built for
    with pytest.raises(ValueError, match="backend='equal' needs every area to hold the same number"):
        tiny(attention=dict(spatial_splits=2, backend="equal"))(
            torch.randn(1, 3, 4, 64, 64), torch.tensor([[0, 1, 2]])
        )


def test_area_pattern_defaults_scale_with_depth():
    assert AttentionSettings.create(dict(spatial_splits=2)).local_layer_flags(24) == (True,) * 18 + (False,) * 6
    assert AttentionSettings.create(dict(temporal_splits=2)).local_layer_flags(12) == (True,) * 9 + (False,) * 3
    some = AttentionSettings.create(dict(spatial_splits=2, area_layers=[1, 3]))
    assert some.local_layer_flags(4) == (False, True, False, True)
    one_area = AttentionSettings.create(dict(area_end=3))
    assert one_area.local_layer_flags(4) == (False,) * 4  # one area: every layer global
    assert AttentionSettings.create(dict(spatial_splits=2, area_layers=[1, 3])).tag == "area-t1h2w2-L1,3"
    assert AttentionSettings.create(dict(height_splits=1, width_splits=4, area_end=6)).tag == "area-t1h1w4-L0:6"


def test_flops_hand_count():
    model = vit("vit_tiny", img_size=32, num_frames=2, depth=2, attention=dict(spatial_splits=2, area_end=1))
    D, M, N, B = 192, 768, 4, 3  # 2x2 tokens per clip, batch 3
    f = encoder_flops(model, B, (1, 2, 2))
    linear_per_token = 2 * (D * 3 * D + D * D + D * M + M * D)  # one layer, 2 FLOPs per multiply-add
    patch = 2 * B * N * (3 * 2 * 16 * 16 * D)
    assert f.linear == 2 * B * N * linear_per_token + patch  # 2 layers
    # layer 0: four areas of one token -> B * 4 * 1^2 pairs; layer 1: global -> B * 4^2 pairs
    assert f.attention == 4 * D * (B * 4) + 4 * D * (B * 16)
    assert f.attention_if_full == 2 * 4 * D * (B * 16)

    pred = VisionTransformerPredictor(img_size=32, num_frames=2, embed_dim=D, predictor_embed_dim=32,
                                      depth=1, num_heads=2)
    mx, my = torch.tensor([[0, 3]]), torch.tensor([[1]])
    fp = predictor_flops(pred, mx, my, (1, 2, 2))
    P = 32
    assert fp.linear == 2 * (2 * D * P + 1 * P * D) + 2 * 3 * (P * 3 * P + P * P + 2 * P * 4 * P)
    assert fp.attention == 4 * P * 9


def test_activation_checkpointing_gives_same_gradients():
    torch.manual_seed(0)
    a = tiny(attention=dict(spatial_splits=2))
    b = tiny(attention=dict(spatial_splits=2), use_activation_checkpointing=True)
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 3, 4, 64, 64)
    a(x).sum().backward()
    b(x).sum().backward()
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad)


def test_images_are_one_tubelet_clips():
    model = tiny()
    img = torch.randn(2, 3, 64, 64)
    clip = img.unsqueeze(2).repeat(1, 1, 2, 1, 1)
    torch.testing.assert_close(model(img), model(clip))
    assert model(img).shape == (2, 16, 192)
