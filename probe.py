"""Probe a frozen encoder: python probe.py ckpt=path/to/last.ckpt [key=value ...]"""
import hydra
from omegaconf import DictConfig

from stjepa.cli import load_env, register_resolvers, run_or_exit

load_env()
register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="probe")
def main(cfg: DictConfig) -> float | None:
    from stjepa.probe_run import probe

    results = run_or_exit(probe, cfg)
    return results["best"]["top1"]  # what a Hydra sweeper would optimise


if __name__ == "__main__":
    main()
