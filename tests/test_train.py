"""train.py end to end on CPU: both attention kinds, multirun, learning, resume, W&B, bad configs."""
import glob
import os

import pytest
import torch
from omegaconf import OmegaConf

from train_helpers import (FAST, ROOT, compose_config, exit_in_process, read_metrics, run_script, run_train, series,
                           shape_only_official_file)
from wandb_records import summarize


ATTENTION_PRESETS = sorted(p.stem for p in (ROOT / "conf" / "attention").glob("*.yaml"))


@pytest.mark.parametrize("attention", ATTENTION_PRESETS)
def test_train_few_steps_writes_checkpoints(tmp_path, attention):
    """Every preset in conf/attention trains on the CPU default, or, made for a larger grid (ViT-L at
    256 px, 16 frames), is refused there with one sentence naming an attention key and accepted at
    the size it is made for."""
    from stjepa.preflight import ConfigError, check_train_config

    cfg = compose_config(tmp_path, [*FAST, f"attention={attention}"])
    try:
        check_train_config(cfg)
    except ConfigError as exc:
        assert str(exc).startswith("attention."), exc
        check_train_config(compose_config(tmp_path, [*FAST, f"attention={attention}", "model=vit_large",
                                                     "data.crop_size=256", "data.frames_per_clip=16"]))
        return
    metrics = run_train(tmp_path, f"attention={attention}")
    assert metrics["global_step"] == 4
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 4
    assert ckpt["hyper_parameters"]["attention"]["temporal_splits"] == cfg.attention.temporal_splits
    official = torch.load(tmp_path / "checkpoints" / "vjepa2_official.pt")
    assert set(official) >= {"encoder", "predictor", "target_encoder"}
    assert "module.backbone.blocks.0.attn.qkv.weight" in official["target_encoder"]
    rows = read_metrics(tmp_path)
    ratio = series(rows, "flops/attention_ratio")[0][1]
    assert ratio == 1.0 if attention == "full" else ratio < 1.0  # area attention does less attention work
    for key in ("train/lr", "train/wd", "train/ema_momentum", "perf/step_time_s", "perf/clips_per_s",
                "perf/tokens_per_s", "perf/peak_memory_gib", "train/visible_tokens", "flops/attention_if_full"):
        assert series(rows, key), key


@pytest.mark.slow
def test_train_py_as_a_subprocess(tmp_path):
    out = run_script("train.py", *FAST, "trainer.max_steps=2", "attention=area_2x2", f"hydra.run.dir={tmp_path}")
    assert out.returncode == 0, out.stderr[-3000:]
    # what the command line asked for is what ran: 2 steps of 2x2 spatial areas, in the
    # checkpoint, in the saved config and in the training log
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 2
    saved = ckpt["hyper_parameters"]["attention"]
    assert (saved["kind"], saved["temporal_splits"], saved["height_splits"], saved["width_splits"]) == ("area", 1, 2, 2)
    config = OmegaConf.load(tmp_path / ".hydra" / "config.yaml")
    assert config.attention.height_splits == 2 and config.trainer.max_steps == 2
    assert [s for s, _ in series(read_metrics(tmp_path), "train/loss")] == [0, 1]


