"""Pretraining run: validate the config, build data, module, callbacks and loggers, fit."""
from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from .callbacks import ExportHF, ExportOfficial
from .checkpoint_io import AtomicCheckpointIO
from .data.masks import STATIC_SLOTS
from .preflight import check_machine, check_train_config, instantiate_checked, plain
from .errors import RunComplete
from .hf_format import no_transformers_format
from .loggers import build_loggers, close_loggers, flat_config, layout_hparams
from .models.versions import Generation
from .utils.rich_config import print_config_tree
from .wandb_runs import save_run_identity

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


class _DropLightningNoise(logging.Filter):
    """Lightning's advertisement and its note that our summary callback replaced its own."""

    NOISE = ("💡 Tip", "Skipping setting a default `ModelSummary`")

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(text in record.getMessage() for text in self.NOISE)


def quiet_lightning() -> None:
    """One copy of each Lightning message, without its tips and deprecation chatter: under
    Hydra the root logger prints already, so Lightning's own console handlers go."""
    if logging.getLogger().handlers:
        for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
            logging.getLogger(name).handlers.clear()
            logging.getLogger(name).propagate = True
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _DropLightningNoise) for f in rank_zero.filters):
        rank_zero.addFilter(_DropLightningNoise())
    # raised inside Lightning itself with torch >= 2.10; nothing a user can act on
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    # the pretraining module's on_after_batch_transfer (images fill a clip for 2.0) is meant
    warnings.filterwarnings("ignore", message=r".*overridden `on_after_batch_transfer` in `LightningModule`")


def is_launching_process() -> bool:
    """False in the extra processes Lightning starts for multi-device runs (they repeat the
    command line with LOCAL_RANK set) and in SLURM tasks other than the first."""
    return os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("SLURM_PROCID", "0") == "0"


def completed_step(ckpt_path: str) -> int:
    """The optimizer step a checkpoint was saved at (the file is memory-mapped, not read)."""
    return int(torch.load(ckpt_path, map_location="cpu", weights_only=False, mmap=True).get("global_step", 0))


def trainer_overrides(cfg: DictConfig) -> dict[str, Any]:
    """Trainer settings that follow from the rest of the config: a run shorter than
    trainer.log_every_n_steps still logs its training metrics."""
    max_steps, every = cfg.trainer.get("max_steps", -1), cfg.trainer.get("log_every_n_steps", 50)
    return {"log_every_n_steps": min(every, max_steps)} if 0 < max_steps < every else {}


def static_masks(cfg: DictConfig) -> bool:
    """Whether mask index lists are padded to fixed lengths: ``static_masks``, or (null) whether
    the run compiles."""
    value = cfg.get("static_masks")
    return bool(cfg.get("compile")) if value is None else bool(value)


def static_slots(cfg: DictConfig) -> str | float:
    """The rule that sizes the padded index lists: ``static_slots``, or (null) the default
    (:data:`stjepa.data.masks.STATIC_SLOTS`)."""
    value = cfg.get("static_slots")
    return STATIC_SLOTS if value is None else value


def mask_sets(cfg: DictConfig, generation: Generation) -> dict[str, list[dict]]:
    """The mask sets of video and image steps: a generation with an image tokenizer (2.1) masks
    images with image_mask on their 1-frame grid; one whose images fill a clip (2.0) uses the
    video masks for them."""
    video = [plain(v) for v in cfg.mask.values()]
    image = video if generation.image_fills_clip else [plain(v) for v in cfg.image_mask.values()]
    return {"video": video, "image": image}


def train(cfg: DictConfig) -> dict[str, Any]:
    from .probe_sweep import probe_after_training  # the probe modules import this one

    quiet_lightning()
    composed = plain(cfg.model)
    attention = check_train_config(cfg)  # model.init_from: fills the model group from the file
    replaced = {key: (composed.get(key), value) for key, value in plain(cfg.model).items()
                if composed.get(key) != value}
    if replaced and is_launching_process():
        log.info("model.init_from: the model is the file's: %s; keys given on the command line are checked "
                 "against the file instead.", ", ".join(f"model.{key}={new!r} (the model group had {old!r})"
                                                        for key, (old, new) in replaced.items()))
    check_machine(cfg.trainer)
    ckpt_path = find_resume_checkpoint(cfg)
    max_steps, done = cfg.trainer.get("max_steps", -1), completed_step(ckpt_path) if ckpt_path else 0
    if 0 < max_steps <= done:
        if cfg.get("probe_after") and is_launching_process():  # a job killed while it probed: finish that
            return {"global_step": done, "last_ckpt": ckpt_path, "probe": probe_after_training(cfg)}
        raise RunComplete(f"the run is complete: {ckpt_path} is at step {done} and trainer.max_steps={max_steps}; "
                          f"raise trainer.max_steps to train on.")
    if cfg.get("print_config", True) and is_launching_process():
        print_config_tree(cfg, save_to=Path(cfg.paths.output_dir) / "config_tree.log")
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    datamodule = instantiate_checked(cfg.data)
    # the run's attention goes in built (the module group names it only for the checkpoint's record)
    module = instantiate_checked(cfg.module, _convert_="all", _partial_=True)(attention=attention)
    datamodule.configure_masking(module.input_grid, mask_sets(cfg, module.generation), pad=static_masks(cfg),
                                 slots=static_slots(cfg))

    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c and "_target_" in c]
    checkpoint_dir = Path(cfg.paths.output_dir) / "checkpoints"
    if cfg.get("export_official"):
        callbacks.append(ExportOfficial(str(checkpoint_dir)))
    if cfg.get("export_hf"):  # for the models transformers has; the others are told so once, before training
        no_format = no_transformers_format(module.target_encoder)
        if no_format is None:
            callbacks.append(ExportHF(str(checkpoint_dir)))
        elif is_launching_process():
            log.info("export_hf: no checkpoints/vjepa2_hf for this run: %s.", no_format)
    loggers = build_loggers(cfg, attention)
    try:
        trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False,
                                         plugins=[AtomicCheckpointIO()], **trainer_overrides(cfg))
        for logger in loggers:
            logger.log_hyperparams({**flat_config(cfg), **layout_hparams(attention)})
        if trainer.is_global_zero:  # so that a probe of this run's checkpoint can write into its W&B run
            save_run_identity(loggers, cfg.paths.output_dir)
        if ckpt_path:
            log.info("Resuming from %s", ckpt_path)
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    finally:
        close_loggers(loggers)

    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) and v.numel() == 1}
    metrics["global_step"] = trainer.global_step
    metrics["last_ckpt"] = str(checkpoint_dir / "last.ckpt")
    if cfg.get("probe_after") and trainer.is_global_zero and is_launching_process():
        metrics["probe"] = probe_after_training(cfg)
    return metrics
