"""What the benchmark and profiling scripts share: named sizes and layouts, model settings from
``conf/``, the pretraining module as train.py builds it, V-JEPA 2 masks, autocast, command-line
arguments, CSV and plot output."""
from __future__ import annotations

import argparse
import csv
import gc
import re
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from ..data.masks import STATIC_SLOTS, V_JEPA2_MASKS, MaskCollator
from ..models.versions import DEFAULT_VERSION, GENERATIONS

ROOT = Path(__file__).resolve().parents[2]

SIZES = {  # name: (crop px, frames, batch), the published ST-A² sweep
    "256px/16f": (256, 16, 4),
    "384px/16f": (384, 16, 2),
    "256px/64f": (256, 64, 1),
    "384px/64f": (384, 64, 1),
}
ATTENTION_PRESETS = ROOT / "conf" / "attention"
# layouts the benchmarks name that have no preset file: a preset's name and the settings changed
AREA_VARIANTS = {"2x2x1": ("2x2x2", {"width_splits": 1})}


def layout_name(preset: str) -> str:
    """The benchmarks' name of a conf/attention preset: 'area_2x2' -> '2x2', 'nbhd_3x7x7' ->
    'nbhd3x7x7'; a preset named otherwise ('full', 'area_2x2_shift') keeps its name."""
    match = re.fullmatch(r"(?:area_)?([a-z]*)_?(\d+(?:x\d+)*)", preset)
    return match.group(1) + match.group(2) if match else preset


def preset_layouts(variants: dict[str, tuple[str, dict]] | None = None) -> dict[str, dict]:
    """name -> the encoder's attention settings of every preset in conf/attention (as composed
    over full.yaml, without the predictor entry), by :func:`layout_name`, plus ``variants``."""
    full = OmegaConf.to_container(OmegaConf.load(ATTENTION_PRESETS / "full.yaml"))
    full.pop("predictor")
    layouts = {}
    for path in sorted(ATTENTION_PRESETS.glob("*.yaml"), key=lambda p: (p.stem != "full", p.stem)):
        preset = OmegaConf.to_container(OmegaConf.load(path))
        preset.pop("defaults", None)
        preset.pop("predictor", None)
        layouts[layout_name(path.stem)] = {**full, **preset}
    for name, (base, changes) in (variants or {}).items():
        layouts[name] = {**layouts[base], **changes}
    return layouts


LAYOUTS = preset_layouts(AREA_VARIANTS)
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
    ``predictor_area`` the predictor gets the same layout (its own [0, 18/24 depth) layers)."""
    encoder = dict(LAYOUTS[layout], backend=backend)
    return {**encoder, "predictor": dict(encoder) if predictor_area else {}}


def splits_tag(attention) -> str:
    """An :class:`~stjepa.models.AttentionSettings`'s area splits as 't2h2w2' ('-' for kinds without splits)."""
    splits = getattr(attention.built_kind, "splits", None)
    return "-" if splits is None else splits.tag


def model_settings(size: str = "vit_large", pred_depth: int | None = None, pred_width: int | None = None,
                   pred_heads: int | None = None, activation_checkpointing: bool = False, **encoder) -> dict:
    """conf/model/<size>.yaml (predictor depth/width/heads included) with overrides; a size without
    a file takes the default group's other keys, as ``train.py model.size=<size>`` does."""
    has_file = (ROOT / "conf" / "model" / f"{size}.yaml").exists()
    cfg = compose_train_config([f"model={size}" if has_file else f"model.size={size}"])
    model = OmegaConf.to_container(cfg.model, resolve=True)
    model.update(init_from=None, use_activation_checkpointing=activation_checkpointing)
    for key, value in dict(pred_depth=pred_depth, pred_embed_dim=pred_width, pred_num_heads=pred_heads,
                           **encoder).items():
        if value is not None:
            model[key] = value
    return model


def draw_masks(grid, batch: int, seed: int, device, pad: bool = False,
               slots: str | float = STATIC_SLOTS) -> tuple[list, list]:
    """V-JEPA 2 short_range + long_range masks: (context, target) index lists, one per mask set
    (``pad``: padded to their static lengths under the ``slots`` rule, as a run with static_masks
    draws them)."""
    masks_enc, masks_pred = MaskCollator(grid, V_JEPA2_MASKS, pad, slots)(batch, torch.Generator().manual_seed(seed))
    return [m.to(device) for m in masks_enc], [m.to(device) for m in masks_pred]


def autocast(device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


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


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="vit_large", help="encoder size (conf/model/<size>.yaml)")
    p.add_argument("--depth", type=int, help="encoder depth override (CPU smoke runs)")
    p.add_argument("--predictor-depth", type=int)
    p.add_argument("--predictor-width", type=int)
    p.add_argument("--predictor-heads", type=int)
    p.add_argument("--activation-checkpointing", action="store_true")
    p.add_argument("--version", choices=list(GENERATIONS), default=DEFAULT_VERSION,
                   help="model.version (2.1: 4 levels, context loss)")


def model_from_args(args) -> dict:
    return model_settings(args.model, args.predictor_depth, args.predictor_width, args.predictor_heads,
                          args.activation_checkpointing, depth=args.depth, version=args.version)


def add_run_args(p: argparse.ArgumentParser) -> None:
    """Device, layouts, backend and timing arguments of the step and layer benchmarks."""
    cuda = torch.cuda.is_available()
    p.add_argument("--device", default="cuda" if cuda else "cpu")
    p.add_argument("--layouts", nargs="+", choices=list(LAYOUTS), default=DEFAULT_LAYOUTS)
    p.add_argument("--backend", default="auto", help="area attention backend (attention.backend)")
    p.add_argument("--warmup", type=int, default=3 if cuda else 1)
    p.add_argument("--iters", type=int, default=10 if cuda else 3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, help="CPU threads (torch.set_num_threads); default: torch's")


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


def compose_train_config(overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """train.py's config with ``overrides``, composed as train.py composes it (no run directory)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from ..resolvers import register_resolvers

    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def build_pretrain_module(model: dict, attention: dict, crop: int, frames: int, compile: bool | str = False):
    """``JEPAPretrainModule`` as train.py instantiates it, from ``cfg.module`` of the composed
    config with ``model`` and ``attention`` set over their groups; ``optim`` is conf/train.yaml's."""
    from ..preflight import instantiate_checked

    cfg = compose_train_config([f"data.crop_size={crop}", f"data.frames_per_clip={frames}",
                                f"compile={str(compile).lower()}"])
    cfg.model = OmegaConf.merge(cfg.model, model)
    cfg.attention = OmegaConf.merge(cfg.attention, attention)
    return instantiate_checked(cfg.module, _convert_="all")


def free_memory(device: torch.device) -> None:
    """Release what earlier runs left (and reset the CUDA peak), so the next one starts clean."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