@pytest.mark.slow
def test_multirun_over_spatial_splits(tmp_path):
    # run from another folder holding a .env: its values reach W&B; the sweep shares one group
    (tmp_path / ".env").write_text("WANDB_PROJECT=from-dotenv\nWANDB_API_KEY=\n")
    sweep = tmp_path / "sweep"
    out = run_script(str(ROOT / "train.py"), "-m", "attention.spatial_splits=1,2", *FAST, "trainer.max_steps=2",
                     "logger=many", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    groups = set()
    for job in ("0", "1"):
        ckpt = torch.load(sweep / job / "checkpoints" / "last.ckpt", weights_only=False)
        assert ckpt["global_step"] == 2
        assert ckpt["hyper_parameters"]["attention"]["spatial_splits"] == int(job) + 1
        (run_file,) = glob.glob(str(sweep / job / "wandb" / "offline-run-*" / "*.wandb"))
        _, _, run = summarize(run_file)
        assert run.project == "from-dotenv"
        groups.add(run.run_group)
    assert len(groups) == 1 and groups.pop().startswith("train-")


@pytest.mark.slow
def test_short_run_learns_without_collapse(tmp_path):
    run_train(tmp_path, "trainer.max_steps=80", "trainer.val_check_interval=40", "trainer.limit_val_batches=4",
              "attention=area_2x2")
    rows = read_metrics(tmp_path)
    loss = [v for _, v in series(rows, "train/loss")]
    first, last = sum(loss[:5]) / 5, sum(loss[-5:]) / 5
    assert last < 0.7 * first, (first, last)
    val = [v for _, v in series(rows, "val/loss")]
    assert val[-1] < val[0]
    # collapse would make every token's features equal: std across tokens -> 0
    assert min(v for _, v in series(rows, "train/feature_std")[-10:]) > 0.3
    assert series(rows, "val/feature_std")[-1][1] > 0.3


@pytest.mark.slow
def test_resume_gives_the_same_losses_and_weights(tmp_path):
    # 6 steps in one go, keeping a checkpoint every 3 steps; then a new run resumed from the
    # step-3 checkpoint (mid-epoch) must repeat steps 3..5 exactly
    common = ["trainer.max_steps=6", "trainer.val_check_interval=100", "attention=area_2x2", "optim.warmup_steps=2",
              "callbacks.model_checkpoint.every_n_train_steps=3", "callbacks.model_checkpoint.monitor=null",
              "callbacks.model_checkpoint.save_top_k=-1"]
    run_train(tmp_path / "straight", *common)
    halfway = tmp_path / "straight" / "checkpoints" / "step000003.ckpt"
    assert torch.load(halfway, weights_only=False)["global_step"] == 3
    run_train(tmp_path / "resumed", *common, f"ckpt_path={halfway}")
    straight = series(read_metrics(tmp_path / "straight"), "train/loss")
    resumed = series(read_metrics(tmp_path / "resumed"), "train/loss")
    assert [s for s, _ in straight] == list(range(6)) and [s for s, _ in resumed] == [3, 4, 5]
    assert [v for _, v in resumed] == [v for _, v in straight[3:]]
    a = torch.load(tmp_path / "straight" / "checkpoints" / "last.ckpt", weights_only=False)
    b = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=False)
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    moments = [s["exp_avg"] for s in a["optimizer_states"][0]["state"].values()]
    moments_b = [s["exp_avg"] for s in b["optimizer_states"][0]["state"].values()]
    assert all(torch.equal(x, y) for x, y in zip(moments, moments_b))


def test_resume_true_picks_the_newest_last_ckpt_of_the_same_command(tmp_path):
    from stjepa.train_job import find_resume_checkpoint

    cfg = compose_config(tmp_path, ["resume=true", "attention=area_2x2"])
    assert find_resume_checkpoint(cfg) is None  # nothing yet: a fresh start
    runs = tmp_path / "logs" / "train"
    older = runs / "runs" / "a" / "checkpoints" / "last.ckpt"
    newer = runs / "multiruns" / "b" / "0" / "checkpoints" / "last.ckpt"
    other = runs / "runs" / "c" / "checkpoints" / "last.ckpt"  # newest, but another command
    for i, (p, overrides) in enumerate(((older, "[attention=area_2x2]"), (newer, "[attention=area_2x2, resume=true]"),
                                        (other, "[attention=area_2x2, seed=1]"))):
        p.parent.mkdir(parents=True)
        p.write_bytes(b"x")
        os.utime(p, (1000 + i, 1000 + i))
        (p.parents[1] / ".hydra").mkdir()
        (p.parents[1] / ".hydra" / "overrides.yaml").write_text(overrides)
    assert find_resume_checkpoint(cfg) == str(newer)
    own = tmp_path / "checkpoints" / "last.ckpt"  # this run's own directory comes first
    own.parent.mkdir()
    own.write_bytes(b"x")
    assert find_resume_checkpoint(cfg) == str(own)


