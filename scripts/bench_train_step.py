"""Time of one full V-JEPA 2 training step, full vs area attention.

One step is what ``train.py`` runs per batch, on the ``JEPAPretrainModule`` that train.py
instantiates (``cfg.module`` of its composed config, so the optimizer settings are
conf/train.yaml's ``optim``), without a Lightning Trainer: the EMA target encoder's no-grad forward on all
tokens and layer norm of its features, the context encoder's forward on the visible tokens
of each mask set, the predictor, the L1 loss at the target positions (``shared_step``),
backward, an AdamW step (the module's weight-decay groups; ``fused=True`` on CUDA) and the
EMA update of the target encoder (``update_target_encoder``). Masks are the V-JEPA 2
short_range + long_range multi-block masks (``MaskCollator`` with ``V_JEPA2_MASKS``), drawn
once per size with a fixed seed, so every layout of a size sees the same tokens.

Sizes (crop px / frames, batch): the published ST-A² sweep 256px/16f x4, 384px/16f x2,
256px/64f x1, 384px/64f x1, and ``vjepa2`` = 256px/16f at ``--vjepa2-batch`` (with
``--find-max-batch`` on CUDA: the largest batch that fits, found by doubling or halving from
there with the first layout, then used for every layout). ``--crop/--frames`` add a custom size
for CPU smoke runs (``--sizes`` also takes custom ones like 128px/16f); ``--batch`` sets the
batch of every size but ``vjepa2``. Layouts: ``full`` and area splits (t x h x w) in encoder
layers [0, 18/24 of the depth), i.e. [0, 18) of ViT-L's 24 (``--predictor-area``: in the
predictor's [0, 18/24 of its depth) too). bf16 autocast on CUDA, fp32 on CPU. Median of
``--iters`` steps after ``--warmup``. Not in the step: data loading, Lightning's logging and
its gradient-norm / finite-loss checks, the per-step schedule updates.

Per row: visible (context) tokens per clip, summed over the mask sets; step time; peak memory
(CUDA: ``max_memory_allocated``; CPU: the process's peak RSS so far, ``ru_maxrss``); FLOPs per
step (``stjepa.models.flops.train_step_flops``: 3x the forward of the context encoder and the
predictor, 1x the target encoder's forward; linear layers and the attention core only); the
achieved TFLOP/s; MFU against a matmul peak measured in the same run (bf16 on CUDA, fp32 on
CPU); and area time / full time of the same size in the same run.

    python scripts/bench_train_step.py                                  # ViT-L, all sizes (CUDA)
    python scripts/bench_train_step.py --sizes vjepa2 --find-max-batch --compile
    python scripts/bench_train_step.py --sizes 256px/16f --profile --plot plots/
    python scripts/bench_train_step.py --model vit_tiny --predictor-depth 2 --crop 64 --frames 8 --batch 2 \\
        --iters 3 --threads 1 --csv out.csv                             # CPU smoke run
"""
from __future__ import annotations

import argparse
import resource
from functools import partial
from pathlib import Path

import torch

from stjepa.data.masks import STATIC_SLOTS
from stjepa.models import AttentionSettings
from stjepa.models.flops import Flops, train_step_flops
from stjepa.models.stack import prepare_layers
from stjepa.optim import adamw
from stjepa.pretrain_module import JEPAPretrainModule
from stjepa.utils.bench import (LAYOUTS, SIZES, add_model_args, add_run_args, add_size_args, attention_settings,
                                autocast, build_pretrain_module, draw_masks, free_memory, model_from_args, pyplot,
                                size_args, sizes_from_args, splits_tag, write_csv)
from stjepa.utils.layer_profile import plot_layers, profile_layers
from stjepa.utils.timing import describe_device, git_commit, time_ms

VJEPA2 = "vjepa2"  # 256px/16f at --vjepa2-batch


def build_training(model: dict, attention: dict, crop: int, frames: int, device: torch.device,
                   compile: bool = False, seed: int = 0) -> tuple[JEPAPretrainModule, torch.optim.Optimizer]:
    """The pretraining module (encoder, predictor, EMA target encoder) as train.py builds it, and its AdamW."""
    torch.manual_seed(seed)
    with torch.device(device):
        module = build_pretrain_module(model, attention, crop, frames, compile)
    module.to(device).train()
    module.configure_model()  # torch.compile of the three networks when compile=True
    return module, adamw((module.encoder, module.predictor), module.optim, fused=device.type == "cuda")


