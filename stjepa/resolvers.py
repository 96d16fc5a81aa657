"""OmegaConf resolvers used in the YAML: ``${launcher:...}`` and ``${default_precision:...}``."""
from __future__ import annotations

from typing import Any

from omegaconf import OmegaConf


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


def register_resolvers() -> None:
    OmegaConf.register_new_resolver("launcher", launcher_value, replace=True)
    OmegaConf.register_new_resolver("default_precision", default_precision, replace=True)
