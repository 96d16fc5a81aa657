"""scripts/bench_train_step.py and scripts/profile_layers.py at tiny CPU sizes."""
import csv
import subprocess
import sys
from collections import Counter
from pathlib import Path

import bench_train_step as bench
import pytest
import torch
from omegaconf import OmegaConf

from stjepa.models import AttentionConfig
from stjepa.utils import bench as common
from stjepa.utils.layer_profile import plot_layers

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
        assert r["backend"] in (("sdpa",) if r["area_layer"] == "0" else ("padded", "equal"))  # CPU backends
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
    data = bench.make_batch(module, 2, torch.device("cpu"))
    grid = module.encoder.default_grid
    assert grid == (4, 4, 4)
    expected = hand_count(model, 2, grid, data["masks_enc"], data["masks_pred"], splits, 3 if splits else 0)
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
        assert AttentionConfig.create(encoder_part(settings)).splits == AttentionConfig.create(
            encoder_part(conf)).splits, name
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
         "--threads", "1", "--csv", str(out)], cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    rows = read_csv(out)
    assert [(r["layout"], r["layer"], r["area_layer"]) for r in rows] == [("full", "0", "0"), ("2x2", "0", "1")]
    assert rows[0]["backend"] == "sdpa" and rows[1]["backend"] in ("padded", "equal")
