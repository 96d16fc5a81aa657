"""summary.png of a sweep: probe top-1 against attention FLOPs and against step time (one marker
per attention kind, error bars over seeds only where a group has two or more runs, the Pareto
front joined by a line, random-weight baselines hollow), and the train-loss curves per group."""
from __future__ import annotations

import statistics
from io import BytesIO
from pathlib import Path

from .checkpoint_io import atomic_write_bytes
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


def loss_panel(ax, summary: SweepSummary) -> None:
    for i, (key, runs) in enumerate(summary.curves.items()):
        runs = [r for r in runs if r]
        if not runs:
            continue
        steps = [s for s, _ in runs[0]]
        per_step = list(zip(*(running_mean([v for _, v in r], SMOOTHING) for r in runs)))  # shortest run wins
        mean = [statistics.fmean(v) for v in per_step]
        ax.plot(steps[:len(mean)], mean, color=f"C{i % 10}", label=f"{' '.join(key) or 'all runs'} (n={len(runs)})")
        if len(runs) > 1:
            se = [statistics.stdev(v) / len(v) ** 0.5 for v in per_step]
            ax.fill_between(steps[:len(mean)], [m - s for m, s in zip(mean, se)], [m + s for m, s in zip(mean, se)],
                            color=f"C{i % 10}", alpha=0.2)
    ax.set_xlabel("step")
    ax.set_ylabel(f"train loss (running mean of {SMOOTHING} logged steps; band: ± standard error)")
    ax.grid(alpha=0.3)


def plot_summary(summary: SweepSummary, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(19, 6))
    scatter_panel(axes[0], summary, "attention_flop_ratio", "attention FLOPs / global attention")
    scatter_panel(axes[1], summary, "step_time_median_s", "median step time (s)")
    loss_panel(axes[2], summary)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=8, frameon=False)
    axes[2].legend(fontsize=7)
    kinds = sorted({g.kind for g in summary.groups})
    fig.suptitle(f"{summary.folder.name}: markers by kind ({', '.join(f'{MARKERS[i % len(MARKERS)]} {k}' for i, k in enumerate(kinds))}); "
                 f"error bars: ± standard error over seeds (groups of one run have none); hollow: random weights")
    fig.tight_layout(rect=(0, 0.12 if handles else 0, 1, 0.95))
    buffer = BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
    return path
