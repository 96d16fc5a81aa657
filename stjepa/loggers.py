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
    if AttentionConfig.create(pred).is_local:
        tags.append(f"pred-attn:{AttentionConfig.create(pred).tag}")
    return tags


def attention_kind(attention: dict | None) -> str:
    """The encoder's kinds of local attention in words: 'full', 'area', 'shifted area',
    'area+neighborhood' (markers and groups of a sweep's verdict)."""
    encoder, _ = split_attention(attention)
    layout = AttentionConfig.create(encoder)
    kinds = [("shifted area" if part.kind == "area" and part.shift else part.kind.replace("_", " "))
             for part in layout.parts if part.own_local]
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


def build_loggers(cfg: DictConfig) -> list[Any]:
    loggers = []
    for name, settings in (cfg.get("logger") or {}).items():
        if not settings or "_target_" not in settings:
            continue
        extra: dict[str, Any] = {}
        if is_wandb(settings):
            extra["name"] = settings.get("name") or run_name(cfg)
            extra["group"] = settings.get("group") or sweep_group(cfg)
            extra["tags"] = list(settings.get("tags") or []) + layout_tags(cfg)
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
