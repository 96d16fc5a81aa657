"""Forward+backward time of the attention core and of one encoder layer, full vs local attention
(area layouts, neighborhood windows, sliding tiles, top-k blocks), each with every backend that
applies.

Token counts follow the published ST-A² sweep (25% of the tokens of 256px/16f, 384px/16f,
256px/64f and 384px/64f visible) plus the unmasked 384px/64f grid; ViT-L heads (16 x 64).
bf16 on CUDA, fp32 on CPU. Tokens are ordered as the encoder runs them (area-sorted, grid order
for neighborhood windows, tile-sorted for sliding tiles and top-k blocks). Ratios are local time / full time measured in the same run.

Masks: ``random`` keeps a uniform 25% of tokens per clip (areas come out unequal, as with
V-JEPA masks: the varlen/padded paths); ``balanced`` (area layouts only) keeps the same number
of tokens in every area (the equal-area fast path).

    python scripts/bench_attention.py                       # all sizes that suit the device
    python scripts/bench_attention.py --sizes 256px/16f --iters 5 --csv out.csv
"""
from __future__ import annotations

import argparse
import csv

import torch

from stjepa.models import AttentionSettings
from stjepa.models.kinds.area import AreaKind, area_index
from stjepa.models.attention_backends import attend
from stjepa.models.grid import grid_positions
from stjepa.models.kinds import DENSE_MAX_TOKENS
from stjepa.models.layers import Block
from stjepa.models.rope import RopeTables
from stjepa.utils.bench import free_memory, preset_layouts, write_csv
from stjepa.utils.timing import describe_device, git_commit, time_ms

GRIDS = {  # name: (token grid, visible fraction); tubelet 2, patch 16
    "256px/16f": ((8, 16, 16), 0.25),
    "384px/16f": ((8, 24, 24), 0.25),
    "256px/64f": ((32, 16, 16), 0.25),
    "384px/64f": ((32, 24, 24), 0.25),
    "384px/64f-full": ((32, 24, 24), 1.0),
}
# every single-kind preset of conf/attention (stages mix kinds), by the benchmarks' names, and
# variants without a preset file
LAYOUTS = {name: settings for name, settings in preset_layouts({
    "4x2x2": ("2x2x2", {"temporal_splits": 4}), "nbhd3x5x5": ("nbhd3x7x7", {"window": [3, 5, 5]})}).items()
    if not settings["stages"]}
HEADS, HEAD_DIM = 16, 64


def layout_config(name: str, backend: str = "auto") -> AttentionSettings | None:
    """The layout's config, None for global attention ('full')."""
    config = AttentionSettings.create({**LAYOUTS[name], "backend": backend})
    return config if config.has_local_layers else None


def visible_ids(grid, fraction, batch, config, mode, seed=0):
    """(B, K) visible token ids: uniform random, or (area layouts) the same count in every area."""
    g = torch.Generator().manual_seed(seed)
    numel = grid[0] * grid[1] * grid[2]
    keep = int(numel * fraction)
    if fraction >= 1.0:
        return torch.arange(numel).expand(batch, numel).clone()
    if mode == "random" or config is None or not isinstance(config.built_kind, AreaKind):
        return torch.stack([torch.randperm(numel, generator=g)[:keep].sort().values for _ in range(batch)])
    splits = config.built_kind.splits
    area = area_index(*grid_positions(torch.arange(numel), grid), grid, splits)
    per_area = keep // splits.num_areas
    rows = []
    for _ in range(batch):
        picks = [torch.nonzero(area == a).flatten() for a in range(splits.num_areas)]
        rows.append(torch.cat([p[torch.randperm(len(p), generator=g)[:per_area]] for p in picks]).sort().values)
    return torch.stack(rows)


def build_layout(ids, grid, config):
    """Order the tokens and build the layout as the encoder does once per forward: the first
    local layer's layout and the grid positions of the ordered tokens."""
    if config is None:
        return None, grid_positions(ids, grid)
    order, layouts = config.built_kind.prepare(ids, grid, config.backend)
    return layouts[0], grid_positions(ids if order is None else ids.gather(1, order), grid)


def backends_for(device, config, mask_mode, which="all"):
    """The backends worth timing: CUDA-only ones on CUDA (flex has no CPU backward), 'equal' on
    balanced areas."""
    if config is None:
        return ["-"]
    if which == "auto":
        return ["auto"]
    names = []
    for name in config.built_kind.BACKENDS:
        if name in ("varlen", "flex") and device.type != "cuda":
            continue
        if name == "equal" and mask_mode != "balanced":
            continue
        names.append(name)
    return names


