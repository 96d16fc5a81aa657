"""Experiment loggers from the ``logger`` config group (CSV always available, W&B optional)."""
from __future__ import annotations

import os
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import get_class, instantiate
from lightning.pytorch.loggers import Logger, WandbLogger
from omegaconf import DictConfig, OmegaConf

from .model_config import split_attention
from .models.attention_config import AttentionConfig
from .wandb_workspace import sweep_group_name


def sweep_group(cfg: DictConfig) -> str | None:
    """All jobs of one Hydra multirun share a group: '<task>-<sweep dir name>'."""
    if not HydraConfig.initialized():
        return None
    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        return None
    return sweep_group_name(cfg.task_name, hc.sweep.dir)


def layout_tags(cfg: DictConfig) -> list[str]:
    enc, pred = split_attention(OmegaConf.to_container(cfg.attention, resolve=True))
    tags = [f"attn:{AttentionConfig.create(enc).tag}", f"model:{cfg.model.size}"]
    if AttentionConfig.create(pred).has_local_layers:
        tags.append(f"pred-attn:{AttentionConfig.create(pred).tag}")
    return tags


def attention_kind(attention: dict | None) -> str:
    """The encoder's kinds of local attention in words: 'full', 'area', 'shifted area',
    'area+neighborhood' (markers and groups of a sweep's verdict)."""
    encoder, _ = split_attention(attention)
    layout = AttentionConfig.create(encoder)
    kinds = [entry.built_kind.label for entry in layout.entries if entry.restricts_own_layers]
    return "+".join(kinds) or "full"


def layout_hparams(cfg: DictConfig) -> dict[str, str]:
    """The encoder layout as two logged keys, ``layout/encoder`` (its tag: every setting that
    tells two layouts apart) and ``layout/kind``, so W&B can group a sweep's runs by one key."""
    if cfg.get("attention") is None:
        return {}
    attention = OmegaConf.to_container(cfg.attention, resolve=True)
    return {"layout/encoder": AttentionConfig.create(split_attention(attention)[0]).tag,
            "layout/kind": attention_kind(attention)}


def run_name(cfg: DictConfig) -> str:
    if cfg.get("run_name"):
        return str(cfg.run_name)
    enc, _ = split_attention(OmegaConf.to_container(cfg.attention, resolve=True))
    return f"{cfg.model.size}-{AttentionConfig.create(enc).tag}"


def wandb_offline() -> bool:
    mode = os.environ.get("WANDB_MODE", "").lower()
    if mode in ("offline", "dryrun"):
        return True
    if mode == "online":
        return False
    return not os.environ.get("WANDB_API_KEY")


def build_loggers(cfg: DictConfig) -> list[Any]:
    loggers = []
    for name, settings in (cfg.get("logger") or {}).items():
        if not settings or "_target_" not in settings:
            continue
        extra: dict[str, Any] = {}
        if issubclass(get_class(settings._target_), WandbLogger):
            extra["name"] = settings.get("name") or run_name(cfg)
            extra["group"] = settings.get("group") or sweep_group(cfg)
            extra["tags"] = list(settings.get("tags") or []) + layout_tags(cfg)
            extra["offline"] = wandb_offline() if settings.get("offline") is None else settings.offline
        loggers.append(instantiate(settings, **extra))
    return loggers


def close_loggers(loggers: list[Logger]) -> None:
    """Finish the W&B run, whether the job succeeded or not (Lightning finalizes loggers but
    leaves the W&B run open: it shows as running and may lose its last records)."""
    for logger in loggers:
        if isinstance(logger, WandbLogger) and logger._experiment is not None:
            logger.experiment.finish()


def flat_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as 'a/b/c' keys (what W&B and the CSV hparams file store)."""
    out: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}/{k}" if prefix else str(k))
        else:
            out[prefix] = node

    # 'module' only repeats other keys by interpolation; 'hydra' is present only under the compose API
    walk({k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
          for k, v in cfg.items() if k not in ("module", "hydra")}, "")
    return out
