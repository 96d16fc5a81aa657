"""What static shapes cost and buy: one training step (bench_train_step.py's step) timed with the
masks truncated only (shapes change from batch to batch), padded to their static lengths under the
default static_slots rule (what training draws) and to the exact bound (``static_slots=bound``),
and padded under ``torch.compile`` (fullgraph, the module's ``compile=true``).

The variants' steps are interleaved (step i of every variant, then step i + 1), so load from
other work on a shared machine falls on all of them alike; each step draws fresh masks (a new
seed per step). The first step of each variant is a warm-up, and the compiled variant's first
step, the compilation, is reported apart. Per row: the padded fraction of the context and target
slots (over ``--draws`` draws, under the default static_slots rule), the median step time and its
ratio to the padded eager step of the same size in the same run.

    python scripts/bench_static_step.py --sizes 64px/8f-b8 --layouts full 2x2 --csv out.csv
    python scripts/bench_static_step.py --padding-only --model vit_large --sizes 256px/16f-b4 --slots bound 0.05
        # fractions only: padding and real tokens kept vs the official truncation, per static_slots rule
"""
from __future__ import annotations

import argparse
import time

import torch
from bench_train_step import build_training, make_batch, make_train_step

from stjepa.data.masks import STATIC_SLOTS, V_JEPA2_MASKS, MaskCollator, check_slots_rule
from stjepa.utils.bench import attention_settings, model_settings, size_args, write_csv
from stjepa.utils.timing import describe_device, git_commit

# padded and compiled: the default static_slots rule; bound: eager, padded to the exact worst case
VARIANTS = ("truncated", "padded", "bound", "compiled")


def padded_fraction(grid, batch: int, draws: int, slots_rule=STATIC_SLOTS) -> dict:
    """Over ``draws`` batches (seeds 0, 1, ...): the fraction of the context and of the target slots
    that are padding, and the real tokens kept relative to the official truncation of the same
    draw (the unpadded lists)."""
    collator = MaskCollator(grid, V_JEPA2_MASKS, pad=True, slots=slots_rule)
    official = MaskCollator(grid, V_JEPA2_MASKS)
    sums = {f"{what}_{k}": 0 for what in ("padding", "slots", "real", "official") for k in ("context", "target")}
    for seed in range(draws):
        padded = collator(batch, torch.Generator().manual_seed(seed))
        plain = official(batch, torch.Generator().manual_seed(seed))
        for name, masks, reference in zip(("context", "target"), padded, plain):
            sums[f"padding_{name}"] += sum(int((m < 0).sum()) for m in masks)
            sums[f"slots_{name}"] += sum(m.numel() for m in masks)
            sums[f"real_{name}"] += sum(int((m >= 0).sum()) for m in masks)
            sums[f"official_{name}"] += sum(m.numel() for m in reference)
    out = {"slots_rule": slots_rule}
    for k in ("context", "target"):
        out[f"padded_{k}"] = round(sums[f"padding_{k}"] / sums[f"slots_{k}"], 4)
        out[f"kept_{k}_vs_official"] = round(sums[f"real_{k}"] / sums[f"official_{k}"], 4)
    return out | {"context_slots": "+".join(str(g.slots(batch)[0]) for g in collator.generators),
                  "target_slots": "+".join(str(g.slots(batch)[1]) for g in collator.generators)}


def slots_arg(text: str):
    """A --slots value: "bound" or a quantile."""
    return check_slots_rule(text if text == "bound" else float(text))


def time_variants(model, layout, crop, frames, batch, variants, iters) -> dict[str, dict]:
    """Per variant: its first step's time and the median of the next ``iters``, interleaved."""
    cpu = torch.device("cpu")
    steps = {v: build_training(model, attention_settings(layout), crop, frames, cpu, compile=v == "compiled")
             for v in variants}
    times = {v: [] for v in variants}
    for i in range(iters + 1):
        for variant, (module, optimizer) in steps.items():
            batch_data = make_batch(module, batch, cpu, seed=i, pad=variant != "truncated",
                                    slots="bound" if variant == "bound" else STATIC_SLOTS)
            step = make_train_step(module, optimizer, batch_data)
            start = time.perf_counter()
            step()
            times[variant].append((time.perf_counter() - start) * 1e3)
    out = {}
    for variant, t in times.items():
        steady = sorted(t[1:])
        out[variant] = {"first_step_ms": round(t[0], 1), "step_ms": round(steady[len(steady) // 2], 2)}
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", default=["64px/8f-b8"], help="'<crop>px/<frames>f-b<batch>'")
    p.add_argument("--layouts", nargs="+", default=["full"])
    p.add_argument("--model", default="vit_tiny")
    p.add_argument("--pred-depth", type=int, default=None, help="predictor depth (synthetic_motion: 1)")
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--padding-only", action="store_true", help="only the padded fractions (no model, no timing)")
    p.add_argument("--slots", nargs="+", default=[STATIC_SLOTS], type=slots_arg,
                   help="static_slots rules to measure the padding of: bound and/or quantiles q in (0, 1]")
    p.add_argument("--draws", type=int, default=20, help="mask draws per size for the padded fractions")
    p.add_argument("--csv", default=None)
    args = p.parse_args(argv)
    commit, device = git_commit(), describe_device(torch.device("cpu"))
    model = model_settings(args.model, pred_depth=args.pred_depth)
    rows = []
    for size in args.sizes:
        crop, frames = size_args(size.rsplit("-b", 1)[0])[:2]
        batch = int(size.rsplit("-b", 1)[1])
        grid = (frames // model["tubelet_size"], crop // model["patch_size"], crop // model["patch_size"])
        for rule in args.slots:
            fractions = padded_fraction(grid, batch, args.draws, rule)
            print(f"{size}: {fractions}", flush=True)
            if args.padding_only:
                rows.append(dict(size=size, model=args.model, draws=args.draws, **fractions, commit=commit))
        if args.padding_only:
            continue
        for layout in args.layouts:
            timed = time_variants(model, layout, crop, frames, batch, args.variants, args.iters)
            base = timed.get("padded", {}).get("step_ms")
            for variant, measured in timed.items():
                row = dict(size=size, layout=layout, model=args.model, pred_depth=model["pred_depth"], variant=variant,
                           **fractions, **measured)
                row["ratio_vs_padded_eager"] = round(row["step_ms"] / base, 3) if base else ""
                rows.append(row | dict(device=device, dtype="float32", commit=commit))
                print(f"{size} {layout:>6} {variant:>9}: first step {row['first_step_ms']:9.1f} ms, "
                      f"median {row['step_ms']:8.2f} ms", flush=True)
    if args.csv:
        write_csv(rows, args.csv)


if __name__ == "__main__":
    main()
