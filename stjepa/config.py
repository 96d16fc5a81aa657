"""Checks of a composed config before any expensive work. Each problem is one sentence that
names the key and what is allowed."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from .models.attention_config import AttentionConfig
from .models.factory import split_attention
from .models.masks import MaskSpec
from .models.vision_transformer import VIT_SIZES
from .pretrain import NONFINITE_ACTIONS
from .schedules import LR_SCHEDULES


class ConfigError(ValueError):
    """A configuration value that cannot work; the message names the key."""


def _positive_int(value: Any, key: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{key} must be an integer >= {minimum}, got {value!r}.")
    return value


def _world_size(trainer: DictConfig) -> int:
    devices = trainer.get("devices", 1)
    if isinstance(devices, str):
        if devices == "auto" or devices == "-1":
            return 1  # decided by Lightning at start; checked again by the data module
        devices = [d for d in devices.split(",") if d.strip()] if "," in devices else int(devices)
    count = len(devices) if OmegaConf.is_list(devices) or isinstance(devices, list) else int(devices)
    return max(count, 1) * int(trainer.get("num_nodes", 1))


def check_model(model: DictConfig, attention: DictConfig | dict, frames: int, crop: int) -> None:
    """Model, input size and attention layout; shared by training and probing."""
    size = model.get("size")
    if size not in VIT_SIZES:
        raise ConfigError(f"model.size={size!r} is not known; allowed values are {', '.join(VIT_SIZES)}.")
    tubelet = _positive_int(model.get("tubelet_size"), "model.tubelet_size")
    patch = _positive_int(model.get("patch_size"), "model.patch_size")
    _positive_int(frames, "data.frames_per_clip")
    _positive_int(crop, "data.crop_size")
    if frames % tubelet:
        raise ConfigError(f"data.frames_per_clip={frames} must be a multiple of model.tubelet_size={tubelet}.")
    if crop % patch:
        raise ConfigError(f"data.crop_size={crop} must be a multiple of model.patch_size={patch}.")
    dim, depth, heads, _, _ = VIT_SIZES[size]
    depth = model.get("depth") or depth
    dim, heads = model.get("embed_dim") or dim, model.get("num_heads") or heads
    if dim % heads:
        raise ConfigError(f"model.embed_dim={dim} must be divisible by model.num_heads={heads}.")
    grid = (frames // tubelet, crop // patch, crop // patch)
    encoder_attention, predictor_attention = split_attention(
        OmegaConf.to_container(attention, resolve=True) if OmegaConf.is_config(attention) else attention)
    pred_depth = model.get("pred_depth", 12)
    for settings, layers, prefix in ((encoder_attention, depth, "attention"),
                                     (predictor_attention, pred_depth, "attention.predictor")):
        try:
            AttentionConfig.create(settings).validate(layers, grid)
            AttentionConfig.create(settings).pattern(layers)
        except ValueError as exc:
            raise ConfigError(str(exc).replace("attention.", f"{prefix}.", 1)) from None
    if model.get("pred_embed_dim", 384) % model.get("pred_num_heads", 12):
        raise ConfigError(f"model.pred_embed_dim={model.get('pred_embed_dim')} must be divisible by "
                          f"model.pred_num_heads={model.get('pred_num_heads')}.")
    init_from = model.get("init_from")
    if init_from and not Path(init_from).is_file():
        raise ConfigError(f"model.init_from={init_from!r} does not exist; give the path of a V-JEPA 2 .pt or "
                          f"a train.py .ckpt.")


def check_required(cfg: DictConfig) -> None:
    missing = sorted(f"{key}.{m}" for key in cfg if key != "hydra" and OmegaConf.is_config(cfg[key])
                     for m in OmegaConf.missing_keys(cfg[key]))
    if missing:
        raise ConfigError(f"{missing[0]} must be set (it is marked ??? in the config); give it on the command "
                          f"line, e.g. {missing[0]}=...")


def check_train_config(cfg: DictConfig) -> None:
    check_required(cfg)
    data, model, trainer, optim = cfg.data, cfg.model, cfg.trainer, cfg.optim
    check_model(model, cfg.attention, data.get("frames_per_clip"), data.get("crop_size"))
    batch = _positive_int(data.get("batch_size"), "data.batch_size")
    _positive_int(data.get("num_workers", 0), "data.num_workers", 0)
    world = _world_size(trainer)
    train_size = data.get("train_size")
    if train_size is not None and train_size < batch * world:
        raise ConfigError(f"data.batch_size={batch} per device x {world} devices needs at least {batch * world} "
                          f"training clips; data.train_size is {train_size}.")
    if not cfg.get("mask"):
        raise ConfigError("mask needs at least one mask set (for example mask=vjepa2).")
    for name, spec in cfg.mask.items():
        try:
            MaskSpec.create(OmegaConf.to_container(spec, resolve=True))
        except (ValueError, TypeError) as exc:
            raise ConfigError(str(exc).replace("mask.", f"mask.{name}.", 1)) from None
    if optim.lr_schedule not in LR_SCHEDULES:
        raise ConfigError(f"optim.lr_schedule={optim.lr_schedule!r} is not known; allowed values are "
                          f"{', '.join(LR_SCHEDULES)}.")
    for key in ("lr", "start_lr", "final_lr", "weight_decay", "final_weight_decay"):
        if not isinstance(optim[key], (int, float)) or optim[key] < 0:
            raise ConfigError(f"optim.{key} must be a number >= 0, got {optim[key]!r}.")
    if len(optim.ema) != 2 or not all(0.0 <= m <= 1.0 for m in optim.ema):
        raise ConfigError(f"optim.ema must be [start, end] momenta in [0, 1], got {list(optim.ema)}.")
    max_steps, max_epochs = trainer.get("max_steps", -1), trainer.get("max_epochs", -1)
    if (max_steps is None or max_steps <= 0) and (max_epochs is None or max_epochs <= 0):
        raise ConfigError("trainer.max_steps or trainer.max_epochs must be > 0 (training would never end).")
    if cfg.get("anneal") and not (model.get("init_from") or cfg.get("ckpt_path") or cfg.get("resume")):
        raise ConfigError("anneal=true needs pretrained weights: give model.init_from=path/to/vitl.pt (official) "
                          "or a train.py .ckpt, or ckpt_path= to resume.")
    if cfg.get("ckpt_path") and cfg.get("resume"):
        raise ConfigError("ckpt_path and resume=true both choose a checkpoint to resume from; give one of them.")
    if cfg.get("ckpt_path") and not Path(cfg.ckpt_path).is_file():
        raise ConfigError(f"ckpt_path={cfg.ckpt_path!r} does not exist; give a train.py .ckpt file.")
    action = cfg.module.get("on_nonfinite", "stop")
    if action not in NONFINITE_ACTIONS:
        raise ConfigError(f"module.on_nonfinite={action!r} is not known; allowed values are "
                          f"{', '.join(NONFINITE_ACTIONS)}.")
    every = OmegaConf.select(cfg, "callbacks.last_checkpoint.every_n_train_steps")
    if every is not None:
        _positive_int(every, "callbacks.last_checkpoint.every_n_train_steps")
    check_launch(cfg)


def launcher_value(key: str, default: Any = None) -> Any:
    """``${launcher:gpus_per_node,1}``: a setting of the Hydra launcher running this job (the
    submitit SLURM launcher's nodes / gpus_per_node), or ``default`` under launchers without it,
    so the trainer's devices and nodes follow what was asked of SLURM."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return default
    value = OmegaConf.select(HydraConfig.get(), f"launcher.{key}", default=None)
    return default if value is None else value


def default_precision(accelerator: str) -> str:
    """``${default_precision:${.accelerator}}``: bf16 mixed precision on GPUs, fp32 on CPU."""
    return "32-true" if str(accelerator) == "cpu" else "bf16-mixed"


def _is_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def check_launch(cfg: DictConfig) -> None:
    """Multi-process strategies started locally inside a sweep would re-run the whole sweep in
    every child process (Lightning relaunches the command line); under SLURM each task is
    started by srun instead, which is fine."""
    strategy = cfg.trainer.get("strategy", "auto")
    if OmegaConf.is_dict(strategy):  # DDPStrategy / FSDPStrategy objects configured by _target_
        strategy = str(strategy.get("_target_", "")).rsplit(".", 1)[-1].lower()
    strategy = str(strategy)
    spawning = strategy.startswith(("ddp", "fsdp")) and "spawn" not in strategy
    if strategy.startswith("fsdp") and cfg.trainer.get("accelerator") == "cpu":
        raise ConfigError("trainer=fsdp needs GPUs (Lightning's FSDP has no CPU support); use trainer=ddp "
                          "trainer.accelerator=cpu to test data parallelism on CPU.")
    gpus, tasks = launcher_value("gpus_per_node"), launcher_value("tasks_per_node")
    if gpus and tasks is not None and gpus != tasks and strategy.startswith(("ddp", "fsdp")):
        raise ConfigError(f"hydra.launcher.tasks_per_node={tasks} but hydra.launcher.gpus_per_node={gpus}: Lightning "
                          "runs one SLURM task per GPU, so set both to the same number (hydra/launcher=slurm does).")
    if spawning and _world_size(cfg.trainer) > 1 and _is_multirun() and "SLURM_JOB_ID" not in os.environ:
        raise ConfigError(f"trainer.strategy={strategy} with {_world_size(cfg.trainer)} processes cannot start "
                          "inside a local multirun (-m); run each job alone, or sweep with "
                          "hydra/launcher=slurm.")

