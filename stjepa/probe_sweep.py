"""Probe every finished job of a training sweep with one set of probe settings:
``python probe.py sweep=<multirun folder> [probe keys ...]``; or let each training job probe
itself when it ends: ``python train.py -m ... probe_after=default|knn|thorough``.

Each job's probe goes to ``<job>/<probe_dir>/`` (``probe``, or ``probe_random`` for
``probe.random_init=true``), with ``results.json`` written last and whole, holding the probe
settings. Random-weight baselines (``probe.random_init=true``) draw each job's weights from its
training seed, so they vary over seeds as the pretrained rows do. A job whose folder already
holds results with the same settings is skipped, so the command finishes an interrupted sweep
when run again; results with other settings in that folder refuse the sweep before any work
(give another ``probe_dir``). Unfinished jobs are listed and not probed; a job that fails is
reported and the others go on.

``probe_after`` composes probe.py's config around the run: its defaults (seed, trainer and
logger sections), the run's own data config as it is (batch size and validation clips included),
the run's trainer, logger and paths choices, and ``probe_after`` as the ``probe`` group. The
result lands where ``probe.py sweep=`` would put it, with the same settings as that command given
the run's data keys, so the two finish each other's work."""
from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import rich
import rich.table
from omegaconf import DictConfig, open_dict

from .errors import ConfigError, UserError
from .probe_job import RESULTS_FILE, check_probe_config, probe, probe_settings
from .sweeps import FINISHED, Job, first_difference, read_sweep

log = logging.getLogger(__name__)


class SweepProbeFailed(UserError):
    """Some jobs of a sweep could not be probed (the others were)."""


@dataclass
class Outcome:
    job: Job
    status: str  # probed | already probed | not probed: <state> | failed: <reason>
    results: dict | None = None


def probe_dir_name(cfg: DictConfig) -> str:
    """probe_dir, else probe / probe_knn (probe=knn), with _random for random weights."""
    base = "probe_knn" if cfg.probe.get("method", "attentive") == "knn" else "probe"
    return cfg.get("probe_dir") or (base + "_random" if cfg.probe.random_init else base)


def earlier_probe(folder: Path, settings: dict, label: str,
                  remedy: str = "give probe_dir=<another name> to keep both, or delete that folder") -> dict | None:
    """The results already in a probe folder (None if there are none); refused if they were made
    with other settings."""
    path = folder / RESULTS_FILE
    if not path.is_file():
        return None
    earlier = json.loads(path.read_text())
    differs = first_difference(earlier.get("settings") or {}, settings)
    if differs:
        raise ConfigError(f"{label} was already probed into {folder} with other settings ({differs} differs); "
                          f"{remedy}.")
    return earlier


def check_earlier_probes(jobs: list[Job], name: str, settings: dict) -> None:
    """Results already in a job's probe folder must have been made with these settings."""
    for job in jobs:
        earlier_probe(job.folder / name, settings, job.label)


def checkpoint_config(cfg: DictConfig, checkpoint: Path, folder: Path, train_seed: int) -> DictConfig:
    """``cfg`` set to probe one training job's ``checkpoint`` into ``folder``."""
    job_cfg = copy.deepcopy(cfg)
    with open_dict(job_cfg):
        job_cfg.ckpt, job_cfg.sweep = str(checkpoint), None
        job_cfg.paths.output_dir = str(folder)
        job_cfg.print_config = False
        if cfg.probe.random_init and cfg.probe.get("init_seed") is None:
            job_cfg.probe.init_seed = int(train_seed)  # each seed's baseline is its own random network
    return job_cfg


def job_config(cfg: DictConfig, job: Job, name: str) -> DictConfig:
    return checkpoint_config(cfg, job.checkpoint, job.folder / name, job.seed)


