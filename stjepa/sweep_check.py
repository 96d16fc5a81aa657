"""Every job of a multirun is checked before the first one starts.

A sweep (``python train.py -m a=1,2 b=x,y``) runs its jobs one after another or submits them to
SLURM, and each job checks its config only when it starts: a bad combination used to stop a
sweep when its turn came, hours in. So before any job starts, each job's config is composed as
the launcher will compose it (``load_sweep_config`` with the job's overrides, its job number,
its output folder, Hydra's config and ``hydra.job.env_set`` in place) and given the check a
single run makes first (:data:`JOB_CHECKS`, chosen by the task's config name). One bad job
refuses the whole sweep with one line naming the job; nothing is started and no folder made.

What only the machine running a job can tell (``check_machine``: is there a GPU) is left to the
job: a SLURM sweep is submitted from a machine that may have none. Nothing here imports torch
or builds data; the checks build the model on the meta device (well under a second a job).

Why a Hydra callback (:class:`CheckSweep`, named in conf/hydra/default.yaml as
``hydra.callbacks.check_sweep``): Hydra calls ``on_multirun_start`` right after composing the
sweep's config and before it instantiates the sweeper and the launcher, so before the sweep
folder exists and before anything is submitted; and Hydra instantiates callbacks from any
importable class, where a sweeper must be a plugin in the ``hydra_plugins`` namespace. The config
loader the launcher composes jobs with comes from ``GlobalHydra``, and the command line is
expanded into jobs by ``BasicSweeper.split_arguments``, the sweeper's own expansion, so the job
numbers named here are those the sweep gives its jobs. ``~hydra.callbacks.check_sweep`` on the
command line turns the check off."""
from __future__ import annotations

import copy
import importlib
import logging
import os
import sys
import time
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_loader import ConfigLoader
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.core.utils import env_override
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from .cli import user_error_message
from .errors import ConfigError, UserError

log = logging.getLogger(__name__)

# the check each task runs on its config before any work ("module:function", imported when a
# sweep of that task is checked); a task without an entry is not checked ahead
JOB_CHECKS = {"train": "stjepa.preflight:check_train_config", "probe": "stjepa.probe_job:check_probe_config"}
# set in the environment of jobs that SLURM runs; config.check_launch reads it
SLURM_MARKER = "SLURM_JOB_ID"


class JobConfigError(ConfigError):
    """A job of a sweep whose config its task would refuse; the message names the job."""


def job_check(config_name: str | None) -> Callable[[DictConfig], None] | None:
    """The check a job of task ``config_name`` makes first, or None for a task without one."""
    target = JOB_CHECKS.get(str(config_name))
    if target is None:
        return None
    module, function = target.split(":")
    return getattr(importlib.import_module(module), function)


def parse_sweep(config_loader: ConfigLoader, arguments: Sequence[str]) -> list[Override]:
    return OverridesParser.create(config_loader=config_loader).parse_overrides(list(arguments))


def sweep_jobs(overrides: list[Override], max_batch_size: int | None) -> list[list[str]]:
    """Every job's overrides in launch order, so a job's index is its ``hydra.job.num``
    (BasicSweeper's expansion; batches are launched one after another)."""
    return [job for batch in BasicSweeper.split_arguments(overrides, max_batch_size) for job in batch]


def swept_keys(overrides: list[Override]) -> set[str]:
    """The keys given several values (``a=1,2``), as they start a job's override (``a=``)."""
    return {o.get_key_element() for o in overrides if o.is_sweep_override()}


def job_label(num: int, job_overrides: Sequence[str], swept: set[str]) -> str:
    """``job 3 (a=2 b=y)``: the job's number and its values of the swept keys."""
    values = [o for o in job_overrides if o.split("=", 1)[0] in swept]
    return f"job {num} ({' '.join(values)})" if values else f"job {num}"


def job_environment(job_cfg: DictConfig) -> dict[str, str]:
    """The environment variables a job runs with that its check may read: ``hydra.job.env_set``
    (as run_job sets them) and, for a job SLURM will run, the variable SLURM sets."""
    env = {str(k): str(v) for k, v in (job_cfg.hydra.job.get("env_set") or {}).items()}
    if str(OmegaConf.select(job_cfg, "hydra.launcher._target_", default="")).endswith(".SlurmLauncher"):
        env.setdefault(SLURM_MARKER, os.environ.get(SLURM_MARKER, "submitted"))
    return env


