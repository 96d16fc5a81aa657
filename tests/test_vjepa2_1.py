"""V-JEPA 2.1 networks, loss and files against the official code's own outputs.

The fixture ``fixtures/vjepa2_1_official_tiny.pt`` was written by running the official 2.1
classes (facebookresearch/vjepa2 ``app/vjepa_2_1``, as synced in zenlm/vjepa2 @ eceaa82) on the
CPU: an encoder of width 32, depth 12 (taps 2, 5, 8, 11), 2 heads, 64 px, 4 frames, with
``img_temporal_dim_size=1``, ``interpolate_rope=True`` and modality embeddings, and a predictor
of width 16, depth 4 (4 levels), 2 heads, 2 mask tokens, ``return_all_tokens``. After
initialisation the mask tokens, modality embeddings and LayerNorm affines were randomised and
the qkv weights scaled by 12 (so positions visibly change the outputs). It holds their state
dicts, inputs (two clips, two images, block masks), the outputs of both networks, the loss
terms transcribed from the official train.py (non-affine per-level LN targets, the official
``compute_mask_distance`` weights, L_pred and L_ctx) and the official lambda schedule. None of
it is computed by stjepa code.
"""
import json
from pathlib import Path

import pytest
import torch

from stjepa.data.synthetic import DIRECTIONS
from stjepa.errors import CheckpointError
from stjepa.losses import ContextLoss, context_weights, jepa_loss, level_norm
from stjepa.models import ArgumentError, VisionTransformer, VisionTransformerPredictor, vit
from stjepa.models.grid import gather_tokens
from stjepa.models.versions import GENERATIONS
from stjepa.probe_module import MultiHeadProbe
from stjepa.weights import export_official, load_official, load_pretraining_weights
from train_helpers import read_metrics, run_script, run_train, series

