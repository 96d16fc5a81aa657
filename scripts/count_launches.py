"""Operations (~ GPU kernel launches) and host syncs of one V-JEPA 2 training step, counted on
the CPU.

One step as train.py runs it (bench_train_step.py's step: target encoder forward, context
encoder, predictor, loss, backward, AdamW, EMA update) is run once to warm up and once under
:class:`~stjepa.utils.op_count.OpCounter` and :class:`~stjepa.utils.host_syncs.HostSyncCounter`.
Width and head count do not change the number of operations, only their size, so the models
are narrow (width 8, one head) at the real depths (ViT-L: 24 encoder layers, 12-layer
predictor); that keeps the 64-frame sizes cheap on a CPU. The CPU picks its own attention
backends (area: padded / equal; a GPU would use varlen / equal), so area counts are the CPU's.
With ``--device cuda`` the models have their real width and the profiler also counts what the
GPU saw: kernel launches (``cudaLaunchKernel`` and its variants) and stream / device syncs.

    python scripts/count_launches.py --sizes 256px/16f-b4 --layouts full 2x2 --csv counts.csv
    python scripts/count_launches.py --device cuda --sizes 256px/16f-b4 --csv gpu_counts.csv
"""
from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile
from bench_train_step import build_training, make_batch, make_train_step

from stjepa.optim import adamw
from stjepa.utils.bench import LAYOUTS, attention_settings, model_settings, size_args, write_csv
from stjepa.utils.host_syncs import HostSyncCounter
from stjepa.utils.op_count import OpCounter
from stjepa.utils.timing import git_commit

SIZES = {"256px/16f-b4": (256, 16, 4), "256px/16f-b24": (256, 16, 24), "256px/64f-b1": (256, 64, 1),
         "384px/64f-b1": (384, 64, 1)}
NARROW = dict(embed_dim=8, num_heads=1, pred_width=8, pred_heads=1)
LAUNCHES = ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx")
SYNCS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize")


def profiled_counts(step) -> dict:
    """Kernel launches and syncs of one call of ``step`` on CUDA, from the profiler's runtime events."""
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    names = [e.name for e in prof.events()]
    return dict(kernel_launches=sum(n in LAUNCHES for n in names),
                device_syncs=sum(n in SYNCS for n in names) - 1)  # less the synchronize above


def count_step(size: str, crop: int, frames: int, batch: int, layout: str, model_size: str,
               device: torch.device = torch.device("cpu")) -> dict:
    cuda = device.type == "cuda"
    narrow = {} if cuda else dict(NARROW)  # a GPU can afford the real width
    model = model_settings(model_size, pred_width=narrow.pop("pred_width", None),
                           pred_heads=narrow.pop("pred_heads", None), **narrow)
    module, _ = build_training(model, attention_settings(layout), crop, frames, device)
    # the GPU step's fused AdamW (the CPU default, foreach, reads every parameter's step count)
    optimizer = adamw((module.encoder, module.predictor), module.optim, fused=True)
    step = make_train_step(module, optimizer, make_batch(module, batch, device, pad=True))  # the static step
    step()  # the first step creates the optimizer state
    with HostSyncCounter() as syncs, OpCounter() as ops:
        step()
    row = dict(size=size, layout=layout, model=model_size, width=module.encoder.embed_dim, depth=module.encoder.depth,
               pred_depth=module.predictor.depth, operations=ops.total, scalar_reads=ops.scalar_reads,
               host_syncs=syncs.total, sync_places="; ".join(f"{p} x{n}" for p, n in sorted(syncs.by_place.items())))
    if cuda:
        row.update(profiled_counts(step))
    return row | dict(device=str(device), commit=git_commit())


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", default=list(SIZES),
                   help=f"{', '.join(SIZES)}, or '<crop>px/<frames>f-b<batch>'")
    p.add_argument("--layouts", nargs="+", choices=list(LAYOUTS), default=["full", "2x2", "2x2x2"])
    p.add_argument("--model", default="vit_large")
    p.add_argument("--device", default="cpu")
    p.add_argument("--csv", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    rows = []
    for size in args.sizes:
        crop, frames, batch = SIZES.get(size) or (*size_args(size.rsplit("-b", 1)[0])[:2], int(size.rsplit("-b", 1)[1]))
        for layout in args.layouts:
            row = count_step(size, crop, frames, batch, layout, args.model, torch.device(args.device))
            rows.append(row)
            print(f"{size:>14} {layout:>6}: {row['operations']:6d} operations, {row['scalar_reads']:3d} "
                  f"_local_scalar_dense, {row['host_syncs']:3d} host syncs ({row['sync_places']})"
                  + (f"; {row['kernel_launches']} kernel launches, {row['device_syncs']} device syncs"
                     if "kernel_launches" in row else ""), flush=True)
    if args.csv:
        write_csv(rows, args.csv)


if __name__ == "__main__":
    main()
