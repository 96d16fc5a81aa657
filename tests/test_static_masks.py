"""Static shapes: mask index lists padded to a fixed length from the mask config and the grid.

The padded step must be the unpadded step: the loss and every parameter gradient of a training
step on padded masks equal those of the same step on the same masks unpadded (the reference:
the networks run on exactly the real tokens, no padding anywhere), for every attention preset
of every kind, V-JEPA 2.0 and 2.1 (both loss terms, distance weights), video and image steps.
The bound's slot counts are checked against a brute-force search over the drawn block sizes;
the quantile rule's lists against counts and truncations done by hand on the boolean masks.
"""
import math

import pytest
import torch

from stjepa.data.collate import MaskingCollate
from stjepa.data.masks import SLOT_DRAWS, SLOT_SEED, MaskCollator, MaskSpec, MultiBlockMaskGenerator, V_JEPA2_MASKS
from stjepa.errors import ConfigError
from stjepa.models import AttentionSettings
from stjepa.models.flops import train_step_flops
from stjepa.models.kinds import find_kinds
from step_helpers import CROP, FRAMES, IMAGE_MASKS, KIND_PRESETS, PRESETS, build_module, step

BATCH = 2


def test_every_kind_has_a_preset_that_fits_the_test_grid():
    kinds = {AttentionSettings.create(s).built_kind.name for s in PRESETS.values() if s.get("kind")}
    assert kinds == set(find_kinds())


def with_pad_in_front(masks, extra):
    """Pad slots before the real indices too (the models must not rely on padding being last)."""
    return [torch.cat([torch.full((m.shape[0], extra), -1), m], 1) for m in masks]


@pytest.mark.parametrize("version", ["2.0", "2.1"])
@pytest.mark.parametrize("layout", KIND_PRESETS)
def test_padded_step_equals_the_unpadded_step(layout, version):
    module = build_module(layout, version).double()  # float64: the two paths agree far below fp32 round-off
    for modality in ("video", "image"):
        image = modality == "image"
        clips = torch.randn(BATCH, 3, 1 if image else FRAMES, CROP, CROP, generator=torch.Generator().manual_seed(1),
                            dtype=torch.float64)
        clips = module.on_after_batch_transfer({"video": clips}, 0)["video"]
        grid = module.input_grid(clips.shape)
        if image and version == "2.1":
            try:
                module.encoder.attention.validate_grid(grid)
            except ValueError:
                continue  # a preset made for clips does not take a 1-frame grid
        specs = IMAGE_MASKS if image and version == "2.1" else V_JEPA2_MASKS
        plain = MaskCollator(grid, specs)(BATCH, torch.Generator().manual_seed(2))
        padded = MaskCollator(grid, specs, pad=True, slots="bound")(BATCH, torch.Generator().manual_seed(2))
        for a, b in zip(plain[0] + plain[1], padded[0] + padded[1]):  # the same masks, padded with -1
            assert torch.equal(b[:, :a.shape[1]], a) and (b[:, a.shape[1]:] == -1).all()
        assert any(b.shape[1] > a.shape[1] for a, b in zip(plain[0] + plain[1], padded[0] + padded[1]))
        loss, grads = step(module, clips, *plain)
        if image:  # the models must not rely on padding being last
            padded = [with_pad_in_front(m, 2) for m in padded]
        padded_loss, padded_grads = step(module, clips, *padded)
        torch.testing.assert_close(padded_loss, loss, rtol=1e-12, atol=1e-14)
        assert padded_grads.keys() == grads.keys() and len(grads) > 10
        for name, g in grads.items():
            torch.testing.assert_close(padded_grads[name], g, rtol=1e-9, atol=1e-12, msg=name)


def brute_force_counts(grid, spec):
    """(most, fewest) target tokens over many drawn block sizes, each block placed by hand."""
    T, H, W = grid
    gen = MultiBlockMaskGenerator(grid, spec)
    window = gen.max_context_frames
    sizes = {gen._block_dims(u, u) for u in torch.linspace(0, 1, 4001).tolist()}
    late = (T - window) * H * W
    most = max(late + min(window * H * W, spec.num_blocks * h * w * min(t, window)) for t, h, w in sizes)
    fewest = min(late + h * w * max(0, window - T + t) for t, h, w in sizes)
    return most, fewest


