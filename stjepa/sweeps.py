"""Reading a multirun folder (what ``train.py -m`` wrote): its jobs, each job's keys and state.

A job is any sub-folder holding ``.hydra/config.yaml``; what a job is (its keys, its seed, its
step budget) is read from its saved config and ``overrides.yaml``, never from folder names. The
swept keys are the override keys whose values differ between jobs; ``seed`` among them is the
replicate, the rest define the groups a verdict compares."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from .errors import ConfigError

SEED_KEY = "seed"
FINISHED, UNFINISHED, NOT_STARTED = "finished", "unfinished", "no checkpoint"


@dataclass
class Job:
    """One job of a sweep: its folder, saved config, command-line overrides and training state."""

    folder: Path
    num: int
    config: DictConfig
    overrides: dict[str, str]
    step: int | None = None  # the optimizer step of checkpoints/last.ckpt (None: no checkpoint)
    swept: dict[str, str] = field(default_factory=dict)  # this job's values of the sweep's swept keys

    @property
    def checkpoint(self) -> Path:
        return self.folder / "checkpoints" / "last.ckpt"

    @property
    def max_steps(self) -> int:
        return int(OmegaConf.select(self.config, "trainer.max_steps", default=-1) or -1)

    @property
    def state(self) -> str:
        if self.step is None:
            return NOT_STARTED
        return FINISHED if self.max_steps <= 0 or self.step >= self.max_steps else UNFINISHED

    @property
    def seed(self) -> Any:
        return OmegaConf.select(self.config, SEED_KEY)

    @property
    def label(self) -> str:
        """'job 3 (attention=area_2x2 seed=1)': the job number and its swept values."""
        values = " ".join(f"{k}={v}" for k, v in self.swept.items())
        return f"job {self.num} ({values})" if values else f"job {self.num}"

    def describe_state(self) -> str:
        if self.state == UNFINISHED:
            return f"unfinished (step {self.step} of {self.max_steps})"
        return self.state


def parse_overrides(lines: list[str]) -> dict[str, str]:
    """``['attention=area_2x2', '+foo=1', 'seed=2']`` -> ``{'attention': 'area_2x2', 'foo': '1', 'seed': '2'}``."""
    parsed = {}
    for line in lines:
        key, _, value = str(line).partition("=")
        parsed[key.lstrip("+~")] = value
    return parsed


def checkpoint_step(path: Path) -> int | None:
    """The optimizer step a train.py checkpoint was saved at (memory-mapped, not read whole);
    None for a missing or unreadable file."""
    import torch

    if not path.is_file():
        return None
    try:
        return int(torch.load(path, map_location="cpu", weights_only=False, mmap=True).get("global_step", 0))
    except Exception:
        return None


def read_sweep(folder: str | Path) -> list[Job]:
    """The jobs of a multirun folder in job-number order, with their swept values and state.

    Refuses (one sentence) a path that is not a folder or holds no job."""
    from .resolvers import register_resolvers

    register_resolvers()  # saved configs may name ${launcher:...} and the like
    root = Path(folder)
    if not root.is_dir():
        raise ConfigError(f"sweep={str(folder)!r} is not a folder; give the folder a train.py -m run wrote "
                          f"(logs/<task>/multiruns/<time>).")
    jobs, unnumbered = [], []
    for config_file in sorted(root.glob("*/.hydra/config.yaml")):
        job_dir = config_file.parent.parent
        hydra_file, overrides_file = job_dir / ".hydra" / "hydra.yaml", job_dir / ".hydra" / "overrides.yaml"
        num = OmegaConf.select(OmegaConf.load(hydra_file), "hydra.job.num") if hydra_file.is_file() else None
        overrides = parse_overrides(list(OmegaConf.load(overrides_file))) if overrides_file.is_file() else {}
        job = Job(job_dir, -1 if num is None else int(num), OmegaConf.load(config_file), overrides,
                  checkpoint_step(job_dir / "checkpoints" / "last.ckpt"))
        (jobs if num is not None else unnumbered).append(job)
    # a single run (no job number) placed in the folder: its folder name when that is a free
    # number, else the next number after all others
    taken = {job.num for job in jobs}
    for job in sorted(unnumbered, key=lambda j: (not j.folder.name.isdigit(), j.folder.name)):
        job.num = int(job.folder.name) if job.folder.name.isdigit() and int(job.folder.name) not in taken \
            else max(taken, default=-1) + 1
        taken.add(job.num)
        jobs.append(job)
    if not jobs:
        raise ConfigError(f"{str(folder)!r} is not a sweep: no sub-folder holds a job's .hydra/config.yaml; give "
                          f"the folder a train.py -m run wrote (logs/<task>/multiruns/<time>).")
    jobs.sort(key=lambda j: j.num)
    for key in swept_keys(jobs):
        for job in jobs:
            job.swept[key] = job.overrides.get(key, "")
    return jobs


def swept_keys(jobs: list[Job]) -> list[str]:
    """Override keys whose value is not the same in every job, in command-line order; ``seed``
    last. A key given to some jobs only counts as swept."""
    order: list[str] = []
    for job in jobs:
        order += [k for k in job.overrides if k not in order]
    swept = [k for k in order if len({job.overrides.get(k) for job in jobs}) > 1]
    return [k for k in swept if k != SEED_KEY] + [k for k in swept if k == SEED_KEY]


def group_keys(jobs: list[Job]) -> list[str]:
    """The swept keys that define a group of runs: all but the seed."""
    return [k for k in (jobs[0].swept if jobs else {}) if k != SEED_KEY]


def first_difference(a: Any, b: Any, path: str = "") -> str | None:
    """The dotted key of the first setting that differs between two nested dicts (None: equal)."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in list(a) + [k for k in b if k not in a]:
            found = first_difference(a.get(key), b.get(key), f"{path}.{key}" if path else str(key))
            if found:
                return found
        return None
    return None if a == b else path
