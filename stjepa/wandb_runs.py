"""A training run's W&B identity, kept in its run folder, so that later work on its checkpoint
(a probe) can write into the same W&B run.

``train.py`` with a W&B logger writes ``<run>/wandb_run.json`` (id, project, entity, group,
offline). A probe of ``<run>/checkpoints/last.ckpt`` resumes that run by id
(``resume="allow"``) and adds its accuracy to the run's summary, so a sweep's W&B group can
chart accuracy against the FLOP ratio and step time it logged. Online, this is the training run
itself. Offline, the probe's records go to a second offline run folder with the same id under
``<run>/wandb``; ``wandb sync`` uploads both into one run."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

RUN_FILE = "wandb_run.json"


def save_run_identity(loggers: list[Any], folder: str | Path) -> None:
    """Write the W&B run's identity of a training run into its run folder (rank 0 only)."""
    from lightning.pytorch.loggers import WandbLogger

    for logger in loggers:
        if isinstance(logger, WandbLogger):
            run = logger.experiment
            if not hasattr(run, "id"):  # a non-zero rank's dummy experiment
                return
            identity = {"id": run.id, "project": run.project, "entity": run.entity or None, "group": run.group,
                        "offline": bool(run.settings._offline)}
            Path(folder).mkdir(parents=True, exist_ok=True)
            (Path(folder) / RUN_FILE).write_text(json.dumps(identity, indent=2))


def training_run_of(ckpt: str | Path) -> dict | None:
    """The W&B identity of the training run a checkpoint came from (``<run>/checkpoints/x.ckpt``),
    or None when that run did not log to W&B."""
    path = Path(ckpt).resolve().parent.parent / RUN_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def write_summary(identity: dict, run_folder: str | Path, summary: dict[str, float], offline: bool) -> None:
    """Add ``summary`` to the training run's W&B summary, resuming it by id."""
    import wandb

    run = wandb.init(id=identity["id"], project=identity["project"], entity=identity.get("entity"),
                     group=identity.get("group"), dir=str(run_folder), resume="allow",
                     mode="offline" if offline else "online", reinit="finish_previous",
                     settings=wandb.Settings(silent=True))  # one line of ours below instead of W&B's banner
    try:
        run.summary.update(summary)
    finally:
        run.finish()
    log.info("probe results written to W&B run %s (%s)", identity["id"], "offline" if offline else run.url)
