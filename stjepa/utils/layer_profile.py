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

``scripts/profile_layers.py`` is its command line; ``scripts/bench_train_step.py --profile``
runs it next to the step timings.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..networks import build_encoder
from .bench import attention_settings, autocast, draw_masks, free_memory, pyplot, splits_tag
from .timing import describe_device, git_commit, time_ms


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
        settings = attention_settings(layout_name, backend)
        encoder.set_attention({k: v for k, v in settings.items() if k != "predictor"})  # same weights
        calls = capture_block_inputs(encoder, clips, masks, device)
        for i in layers if layers is not None else range(encoder.depth):
            attn_steps, mlp_steps = zip(*(sub_path_steps(encoder.blocks[i], *args, device) for args in calls[i]))
            attn = time_ms(run_all(attn_steps), device, warmup=warmup, iters=iters)["median_ms"]
            mlp = time_ms(run_all(mlp_steps), device, warmup=warmup, iters=iters)["median_ms"]
            layout = calls[i][0][2]
            rows.append({
                "device": describe_device(device), "dtype": dtype, "commit": commit, "model": model["size"],
                "size": size, "batch": batch, "layout": layout_name, "splits": splits_tag(encoder.attention), "layer": i,
                "area_layer": int(encoder.attention_pattern[i]),
                "backend": layout.backend if layout is not None else "sdpa",
                "tokens": "+".join(str(args[0].shape[1]) for args in calls[i]),
                "attention_ms": round(attn, 4), "mlp_ms": round(mlp, 4),
            })
            print(f"{size:>10} {layout_name:>6} layer {i:>2} ({rows[-1]['backend']:>6}, N={rows[-1]['tokens']}): "
                  f"attention {attn:9.3f} ms  mlp {mlp:9.3f} ms", flush=True)
        del calls
        free_memory(device)
    return rows


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
