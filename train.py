"""Pretrain a V-JEPA 2 style encoder: python train.py [group=option ...] [key=value ...]"""
import hydra
from omegaconf import DictConfig

from stjepa.cli import load_env, register_resolvers, run_or_exit

load_env()
register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from stjepa.training import train

    metrics = run_or_exit(train, cfg)
    return metrics.get("val/loss")  # what a Hydra sweeper would optimise


if __name__ == "__main__":
    main()
