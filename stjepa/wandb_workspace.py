"""A saved W&B workspace for one sweep: its runs only, grouped by attention layout, with the
panels that compare layouts (loss, probe accuracy against attention FLOPs, speed).

A Hydra multirun of ``train.py`` with a W&B logger puts its jobs into one W&B group
(:func:`sweep_group_name`); a probe of each job adds ``probe/*`` accuracies to the job's run
summary. :func:`sweep_workspace` builds the workspace object (nothing is sent);
``scripts/wandb_workspace.py`` saves it.

W&B cannot group runs by tag (a run has several), so runs are grouped by the config key
``layout/encoder`` that train.py logs (:func:`stjepa.loggers.layout_hparams`: the layout's tag,
which tells apart kinds, splits, shifts, windows, layer ranges and stages); each group's lines
show the mean and standard deviation over its runs (the seeds). ``wandb_workspaces`` is
imported only when a workspace is built, so the training loggers can use
:func:`sweep_group_name` without it."""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from omegaconf import OmegaConf

from .errors import ConfigError

if TYPE_CHECKING:
    import wandb_workspaces.workspaces as ws

# logged config keys that tell the encoder layouts of a sweep apart (one key: the layout's tag)
LAYOUT_KEYS = ("layout/encoder",)

# each group's line: mean over its runs, shaded by the standard deviation
SPREAD = {"groupby_aggfunc": "mean", "groupby_rangefunc": "stddev"}

# (section, [(wandb_workspaces.reports.v2 panel class, its arguments)]); scatter and bar plots read
# each run's summary (the last value logged, or the probe's result)
SECTIONS: tuple[tuple[str, tuple[tuple[str, dict[str, Any]], ...]], ...] = (
    ("Loss", (
        ("LinePlot", {"title": "train/loss per attention layout", "x": "Step", "y": ["train/loss"], **SPREAD}),
        ("LinePlot", {"title": "val/loss per attention layout", "x": "Step", "y": ["val/loss"], **SPREAD}),
    )),
    ("Accuracy per FLOP", (
        ("ScatterPlot", {"title": "probe top-1 (head selected on held-out half) vs attention FLOP ratio",
                         "x": "flops/attention_ratio", "y": "probe/selected_top1"}),
        ("ScatterPlot", {"title": "probe top-1 (best head, optimistic) vs attention FLOP ratio",
                         "x": "flops/attention_ratio", "y": "probe/best_top1"}),
    )),
    ("Learning signals", (
        ("LinePlot", {"title": "online k-NN top-1 per attention layout", "x": "Step", "y": ["online/knn_top1"],
                      **SPREAD}),
        ("LinePlot", {"title": "RankMe of the encoders' pooled features (collapse: towards 1)", "x": "Step",
                      "y": ["collapse/rankme_target", "collapse/rankme_online"], **SPREAD}),
        ("ScatterPlot", {"title": "online k-NN top-1 at the end vs attention FLOP ratio",
                         "x": "flops/attention_ratio", "y": "online/knn_top1"}),
    )),
    ("Speed", (
        ("BarPlot", {"title": "step time (s) per attention layout", "metrics": ["perf/step_time_s"], **SPREAD}),
        ("ScatterPlot", {"title": "probe top-1 (head selected on held-out half) vs step time (s)",
                         "x": "perf/step_time_s", "y": "probe/selected_top1"}),
    )),
)

# W&B draws the first max_runs runs (or groups) of the runset in each panel; its default of 10
# would silently leave jobs of a larger sweep out of the scatter plots
MAX_RUNS = 100


def sweep_group_name(task_name: str, sweep_dir: str | Path) -> str:
    """The W&B group of a multirun's jobs: '<task_name>-<sweep dir name>'."""
    return f"{task_name}-{Path(sweep_dir).name}"


def group_of_sweep_dir(sweep_dir: str | Path) -> str:
    """The W&B group that train.py gave the jobs of the multirun folder ``sweep_dir``, read from
    its ``multirun.yaml`` or, failing that, a job's ``.hydra/config.yaml``."""
    folder = Path(os.path.abspath(sweep_dir))  # '.' or 'dir/' name the folder; symlinks keep their name
    candidates = [folder / "multirun.yaml", *sorted(folder.glob("*/.hydra/config.yaml"))]
    for path in candidates:
        if path.is_file():
            task_name = OmegaConf.load(path).get("task_name")
            if task_name:
                return sweep_group_name(str(task_name), folder)
    raise ConfigError(f"{sweep_dir} is not a multirun folder: it has no multirun.yaml and no "
                      f"<job>/.hydra/config.yaml naming a task_name.")


def sweep_workspace(entity: str, project: str, group: str, name: str | None = None,
                    layout_keys: Sequence[str] = LAYOUT_KEYS) -> ws.Workspace:
    """The workspace of the W&B group ``group`` (built, not saved: call ``.save()`` online)."""
    import wandb_workspaces.reports.v2 as wr
    import wandb_workspaces.workspaces as ws

    sections = [ws.Section(name=title, is_open=True, panels=[getattr(wr, kind)(**args) for kind, args in panels])
                for title, panels in SECTIONS]
    runset = ws.RunsetSettings(filters=f"Metric('Group') == {group!r}",  # repr: any quote in the name stays data
                               groupby=[ws.Config(key) for key in layout_keys])
    return ws.Workspace(entity=entity, project=project, name=name or f"sweep {group}", sections=sections,
                        runset_settings=runset, settings=ws.WorkspaceSettings(max_runs=MAX_RUNS))
