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

The shared pieces live in ``stjepa/utils/bench.py`` and ``stjepa/utils/layer_profile.py``.

    python scripts/profile_layers.py --sizes 256px/16f                   # ViT-L, full/2x2x2/2x2x1
    python scripts/profile_layers.py --model vit_tiny --crop 64 --frames 8 --batch 2 --csv p.csv
"""
from __future__ import annotations

import argparse

import torch

from stjepa.utils.bench import (DEFAULT_LAYOUTS, LAYOUTS, add_model_args, add_size_args, model_from_args, size_args,
                                sizes_from_args, write_csv)
from stjepa.utils.layer_profile import plot_layers, profile_layers


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
