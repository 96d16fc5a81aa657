"""Per-layer forward+backward time of the context encoder, split into attention and MLP,
full vs area attention.

What is timed, for every encoder layer (``Block``) and layout:

* ``attention_ms``: forward + backward of ``attn(norm1(x), rope, layout)`` (qkv, 3D RoPE, the
  attention core, output projection), gradients for the layer's weights and its input;
* ``mlp_ms``: forward + backward of ``mlp(norm2(x))`` (fc1, GELU, fc2), likewise.

The inputs are the real ones of that layer: one no-grad forward of the encoder on the
V-JEPA 2 context tokens (``MaskCollator`` with ``V_JEPA2_MASKS``, one pass per mask set as in
training) records, with forward pre-hooks, what ``run_blocks`` hands each block: the tokens
(already sorted by area), the RoPE tables and the ``AreaLayout``. Each sub-path is then run
on those inputs, once per mask set, and the times are summed over the mask sets. Not timed:
the residual adds, the area sort and layout build (once per forward, shared by all layers),
patch embedding, final norm and the optimizer. bf16 autocast on CUDA, fp32 on CPU; median of
``--iters`` runs after ``--warmup``.

This module also holds what it shares with ``bench_train_step.py``: the sizes, the layouts
and the model settings.

    python scripts/profile_layers.py --sizes 256px/16f                   # ViT-L, full/2x2x2/2x2x1
    python scripts/profile_layers.py --model vit_tiny --crop 64 --frames 8 --batch 2 --csv p.csv
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stjepa.models.factory import build_encoder, split_attention
from stjepa.models.masks import V_JEPA2_MASKS, MaskCollator
from stjepa.utils.timing import describe_device, git_commit, time_ms

ROOT = Path(__file__).resolve().parents[1]

SIZES = {  # name: (crop px, frames, batch), the published ST-A² sweep
    "256px/16f": (256, 16, 4),
    "384px/16f": (384, 16, 2),
    "256px/64f": (256, 64, 1),
    "384px/64f": (384, 64, 1),
}
# name: encoder splits, with the keys of conf/attention/*.yaml. Area layers are [0, 18/24 of the
# depth), i.e. [0, 18) of ViT-L's 24, global after (area_start 0, area_end null as in full.yaml).
LAYOUTS = {
    "full": {"temporal_splits": 1, "height_splits": 1, "width_splits": 1},  # conf/attention/full.yaml
    "2x2": {"temporal_splits": 1, "height_splits": 2, "width_splits": 2},  # conf/attention/area_2x2.yaml
    "2x2x2": {"temporal_splits": 2, "height_splits": 2, "width_splits": 2},  # conf/attention/area_2x2x2.yaml
    "2x2x1": {"temporal_splits": 2, "height_splits": 2, "width_splits": 1},  # t2 h2 w1 (no conf file)
    "2x1x1": {"temporal_splits": 2, "height_splits": 1, "width_splits": 1},  # conf/attention/area_2x1x1.yaml
}
DEFAULT_LAYOUTS = ["full", "2x2x2", "2x2x1"]


def size_args(size: str, batch: int | None = None) -> tuple[int, int, int]:
    """(crop, frames, batch) of a named size or of a custom one written '64px/8f'."""
    if size in SIZES:
        crop, frames, default_batch = SIZES[size]
    else:
        try:
            crop_text, frames_text = size.split("/")
            crop, frames, default_batch = int(crop_text.removesuffix("px")), int(frames_text.removesuffix("f")), 1
        except ValueError:
            raise SystemExit(f"size {size!r} is neither one of {', '.join(SIZES)} nor written like '64px/8f'.")
    return crop, frames, batch or default_batch


def attention_settings(layout: str, backend: str = "auto", predictor_area: bool = False) -> dict:
    """The ``attention`` settings (as in conf/attention/*.yaml) of a named layout; with
    ``predictor_area`` the predictor gets the same splits (its own [0, 18/24 depth) layers)."""
    splits = dict(LAYOUTS[layout], spatial_splits=None, area_start=0, area_end=None, backend=backend)
    return {**splits, "predictor": dict(splits) if predictor_area else {}}


def splits_tag(layout: str) -> str:
    s = LAYOUTS[layout]
    return f"t{s['temporal_splits']}h{s['height_splits']}w{s['width_splits']}"


def model_settings(size: str = "vit_large", pred_depth: int | None = None, pred_width: int | None = None,
                   pred_heads: int | None = None, activation_checkpointing: bool = False, **encoder) -> dict:
    """conf/model/<size>.yaml (predictor depth/width/heads included) with overrides."""
    from omegaconf import OmegaConf

    path = ROOT / "conf" / "model" / f"{size}.yaml"
    model = OmegaConf.to_container(OmegaConf.load(path)) if path.exists() else {}
    model.update(size=size, init_from=None, use_activation_checkpointing=activation_checkpointing)
    for key, value in dict(pred_depth=pred_depth, pred_embed_dim=pred_width, pred_num_heads=pred_heads,
                           **encoder).items():
        if value is not None:
            model[key] = value
    return model


def draw_masks(grid, batch: int, seed: int, device) -> tuple[list, list]:
    """V-JEPA 2 short_range + long_range masks: (context, target) index lists, one per mask set."""
    masks_enc, masks_pred = MaskCollator(grid, V_JEPA2_MASKS)(batch, torch.Generator().manual_seed(seed))
    return [m.to(device) for m in masks_enc], [m.to(device) for m in masks_pred]


def autocast(device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def capture_block_inputs(encoder, clips, masks, device) -> list[list[tuple]]:
    """What run_blocks hands each block, (x, rope, layout) per call, from one no-grad forward."""
    calls: list[list[tuple]] = [[] for _ in encoder.blocks]
    hooks = [blk.register_forward_pre_hook(lambda _m, args, i=i: calls[i].append(args))
             for i, blk in enumerate(encoder.blocks)]
    try:
        with torch.no_grad(), autocast(device):
            encoder(clips, masks)
    finally:
        for h in hooks:
            h.remove()
    return calls


def sub_path_steps(block, x, rope, layout, device):
    """Two closures: forward + backward of the attention sub-path and of the MLP sub-path."""
    x = x.detach().requires_grad_(True)
    with torch.no_grad(), autocast(device):
        mid = (x + block.attn(block.norm1(x), rope, layout)).detach().requires_grad_(True)

    def run(fn, inp):
        def step():
            with autocast(device):
                out = fn(inp)
            out.backward(torch.ones_like(out))
            block.zero_grad(set_to_none=True)
            inp.grad = None

        return step

    return (run(lambda z: block.attn(block.norm1(z), rope, layout), x),
            run(lambda z: block.mlp(block.norm2(z)), mid))


def run_all(steps):
    """One closure running every mask set's step (the layer's work in one training step)."""
    def run():
        for step in steps:
            step()

    return run


def profile_layers(model: dict, layouts: list[str], crop: int, frames: int, batch: int, device: torch.device,
                   warmup: int = 1, iters: int = 3, layers: list[int] | None = None, backend: str = "auto",
                   seed: int = 0, size: str | None = None) -> list[dict]:
    """One row per (layout, layer): attention_ms and mlp_ms, forward + backward, summed over mask sets."""
    device = torch.device(device)
    dtype = "bfloat16" if device.type == "cuda" else "float32"
    size = size or f"{crop}px/{frames}f"
    commit = git_commit()
    torch.manual_seed(seed)
    encoder = build_encoder(model, None, crop, frames).to(device).train()
    clips = torch.randn(batch, 3, frames, crop, crop, device=device)
    masks, _ = draw_masks(encoder.default_grid, batch, seed, device)
    rows = []
    for layout_name in layouts:
        encoder.set_attention(split_attention(attention_settings(layout_name, backend))[0])  # same weights
        calls = capture_block_inputs(encoder, clips, masks, device)
        for i in layers if layers is not None else range(encoder.depth):
            attn_steps, mlp_steps = zip(*(sub_path_steps(encoder.blocks[i], *args, device) for args in calls[i]))
            attn = time_ms(run_all(attn_steps), device, warmup=warmup, iters=iters)["median_ms"]
            mlp = time_ms(run_all(mlp_steps), device, warmup=warmup, iters=iters)["median_ms"]
            layout = calls[i][0][2]
            rows.append({
                "device": describe_device(device), "dtype": dtype, "commit": commit, "model": model["size"],
                "size": size, "batch": batch, "layout": layout_name, "splits": splits_tag(layout_name), "layer": i,
                "area_layer": int(encoder.attention_pattern[i]),
                "backend": layout.backend if layout is not None else "sdpa",
                "tokens": "+".join(str(args[0].shape[1]) for args in calls[i]),
                "attention_ms": round(attn, 4), "mlp_ms": round(mlp, 4),
            })
            print(f"{size:>10} {layout_name:>6} layer {i:>2} ({rows[-1]['backend']:>6}, N={rows[-1]['tokens']}): "
                  f"attention {attn:9.3f} ms  mlp {mlp:9.3f} ms", flush=True)
        del calls
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def write_csv(rows: list[dict], path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {len(rows)} rows to {path}")


def pyplot():
    """matplotlib's pyplot with the Agg backend, or a one-sentence exit when it is missing."""
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("--plot needs matplotlib, which is not installed: pip install matplotlib.")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_layers(rows: list[dict], out_dir) -> list[Path]:
    """One PNG per size: per-layer attention (dark) + MLP (light) stacked bars, one bar per layout."""
    plt = pyplot()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for size in dict.fromkeys(r["size"] for r in rows):
        sel = [r for r in rows if r["size"] == size]
        layouts = list(dict.fromkeys(r["layout"] for r in sel))
        layers = sorted({int(r["layer"]) for r in sel})
        width = 0.8 / len(layouts)
        fig, ax = plt.subplots(figsize=(min(max(6.0, 0.22 * len(layers) * len(layouts) + 2), 14.0), 4.5))
        area_layers = {int(r["layer"]) for r in sel if int(r["area_layer"])}
        for j, name in enumerate(layouts):
            by_layer = {int(r["layer"]): r for r in sel if r["layout"] == name}
            xs = [k + (j - (len(layouts) - 1) / 2) * width for k in range(len(layers))]
            attn = [float(by_layer[i]["attention_ms"]) for i in layers]
            mlp = [float(by_layer[i]["mlp_ms"]) for i in layers]
            ax.bar(xs, attn, width, color=f"C{j}", label=f"{name} attention")
            ax.bar(xs, mlp, width, bottom=attn, color=f"C{j}", alpha=0.4, label=f"{name} MLP")
        ax.set_xticks(range(len(layers)), [f"{i}\narea" if i in area_layers else str(i) for i in layers], fontsize=7)
        ax.set_xlabel("encoder layer")
        ax.set_ylabel("forward + backward, ms")
        ax.set_title(f"Per-layer time, {sel[0]['model']} {size} batch {sel[0]['batch']} ({sel[0]['device']})",
                     fontsize=9)
        ax.set_ylim(0, 1.3 * max(float(r["attention_ms"]) + float(r["mlp_ms"]) for r in sel))
        ax.legend(fontsize=7, ncol=len(layouts), loc="upper center")
        fig.tight_layout()
        path = out_dir / f"profile_layers_{size.replace('/', '_')}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)
        print(f"wrote {path}")
    return paths


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="vit_large", help="encoder size (conf/model/<size>.yaml)")
    p.add_argument("--depth", type=int, help="encoder depth override (CPU smoke runs)")
    p.add_argument("--predictor-depth", type=int)
    p.add_argument("--predictor-width", type=int)
    p.add_argument("--predictor-heads", type=int)
    p.add_argument("--activation-checkpointing", action="store_true")


def model_from_args(args) -> dict:
    return model_settings(args.model, args.predictor_depth, args.predictor_width, args.predictor_heads,
                          args.activation_checkpointing, depth=args.depth)


def add_size_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sizes", nargs="+", help=f"named sizes ({', '.join(SIZES)}) or custom ones like 64px/8f")
    p.add_argument("--crop", type=int, help="custom size: crop in px (with --frames)")
    p.add_argument("--frames", type=int, help="custom size: frames per clip (with --crop)")
    p.add_argument("--batch", type=int, help="batch for every size (default: a named size's own, 1 for custom ones)")


def sizes_from_args(args, default: list[str]) -> list[str]:
    sizes = list(args.sizes or [])
    if args.crop or args.frames:
        if not (args.crop and args.frames):
            raise SystemExit("a custom size needs both --crop and --frames.")
        sizes.append(f"{args.crop}px/{args.frames}f")
    return sizes or default


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cuda = torch.cuda.is_available()
    p.add_argument("--device", default="cuda" if cuda else "cpu")
    add_model_args(p)
    add_size_args(p)
    p.add_argument("--layouts", nargs="+", choices=list(LAYOUTS), default=DEFAULT_LAYOUTS)
    p.add_argument("--backend", default="auto", help="area attention backend (attention.backend)")
    p.add_argument("--layers", nargs="+", type=int, help="only these encoder layers (default: all)")
    p.add_argument("--warmup", type=int, default=3 if cuda else 1)
    p.add_argument("--iters", type=int, default=10 if cuda else 3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, help="CPU threads (torch.set_num_threads); default: torch's")
    p.add_argument("--csv", default="profile_layers.csv")
    p.add_argument("--plot", metavar="DIR", help="write per-layer stacked bar charts (PNG) here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = model_from_args(args)
    rows = []
    for size in sizes_from_args(args, ["256px/16f"]):
        crop, frames, batch = size_args(size, args.batch)
        rows += profile_layers(model, args.layouts, crop, frames, batch, torch.device(args.device), args.warmup,
                               args.iters, args.layers, args.backend, args.seed, size)
    write_csv(rows, args.csv)
    if args.plot:
        plot_layers(rows, args.plot)
    return rows


if __name__ == "__main__":
    main()