FIXTURE = Path(__file__).parent / "fixtures" / "vjepa2_1_official_tiny.pt"
TOL = dict(atol=2e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def official():
    return torch.load(FIXTURE, weights_only=True)


def tiny_encoder(**kw):
    return VisionTransformer(img_size=64, num_frames=4, embed_dim=32, depth=12, num_heads=2, version="2.1", **kw)


def tiny_predictor(**kw):
    return VisionTransformerPredictor(img_size=64, num_frames=4, embed_dim=32, predictor_embed_dim=16, depth=4,
                                      num_heads=2, num_mask_tokens=2, version="2.1", **kw)


@pytest.fixture(scope="module")
def networks(official):
    enc, pred = tiny_encoder().eval(), tiny_predictor().eval()
    enc.load_state_dict(official["encoder_state_dict"], strict=True)
    pred.load_state_dict(official["predictor_state_dict"], strict=True)
    return enc, pred


@torch.no_grad()
def test_the_encoder_gives_the_official_outputs(official, networks):
    enc, _ = networks
    i, o = official["inputs"], official["outputs"]
    torch.testing.assert_close(enc(i["video"]), o["enc_video_infer"], **TOL)  # the last level
    torch.testing.assert_close(enc(i["video"], levels="all"), o["enc_video_train_hier"], **TOL)
    torch.testing.assert_close(enc(i["video"], i["masks_enc_video"], levels="all"), o["enc_video_ctx_hier"], **TOL)
    # images through the 1-frame tokenizer, given as 1-frame clips or as (B, C, H, W)
    torch.testing.assert_close(enc(i["image"]), o["enc_image_infer"], **TOL)
    torch.testing.assert_close(enc(i["image"][:, :, 0], levels="all"), o["enc_image_train_hier"], **TOL)
    torch.testing.assert_close(enc(i["image"], i["masks_enc_image"], levels="all"), o["enc_image_ctx_hier"], **TOL)
    # chosen levels are those chunks of the concatenation
    D = enc.embed_dim
    torch.testing.assert_close(enc(i["video"], levels=[0, 2]),
                               torch.cat([o["enc_video_train_hier"][..., :D], o["enc_video_train_hier"][..., 2 * D:3 * D]],
                                         -1), **TOL)


@torch.no_grad()
def test_the_predictor_gives_the_official_target_and_context_outputs(official, networks):
    _, pred = networks
    i, o = official["inputs"], official["outputs"]
    targets, context = pred(o["enc_video_ctx_hier"], i["masks_enc_video"], i["masks_pred_video"], mask_index=0,
                            return_context=True)
    torch.testing.assert_close(targets, o["pred_video_target"], **TOL)
    torch.testing.assert_close(context, o["pred_video_context"], **TOL)
    targets, context = pred(o["enc_image_ctx_hier"], i["masks_enc_image"], i["masks_pred_image"], mask_index=1,
                            grid=(1, 4, 4), modality="image", return_context=True)
    torch.testing.assert_close(targets, o["pred_image_target"], **TOL)
    torch.testing.assert_close(context, o["pred_image_context"], **TOL)


@torch.no_grad()
def test_rope_details_matter_to_the_comparison(official):
    """The fixture tells 2.1's RoPE from 2.0's and from no interpolation (the comparison can fail)."""
    i, o = official["inputs"], official["outputs"]
    enc = tiny_encoder(interpolate_rope=False).eval()
    enc.load_state_dict(official["encoder_state_dict"])
    assert (enc(i["video"]) - o["enc_video_infer"]).abs().max() > 1e-2
    pred = tiny_predictor(interpolate_rope=False).eval()
    pred.load_state_dict(official["predictor_state_dict"])
    out = pred(o["enc_video_ctx_hier"], i["masks_enc_video"], i["masks_pred_video"])
    assert (out - o["pred_video_target"]).abs().max() > 1e-3


def test_the_loss_terms_match_the_official_training_loss(official):
    i, o = official["inputs"], official["outputs"]
    for tag, grid in (("video", (2, 4, 4)), ("image", (1, 4, 4))):
        mx, my = i[f"masks_enc_{tag}"], i[f"masks_pred_{tag}"]
        h = level_norm(o[f"enc_{tag}_train_hier"], 4)
        torch.testing.assert_close(h, o[f"loss_{tag}_target_h"], **TOL)
        weights = context_weights(mx, my, grid)
        torch.testing.assert_close(1 / weights, o[f"loss_{tag}_dist_weights_d"], **TOL)
        pred = jepa_loss([o[f"pred_{tag}_target"]], [gather_tokens(h, my)])
        ctx = jepa_loss([o[f"pred_{tag}_context"]], [gather_tokens(h, mx)], weights=[weights])
        ctx_plain = jepa_loss([o[f"pred_{tag}_context"]], [gather_tokens(h, mx)])
        torch.testing.assert_close(pred, o[f"loss_{tag}_pred"], **TOL)
        torch.testing.assert_close(ctx, o[f"loss_{tag}_ctx_weighted"], **TOL)
        torch.testing.assert_close(ctx_plain, o[f"loss_{tag}_ctx_unweighted"], **TOL)
    schedule = ContextLoss(0.5, [15000, 30000], True)
    for step, lam in official["outputs"]["lambda_sched_samples"].tolist():
        assert schedule.weight_at(int(step)) == pytest.approx(lam)


def test_distance_weights_by_hand_and_for_a_batch_of_one():
    # grid 2 x 3 x 3; target at (0, 0, 0); context at (0, 0, 1): d 1, (1, 2, 2): d 3, (0, 2, 2): d sqrt 8
    context, target = torch.tensor([[1, 17, 8]]), torch.tensor([[0]])
    weights = context_weights(context, target, (2, 3, 3))
    assert weights.shape == (1, 3)  # upstream's squeeze breaks here
    torch.testing.assert_close(weights, torch.tensor([[1.0, 3 ** -0.5, 8 ** -0.25]]))


def test_taps_follow_the_official_table_and_spread_evenly_elsewhere():
    level_taps = GENERATIONS["2.1"].taps
    assert [level_taps(d) for d in (12, 24, 40, 48)] == [(2, 5, 8, 11), (5, 11, 17, 23), (9, 19, 29, 39),
                                                         (11, 23, 37, 47)]
    assert level_taps(32) == (7, 15, 23, 31)  # ViT-H: upstream crashes
    assert vit("vit_huge", img_size=32, num_frames=2, version="2.1", depth=32, embed_dim=64, num_heads=4).taps == (
        7, 15, 23, 31)


def test_a_one_cell_axis_keeps_finite_positions():
    """Upstream's interpolate_rope divides by zero on a 1-cell axis (NaN outputs)."""
    assert bool(torch.load(FIXTURE, weights_only=True)["outputs"]["enc_image_H1_has_nan"])
    enc = tiny_encoder().eval()
    with torch.no_grad():
        assert torch.isfinite(enc(torch.randn(1, 3, 1, 16, 64))).all()


@pytest.mark.parametrize("settings, message", [
    (dict(levels="some"), "levels='some' is not allowed; this encoder has 4 level(s)"),
    (dict(levels=[4]), "levels=[4] is not allowed"),
])
def test_bad_levels_are_refused(settings, message):
    with pytest.raises(ArgumentError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
                       .replace("]", r"\]")):
        tiny_encoder()(torch.randn(1, 3, 4, 64, 64), **settings)


def test_a_bad_context_ramp_is_refused():
    with pytest.raises(ArgumentError, match=r"^context_ramp=\[30, 10\] must be \[start, end\] steps"):
        ContextLoss(0.5, [30, 10], True)


def test_official_files_load_strictly_and_export_back(official, tmp_path):
    """A 2.1 training checkpoint (module.backbone. prefixes) and a distilled-style hub file
    (ema_encoder) load into 2.1 networks; 2.0 networks refuse them in one sentence."""
    i, o = official["inputs"], official["outputs"]
    prefixed = {part: {"module.backbone." + k: v for k, v in official[f"{name}_state_dict"].items()}
                for part, name in (("encoder", "encoder"), ("target_encoder", "encoder"), ("predictor", "predictor"))}
    training = tmp_path / "latest.pt"
    torch.save({**prefixed, "epoch": 3}, training)
    hub = tmp_path / "hub.pt"
    torch.save({"ema_encoder": official["encoder_state_dict"], "predictor": official["predictor_state_dict"]}, hub)
    size = dict(img_size=64, num_frames=4, embed_dim=32, depth=12, num_heads=2)
    pred_args = dict(predictor_embed_dim=16, depth=4, num_heads=2)
    for path in (training, hub):
        m = load_official(path, "vit_tiny", encoder=size, predictor=pred_args,
                          keys=("target_encoder", "predictor"))
        enc, pred = m["target_encoder"].eval(), m["predictor"].eval()
        assert (enc.version, pred.version, pred.levels) == ("2.1", "2.1", 4)
        with torch.no_grad():
            torch.testing.assert_close(enc(i["video"]), o["enc_video_infer"], **TOL)
            torch.testing.assert_close(pred(o["enc_video_ctx_hier"], i["masks_enc_video"], i["masks_pred_video"]),
                                       o["pred_video_target"], **TOL)
    # export writes the official layout back, key for key
    exported = tmp_path / "export.pt"
    export_official(exported, enc, pred, enc)
    back = torch.load(exported, weights_only=True)
    assert set(back["predictor"]) == set(prefixed["predictor"])
    assert all(torch.equal(back["encoder"][k], v) for k, v in prefixed["encoder"].items())
    # a 2.1 file into 2.0 networks, and a 2.0 file into 2.1 networks
    old_enc, old_pred, old_tgt = (vit("vit_tiny", **size), VisionTransformerPredictor(
        img_size=64, num_frames=4, embed_dim=32, **pred_args), vit("vit_tiny", **size))
    with pytest.raises(CheckpointError, match=r"^'encoder' in .*latest.pt' is a V-JEPA 2.1 network but the model is "
                                              r"V-JEPA 2.0; set model.version=2.1 to load it.$"):
        load_pretraining_weights(training, old_enc, old_pred, old_tgt)
    export_official(tmp_path / "v20.pt", old_enc, old_pred, old_tgt)
    with pytest.raises(CheckpointError, match="is a V-JEPA 2.0 network but the model is V-JEPA 2.1"):
        load_pretraining_weights(tmp_path / "v20.pt", tiny_encoder(), tiny_predictor(), tiny_encoder())


def test_a_one_level_predictor_with_a_teacher_width_loads_from_its_file(tmp_path):
    """The distilled 2.1 ViT-B/L hub predictors: one level, projecting to the teacher's width."""
    student = tiny_predictor(levels=1, out_embed_dim=48)
    assert student.predictor_proj.out_features == 48 and student.predictor_embed.in_features == 32
    path = tmp_path / "dist.pt"
    torch.save({"ema_encoder": tiny_encoder().state_dict(), "predictor": student.state_dict()}, path)
    m = load_official(path, "vit_tiny", encoder=dict(img_size=64, num_frames=4, embed_dim=32, depth=12, num_heads=2),
                      predictor=dict(predictor_embed_dim=16, depth=4, num_heads=2), keys=("predictor",))
    assert (m["predictor"].levels, m["predictor"].predictor_proj.out_features) == (1, 48)


@pytest.mark.slow
def test_a_tiny_2_1_model_trains_with_both_loss_terms(tmp_path):
    """A few dozen CPU steps of experiment=vjepa2_1_tiny with the ramp moved to steps [8, 16]:
    both terms finite, lambda as configured, the context loss falling once lambda > 0."""
    run_train(tmp_path, "experiment=vjepa2_1_tiny", "trainer.max_steps=40", "trainer.val_check_interval=20",
              "loss.context_ramp=[8,16]")
    rows = read_metrics(tmp_path)
    lam = dict(series(rows, "train/lambda"))
    pred, ctx = dict(series(rows, "train/loss_pred")), dict(series(rows, "train/loss_ctx"))
    assert all(torch.isfinite(torch.tensor(list(pred.values()) + list(ctx.values()))))
    for step, value in lam.items():
        assert value == pytest.approx(0.0 if step < 8 else min(0.5 * (step - 8) / 8, 0.5))
    early = [ctx[s] for s in sorted(ctx) if 8 <= s < 16]
    late = [ctx[s] for s in sorted(ctx)[-5:]]
    assert sum(late) / len(late) < sum(early) / len(early)
    total = dict(series(rows, "train/loss"))
    for step in total:
        assert total[step] == pytest.approx(pred[step] + lam[step] * ctx[step], rel=1e-4)


@torch.no_grad()
def test_the_probe_reads_the_last_level_or_the_chosen_ones(official, networks):
    enc, _ = networks
    i, o = official["inputs"], official["outputs"]
    last = MultiHeadProbe(enc, num_classes=3, lrs=[1e-3], weight_decays=[0.0], num_heads=2)
    every = MultiHeadProbe(enc, num_classes=3, lrs=[1e-3], weight_decays=[0.0], num_heads=2, levels="all")
    torch.testing.assert_close(last.features(i["video"])[0], o["enc_video_infer"], **TOL)
    torch.testing.assert_close(every.features(i["video"])[0], o["enc_video_train_hier"], **TOL)
    assert every.heads[0].pooler.query_tokens.shape[-1] == 4 * enc.embed_dim


@pytest.mark.slow
def test_probe_py_probes_a_2_1_checkpoint_on_all_levels(tmp_path):
    run_train(tmp_path / "pre", "experiment=vjepa2_1_tiny", "trainer.max_steps=2")
    ckpt = tmp_path / "pre" / "checkpoints" / "last.ckpt"
    out = run_script("probe.py", f"ckpt={ckpt}", "probe.levels=all", "trainer.max_steps=2",
                     "trainer.val_check_interval=2", "data.num_workers=0", "data.val_size=8", "probe.lrs=[1e-3]",
                     "probe.weight_decays=[0.01]", "print_config=false", "callbacks.rich_progress_bar=null",
                     f"hydra.run.dir={tmp_path / 'probe'}")
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads((tmp_path / "probe" / "results.json").read_text())
    assert results["settings"]["probe"]["levels"] == "all" and results["num_classes"] == DIRECTIONS
    top1, top5 = results["best"]["top1"], results["best"]["top5"]
    # a fraction of the 8 validation clips, by hand: k / 8
    assert 0.0 <= top1 <= top5 <= 1.0 and abs(top1 * 8 - round(top1 * 8)) < 1e-6
    bad = run_script("probe.py", f"ckpt={ckpt}", "probe.levels=[7]", "print_config=false",
                     f"hydra.run.dir={tmp_path / 'bad'}")
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1].startswith("error: probe.levels=[7] is not allowed; this encoder has 4 "
                                                          "level(s)")


