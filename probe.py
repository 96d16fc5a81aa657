"""Probe a frozen encoder: python probe.py ckpt=path/to/last.ckpt [key=value ...], or every job of
a training sweep: python probe.py sweep=logs/train/multiruns/<time> [key=value ...]"""
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from stjepa.cli import check_command_line, load_env, register_resolvers, run_or_exit

CONF = Path(__file__).resolve().parent / "conf"
load_env()
register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="probe")
def main(cfg: DictConfig) -> float | None:
    # torch and Lightning load only once the config is composed
    if cfg.get("sweep") is not None:
        from stjepa.probe_sweep import probe_sweep

        run_or_exit(probe_sweep, cfg)
        return None
    from stjepa.probe_job import probe

    results = run_or_exit(probe, cfg)
    return results["best"]["top1"]  # what a Hydra sweeper would optimise


if __name__ == "__main__":
    check_command_line(sys.argv[1:], CONF, "probe")
    main()
