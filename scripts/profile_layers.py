"""Per-layer forward+backward time of the context encoder, split into attention and MLP,
full vs area attention.

What is timed (``attention_ms``, ``mlp_ms``: forward + backward of each sub-path on the real
inputs of that layer, summed over the V-JEPA 2 mask sets) is described in
``stjepa/utils/layer_profile.py``, which also serves ``bench_train_step.py --profile``.

    python scripts/profile_layers.py --sizes 256px/16f                   # ViT-L, full/2x2x2/2x2x1
    python scripts/profile_layers.py --model vit_tiny --crop 64 --frames 8 --batch 2 --csv p.csv
"""
from __future__ import annotations

import argparse

import torch

from stjepa.utils.bench import (add_model_args, add_run_args, add_size_args, model_from_args, size_args,
                                sizes_from_args, write_csv)
from stjepa.utils.layer_profile import plot_layers, profile_layers


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_args(p)
    add_model_args(p)
    add_size_args(p)
    p.add_argument("--layers", nargs="+", type=int, help="only these encoder layers (default: all)")
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