def test_init_from_an_official_2_1_file_starts_from_its_weights(official, tmp_path):
    """model.init_from anneals from a 2.1 training file; a predictor file with another level
    count is refused in one sentence."""
    from stjepa.preflight import instantiate_checked as instantiate
    from train_helpers import compose_config

    path = tmp_path / "latest.pt"
    torch.save({part: {"module.backbone." + k: v for k, v in official[f"{name}_state_dict"].items()}
                for part, name in (("encoder", "encoder"), ("target_encoder", "encoder"), ("predictor", "predictor"))},
               path)
    tiny = ["model.version=2.1", "model.embed_dim=32", "model.depth=12", "model.num_heads=2", "model.pred_depth=4",
            "model.pred_embed_dim=16", "model.pred_num_heads=2", "model.num_mask_tokens=2", "data.crop_size=64",
            "data.frames_per_clip=4"]
    module = instantiate(compose_config(tmp_path, [*tiny, f"model.init_from={path}"]).module, _convert_="all")
    for name, net in (("encoder", module.target_encoder), ("predictor", module.predictor)):
        for k, v in official[f"{name}_state_dict"].items():
            assert torch.equal(net.state_dict()[k], v), k
    one_level = tiny_predictor(levels=1)
    torch.save({"encoder": official["encoder_state_dict"], "predictor": one_level.state_dict()}, path)
    with pytest.raises(CheckpointError, match=r"'predictor' in .* predicts 1 level\(s\) but the model's predictor "
                                              r"predicts 4"):
        instantiate(compose_config(tmp_path, [*tiny, f"model.init_from={path}"]).module, _convert_="all")