@pytest.mark.parametrize("grid", [(8, 16, 16), (32, 24, 24), (1, 16, 16), (4, 4, 4)])
@pytest.mark.parametrize("spec", [*V_JEPA2_MASKS, MaskSpec(**IMAGE_MASKS[0]), MaskSpec(num_blocks=3, spatial_scale=(0.1, 0.4),
                                                                                      temporal_scale=(0.5, 1.0),
                                                                                      max_temporal_keep=0.5)])
def test_slots_bound_every_draw_and_are_tight(grid, spec):
    gen = MultiBlockMaskGenerator(grid, spec, pad=True, slots="bound")
    ctx_slots, tgt_slots = gen.slots(2)
    numel = math.prod(grid)
    most, fewest = brute_force_counts(grid, spec)
    # the bound is the brute-force extreme (within what one piece of u can hide) ...
    assert numel - fewest <= ctx_slots <= numel - fewest + numel // 8
    assert min(most, numel - 1) <= tgt_slots <= numel - 1
    # ... and no draw exceeds it
    g = torch.Generator().manual_seed(0)
    for _ in range(10):
        ctx, tgt = gen(2, g)
        assert ctx.shape == (2, ctx_slots) and tgt.shape == (2, tgt_slots)


COMPLEMENT = MaskSpec(num_blocks=3, spatial_scale=(0.1, 0.3), full_complement=True)


@pytest.mark.parametrize("spec", [*V_JEPA2_MASKS, COMPLEMENT])
def test_quantile_slots_are_a_quantile_of_the_hand_counted_batch_minimum(spec):
    grid, batch, q = (4, 8, 8), 4, 0.25
    gen = MultiBlockMaskGenerator(grid, spec, pad=True, slots=q)
    g, counts = torch.Generator().manual_seed(SLOT_SEED), []
    for _ in range(SLOT_DRAWS):  # the reference: the smallest real context / target count of each batch, by hand
        target = gen.draw(batch, g)
        counts.append((min(int((~row).sum()) for row in target), min(int(row.sum()) for row in target)))
    k = math.ceil(q * SLOT_DRAWS)
    ctx_slots, tgt_slots = gen.slots(batch)
    assert ctx_slots == sorted(c for c, _ in counts)[k - 1]
    if spec.full_complement:  # room for the whole complement of the fewest context a draw keeps
        assert math.prod(grid) - min(ctx_slots, min(c for c, _ in counts)) <= tgt_slots < math.prod(grid)
    else:
        assert tgt_slots == sorted(t for _, t in counts)[k - 1]
    # reproducible: a new generator of the same config gives the same slots; a bigger batch fewer
    assert MultiBlockMaskGenerator(grid, spec, pad=True, slots=q).slots(batch) == (ctx_slots, tgt_slots)
    assert gen.slots(16)[0] < gen.slots(1)[0]


@pytest.mark.parametrize("spec", [*V_JEPA2_MASKS, COMPLEMENT])
def test_quantile_lists_keep_the_smaller_of_the_batch_minimum_and_the_slots(spec):
    grid, batch, numel = (4, 8, 8), 4, 256
    padded_gen = MultiBlockMaskGenerator(grid, spec, pad=True, slots=0.5)
    plain_gen = MultiBlockMaskGenerator(grid, spec)
    ctx_slots, tgt_slots = padded_gen.slots(batch)
    cut = padded = 0
    for seed in range(40):
        ctx, tgt = padded_gen(batch, torch.Generator().manual_seed(seed))
        plain_ctx, plain_tgt = plain_gen(batch, torch.Generator().manual_seed(seed))
        target = plain_gen.draw(batch, torch.Generator().manual_seed(seed))  # the same draw, as boolean masks
        assert ctx.shape == (batch, ctx_slots) and tgt.shape == (batch, tgt_slots)
        keep_ctx = min(min(int((~row).sum()) for row in target), ctx_slots)
        keep_tgt = min(min(int(row.sum()) for row in target), tgt_slots)
        cut += keep_ctx < plain_ctx.shape[1]
        padded += keep_ctx < ctx_slots
        for i in range(batch):
            real_ctx, real_tgt = ctx[i][ctx[i] >= 0].tolist(), tgt[i][tgt[i] >= 0].tolist()
            assert len(real_ctx) == keep_ctx and set(real_ctx) <= set(plain_ctx[i].tolist())
            assert all(not target[i, j] for j in real_ctx)
            if spec.full_complement:  # the target is everything the kept context leaves out
                assert sorted(real_tgt) == sorted(set(range(numel)) - set(real_ctx))
            else:
                assert len(real_tgt) == keep_tgt and set(real_tgt) <= set(plain_tgt[i].tolist())
                assert all(target[i, j] for j in real_tgt)
            assert (ctx[i][len(real_ctx):] == -1).all() and (tgt[i][len(real_tgt):] == -1).all()
    assert cut and padded  # both sides of the quantile were drawn


