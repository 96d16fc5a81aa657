"""summary.png of a sweep: probe top-1 against attention FLOPs and against step time (one marker
per attention kind, error bars over seeds only where a group has two or more runs, the Pareto
front joined by a line, random-weight baselines hollow), the train-loss curves per group and, in the
rows below, the learning signals the runs logged (online k-NN, RankMe) per group."""
from __future__ import annotations

import math
import statistics
from io import BytesIO
from pathlib import Path
from typing import TYPE_CHECKING

from .checkpoint_io import atomic_write_bytes

if TYPE_CHECKING:  # sweep_summary reads CURVE_PANELS to know which training-log series to keep
    from .sweep_summary import SweepSummary

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h")
SMOOTHING = 25  # logged steps in the running mean of the loss curves


def running_mean(values: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


AXIS_LABELS = {"probe_selected_top1": "probe top-1 (head chosen on held-out half), %",
               "probe_best_top1": "probe top-1 (best head), %",
               "knn_top1_final": "online k-NN top-1 at the end, % (hollow: at step 0)"}


def accuracy_axis(summary: SweepSummary) -> tuple[str, str, float]:
    """The y metric of the scatter panels: the summary's accuracy column, else (no probe and no
    online k-NN) the final train loss."""
    metric = summary.accuracy
    if metric is None:
        return "train_loss_final", "final train loss (no probe results)", 1.0
    return metric, AXIS_LABELS[metric], 100.0


def scatter_panel(ax, summary: SweepSummary, cost: str, cost_label: str) -> None:
    metric, label, scale = accuracy_axis(summary)
    kinds = sorted({g.kind for g in summary.groups})
    colors = {g.key: f"C{i % 10}" for i, g in enumerate(summary.groups)}
    for g in summary.groups:
        (x, _, _), (y, se, n) = g.stats[cost], g.stats[metric]
        if x is None or y is None:
            continue
        marker = MARKERS[kinds.index(g.kind) % len(MARKERS)]
        hollow = g.weights == "random"
        ax.errorbar(x, scale * y, yerr=None if se is None else scale * se, fmt=marker,
                    color=colors[g.key], markerfacecolor="none" if hollow else colors[g.key], markersize=8,
                    capsize=3, label=f"{g.label} (n={n})")
        y0, se0, _ = g.stats["knn_top1_start"]
        if metric == "knn_top1_final" and y0 is not None:  # the same runs at step 0: their random weights
            ax.errorbar(x, scale * y0, yerr=None if se0 is None else scale * se0, fmt=marker, color=colors[g.key],
                        markerfacecolor="none", markersize=8, capsize=3)
    front = sorted((g.stats[cost][0], scale * g.stats[metric][0]) for g in summary.groups if g.pareto.get(cost))
    if front and metric != "train_loss_final":  # rings joined by a dashed line, behind the markers
        ax.plot(*zip(*front), "--", marker="o", markersize=16, markerfacecolor="none", color="gray", linewidth=1,
                label="Pareto front", zorder=0)
    ax.set_xlabel(cost_label)
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)


# the curve panels, one per training-log series (the train loss in the first row, the learning
# signals the runs logged in the rows below): series -> (y label, scale, running-mean window in logged points)
CURVE_PANELS = {
    "train/loss": (f"train loss (running mean of {SMOOTHING} logged steps)", 1.0, SMOOTHING),
    "online/knn_top1": ("online k-NN top-1, % (step 0: the starting weights)", 100.0, 1),
    "collapse/rankme_online": ("RankMe of the online encoder's pooled features", 1.0, 1),
    "collapse/rankme_target": ("RankMe of the target encoder's pooled features", 1.0, 1),
    "collapse/rankme_pred": ("RankMe of the predictor's outputs", 1.0, 1),
    "collapse/rankme_pred_targets": ("RankMe of the targets of those outputs", 1.0, 1),
}


def curve_panel(ax, summary: SweepSummary, name: str) -> None:
    """One line per group: the mean over its runs of the series ``name`` (band: ± standard error
    where a group has two or more runs)."""
    label, scale, window = CURVE_PANELS[name]
    for i, (key, runs) in enumerate(summary.curves.items()):
        runs = [r[name] for r in runs if r.get(name)]
        if not runs:
            continue
        steps = [s for s, _ in runs[0]]
        per_step = list(zip(*(running_mean([scale * v for _, v in r], window) for r in runs)))  # shortest run wins
        mean = [statistics.fmean(v) for v in per_step]
        ax.plot(steps[:len(mean)], mean, color=f"C{i % 10}", marker="o" if len(mean) < 20 else None, markersize=4,
                label=f"{' '.join(key) or 'all runs'} (n={len(runs)})")
        if len(runs) > 1:
            se = [statistics.stdev(v) / len(v) ** 0.5 for v in per_step]
            ax.fill_between(steps[:len(mean)], [m - s for m, s in zip(mean, se)], [m + s for m, s in zip(mean, se)],
                            color=f"C{i % 10}", alpha=0.2)
    ax.set_xlabel("step")
    ax.set_ylabel(label + "; band: ± standard error" if window > 1 else label)
    ax.grid(alpha=0.3)


def plot_summary(summary: SweepSummary, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    signals = [n for n in CURVE_PANELS if n != "train/loss" and any(r.get(n) for runs in summary.curves.values()
                                                                       for r in runs)]
    rows = 1 + math.ceil(len(signals) / 3)  # the learning signals the runs logged, three to a row
    fig, axes = plt.subplots(rows, 3, figsize=(19, 6 * rows), squeeze=False)
    scatter_panel(axes[0][0], summary, "attention_flop_ratio", "attention FLOPs / global attention")
    scatter_panel(axes[0][1], summary, "step_time_median_s", "median step time (s)")
    curve_panel(axes[0][2], summary, "train/loss")
    axes[0][2].legend(fontsize=7)
    below = [ax for row in axes[1:] for ax in row]
    for ax, name in zip(below, signals):
        curve_panel(ax, summary, name)
    for ax in below[len(signals):]:
        ax.axis("off")
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=8, frameon=False)
    kinds = sorted({g.kind for g in summary.groups})
    fig.suptitle(f"{summary.folder.name}: markers by kind ({', '.join(f'{MARKERS[i % len(MARKERS)]} {k}' for i, k in enumerate(kinds))}); "
                 f"error bars: ± standard error over seeds (groups of one run have none); hollow: random weights")
    fig.tight_layout(rect=(0, (0.12 if handles else 0) / rows, 1, 1 - 0.05 / rows))
    buffer = BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
    return path
