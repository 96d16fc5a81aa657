"""Pretraining run: validate the config, build data, module, callbacks and loggers, fit."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from .callbacks import ExportOfficial
from .checkpointing import AtomicCheckpointIO
from .config import check_train_config
from .loggers import build_loggers, flat_config
from .utils.rich_config import print_config_tree

log = logging.getLogger(__name__)


RESUME_IGNORED = ("hydra.", "resume=", "ckpt_path=", "print_config=")


def command_overrides(overrides: list[str] | tuple[str, ...]) -> list[str]:
    """The overrides that define a run (what a re-run of "the same command" repeats)."""
    return sorted(o.lstrip("+~") for o in overrides if not o.lstrip("+~").startswith(RESUME_IGNORED))


def find_resume_checkpoint(cfg: DictConfig) -> str | None:
    """ckpt_path if given. With resume=true: this run directory's last.ckpt, else the newest
    last.ckpt of an earlier run of this task launched with the same overrides (a re-run of the
    same command, or the same job of the same sweep), else none: a fresh start. So a command can
    simply be launched again after a crash."""
    if cfg.get("ckpt_path"):
        return str(cfg.ckpt_path)
    if not cfg.get("resume"):
        return None
    own = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    if own.is_file():
        return str(own)
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    wanted = command_overrides(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    root = Path(cfg.paths.log_dir) / cfg.task_name
    found = []
    for ckpt in root.glob("**/checkpoints/last.ckpt"):
        saved = ckpt.parent.parent / ".hydra" / "overrides.yaml"
        if saved.is_file() and command_overrides(OmegaConf.load(saved)) == wanted:
            found.append(ckpt)
    if not found:  # the first launch of a command that is re-run after a crash or requeue
        log.info("resume=true: no last.ckpt of an earlier run with these overrides under %s; starting from "
                 "scratch.", root)
        return None
    return str(max(found, key=lambda p: p.stat().st_mtime))


def quiet_duplicate_logs() -> None:
    """Lightning adds its own console handler; under Hydra the root logger prints already."""
    if logging.getLogger().handlers:
        for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
            logging.getLogger(name).handlers.clear()
            logging.getLogger(name).propagate = True


def is_launching_process() -> bool:
    """False in the extra processes Lightning starts for multi-device runs (they repeat the
    command line with LOCAL_RANK set) and in SLURM tasks other than the first."""
    return os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("SLURM_PROCID", "0") == "0"


def train(cfg: DictConfig) -> dict[str, Any]:
    quiet_duplicate_logs()
    check_train_config(cfg)
    ckpt_path = find_resume_checkpoint(cfg)
    if cfg.get("print_config", True) and is_launching_process():
        print_config_tree(cfg, save_to=Path(cfg.paths.output_dir) / "config_tree.log")
    L.seed_everything(cfg.seed, workers=True)
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    datamodule = instantiate(cfg.data)
    module = instantiate(cfg.module, _convert_="all")
    datamodule.configure_masking(module.encoder.default_grid, [dict(v) for v in cfg.mask.values()])

    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c and "_target_" in c]
    checkpoint_dir = Path(cfg.paths.output_dir) / "checkpoints"
    if cfg.get("export_official"):
        callbacks.append(ExportOfficial(str(checkpoint_dir)))
    loggers = build_loggers(cfg)
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False,
                                     plugins=[AtomicCheckpointIO()])
    for logger in loggers:
        logger.log_hyperparams(flat_config(cfg))
    if ckpt_path:
        log.info("Resuming from %s", ckpt_path)

    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)

    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) and v.numel() == 1}
    metrics["global_step"] = trainer.global_step
    metrics["last_ckpt"] = str(checkpoint_dir / "last.ckpt")
    for logger in loggers:
        if hasattr(logger, "experiment") and "Wandb" in type(logger).__name__:
            logger.experiment.finish()
    return metrics
