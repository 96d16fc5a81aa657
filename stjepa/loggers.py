"""Experiment loggers from the ``logger`` config group (CSV always available, W&B optional)."""
from __future__ import annotations

import netrc
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import get_class, instantiate
from lightning.pytorch.loggers import Logger, WandbLogger
from omegaconf import DictConfig, OmegaConf

from .errors import ConfigError
from .networks import RunAttention
from .wandb_workspace import sweep_group_name


def sweep_group(cfg: DictConfig) -> str | None:
    """All jobs of one Hydra multirun share a group: '<task>-<sweep dir name>'."""
    if not HydraConfig.initialized():
        return None
    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        return None
    return sweep_group_name(cfg.task_name, hc.sweep.dir)


def layout_hparams(attention: RunAttention | None) -> dict[str, str]:
    """The encoder layout as two logged keys, ``layout/encoder`` (its tag: every setting that
    tells two layouts apart) and ``layout/kind``, so W&B can group a sweep's runs by one key."""
    if attention is None:
        return {}
    return {"layout/encoder": attention.tag, "layout/kind": attention.kind}


def wandb_offline() -> bool:
    mode = os.environ.get("WANDB_MODE", "").lower()
    if mode in ("offline", "dryrun"):
        return True
    if mode == "online":
        return False
    return not os.environ.get("WANDB_API_KEY")


def is_wandb(settings: Any) -> bool:
    """Whether a ``logger`` entry builds a W&B logger."""
    return bool(settings) and "_target_" in settings and issubclass(get_class(settings._target_), WandbLogger)


def runs_offline(settings: DictConfig) -> bool:
    """A W&B logger entry's ``offline``, where null means: decided from the environment."""
    return wandb_offline() if settings.get("offline") is None else bool(settings.offline)


def wandb_key_found() -> bool:
    """Whether wandb will find an API key without asking: WANDB_API_KEY (or an identity token
    file) in the environment, or an entry for the W&B host in the netrc file ``wandb login``
    writes. Read here, without network, so a run stops before any work instead of in
    ``wandb.init`` with a traceback."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    path = Path(os.environ.get("NETRC") or "~/.netrc").expanduser()
    host = urlsplit(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").netloc
    try:
        entry = netrc.netrc(path).authenticators(host)
    except (OSError, netrc.NetrcParseError):
        return False
    return bool(entry and entry[2])


def check_wandb_login(cfg: DictConfig) -> None:
    """A W&B logger that runs online needs an API key."""
    if os.environ.get("WANDB_MODE", "").lower() == "disabled":
        return
    for name, settings in (cfg.get("logger") or {}).items():
        if is_wandb(settings) and not runs_offline(settings) and not wandb_key_found():
            raise ConfigError(f"logger.{name} logs to W&B online but no API key was found (no WANDB_API_KEY, no "
                              f"W&B entry in ~/.netrc); set WANDB_API_KEY in .env, or run offline with "
                              f"WANDB_MODE=offline.")


def build_loggers(cfg: DictConfig, attention: RunAttention | None) -> list[Any]:
    """The ``logger`` group's loggers; W&B runs are named and tagged by ``attention``, the run's
    layout (None: a probe that keeps its checkpoint's layout)."""
    loggers = []
    for name, settings in (cfg.get("logger") or {}).items():
        if not settings or "_target_" not in settings:
            continue
        extra: dict[str, Any] = {}
        if is_wandb(settings):
            # a probe that keeps its checkpoint's layout names no layout (it is not the config's to say)
            layout = f"-{attention.tag}" if attention is not None else ""
            # a probe without a model group (the checkpoint's architecture) is named by its file
            size = OmegaConf.select(cfg, "model.size") or Path(str(cfg.get("ckpt") or "checkpoint")).stem
            extra["name"] = settings.get("name") or cfg.get("run_name") or f"{size}{layout}"
            extra["group"] = settings.get("group") or sweep_group(cfg)
            extra["tags"] = [*(settings.get("tags") or []), *(attention.tags() if attention else []),
                             f"model:{size}"]
            extra["offline"] = runs_offline(settings)
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