@contextmanager
def as_job(job_cfg: DictConfig, num: int) -> Iterator[DictConfig]:
    """The task's config of job ``num`` (what the task function receives), with Hydra's config
    and the environment set as in the job: the launcher numbers the job, run_job sets
    ``hydra.runtime.output_dir`` (not created here) and ``HydraConfig``. Both are restored after
    (``HydraConfig`` to None when it was not set, as before a sweep's first job)."""
    hydra_config = HydraConfig.instance()
    sweep_hydra_cfg = hydra_config.cfg
    with open_dict(job_cfg):
        job_cfg.hydra.job.id = num
        job_cfg.hydra.job.num = num
    try:
        hydra_config.set_config(job_cfg)  # the sweep folder may name ${hydra:job.num} and the like
        output_dir = os.path.join(str(OmegaConf.select(job_cfg, "hydra.sweep.dir")),
                                  str(OmegaConf.select(job_cfg, "hydra.sweep.subdir")))
        with read_write(job_cfg.hydra.runtime), open_dict(job_cfg.hydra.runtime):
            job_cfg.hydra.runtime.output_dir = os.path.abspath(output_dir)
        hydra_config.set_config(job_cfg)
        task_cfg = copy.deepcopy(job_cfg)
        with read_write(task_cfg), open_dict(task_cfg):
            del task_cfg["hydra"]
        with env_override(job_environment(job_cfg)):
            yield task_cfg
    finally:
        hydra_config.cfg = sweep_hydra_cfg


def check_jobs(config_loader: ConfigLoader, sweep_cfg: DictConfig, arguments: Sequence[str],
               max_batch_size: int | None) -> int:
    """Check the config of every job the sweep ``arguments`` expand to; return how many were
    checked (0 for a task without a check). The first bad job raises a JobConfigError naming it
    and carrying the sentence its task would print."""
    check = job_check(sweep_cfg.hydra.job.config_name)
    if check is None:
        return 0
    overrides = parse_sweep(config_loader, arguments)
    jobs, swept = sweep_jobs(overrides, max_batch_size), swept_keys(overrides)
    for num, job_overrides in enumerate(jobs):
        job_cfg = config_loader.load_sweep_config(sweep_cfg, list(job_overrides))
        try:
            with as_job(job_cfg, num) as task_cfg:
                check(task_cfg)
        except UserError as exc:
            raise JobConfigError(f"{job_label(num, job_overrides, swept)}: {user_error_message(exc)}") from exc
    return len(jobs)


def sweep_arguments(config: DictConfig) -> list[str]:
    """What BasicSweeper.sweep expands: its own ``hydra.sweeper.params`` ("key=value", as its
    ``_parse_config`` writes them) followed by the command line's task overrides."""
    params = OmegaConf.select(config, "hydra.sweeper.params", default=None) or {}
    return [*(f"{k}={v}" for k, v in params.items()), *(str(o) for o in config.hydra.overrides.task)]


class CheckSweep(Callback):
    """Check every job of a sweep before Hydra instantiates its sweeper and launcher (see the
    module's docstring); named in conf/hydra/default.yaml as ``hydra.callbacks.check_sweep``.

    Only a sweep with Hydra's basic sweeper is checked ahead: its jobs are known from the command
    line. Other sweepers (optuna, ax, nevergrad) pick each job's values as they go, so their jobs
    are not checked ahead; each still checks its config when it starts."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        if not str(OmegaConf.select(config, "hydra.sweeper._target_", default="")).endswith("BasicSweeper"):
            return
        start = time.perf_counter()
        try:
            checked = check_jobs(GlobalHydra.instance().config_loader(), config, sweep_arguments(config),
                                 OmegaConf.select(config, "hydra.sweeper.max_batch_size", default=None))
        except UserError as exc:
            # SystemExit is no Exception, so Hydra's Callbacks do not turn it into a warning
            print(f"error: {user_error_message(exc)}", file=sys.stderr)
            sys.exit(2)
        if checked:
            log.info(f"Checked the configs of {checked} jobs in {time.perf_counter() - start:.1f} s")