def step_flops(module: JEPAPretrainModule, batch: dict) -> Flops:
    return train_step_flops(module.encoder, module.predictor, module.target_encoder, tuple(batch["video"].shape),
                            batch["masks_enc"], batch["masks_pred"])


def make_batch(module: JEPAPretrainModule, batch: int, device: torch.device, seed: int = 0, pad: bool = False,
               slots: str | float = STATIC_SLOTS) -> dict:
    """Random clips plus V-JEPA 2 masks for the module's token grid, as the data loader gives them
    (``pad``: padded to static lengths under the ``slots`` rule, as train.py draws them when it
    compiles)."""
    enc = module.encoder
    g = torch.Generator().manual_seed(seed)
    video = torch.randn(batch, 3, enc.num_frames, enc.img_size, enc.img_size, generator=g).to(device)
    masks_enc, masks_pred = draw_masks(enc.default_grid, batch, seed, device, pad, slots)
    return {"video": video, "masks_enc": masks_enc, "masks_pred": masks_pred}


def make_train_step(module: JEPAPretrainModule, optimizer: torch.optim.Optimizer, batch: dict):
    """A closure running one training step; it returns the loss (a detached tensor)."""
    device = batch["video"].device
    momentum = module.optim.at(0, 1)["ema"]

    def step():
        with autocast(device):
            loss = module.shared_step(batch)[0]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        module.update_target_encoder(momentum)
        return loss.detach()

    return step


