"""scripts/bench_train_step.py, scripts/profile_layers.py and scripts/bench_attention.py at tiny CPU sizes."""
import csv
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import bench_attention
import bench_train_step as bench
import pytest
import torch
import yaml
from omegaconf import OmegaConf

from stjepa.models import AreaSplits, AttentionSettings
from stjepa.utils import bench as common
from stjepa.utils.layer_profile import plot_layers
from train_helpers import CHILD_TIMEOUT

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--model", "vit_tiny", "--predictor-depth", "1", "--iters", "1", "--warmup", "0", "--threads", "1"]
LAYOUTS = ["full", "2x2x2", "2x2x1"]


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.fixture(autouse=True)
def one_thread():
    """One CPU thread: steadier times on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    """One bench_train_step run at two tiny sizes, three layouts, with the per-layer profile."""
    out = tmp_path_factory.mktemp("bench")
    threads = torch.get_num_threads()
    try:
        bench.main([*TINY, "--sizes", "64px/4f", "--crop", "64", "--frames", "8", "--batch", "2",
                    "--layouts", *LAYOUTS, "--csv", str(out / "step.csv"), "--profile",
                    "--profile-csv", str(out / "layers.csv"), "--profile-layers", "0", "11"])
    finally:
        torch.set_num_threads(threads)
    return read_csv(out / "step.csv"), read_csv(out / "layers.csv")


def tiny_model(**overrides):
    return common.model_settings("vit_tiny", pred_depth=2, depth=4, **overrides)


@pytest.mark.slow
def test_one_row_per_size_and_layout_with_ratio_to_full(bench_run):
    rows, _ = bench_run
    assert [(r["size"], r["layout"]) for r in rows] == [(s, lay) for s in ("64px/4f", "64px/8f") for lay in LAYOUTS]
    for r in rows:
        assert r["status"] == "ok" and r["batch"] == "2" and r["model"] == "vit_tiny" and r["predictor"] == "1x96"
        assert float(r["step_ms"]) > 0 and float(r["min_ms"]) > 0 and float(r["peak_mem_mib"]) > 0
        assert float(r["gflop_step"]) > 0 and 0 < float(r["mfu"]) and float(r["peak_tflops"]) > 0
        assert float(r["tflops"]) == pytest.approx(float(r["gflop_step"]) / float(r["step_ms"]), rel=1e-2)
        assert int(r["context_tokens"]) == sum(int(n) for n in r["context_per_set"].split("+"))
    for size in ("64px/4f", "64px/8f"):
        full = next(r for r in rows if r["size"] == size and r["layout"] == "full")
        assert float(full["ratio_vs_full"]) == 1.0
        for r in rows:
            if r["size"] == size:
                assert r["context_per_set"] == full["context_per_set"]  # same masks for every layout
                assert float(r["ratio_vs_full"]) == pytest.approx(float(r["step_ms"]) / float(full["step_ms"]),
                                                                  rel=1e-3)
    area = next(r for r in rows if r["size"] == "64px/8f" and r["layout"] == "2x2x2")
    full = next(r for r in rows if r["size"] == "64px/8f" and r["layout"] == "full")
    assert float(area["attention_gflop"]) < float(full["attention_gflop"])  # area layers cut attention FLOPs


@pytest.mark.slow
def test_profile_rows_per_layer_and_layout(bench_run):
    _, layers = bench_run
    keys = [(r["size"], r["layout"], r["layer"]) for r in layers]
    assert keys == [(s, lay, i) for s in ("64px/4f", "64px/8f") for lay in LAYOUTS for i in ("0", "11")]
    for r in layers:
        assert float(r["attention_ms"]) > 0 and float(r["mlp_ms"]) > 0
        # ViT-tiny has 12 layers: area attention in [0, 9), global in layer 11
        assert r["area_layer"] == ("1" if r["layout"] != "full" and r["layer"] == "0" else "0")
        assert r["backend"] in (("sdpa", "global") if r["area_layer"] == "0" else ("padded", "equal"))  # CPU backends
        assert len(r["tokens"].split("+")) == 2  # one pass per mask set (short_range, long_range)


def hand_count(model, batch, grid, masks_enc, masks_pred, splits=None, area_layers=0):
    """FLOPs of one step from the widths alone: 2 per multiply-add, linear layers 12 d^2 per token
    and layer (qkv 3, proj 1, MLP 8), attention core 4 d per query-key pair and layer."""
    D, L = 192, model["depth"]
    d, Lp = model["pred_embed_dim"], model["pred_depth"]
    T, H, W = grid
    numel = T * H * W
    embed = 2 * batch * numel * (3 * 2 * 16 * 16) * D

    def pairs(ids):  # query-key pairs over the batch when ids (B, N) use area attention
        if splits is None:
            return ids.shape[0] * ids.shape[1] ** 2
        total = 0
        for row in ids.tolist():
            areas = Counter((i // (H * W) * splits[0] // T, i // W % H * splits[1] // H, i % W * splits[2] // W)
                            for i in row)
            total += sum(c * c for c in areas.values())
        return total

    def encoder(ids):
        n = ids.shape[1]
        full = batch * n * n
        return 2 * batch * n * L * 12 * D * D + 4 * D * (area_layers * pairs(ids) + (L - area_layers) * full)

    def predictor(ctx, tgt):
        n = ctx.shape[1] + tgt.shape[1]
        io = 2 * batch * (ctx.shape[1] * D * d + tgt.shape[1] * d * D)
        return io + 2 * batch * n * Lp * 12 * d * d + 4 * d * Lp * batch * n * n

    everything = torch.arange(numel).expand(batch, numel)
    total = embed + encoder(everything)  # the target encoder: forward only, all tokens
    total += 3 * embed  # the context encoder embeds each clip once, before the mask sets split it
    for ctx, tgt in zip(masks_enc, masks_pred):
        total += 3 * (encoder(ctx) + predictor(ctx, tgt))
    return total


@pytest.mark.parametrize("layout, splits", [("full", None), ("2x2x2", (2, 2, 2)), ("2x2x1", (2, 2, 1))])
def test_flops_per_step_match_a_hand_count(layout, splits):
    model = tiny_model()
    module, _ = bench.build_training(model, common.attention_settings(layout), 64, 8, torch.device("cpu"))
    data = bench.make_batch(module, 2, torch.device("cpu"), pad=True)
    grid = module.encoder.default_grid
    assert grid == (4, 4, 4)
    # the padded slots of the static masks cost no counted FLOPs: the hand count takes the real tokens
    real = [[m[m >= 0].view(2, -1) for m in data[key]] for key in ("masks_enc", "masks_pred")]
    assert any(r.shape != m.shape for r, m in zip(real[0], data["masks_enc"]))
    expected = hand_count(model, 2, grid, *real, splits, 3 if splits else 0)
    assert bench.step_flops(module, data).total == pytest.approx(expected, rel=1e-12)


def test_one_bench_step_trains_the_encoder_and_moves_the_ema_target():
    module, opt = bench.build_training(tiny_model(), common.attention_settings("2x2x2"), 64, 8, torch.device("cpu"))
    step = bench.make_train_step(module, opt, bench.make_batch(module, 2, torch.device("cpu")))
    snap = {name: {k: v.detach().clone() for k, v in getattr(module, name).state_dict().items()}
            for name in ("encoder", "predictor", "target_encoder")}
    assert all(torch.equal(snap["encoder"][k], snap["target_encoder"][k]) for k in snap["encoder"])
    loss = step()
    assert torch.isfinite(loss)
    enc, tgt = module.encoder.state_dict(), module.target_encoder.state_dict()
    # a gradient step, not weight decay alone: biases (no decay) of the first layer move by ~lr
    bias = "blocks.0.attn.qkv.bias"
    assert (enc[bias] - snap["encoder"][bias]).abs().max() > 1e-4
    changed = [k for k in enc if not torch.equal(enc[k], snap["encoder"][k])]
    assert len(changed) == len(enc)
    assert any(not torch.equal(v, snap["predictor"][k]) for k, v in module.predictor.state_dict().items())
    # EMA: target <- target + (1 - m) * (online - target), with the online weights after the step
    m = module.optim.at(0, 1)["ema"]
    for k in enc:
        assert not torch.equal(tgt[k], snap["target_encoder"][k])
        torch.testing.assert_close(tgt[k], torch.lerp(snap["target_encoder"][k], enc[k], 1 - m))


def hand_areas(ids, grid, splits):
    """Area id of each flat grid position, from the ST-A² rule floor(p * S / L) per axis."""
    T, H, W = grid
    return [(i // (H * W) * splits[0] // T * splits[1] + i // W % H * splits[1] // H) * splits[2]
            + i % W * splits[2] // W for i in ids]


def test_the_module_is_built_from_the_train_config():
    """Built as train.py instantiates cfg.module: optim from conf/train.yaml (read here as plain
    YAML), the given model and attention settings, the clip size."""
    optim = yaml.safe_load((ROOT / "conf" / "train.yaml").read_text())["optim"]
    module, opt = bench.build_training(tiny_model(), common.attention_settings("2x2x1"), 64, 8, torch.device("cpu"))
    assert {k: list(v) if isinstance(v, (list, tuple)) else v for k, v in vars(module.optim).items()} == optim
    assert [(g["lr"], g["betas"], g["eps"], g["weight_decay"]) for g in opt.param_groups] == [
        (optim["lr"], tuple(optim["betas"]), optim["eps"], optim["weight_decay"]),
        (optim["lr"], tuple(optim["betas"]), optim["eps"], 0.0)]
    enc = module.encoder
    assert (enc.depth, enc.img_size, enc.num_frames, module.predictor.depth) == (4, 64, 8, 2)
    # area layers [0, round(4 * 18/24)) = [0, 3) with t2 h2 w1; the predictor stays global
    assert enc.attention_pattern == (True, True, True, False)
    assert enc.attention.built_kind.splits == AreaSplits(2, 2, 1)
    assert not any(module.predictor.attention_pattern)


def test_a_size_without_a_model_file_takes_the_default_group_keys():
    default = yaml.safe_load((ROOT / "conf" / "model" / "vit_tiny.yaml").read_text())
    assert not (ROOT / "conf" / "model" / "vit_giant_swiglu.yaml").exists()
    model = common.model_settings("vit_giant_swiglu")
    assert model == {**default, "size": "vit_giant_swiglu"}


def test_resolved_backends_follow_the_grid():
    """'auto' resolves without reading the tokens: 'equal' for the unmasked forward (every grid
    cell present, and the 2x2x2 splits cut the 4x4x4 grid evenly), 'padded' (the CPU choice) for
    masked tokens, even ones that fill every area equally (counted by hand) or cover the grid;
    global attention reports 'sdpa'."""
    from stjepa.models.stack import prepare_layers

    cpu = torch.device("cpu")
    full, _ = bench.build_training(tiny_model(), common.attention_settings("full"), 64, 8, cpu)
    area, _ = bench.build_training(tiny_model(), common.attention_settings("2x2x2"), 64, 8, cpu)
    grid = area.encoder.default_grid
    every_cell = torch.arange(64)[None]
    balanced = torch.tensor([[0, 3, 12, 15, 48, 51, 60, 63]])  # one token in each of the 8 corners' areas
    unbalanced = torch.tensor([[0, 1, 2, 3, 48, 51, 60, 63]])
    assert set(Counter(hand_areas(balanced[0].tolist(), grid, (2, 2, 2))).values()) == {1}
    assert len(Counter(hand_areas(unbalanced[0].tolist(), grid, (2, 2, 2)))) < 8
    unmasked = {layer.layout.backend for layer in prepare_layers(every_cell, grid, area.encoder.layer_entries) if layer}
    assert unmasked == {"equal"}
    for ids in (every_cell, balanced, unbalanced):
        assert bench.resolved_backends(area.encoder, [ids]) == "padded"
        assert bench.resolved_backends(full.encoder, [ids]) == "sdpa"


def test_bench_attention_orders_tokens_by_area_then_position():
    grid, splits = (4, 4, 4), (2, 2, 2)
    config = bench_attention.layout_config("2x2x2")
    ids = bench_attention.visible_ids(grid, 0.5, 2, config, "random", seed=1)
    layout, (t, h, w) = bench_attention.build_layout(ids, grid, config)
    ordered = t * 16 + h * 4 + w  # the flat positions, in the order attention sees them
    for row, got in zip(ids.tolist(), ordered.tolist()):
        areas = dict(zip(row, hand_areas(row, grid, splits)))
        assert got == sorted(row, key=lambda i: (areas[i], i))
    assert layout.backend == "padded" and bench_attention.build_layout(ids, grid, None)[0] is None


def test_bench_attention_balanced_masks_fill_every_area_equally():
    grid = (8, 16, 16)
    config = bench_attention.layout_config("2x2x2")
    ids = bench_attention.visible_ids(grid, 0.25, 2, config, "balanced")
    assert ids.shape == (2, 512)
    for row in ids.tolist():
        assert len(set(row)) == 512
        assert Counter(hand_areas(row, grid, (2, 2, 2))) == {a: 64 for a in range(8)}
    layout, _ = bench_attention.build_layout(ids, grid, config)
    assert layout.backend == "padded"  # 'auto' does not read the tokens to find them balanced
    equal = bench_attention.layout_config("2x2x2", "equal")
    assert bench_attention.build_layout(ids, grid, equal)[0].backend == "equal"  # asked for: checked, accepted


def test_find_max_batch_doubles_then_halves():
    def fits_below(limit):
        return lambda b: b <= limit

    assert bench.find_max_batch(fits_below(100), 24, 1024) == 96
    assert bench.find_max_batch(fits_below(1000), 24, 200) == 192  # capped
    assert bench.find_max_batch(fits_below(10), 24, 1024) == 6
    assert bench.find_max_batch(fits_below(0), 24, 1024) is None
    assert bench.fits(tiny_model(), common.attention_settings("full"), 64, 8, 1, torch.device("cpu"))


def test_layouts_match_the_attention_configs():
    for name, conf_file in [("full", "full"), ("2x2", "area_2x2"), ("2x2x2", "area_2x2x2"), ("2x1x1", "area_2x1x1")]:
        conf = OmegaConf.to_container(common.compose_train_config([f"attention={conf_file}"]).attention)
        settings = common.attention_settings(name)
        encoder_part = (lambda d: {k: v for k, v in d.items() if k != "predictor"})
        assert AttentionSettings.create(encoder_part(settings)).built_kind.splits == AttentionSettings.create(
            encoder_part(conf)).built_kind.splits, name
        for key in ("area_start", "area_end", "backend"):
            assert settings[key] == conf[key], (name, key)
    settings = common.attention_settings("2x2x1", predictor_area=True)
    assert settings["predictor"]["temporal_splits"] == 2 and settings["predictor"]["width_splits"] == 1
    model = common.model_settings("vit_large")
    assert (model["pred_depth"], model["pred_embed_dim"], model["pred_num_heads"]) == (12, 384, 12)
    assert common.model_settings("vit_tiny", pred_depth=1, pred_width=64)["pred_embed_dim"] == 64


def test_plot_needs_matplotlib_says_so(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(SystemExit, match="needs matplotlib"):
        common.pyplot()


@pytest.mark.slow
def test_plots(bench_run, tmp_path):
    pytest.importorskip("matplotlib")
    rows, layers = bench_run
    paths = [bench.plot_speedup(rows, tmp_path), *plot_layers(layers, tmp_path)]
    assert [p.name for p in paths] == ["train_step_speedup.png", "profile_layers_64px_4f.png",
                                       "profile_layers_64px_8f.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths)


@pytest.mark.slow
def test_profile_layers_command_line(tmp_path):
    out = tmp_path / "layers.csv"
    result = subprocess.run(
        [sys.executable, "scripts/profile_layers.py", "--model", "vit_tiny", "--crop", "64", "--frames", "4",
         "--batch", "1", "--layouts", "full", "2x2", "--layers", "0", "--iters", "1", "--warmup", "0",
         "--threads", "1", "--csv", str(out)], cwd=ROOT, capture_output=True, text=True, check=False,
        timeout=CHILD_TIMEOUT)
    assert result.returncode == 0, result.stderr
    rows = read_csv(out)
    assert [(r["layout"], r["layer"], r["area_layer"]) for r in rows] == [("full", "0", "0"), ("2x2", "0", "1")]
    assert rows[0]["backend"] in ("sdpa", "global") and rows[1]["backend"] in ("padded", "equal")


def test_bench_data_skips_torchcodec_without_ffmpeg_in_one_sentence(tmp_path, monkeypatch, capsys):
    """torchcodec installed but FFmpeg's libraries missing: its import fails as the real one does
    (a stand-in package whose decoders module raises torchcodec's RuntimeError); the benchmark
    goes on with the others and says in one line why and how to install the libraries."""
    pytest.importorskip("av")
    import bench_data

    package = tmp_path / "torchcodec"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "decoders.py").write_text('raise RuntimeError("Could not load libtorchcodec. Likely causes:\\n'
                                         '  1. FFmpeg is not properly installed in your environment.")\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in [m for m in sys.modules if m == "torchcodec" or m.startswith("torchcodec.")]:
        monkeypatch.delitem(sys.modules, name)
    video = tmp_path / "v.mp4"
    bench_data.write_raw_videos(tmp_path, 64, 1, 8)[0].rename(video)
    assert bench_data.usable_decoders(["pyav", "torchcodec"], str(video)) == ["pyav"]
    assert capsys.readouterr().out.splitlines() == [
        "skipping torchcodec: data.decoder='torchcodec' cannot be used: torchcodec is installed but cannot load "
        "FFmpeg's shared libraries (versions 4-8; `apt install ffmpeg` or `conda install ffmpeg` installs them), "
        "or choose another of decord, pyav, torchcodec."]


@pytest.mark.slow
def test_bench_data_reports_clips_and_images_per_worker(tmp_path):
    pytest.importorskip("av")
    import bench_data

    bench_data.main(["--heights", "320", "--decoders", "pyav", "--clips", "2", "--videos", "1", "--source-frames", "140",
                     "--workers", "1", "--loader-clips", "4", "--quality-clips", "1", "--images", "3",
                     "--csv", str(tmp_path / "data.csv")])
    rows = read_csv(tmp_path / "data.csv")
    parts = [(r["part"], r.get("decoder", ""), r.get("variant", "")) for r in rows]
    assert parts == [("prepare", "", "prepare_videos.py defaults")] * 2 + [
        ("clips per worker", "pyav", "raw"), ("clips per worker", "pyav", "prepared")] + [
        ("decode only", name, kind) for kind in ("raw", "prepared")
        for name in ("pyav", "pyav, no skipping", "pyav, half size")] + [
        ("DataLoader", "pyav", "raw"), ("DataLoader", "pyav", "prepared"), ("quality", "", "prepared vs raw"),
        ("images per worker", "pillow", "")]
    assert rows[0]["source"] == "568x320 H.264 GOP 250, 140 frames"
    timed = [r for r in rows if r["median_ms"]]
    for row in timed:  # items/s is the inverse of the median time, both as written
        assert float(row["items_per_s"]) == pytest.approx(1000.0 / float(row["median_ms"]), rel=0.02)
    ratio = float(rows[3]["ratio_to_raw"])
    assert ratio == pytest.approx(float(rows[3]["items_per_s"]) / float(rows[2]["items_per_s"]), rel=0.02)
    assert 0 < float(rows[-2]["mean_abs_levels"]) < 10


@pytest.mark.slow
def test_gpu_check_dry_run_runs_every_part_and_reports_its_files(tmp_path):
    """The GPU command's CPU dry run: every part runs to the end, so the script cannot rot."""
    import gpu_check

    out = tmp_path / "out"
    assert gpu_check.main(["--out", str(out), "--dry-run", "--budget-s", "1200"]) == 0
    log = (out / "gpu_check.log").read_text()
    assert log.count("RUN: ") == 7 and log.count("exit 0 after") == 7 and "SKIP train_step_graphs" in log, log
    assert sorted(p.name for p in out.iterdir()) == ["attention.csv", "gpu_check.log", "launches.csv", "motion.json",
                                                     "tests.log", "train_step.csv"]
    layouts = [r["layout"] for r in read_csv(out / "train_step.csv")]
    assert layouts == ["full", "2x2", "2x2x2"]
    motion = json.loads((out / "motion.json").read_text())
    assert set(motion) == {"steps", "model", "pretrained", "random_init"}
    report = gpu_check.report(out)
    assert "### train_step.csv" in report and "### motion.json" in report
    if not torch.cuda.is_available():
        assert gpu_check.main(["--out", str(tmp_path / "none")]) == 2  # no CUDA device: refused, not faked


def test_static_step_padding_counts_padding_and_real_tokens_against_the_unpadded_lists():
    import bench_static_step

    from stjepa.data.masks import MaskCollator, V_JEPA2_MASKS

    grid, batch, draws = (2, 8, 8), 4, 6
    for rule in ("bound", 0.5):
        out = bench_static_step.padded_fraction(grid, batch, draws, rule)
        pads = slots = real = official = 0  # by hand: -1 entries, and the unpadded lists' lengths
        for seed in range(draws):
            enc, _ = MaskCollator(grid, V_JEPA2_MASKS, pad=True, slots=rule)(batch, torch.Generator().manual_seed(seed))
            plain, _ = MaskCollator(grid, V_JEPA2_MASKS)(batch, torch.Generator().manual_seed(seed))
            pads += sum(int((m == -1).sum()) for m in enc)
            slots += sum(m.numel() for m in enc)
            real += sum(int((m != -1).sum()) for m in enc)
            official += sum(m.numel() for m in plain)
        assert out["padded_context"] == round(pads / slots, 4)
        assert out["kept_context_vs_official"] == round(real / official, 4)
        assert (out["kept_context_vs_official"] == 1.0) == (rule == "bound") and out["padded_context"] > 0
