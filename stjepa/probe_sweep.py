"""Probe every finished job of a training sweep with one set of probe settings:
``python probe.py sweep=<multirun folder> [probe keys ...]``.

Each job's probe goes to ``<job>/<probe_dir>/`` (``probe``, or ``probe_random`` for
``probe.random_init=true``), with ``results.json`` written last and whole, holding the probe
settings. Random-weight baselines (``probe.random_init=true``) draw each job's weights from its
training seed, so they vary over seeds as the pretrained rows do. A job whose folder already
holds results with the same settings is skipped, so the command finishes an interrupted sweep
when run again; results with other settings in that folder refuse the sweep before any work
(give another ``probe_dir``). Unfinished jobs are listed and not probed; a job that fails is
reported and the others go on."""
from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass
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


def earlier_results(job: Job, name: str) -> dict | None:
    path = job.folder / name / RESULTS_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def check_earlier_probes(jobs: list[Job], name: str, settings: dict) -> None:
    """Results already in a job's probe folder must have been made with these settings."""
    for job in jobs:
        earlier = earlier_results(job, name)
        if earlier is None:
            continue
        differs = first_difference(earlier.get("settings") or {}, settings)
        if differs:
            raise ConfigError(f"{job.label} was already probed into {job.folder / name} with other settings "
                              f"({differs} differs); give probe_dir=<another name> to keep both, or delete that "
                              f"folder.")


def job_config(cfg: DictConfig, job: Job, name: str) -> DictConfig:
    job_cfg = copy.deepcopy(cfg)
    with open_dict(job_cfg):
        job_cfg.ckpt, job_cfg.sweep = str(job.checkpoint), None
        job_cfg.paths.output_dir = str(job.folder / name)
        job_cfg.print_config = False
        if cfg.probe.random_init and cfg.probe.get("init_seed") is None:
            job_cfg.probe.init_seed = int(job.seed)  # each seed's baseline is its own random network
    return job_cfg


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
        elif earlier_results(job, name) is not None:
            outcomes.append(Outcome(job, "already probed", earlier_results(job, name)))
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