def run(args):
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    rows = []
    commit = git_commit()
    for size in args.sizes:
        grid, fraction = GRIDS[size]
        for mask_mode in args.masks:
            if fraction >= 1.0 and mask_mode == "balanced":
                continue  # the full grid is balanced already
            full_time: dict[str, float] = {}
            for layout_name in args.layouts:
                config = layout_config(layout_name)
                if mask_mode == "balanced" and config is not None and not isinstance(config.built_kind, AreaKind):
                    continue  # balanced is about areas
                ids = visible_ids(grid, fraction, args.batch, config, mask_mode).to(device)
                N = ids.shape[1]
                for backend in backends_for(device, config, mask_mode, args.backends):
                    requested = backend if backend != "-" else "auto"
                    run_config = layout_config(layout_name, requested)
                    try:
                        run_config.validate(1, grid) if run_config is not None else None
                        layout, pos = build_layout(ids, grid, run_config)
                    except ValueError as exc:  # e.g. 'equal' on unequal areas, a window larger than the grid
                        print(f"skip {size} {layout_name} {backend}: {exc}")
                        continue
                    if layout is not None and layout.backend == "dense" and N > DENSE_MAX_TOKENS:
                        print(f"skip {size} {layout_name} {backend}: the dense reference's N x N mask at {N} tokens")
                        continue
                    build = time_ms(lambda: build_layout(ids, grid, run_config), device, warmup=1,
                                    iters=3)["median_ms"] if layout is not None else 0.0
                    rope = RopeTables.from_positions(*pos, HEAD_DIM, dtype)
                    for part in args.parts:
                        fn = make_step(part, args.batch, N, layout, rope, device, dtype)
                        t = time_ms(fn, device, warmup=args.warmup, iters=args.iters)
                        key = f"{part}"
                        if layout_name == "full":
                            full_time[key] = t["median_ms"]
                        ratio = t["median_ms"] / full_time[key] if key in full_time else float("nan")
                        row = dict(
                            device=describe_device(device), dtype=str(dtype).replace("torch.", ""), commit=commit,
                            size=size, tokens=N, batch=args.batch, mask=mask_mode, layout=layout_name,
                            kind=config.kind if config is not None else "full",
                            backend=layout.backend if layout is not None else "sdpa",
                            requested=backend, part=part, median_ms=round(t["median_ms"], 4),
                            min_ms=round(t["min_ms"], 4), layout_build_ms=round(build, 4),
                            ratio_vs_full=round(ratio, 3),
                        )
                        rows.append(row)
                        print(f"{size:>15} {mask_mode:>8} N={N:>5} {layout_name:>6} {row['backend']:>7} "
                              f"({backend:>6}) {part:>5}: {t['median_ms']:9.3f} ms  x{ratio:.3f} of full", flush=True)
                    del layout
                    free_memory(device)
    return rows


def make_step(part, batch, tokens, layout, rope, device, dtype):
    """A closure doing forward + backward of the attention core or of a whole block."""
    if part == "core":
        q, k, v = (torch.randn(batch, HEADS, tokens, HEAD_DIM, device=device, dtype=dtype, requires_grad=True)
                   for _ in range(3))
        grad = torch.randn(batch, HEADS, tokens, HEAD_DIM, device=device, dtype=dtype)

        def step():
            attend(q, k, v, layout).backward(grad)
            q.grad = k.grad = v.grad = None

        return step
    block = Block(HEADS * HEAD_DIM, HEADS).to(device)
    x = torch.randn(batch, tokens, HEADS * HEAD_DIM, device=device, requires_grad=True)
    grad = torch.randn_like(x)

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            out = block(x, rope, layout)
        out.float().backward(grad)
        block.zero_grad(set_to_none=True)
        x.grad = None

    return step


def markdown(rows) -> str:
    """The CSV rows as one table per part: ms (ratio to full) per size, layout and backend."""
    out = []
    for part in dict.fromkeys(r["part"] for r in rows):
        out += [f"**{part}** (forward + backward, median ms; local/full: the ratio to full attention measured in the same run)", "",
                "| size | tokens | mask | full | layout | backend | ms | local/full |", "|---|---|---|---|---|---|---|---|"]
        full = {(r["size"], r["mask"]): r for r in rows if r["part"] == part and r["layout"] == "full"}
        for r in rows:
            if r["part"] != part or r["layout"] == "full":
                continue
            f = full[(r["size"], r["mask"])]
            backend = r["backend"] if r["requested"] in ("auto", r["backend"]) else r["requested"]
            backend += " (auto)" if r["requested"] == "auto" else ""
            out.append(f"| {r['size']} | {r['tokens']} | {r['mask']} | {float(f['median_ms']):.1f} | {r['layout']} | "
                       f"{backend} | {float(r['median_ms']):.1f} | {float(r['ratio_vs_full']):.2f} |")
        out.append("")
    return "\n".join(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cuda = torch.cuda.is_available()
    p.add_argument("--device", default="cuda" if cuda else "cpu")
    p.add_argument("--sizes", nargs="+", choices=list(GRIDS),
                   default=list(GRIDS) if cuda else ["256px/16f", "384px/16f", "256px/64f", "384px/64f"])
    p.add_argument("--layouts", nargs="+", choices=list(LAYOUTS), default=list(LAYOUTS))
    p.add_argument("--backends", choices=["all", "auto"], default="all",
                   help="every backend that applies to a layout, or only what 'auto' picks")
    p.add_argument("--masks", nargs="+", choices=["random", "balanced"], default=["random", "balanced"])
    p.add_argument("--parts", nargs="+", choices=["core", "layer"], default=["core", "layer"])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--warmup", type=int, default=3 if cuda else 1)
    p.add_argument("--iters", type=int, default=20 if cuda else 3)
    p.add_argument("--csv", default="bench_attention.csv")
    p.add_argument("--markdown", metavar="CSV", help="only print the tables of an earlier run's CSV")
    args = p.parse_args(argv)
    if args.markdown:
        print(markdown(list(csv.DictReader(open(args.markdown)))))
        return
    if args.layouts[0] != "full":
        args.layouts = ["full"] + [x for x in args.layouts if x != "full"]  # ratios need the baseline first
    write_csv(run(args), args.csv)


if __name__ == "__main__":
    main()