def matmul_peak_tflops(device: torch.device, n: int, iters: int) -> float:
    """Measured peak: median time of an n x n x n matmul (bf16 on CUDA, fp32 on CPU)."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    ms = time_ms(lambda: a @ b, device, warmup=2, iters=iters)["median_ms"]
    return 2.0 * n**3 / (ms / 1e3) / 1e12


def peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def fits(model, attention, crop, frames, batch, device, compile=False) -> bool:
    """Whether one training step at this batch runs without running out of memory."""
    try:
        module, opt = build_training(model, attention, crop, frames, device, compile)
        make_train_step(module, opt, make_batch(module, batch, device))()
        ok = True
    except torch.cuda.OutOfMemoryError:
        ok = False
    free_memory(device)
    return ok


def find_max_batch(fits_fn, start: int, cap: int) -> int | None:
    """The largest batch that fits: double from ``start`` while the next one fits (up to ``cap``),
    or halve until one fits when ``start`` does not; None when not even batch 1 fits."""
    if fits_fn(start):
        batch = start
        while batch * 2 <= cap and fits_fn(batch * 2):
            batch *= 2
        return batch
    batch = start // 2
    while batch >= 1 and not fits_fn(batch):
        batch //= 2
    return batch or None


def resolved_backends(encoder, masks: list[torch.Tensor]) -> str:
    """The backend of the local layers in each mask set's forward ('auto' resolves per forward,
    from the grid and the slot count: masked tokens, padded or not, never resolve to 'equal'), or
    'sdpa' when no layer is local."""
    names = [layer.layout.backend for m in masks
             for layer in prepare_layers(m.clamp(min=0), encoder.default_grid, encoder.layer_entries, m >= 0)
             if layer is not None]
    return "/".join(dict.fromkeys(names)) or "sdpa"


def bench_row(model, attention, crop, frames, batch, device, args) -> dict:
    """Build, warm up and time one (size, layout); the row's measured columns."""
    module, opt = build_training(model, attention, crop, frames, device, args.compile, args.seed)
    data = make_batch(module, batch, device, args.seed, pad=bool(args.compile))  # train.py's static_masks=null
    step = make_train_step(module, opt, data)
    losses = []
    free_memory(device)
    t = time_ms(lambda: losses.append(step()), device, warmup=args.warmup, iters=args.iters)
    flops = step_flops(module, data)

    def per_clip(masks):  # real tokens per clip of each mask set (not the padded slots)
        return [int((m >= 0).sum()) // batch for m in masks]

    return {
        "encoder_depth": module.encoder.depth, "backend": resolved_backends(module.encoder, data["masks_enc"]),
        "context_tokens": sum(per_clip(data["masks_enc"])),
        "context_per_set": "+".join(map(str, per_clip(data["masks_enc"]))),
        "target_per_set": "+".join(map(str, per_clip(data["masks_pred"]))),
        "step_ms": t["median_ms"], "min_ms": t["min_ms"], "peak_mem_mib": peak_memory_mib(device),
        "gflop_step": flops.total / 1e9, "attention_gflop": flops.attention / 1e9, "loss": float(losses[-1]),
    }


def run(args) -> list[dict]:
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    model = model_from_args(args)
    commit = git_commit()
    peak = matmul_peak_tflops(device, args.peak_size, args.iters)
    print(f"matmul peak ({args.peak_size}^3, {'bf16' if cuda else 'fp32'}): {peak:.3f} TFLOP/s", flush=True)
    rows = []
    for size in args.sizes:
        if size == VJEPA2:
            crop, frames, batch = 256, 16, args.vjepa2_batch
        else:
            crop, frames, batch = size_args(size, args.batch)
        if args.find_max_batch and cuda:
            attention = attention_settings(args.layouts[0], args.backend, args.predictor_area)
            found = find_max_batch(partial(fits, model, attention, crop, frames, device=device, compile=args.compile),
                                   batch, args.max_batch)
            print(f"{size}: largest batch that fits ({args.layouts[0]}): {found}", flush=True)
            if found is None:
                continue
            batch = found
        full_ms = None
        for layout in args.layouts:
            attention = attention_settings(layout, args.backend, args.predictor_area)
            try:
                measured = bench_row(model, attention, crop, frames, batch, device, args)
            except torch.cuda.OutOfMemoryError:
                measured = None
            free_memory(device)
            row = {
                "device": describe_device(device), "dtype": "bfloat16" if cuda else "float32", "commit": commit,
                "model": model["size"], "version": model["version"], "predictor": f"{model['pred_depth']}x{model['pred_embed_dim']}",
                "size": size, "crop": crop, "frames": frames, "batch": batch, "layout": layout,
                "splits": splits_tag(AttentionSettings.create(LAYOUTS[layout])), "predictor_area": int(args.predictor_area),
                "activation_checkpointing": int(args.activation_checkpointing), "compile": str(args.compile).lower(),
                "status": "ok" if measured else "oom",
            }
            if measured is None:
                print(f"{size:>10} {layout:>6}: out of memory at batch {batch}", flush=True)
                rows.append(row)
                continue
            row.update(measured)
            if layout == "full":
                full_ms = row["step_ms"]
            tflops = row["gflop_step"] / row["step_ms"]  # GFLOP / ms = TFLOP/s
            row.update(
                step_ms=round(row["step_ms"], 3), min_ms=round(row["min_ms"], 3),
                peak_mem_mib=round(row["peak_mem_mib"], 1),
                mem_kind="cuda_max_allocated" if cuda else "cpu_process_maxrss",
                gflop_step=round(row["gflop_step"], 4), attention_gflop=round(row["attention_gflop"], 4),
                tflops=round(tflops, 5), peak_tflops=round(peak, 5), mfu=round(tflops / peak, 5),
                ratio_vs_full=round(measured["step_ms"] / full_ms, 4) if full_ms else float("nan"),
                loss=round(row["loss"], 5),
            )
            rows.append(row)
            print(f"{size:>10} {layout:>6} ({row['backend']:>6}) batch {batch:>3} context {row['context_per_set']:>9}: "
                  f"{row['step_ms']:10.2f} ms  x{row['ratio_vs_full']:.3f} of full  {tflops:8.4f} TFLOP/s  "
                  f"MFU {tflops / peak:6.1%}  peak {row['peak_mem_mib']:.0f} MiB", flush=True)
    return rows


def print_table(rows: list[dict]) -> None:
    cols = [("size", "size"), ("layout", "layout"), ("batch", "batch"), ("context_tokens", "ctx tok"),
            ("step_ms", "step ms"), ("ratio_vs_full", "area/full"), ("peak_mem_mib", "peak MiB"),
            ("gflop_step", "GFLOP"), ("tflops", "TFLOP/s"), ("mfu", "MFU"), ("status", "status")]
    table = [[h for _, h in cols]] + [[str(r.get(k, "")) for k, _ in cols] for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(cols))]
    for j, line in enumerate(table):
        print("  ".join(cell.rjust(w) for cell, w in zip(line, widths)))
        if j == 0:
            print("  ".join("-" * w for w in widths))


