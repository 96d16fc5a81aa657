"""Pretrain a V-JEPA 2 style encoder: python train.py [group=option ...] [key=value ...]"""
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from stjepa.cli import check_command_line, load_env, register_resolvers, run_or_exit

CONF = Path(__file__).resolve().parent / "conf"
load_env()
register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from stjepa.train_job import train  # torch and Lightning load only once the config is composed

    metrics = run_or_exit(train, cfg)
    return metrics.get("val/loss")  # what a Hydra sweeper would optimise


if __name__ == "__main__":
    check_command_line(sys.argv[1:], CONF, "train")
    main()