def probe_after_config(run_cfg: DictConfig) -> DictConfig:
    """The probe.py config with which a training run probes its own last.ckpt (module docstring)."""
    from hydra import compose
    from hydra.core.hydra_config import HydraConfig

    choices = HydraConfig.get().runtime.choices if HydraConfig.initialized() else {}
    groups = [f"{group}={choices[group]}" for group in ("trainer", "logger", "paths") if choices.get(group)]
    cfg = compose("probe", overrides=["~data", *groups])
    with open_dict(cfg):
        cfg.data = copy.deepcopy(run_cfg.data)
        cfg.probe = copy.deepcopy(run_cfg.probe_after)
        cfg.tags = list(run_cfg.get("tags") or [])
    run = Path(run_cfg.paths.output_dir)
    return checkpoint_config(cfg, run / "checkpoints" / "last.ckpt", run / probe_dir_name(cfg), run_cfg.seed)


def probe_after_training(run_cfg: DictConfig) -> dict[str, Any] | None:
    """Probe a finished run's last.ckpt as ``probe_after`` asks; its earlier results with the same
    settings are kept (a re-run of a finished job probes only if it was not probed yet)."""
    cfg = probe_after_config(run_cfg)
    folder = Path(cfg.paths.output_dir)
    earlier = earlier_probe(folder, probe_settings(cfg), f"this run ({folder.parent})",
                            "delete that folder to probe the run again with probe_after")
    if earlier is not None:
        rich.print(f"probe_after: {folder / RESULTS_FILE} holds this probe already; kept.")
        return earlier
    rich.print(f"[bold]probe_after[/bold]: probing {cfg.ckpt} into {folder}")
    return probe(cfg)


def probe_sweep(cfg: DictConfig) -> dict[str, Any]:
    """Probe each finished job of ``cfg.sweep``; returns ``{"jobs": [...]}`` with each job's status."""
    check_probe_config(cfg)
    jobs = read_sweep(cfg.sweep)
    finished = [job for job in jobs if job.state == FINISHED]
    if not finished:
        states = ", ".join(f"{job.label}: {job.describe_state()}" for job in jobs)
        raise ConfigError(f"no job of sweep {cfg.sweep!r} has finished training, so there is nothing to probe "
                          f"({states}).")
    name, settings = probe_dir_name(cfg), probe_settings(cfg)
    check_earlier_probes(finished, name, settings)
    outcomes = []
    for job in jobs:
        if job.state != FINISHED:
            outcomes.append(Outcome(job, f"not probed: {job.describe_state()}"))
        elif (earlier := earlier_probe(job.folder / name, settings, job.label)) is not None:
            outcomes.append(Outcome(job, "already probed", earlier))
        else:
            rich.print(f"[bold]probing {job.label}[/bold]: {job.checkpoint}")
            try:
                outcomes.append(Outcome(job, "probed", probe(job_config(cfg, job, name))))
            except UserError as exc:
                outcomes.append(Outcome(job, f"failed: {str(exc).strip().splitlines()[-1]}"))
            except Exception as exc:  # one job's crash must not stop the others; the reason is kept
                log.exception("probing %s failed", job.label)
                outcomes.append(Outcome(job, f"failed: {type(exc).__name__}: {exc}"))
    rich.print(sweep_table(outcomes, cfg.sweep, name))
    failed = [o for o in outcomes if o.status.startswith("failed")]
    if failed:
        raise SweepProbeFailed(f"{len(failed)} of {len(finished)} finished jobs could not be probed "
                               f"({failed[0].job.label}: {failed[0].status[len('failed: '):]}); the others are in "
                               f"<job>/{name}/{RESULTS_FILE}; run the same command again to retry.")
    return {"jobs": [{"job": o.job.num, "folder": str(o.job.folder), "status": o.status, "results": o.results}
                     for o in outcomes]}


def sweep_table(outcomes: list[Outcome], sweep: str, name: str) -> rich.table.Table:
    table = rich.table.Table(title=f"Probes of {sweep} (<job>/{name}/{RESULTS_FILE})")
    for column in ("job", "swept values", "status", "top-1 best head", "top-1 head chosen on held-out half"):
        table.add_column(column, justify="right" if column.startswith(("top", "job")) else "left")
    for o in outcomes:
        best = f"{100 * o.results['best']['top1']:.2f}" if o.results else ""
        selected = o.results.get("selected") if o.results else None
        table.add_row(str(o.job.num), " ".join(f"{k}={v}" for k, v in o.job.swept.items()), o.status, best,
                      f"{100 * selected['top1']:.2f}" if selected else "",
                      style="red" if o.status.startswith("failed") else None)
    return table