def test_wandb_offline_run_holds_metrics_and_config(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    run_train(tmp_path, "logger=many", "attention=area_2x2", "tags=[smoke]")
    (run_file,) = glob.glob(str(tmp_path / "wandb" / "offline-run-*" / "*.wandb"))
    history, config, run = summarize(run_file)
    losses = [row["train/loss"] for row in history if "train/loss" in row]
    assert len(losses) == 4
    assert config["attention/height_splits"] == "2" and config["model/size"] == '"vit_tiny"'
    # one key per layout for W&B's grouping (the sweep workspace groups by it)
    assert config["layout/encoder"] == '"area-t1h2w2-L0:auto"' and config["layout/kind"] == '"area"'
    assert "attn:area-t1h2w2-L0:auto" in run.tags and "smoke" in run.tags


BAD_CONFIGS = [
    (["data.frames_per_clip=7"], "data.frames_per_clip=7 must be a multiple of model.tubelet_size=2."),
    (["data.crop_size=72"], "data.crop_size=72 must be a multiple of model.patch_size=16."),
    (["attention.spatial_splits=5"], "attention.spatial_splits=5 is more splits than the 4 grid cells of the shorter"),
    (["attention.spatial_splits=999"], "attention.spatial_splits=999 is more splits than the 4 grid cells"),
    (["attention.height_splits=5"], "attention.height_splits=5 is more splits than the 4 grid cells"),
    (["attention.temporal_splits=5"], "attention.temporal_splits=5 is more splits than the 4 grid cells"),
    (["attention=area_2x2", "attention.spatial_splits=3"],
     "attention.spatial_splits=3 and attention.height_splits=2 both set the height splits; give one of them."),
    (["attention=area_2x2", "attention.area_end=13"], "attention.area_start=0 / attention.area_end=13 do not fit a depth of 12"),
    (["attention=area_2x2", "attention.area_start=5", "attention.area_end=5"], "need 0 <= area_start < area_end <= 12"),
    (["attention.predictor.spatial_splits=2", "attention.predictor.area_end=9"],
     "attention.predictor.area_start=0 / attention.predictor.area_end=9 do not fit a depth of 4"),
    (["attention.predictor.height_splits=9"], "attention.predictor.height_splits=9 is more splits than the 4 grid"),
    (["attention.predictor.backend=fast"], "attention.predictor.backend='fast' is not known; allowed values are auto"),
    (["model.num_heads=5"], "model.embed_dim=192 is not divisible by model.num_heads=5."),
    (["model.pred_num_heads=5"], "model.pred_embed_dim=96 is not divisible by model.pred_num_heads=5."),
    (["data.batch_size=0"], "data.batch_size=0 is not allowed; allowed values are integers >= 1."),
    (["data.batch_size=64", "data.train_size=50"], "needs at least 64 training clips; data.train_size is 50."),
    (["trainer.devices=4", "data.train_size=16"], "data.batch_size=8 per device x 4 devices needs at least 32"),
    (["attention.backend=fast"], "attention.backend='fast' is not known; allowed values are auto, dense"),
    (["model.size=vit_mega"], "model.size='vit_mega' is not known; allowed values are vit_tiny"),
    (["optim.lr_schedule=step"], "optim.lr_schedule='step' is not known"),
    (["mask.short_range.num_blocks=0"], "mask.short_range.num_blocks must be an integer >= 1"),
    (["ckpt_path=/nope.ckpt"], "ckpt_path='/nope.ckpt' does not exist"),
    (["trainer.max_steps=abc"], "trainer.max_steps='abc' is not allowed; allowed values are integers >= -1."),
    (["seed=abc"], "seed='abc' is not allowed; allowed values are integers >= 0."),
    (["callbacks.nonfinite_guard.action=ignore"], "callbacks.nonfinite_guard.action='ignore' is not known"),
    (["callbacks.online_knn.every_n_train_steps=0"], "callbacks.online_knn.every_n_train_steps=0 is not allowed; "
                                                     "allowed values are integers >= 1."),
    (["callbacks.online_knn.temperature=-1"], "callbacks.online_knn.temperature=-1 is not allowed; give a number > 0"),
    (["callbacks.collapse_monitor.min_fraction=1.5"], "callbacks.collapse_monitor.min_fraction=1.5 is not allowed"),
    (["callbacks.collapse_monitor.action=halt"], "callbacks.collapse_monitor.action='halt' is not known; allowed "
                                                 "values are warn, stop."),
    (["data=kinetics"], "data.train_manifest must be set (it is marked ??? in the config)"),
    (["attention=nbhd_3x7x7"], "attention.window=[3, 7, 7] with attention.dilation=[1, 1, 1] does not fit the 4 cells "
                               "of the h axis"),
    (["attention=nbhd_3x3x3", "attention.window=[3,4,3]"], "attention.window=[3, 4, 3] needs odd sizes"),
    (["attention=nbhd_3x3x3", "attention.temporal_splits=2"],
     "attention.temporal_splits=2 is an area attention setting, which attention.kind='neighborhood' does not use."),
    (["attention=nbhd_3x3x3", "attention.backend=varlen"], "attention.backend='varlen' is not known; allowed values "
                                                           "are auto, dense, flex."),
    (["attention=nbhd_3x3x3", "attention.shift=true"],
     "attention.shift=True is an area attention setting, which attention.kind='neighborhood' does not use."),
    (["attention=sta_2x4x4"], "attention.tile_window=[3, 3, 3] does not fit the 2 tiles of the t axis"),
    (["attention=sta_2x1x1", "attention.tile=[3,1,1]"], "attention.tile=[3, 1, 1] does not divide the 4 cells of the t "
                                                        "axis; allowed sizes there divide 4."),
    (["attention=sta_2x1x1", "attention.tile_window=[1,5,3]"],
     "attention.tile_window=[1, 5, 3] does not fit the 4 tiles of the h axis; allowed window sizes there are odd"),
    (["attention.predictor.kind=neighborhood", "+attention.predictor.window=[3,5,3]"],
     "attention.predictor.window=[3, 5, 3] with attention.predictor.dilation=[1, 1, 1] does not fit"),
]


@pytest.mark.parametrize("overrides, message", BAD_CONFIGS)
def test_bad_configs_are_refused_with_one_sentence(tmp_path, overrides, message):
    from stjepa.preflight import ConfigError, check_train_config

    with pytest.raises(ConfigError) as info:
        check_train_config(compose_config(tmp_path, overrides))
    assert message in str(info.value)
    assert str(info.value).count(". ") == 0 and "\n" not in str(info.value)  # one sentence


@pytest.mark.parametrize("overrides, expected", [
    (["attention.height_splits=2"], (1, 2, 1)),  # on the default (full) layout: it must not be ignored
    (["attention.width_splits=4"], (1, 1, 4)),
    (["attention.spatial_splits=2"], (1, 2, 2)),
    (["attention=area_2x2", "attention.height_splits=4"], (1, 4, 2)),
    (["attention=area_2x2x2", "attention.temporal_splits=4"], (4, 2, 2)),
])
def test_every_split_override_takes_effect(tmp_path, overrides, expected):
    from hydra.utils import instantiate

    module = instantiate(compose_config(tmp_path, overrides).module, _convert_="all")
    s = module.encoder.attention.built_kind.splits
    assert (s.temporal, s.height, s.width) == expected
    assert any(module.encoder.attention_pattern)


@pytest.mark.slow
def test_height_splits_on_the_default_layout_trains_area_attention(tmp_path):
    """The exact command that used to train full attention with no word said."""
    out = run_script("train.py", "attention.height_splits=2", *FAST, "trainer.max_steps=1", f"hydra.run.dir={tmp_path}")
    assert out.returncode == 0, out.stderr[-3000:]
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["hyper_parameters"]["attention"]["height_splits"] == 2
    # a 4x4x4 grid cut in two along height: half the query-key pairs of full attention in area layers
    ratio = series(read_metrics(tmp_path), "flops/attention_ratio")[0][1]
    assert ratio < 1.0


BAD_COMMANDS = [  # (command line, last stderr line)
    (["attention.spatial_splits=5"], "error: attention.spatial_splits=5 is more splits than the 4 grid cells"),
    (["trainer.max_steps=abc"], "error: trainer.max_steps='abc' is not allowed"),
    (["seed=abc"], "error: seed='abc' is not allowed"),
    (["attenton=area_2x2"], "error: attenton is not a config group or key; did you mean attention=area_2x2?"),
    (["optm.lr=0.1"], "error: optm.lr is not a config group or key; did you mean optim.lr=0.1?"),
    (["module.on_nonfinite=skip"], "error: module.on_nonfinite is now callbacks.nonfinite_guard.action; write "
                                   "callbacks.nonfinite_guard.action=skip."),
    (["trainer=gpu"], "error: trainer.accelerator=gpu but this machine has no CUDA GPU"),
    (["data=kinetics"], "error: data.train_manifest must be set"),
]


@pytest.mark.parametrize("overrides, last_line", BAD_COMMANDS)
def test_bad_commands_exit_with_status_2_and_one_line(tmp_path, capsys, overrides, last_line):
    if overrides == ["trainer=gpu"] and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    status, err = exit_in_process(capsys, tmp_path, overrides)
    assert status == 2 and err.strip().splitlines()[-1].startswith(last_line), err


@pytest.mark.slow
@pytest.mark.parametrize("overrides, last_line", [BAD_COMMANDS[0], BAD_COMMANDS[3]])  # a config check, a typo
def test_bad_commands_exit_before_work_with_one_line_and_leave_no_run_directory(tmp_path, overrides, last_line):
    run_dir = tmp_path / "run"
    out = run_script("train.py", *overrides, f"hydra.run.dir={run_dir}")
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.strip().splitlines()[-1].startswith(last_line), out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    assert not run_dir.exists()


@pytest.mark.slow
def test_a_short_run_logs_metrics_quietly_and_resume_of_a_finished_run_says_so(tmp_path):
    logs = tmp_path / "logs"
    run, again_dir = logs / "train" / "runs" / "first", logs / "train" / "runs" / "again"
    quick = ["trainer.max_steps=3", "trainer.val_check_interval=100", "data.num_workers=0", "print_config=false",
             f"paths.log_dir={logs}"]
    out = run_script("train.py", *quick, f"hydra.run.dir={run}")
    assert out.returncode == 0, out.stderr[-3000:]
    shown = out.stdout + out.stderr
    for noise in ("Epoch 0/-2", "Total FLOPs", "💡 Tip", "in eval mode", "LeafSpec"):
        assert noise not in shown, noise
    # 3 steps < trainer.log_every_n_steps=5: training metrics are logged all the same
    assert series(read_metrics(run), "train/loss")
    again = run_script("train.py", *quick, "resume=true", f"hydra.run.dir={again_dir}")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "the run is complete" in again.stderr and "trainer.max_steps=3" in again.stderr
    assert not again_dir.exists()


EXPERIMENTS = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml"))
VJEPA2_1_EXPERIMENTS = [e for e in EXPERIMENTS if e.startswith("vjepa2_1_vit")]
VJEPA2_EXPERIMENTS = [e for e in EXPERIMENTS if e.startswith(("vjepa2_vit", "st_a2"))]


@pytest.mark.parametrize("experiment", VJEPA2_1_EXPERIMENTS)
def test_vjepa2_1_presets_carry_the_official_2_1_values(tmp_path, experiment):
    """configs/train_2_1/vit{l,g}16/{pretrain-256px-16f,cooldown-256px-64f}.yaml upstream."""
    from stjepa.preflight import ConfigError, check_train_config

    video = f"data.sources.video.train_manifest={__file__}"
    with pytest.raises(ConfigError, match=r"^data.sources.images.train_manifest must be set"):
        check_train_config(compose_config(tmp_path, [f"experiment={experiment}", video]))  # ImageNet is needed
    args = [f"experiment={experiment}", video, f"data.sources.images.train_root={tmp_path}"]
    cfg = compose_config(tmp_path, args)
    assert cfg.model.version == "2.1" and cfg.model.size == ("vit_giant" if "vitg" in experiment else "vit_large")
    assert (cfg.model.pred_depth, cfg.model.pred_embed_dim, cfg.model.pred_num_heads) == (24, 384, 12)
    cooldown = "cooldown" in experiment
    # half of the GPUs on images (72 each at 256 px), half on clips: 3072 clips per step in all
    world, video, images = cfg.trainer.devices * cfg.trainer.num_nodes, cfg.data.sources.video, cfg.data.sources.images
    assert (world, cfg.data.rank_ratio) == ((256 if cooldown else 128), 0.5)
    assert video.batch_size * world // 2 == 3072 and (images.batch_size, images.crop_size) == (72, 256)
    assert video._target_.endswith("ManifestDataModule") and images._target_.endswith("ImageDataModule")
    assert (video.frames_per_clip, video.crop_size, video.fps) == ((64 if cooldown else 16), 256, 4)
    assert cfg.optim.lr == 6e-4 and cfg.trainer.max_steps == (12000 if cooldown else 300000)
    assert dict(cfg.image_mask.images) == {
        "num_blocks": 10, "spatial_scale": [0.15, 0.15], "temporal_scale": [1.0, 1.0], "aspect_ratio": [0.75, 1.5],
        "max_temporal_keep": 1.0, "max_keep": None, "full_complement": False}
    assert dict(cfg.loss) == {"context_weight": 0.5, "context_ramp": [0, 0] if cooldown else [15000, 30000],
                              "distance_weighting": not cooldown}
    if cooldown:
        with pytest.raises(ConfigError, match="anneal=true needs pretrained weights"):
            check_train_config(cfg)
        weights = shape_only_official_file(tmp_path / "weights.pt", cfg)
        cfg = compose_config(tmp_path, [*args, f"model.init_from={weights}"])
    check_train_config(cfg)


@pytest.mark.parametrize("size", ["vit_huge", "vit_giant"])
def test_large_model_presets_inherit_vit_large(tmp_path, size):
    big, large = compose_config(tmp_path, [f"model={size}"]).model, compose_config(tmp_path, ["model=vit_large"]).model
    assert big.size == size
    assert {k: v for k, v in big.items() if k != "size"} == {k: v for k, v in large.items() if k != "size"}


def test_every_experiment_preset_is_covered():
    assert set(EXPERIMENTS) == set(VJEPA2_EXPERIMENTS) | set(VJEPA2_1_EXPERIMENTS) | {"synthetic_motion",
                                                                                      "synthetic_motion_micro",
                                                                                      "vjepa2_1_tiny"}


@pytest.mark.parametrize("experiment", VJEPA2_EXPERIMENTS)
def test_experiment_presets_compose_and_validate(tmp_path, experiment):
    from stjepa.preflight import ConfigError, check_train_config

    cfg = compose_config(tmp_path, [f"experiment={experiment}"])
    with pytest.raises(ConfigError, match=r"^data.train_manifest must be set"):
        check_train_config(cfg)  # the presets read real videos: the manifest must be given
    big = f"data.train_manifest={__file__}"
    cfg = compose_config(tmp_path, [f"experiment={experiment}", big])
    assert cfg.model.size == "vit_large" and cfg.data.batch_size * cfg.trainer.devices * cfg.trainer.num_nodes == 3072
    assert cfg.optim.ema[0] == cfg.optim.ema[1] == 0.99925 and cfg.optim.lr == 5.25e-4
    assert list(cfg.mask) == ["short_range", "long_range"] and cfg.mask.long_range.spatial_scale[0] == 0.7
    if cfg.anneal:
        with pytest.raises(ConfigError, match="anneal=true needs pretrained weights"):
            check_train_config(cfg)
        weights = shape_only_official_file(tmp_path / "weights.pt", cfg)
        cfg = compose_config(tmp_path, [f"experiment={experiment}", big, f"model.init_from={weights}"])
    check_train_config(cfg)
    assert cfg.model.size == "vit_large"  # a file of the preset's own architecture changes nothing
    if experiment.startswith("st_a2"):
        from stjepa.models import AttentionSettings
        from stjepa.networks import split_attention
        from omegaconf import OmegaConf

        enc, _ = split_attention(OmegaConf.to_container(cfg.attention))
        assert AttentionSettings.create(enc).local_layer_flags(24) == (True,) * 18 + (False,) * 6
        assert AttentionSettings.create(enc).built_kind.splits.num_areas == 4


def test_synthetic_motion_preset_needs_no_files_and_keeps_command_line_choices(tmp_path):
    from stjepa.preflight import check_train_config

    cfg = compose_config(tmp_path, ["experiment=synthetic_motion", "attention=area_2x2", "trainer.max_steps=7"])
    check_train_config(cfg)
    assert cfg.data._target_.endswith("SyntheticDataModule") and cfg.data.frame_hold == 2
    assert list(cfg.optim.ema) == [1.0, 1.0] and cfg.model.pred_depth == 1
    # the target stays random: the online signals read the trained encoder
    assert cfg.callbacks.online_knn.encoder_key == cfg.callbacks.collapse_monitor.encoder_key == "encoder"
    assert cfg.attention.height_splits == 2 and cfg.attention.width_splits == 2  # the command line wins
    assert cfg.trainer.max_steps == 7


def test_synthetic_motion_micro_is_synthetic_motion_with_the_verdict_overrides(tmp_path):
    """The preset is the command line of the issue-24 sweep in BENCHMARKS.md, written out."""
    from omegaconf import open_dict
    from stjepa.models.versions import generation
    from stjepa.preflight import check_train_config

    by_hand = ["model.embed_dim=96", "model.num_heads=2", "model.depth=6", "model.version=2.1",
               "loss.context_ramp=[0,0]", "loss.context_weight=0.5", "optim.lr=2e-3", "trainer.max_steps=1000",
               "trainer.val_check_interval=1000", "callbacks.online_knn=null"]
    preset = compose_config(tmp_path, ["experiment=synthetic_motion_micro", "attention=nbhd_3x3x3", "seed=2"])
    spelled = compose_config(tmp_path, ["experiment=synthetic_motion", "attention=nbhd_3x3x3", "seed=2", *by_hand])
    check_train_config(preset)
    assert preset.model.version == "2.1" and generation(preset.model.version) is generation(spelled.model.version)
    for cfg in (preset, spelled):  # the command line's 2.1 is a float; the presets write "2.1"
        with open_dict(cfg):
            cfg.model.version = str(cfg.model.version)
            del cfg.hydra  # the overrides themselves differ, and it names the preset
    assert OmegaConf.to_container(preset, resolve=True) == OmegaConf.to_container(spelled, resolve=True)
    assert preset.attention.kind == "neighborhood" and preset.seed == 2  # the command line still wins


def test_anneal_from_official_checkpoint_into_area_layers(tmp_path):
    from stjepa.weights import export_official
    from stjepa.models import VisionTransformerPredictor, vit

    torch.manual_seed(1)
    enc = vit("vit_tiny", img_size=64, num_frames=8)
    pred = VisionTransformerPredictor(img_size=64, num_frames=8, embed_dim=192, predictor_embed_dim=96, depth=4,
                                      num_heads=4)
    target = vit("vit_tiny", img_size=64, num_frames=8)
    export_official(tmp_path / "official.pt", enc, pred, target)
    cfg = compose_config(tmp_path, ["attention=area_2x2", f"model.init_from={tmp_path / 'official.pt'}"])
    from hydra.utils import instantiate

    module = instantiate(cfg.module, _convert_="all")
    assert any(module.encoder.attention_pattern)
    for mine, theirs in ((module.encoder, enc), (module.predictor, pred), (module.target_encoder, target)):
        for (k, a), b in zip(mine.state_dict().items(), theirs.state_dict().values()):
            assert torch.equal(a, b), k
    # and a short run starts from them
    metrics = run_train(tmp_path / "run", "attention=area_2x2", f"model.init_from={tmp_path / 'official.pt'}",
                        "trainer.max_steps=2")
    assert metrics["global_step"] == 2


def test_checkpoints_of_earlier_versions_still_load(tmp_path):
    """Before this layout, the module also took log_flops_every_n_steps and on_nonfinite, and the
    full preset stored spatial_splits: 1, which won over height_splits (so a run with
    attention.height_splits=2 trained full attention)."""
    from stjepa.weights import load_encoder

    run_train(tmp_path / "run", "trainer.max_steps=2")
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    hp = ckpt["hyper_parameters"]
    hp.update(log_flops_every_n_steps=10, on_nonfinite="stop")
    hp["attention"].update(spatial_splits=1, height_splits=2, width_splits=1)
    hp["attention"]["predictor"].update(spatial_splits=1, height_splits=1, width_splits=1)
    old = tmp_path / "old.ckpt"
    torch.save(ckpt, old)
    encoder = load_encoder(old, key="encoder")
    assert encoder.attention.tag == "full" and not any(encoder.attention_pattern)
    for k, v in encoder.state_dict().items():
        assert torch.equal(v, ckpt["state_dict"][f"encoder.{k}"]), k
    metrics = run_train(tmp_path / "resumed", "trainer.max_steps=3", f"ckpt_path={old}")
    assert metrics["global_step"] == 3


@pytest.mark.parametrize("value, mode", [(True, None), ("reduce-overhead", "reduce-overhead")])
def test_compile_true_or_a_mode_reaches_torch_compile_for_all_three_networks_and_the_loss(tmp_path, monkeypatch,
                                                                                          value, mode):
    from hydra.utils import instantiate

    seen = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: seen.append(kwargs) or fn)
    cfg = compose_config(tmp_path, [f"compile={str(value).lower()}"])
    module = instantiate(cfg.module, _convert_="all")
    module.configure_model()
    assert [kw.get("mode") for kw in seen] == [mode] * 4  # encoder, predictor, target encoder, loss
    assert all(kw.get("fullgraph") is True and kw.get("dynamic") is False for kw in seen)