def test_a_bad_slots_rule_is_refused():
    for bad in (0, 1.5, "tight", True, None):
        with pytest.raises(ValueError, match=r"^static_slots=.* is not allowed; allowed values are bound"):
            MaskCollator((4, 4, 4), V_JEPA2_MASKS, pad=True, slots=bad)


def test_a_mask_config_without_context_is_refused_naming_the_key():
    with pytest.raises(ConfigError, match=r"^mask.spatial_scale=\[1.0, 1.0\] with temporal_scale=\[1.0, 1.0\] .* "
                                          r"predicts every token of the 4x4x4 token grid in every draw"):
        MaskCollator((4, 4, 4), [MaskSpec(num_blocks=1, spatial_scale=(1.0, 1.0), aspect_ratio=(1.0, 1.0))], pad=True)


def test_the_collate_pads_and_the_flop_counter_counts_real_tokens():
    module = build_module("full", "2.0")
    grid = module.encoder.default_grid
    collate = MaskingCollate(grid, V_JEPA2_MASKS, seed=0, pad=True, slots="bound")
    batch = collate([{"video": torch.randn(3, FRAMES, CROP, CROP), "index": i} for i in range(BATCH)])
    plain = MaskCollator(grid, V_JEPA2_MASKS)(BATCH, torch.Generator().manual_seed(0))
    shape = tuple(batch["video"].shape)
    strip = [[m[m >= 0].view(BATCH, -1) for m in masks] for masks in (batch["masks_enc"], batch["masks_pred"])]
    assert [m.shape[1] for m in batch["masks_enc"]] == [g.slots(BATCH)[0] for g in collate.masks.generators]
    assert train_step_flops(module.encoder, module.predictor, module.target_encoder, shape, *strip).total == \
        train_step_flops(module.encoder, module.predictor, module.target_encoder, shape, batch["masks_enc"],
                         batch["masks_pred"]).total
    assert plain[0][0].shape != batch["masks_enc"][0].shape


def test_static_masks_follow_compile_unless_set_and_bad_values_are_refused(tmp_path):
    from stjepa.preflight import check_train_config
    from stjepa.train_job import static_masks
    from train_helpers import compose_config

    assert not static_masks(compose_config(tmp_path))
    assert static_masks(compose_config(tmp_path, ["compile=true"]))
    assert not static_masks(compose_config(tmp_path, ["compile=true", "static_masks=false"]))
    assert static_masks(compose_config(tmp_path, ["static_masks=true"]))
    with pytest.raises(ConfigError, match=r"^static_masks='yes' is not allowed; allowed values are true, false"):
        check_train_config(compose_config(tmp_path, ["static_masks=yes"]))
    for bad in ("0", "1.5", "tight", "true"):
        with pytest.raises(ConfigError, match=r"^static_slots=.* is not allowed; allowed values are bound .* or a "
                                              r"quantile q with 0 < q <= 1"):
            check_train_config(compose_config(tmp_path, [f"static_slots={bad}"]))
    for good in ("bound", "0.25", "1"):
        check_train_config(compose_config(tmp_path, [f"static_slots={good}"]))
    with pytest.raises(ConfigError, match=r"^mask.short_range.spatial_scale=\[1.0, 1.0\] .* predicts every token"):
        check_train_config(compose_config(tmp_path, ["mask.short_range.spatial_scale=[1.0,1.0]",
                                                     "mask.short_range.aspect_ratio=[1.0,1.0]"]))


def test_a_run_with_static_masks_trains_on_padded_batches(tmp_path, monkeypatch):
    from train_helpers import run_train

    shapes, rules = [], set()
    collate = MaskingCollate.__call__

    def recording(self, samples):
        batch = collate(self, samples)
        shapes.append([(tuple(m.shape), bool((m < 0).any())) for m in batch["masks_enc"]])
        rules.update(g.slots_rule for g in self.masks.generators)
        return batch

    monkeypatch.setattr(MaskingCollate, "__call__", recording)
    metrics = run_train(tmp_path, "static_masks=true", "static_slots=bound", "trainer.max_steps=2")
    assert metrics["global_step"] == 2
    assert len({tuple(s for s, _ in batch) for batch in shapes}) == 1  # one shape for every batch
    assert any(padded for batch in shapes for _, padded in batch)
    assert rules == {"bound"}  # the key reaches the collate