def plot_speedup(rows: list[dict], out_dir) -> Path:
    """Speedup of the whole step (full time / area time) against visible tokens per clip."""
    plt = pyplot()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ok = [r for r in rows if r.get("status") == "ok" and r["layout"] != "full"]
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for j, layout in enumerate(dict.fromkeys(r["layout"] for r in ok)):
        sel = sorted((r for r in ok if r["layout"] == layout), key=lambda r: int(r["context_tokens"]))
        xs = [int(r["context_tokens"]) for r in sel]
        ys = [1.0 / float(r["ratio_vs_full"]) for r in sel]
        ax.plot(xs, ys, "o-", color=f"C{j}", label=f"area {layout} ({sel[0]['splits']})")
        for r, x, y in zip(sel, xs, ys) if j == 0 else ():  # the sizes, once
            ax.annotate(f"{r['size']} x{r['batch']}", (x, y), fontsize=7, textcoords="offset points", xytext=(4, -11))
    ax.axhline(1.0, color="gray", lw=0.8, ls="--")
    tokens = sorted({int(r["context_tokens"]) for r in ok})
    if tokens and tokens[-1] > 4 * tokens[0]:
        ax.set_xscale("log")
    ax.set_xticks(tokens, [str(t) for t in tokens], fontsize=8)
    ax.minorticks_off()
    ax.set_xlabel("visible (context) tokens per clip, summed over mask sets")
    ax.set_ylabel("training step speedup (full / area)")
    if ok:
        ax.set_title(f"Full V-JEPA 2 step, {ok[0]['model']} ({ok[0]['device']}, {ok[0]['dtype']})", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = out_dir / "train_step_speedup.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"wrote {path}")
    return path


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cuda = torch.cuda.is_available()
    add_run_args(p)
    add_model_args(p)
    add_size_args(p)
    p.add_argument("--vjepa2-batch", type=int, default=24, help="batch of the 'vjepa2' size (256px/16f)")
    p.add_argument("--find-max-batch", action="store_true", help="CUDA: largest batch that fits, from the size's batch")
    p.add_argument("--max-batch", type=int, default=1024, help="stop --find-max-batch here")
    p.add_argument("--predictor-area", action="store_true", help="area attention in the predictor too")
    p.add_argument("--compile", nargs="?", const=True, default=False, metavar="MODE",
                   help="torch.compile the encoder, predictor and target encoder (optionally a mode: "
                        "reduce-overhead records CUDA graphs)")
    p.add_argument("--peak-size", type=int, default=8192 if cuda else 1024, help="matmul size for the peak")
    p.add_argument("--csv", default="bench_train_step.csv")
    p.add_argument("--profile", action="store_true", help="also time attention vs MLP per encoder layer")
    p.add_argument("--profile-csv", default="profile_layers.csv")
    p.add_argument("--profile-layers", nargs="+", type=int, help="only these encoder layers (default: all)")
    p.add_argument("--plot", metavar="DIR", help="write PNG charts here (needs matplotlib)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.sizes = sizes_from_args(args, list(SIZES) + [VJEPA2])
    if "full" in args.layouts:  # ratios need the baseline first
        args.layouts = ["full"] + [x for x in args.layouts if x != "full"]
    if args.find_max_batch and not args.device.startswith("cuda"):
        print("--find-max-batch only applies on CUDA; using the sizes' batches.")
    if args.plot:
        pyplot()  # fail before the run, not after it
    rows = run(args)
    print_table(rows)
    write_csv(rows, args.csv)
    profile = []
    if args.profile:
        device = torch.device(args.device)
        for row in [r for r in rows if r["layout"] == args.layouts[0] and r["status"] == "ok"]:
            profile += profile_layers(model_from_args(args), args.layouts, row["crop"], row["frames"], row["batch"],
                                      device, args.warmup, args.iters, args.profile_layers, args.backend, args.seed,
                                      row["size"])
        write_csv(profile, args.profile_csv)
    if args.plot:
        plot_speedup(rows, args.plot)
        if profile:
            plot_layers(profile, args.plot)
    return rows, profile


if __name__ == "__main__":
    main()