def test_a_2_1_file_whose_predictor_is_shallower_than_the_given_depth_is_refused(tmp_path):
    """facebookresearch/vjepa2 #149 on the 2.1 layout: the ViT-L file held a 12-block predictor
    while its config said 24, and non-strict loading left the other blocks random. Here a 4-block
    predictor asked for as 8 blocks: one sentence with the file's number; asked for nothing, the
    file's depth, levels and mask tokens are built and every weight is the file's."""
    torch.manual_seed(0)
    source = tiny_predictor()
    path = tmp_path / "hub.pt"
    torch.save({"ema_encoder": tiny_encoder().state_dict(), "predictor": source.state_dict()}, path)
    with pytest.raises(CheckpointError, match=r"^predictor\['depth'\]=8 but the predictor in checkpoint file "
                                              r".*hub.pt' has 4 blocks; give predictor\['depth'\]=4 \(the file "
                                              r"fixes it\).$"):
        load_official(path, encoder=dict(num_heads=2), predictor=dict(depth=8, num_heads=2), keys=("predictor",))
    loaded = load_official(path, encoder=dict(num_heads=2), predictor=dict(num_heads=2), keys=("predictor",))["predictor"]
    assert (loaded.depth, loaded.levels, len(loaded.mask_tokens), loaded.version) == (4, 4, 2, "2.1")
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in source.state_dict().items())
