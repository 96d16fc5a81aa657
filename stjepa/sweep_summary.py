"""A sweep's verdict: one row per job (its swept keys, training metrics and probe results), the
runs grouped by every swept key but the seed (mean, standard error, n), the Pareto front of
accuracy against cost, and the files ``summary.csv``, ``summary.md`` and ``summary.png``.

Statistics follow DESIGN "From runs to a verdict": the standard error is the sample standard
deviation over seeds / sqrt(n); a group of one run has none (never a made-up error bar). The
training metrics are read from each job's ``csv/metrics.csv``; the probe results from
``<job>/<probe folder>/results.json`` (``probe.py sweep=...``), one row per job and probe folder,
so random-weight baselines (``probe_random``) sit next to the pretrained rows."""
from __future__ import annotations

import csv
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from .errors import ConfigError
from .networks import RunAttention
from .sweep_plot import CURVE_PANELS, plot_summary
from .sweeps import FINISHED, SEED_KEY, Job, first_difference, group_keys, read_sweep

WARMUP_STEPS = 10  # step times and throughput of the first steps (compilation, caches) are left out
FINAL_FRACTION = 0.1  # the final train loss is the mean over the last 10% of the logged steps

# (column, what it is, the training-log column it comes from); probe columns come from results.json
TRAIN_METRICS = {
    "train_loss_final": "mean train/loss over the last 10% of logged steps",
    "val_loss_final": "last val/loss",
    "attention_flop_ratio": "attention FLOPs / global attention's (flops/attention_ratio)",
    "step_time_median_s": "median perf/step_time_s after the first 10 steps",
    "tokens_per_s_median": "median perf/tokens_per_s after the first 10 steps",
    "peak_memory_gib": "largest perf/peak_memory_gib",
    "knn_top1_start": "online/knn_top1 at step 0: the weights the run started from (random weights)",
    "knn_top1_final": "last online/knn_top1 (the online k-NN at the end of training)",
    "knn_top5_final": "last online/knn_top5",
    "knn_gain": "knn_top1_final - knn_top1_start of the same run: what pretraining added",
}
PROBE_METRICS = {
    "probe_best_top1": "top-1 of the best head on the validation clips",
    "probe_best_top5": "top-5 of that head",
    "probe_selected_top1": "top-1 of the head chosen on the other half of the validation clips",
    "probe_selected_top5": "top-5 of that head",
}
METRICS = {**TRAIN_METRICS, **PROBE_METRICS}
PERCENT = (*PROBE_METRICS, "knn_top1_start", "knn_top1_final", "knn_top5_final", "knn_gain")  # shown as %
# the accuracy a verdict ranks groups by, first present wins: the probe head chosen on held-out
# clips (the honest reading), the best probe head, the online k-NN at the end of training
ACCURACY_METRICS = ("probe_selected_top1", "probe_best_top1", "knn_top1_final")
# the training-log series drawn as curves per group in summary.png (learning signals: README "Training")
CURVES = tuple(CURVE_PANELS)


@dataclass
class Group:
    key: tuple[str, ...]  # the swept values (all keys but the seed), then the probe folder
    kind: str
    weights: str
    rows: list[dict] = field(default_factory=list)
    stats: dict[str, tuple[float | None, float | None, int]] = field(default_factory=dict)  # mean, se, n
    pareto: dict[str, bool] = field(default_factory=dict)  # cost column -> on the front

    @property
    def label(self) -> str:
        """'attention=area_2x2', plus the probe folder when it is not a default one, '(online
        k-NN)' or '(not probed)' for jobs without probe results (with or without the online k-NN
        at the end of training), and 'random weights' for baselines."""
        *values, probe = self.key
        label = " ".join(v for v in values if v) or "all runs"
        if probe not in ("", "probe", "probe_random"):
            label += f" [{probe}]"
        if probe == "":
            label += " (online k-NN)" if any(r.get("knn_top1_final") is not None for r in self.rows) else " (not probed)"
        return label + (" random weights" if self.weights == "random" else "")


@dataclass
class SweepSummary:
    folder: Path
    keys: list[str]  # swept keys other than the seed
    rows: list[dict]
    groups: list[Group]
    notes: list[str]
    # group key -> each run's {CURVES name: [(step, value), ...]} (names the run did not log are absent)
    curves: dict[tuple[str, ...], list[dict[str, list[tuple[int, float]]]]]

    @property
    def has_probes(self) -> bool:
        return any(r.get("probe_selected_top1") is not None or r.get("probe_best_top1") is not None
                   for r in self.rows)

    @property
    def accuracy(self) -> str | None:
        """The column the verdict ranks by (see ACCURACY_METRICS); None: no accuracy at all."""
        return accuracy_metric(self.groups)


def accuracy_metric(groups: list["Group"]) -> str | None:
    return next((m for m in ACCURACY_METRICS if any(g.stats[m][0] is not None for g in groups)), None)


def mean_se(values: list[float]) -> tuple[float | None, float | None, int]:
    """Mean, standard error (sample std / sqrt(n); None for n < 2) and n of the non-missing values."""
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return None, None, 0
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else None
    return statistics.fmean(values), se, len(values)


def pareto_front(points: list[tuple[float, float]]) -> list[bool]:
    """For (cost, accuracy) points: whether each is on the front (no other point costs no more
    and scores no less, with one of the two strictly better)."""
    def dominated(i: int) -> bool:
        c, a = points[i]
        return any(c2 <= c and a2 >= a and (c2 < c or a2 > a) for j, (c2, a2) in enumerate(points) if j != i)

    return [not dominated(i) for i in range(len(points))]


def read_training_log(job: Job) -> tuple[dict[str, float | None], dict[str, list[tuple[int, float]]]]:
    """The training metrics of a job (see TRAIN_METRICS) and its CURVES that it logged."""
    path = job.folder / "csv" / "metrics.csv"
    rows = list(csv.DictReader(path.open())) if path.is_file() else []

    def series(key: str) -> list[tuple[int, float]]:
        return [(int(r["step"]), float(r[key])) for r in rows if r.get(key) not in (None, "")]

    loss = series("train/loss")
    tail = [v for _, v in loss[-max(1, math.ceil(FINAL_FRACTION * len(loss))):]] if loss else []
    steady = lambda key: [v for s, v in series(key) if s >= WARMUP_STEPS] or [v for _, v in series(key)]  # noqa: E731
    last = lambda key: series(key)[-1][1] if series(key) else None  # noqa: E731
    return {
        "train_loss_final": statistics.fmean(tail) if tail else None,
        "val_loss_final": last("val/loss"),
        "attention_flop_ratio": last("flops/attention_ratio"),
        "step_time_median_s": statistics.median(steady("perf/step_time_s")) if series("perf/step_time_s") else None,
        "tokens_per_s_median": statistics.median(steady("perf/tokens_per_s")) if series("perf/tokens_per_s") else None,
        "peak_memory_gib": max((v for _, v in series("perf/peak_memory_gib")), default=None),
        **knn_columns(series("online/knn_top1"), last("online/knn_top5")),
    }, {name: values for name in CURVES if (values := series(name))}


def knn_columns(top1: list[tuple[int, float]], top5_final: float | None) -> dict[str, float | None]:
    start = next((v for s, v in top1 if s == 0), None)
    final = top1[-1][1] if top1 and top1[-1][0] > 0 else None
    return {"knn_top1_start": start, "knn_top1_final": final, "knn_top5_final": top5_final if final is not None else None,
            "knn_gain": None if start is None or final is None else final - start}


def probe_results(job: Job) -> dict[str, dict]:
    """``{probe folder name: results.json}`` of a job (every sub-folder holding one)."""
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(job.folder.glob("*/results.json"))}


def probe_columns(results: dict | None) -> dict[str, float | None]:
    selected = (results or {}).get("selected") or {}
    best = (results or {}).get("best") or {}
    return {"probe_best_top1": best.get("top1"), "probe_best_top5": best.get("top5"),
            "probe_selected_top1": selected.get("top1"), "probe_selected_top5": selected.get("top5")}


def check_probed_alike(rows: list[dict], settings: dict[int, dict]) -> None:
    """Rows of one probe folder must come from probes with the same settings."""
    first: dict[str, tuple[dict, dict]] = {}
    for row in rows:
        if row["probe"] == "" or id(row) not in settings:
            continue
        if row["probe"] not in first:
            first[row["probe"]] = (row, settings[id(row)])
            continue
        ref_row, ref = first[row["probe"]]
        differs = first_difference(ref, settings[id(row)])
        if differs:
            raise ConfigError(f"jobs {ref_row['job']} and {row['job']} were probed into '{row['probe']}' with "
                              f"different settings ({differs} differs), so their accuracies cannot be compared; "
                              f"probe them again alike (python probe.py sweep=... probe_dir=<new name>).")


def summarize_sweep(folder: str | Path, include_unfinished: bool = False) -> SweepSummary:
    """Read a sweep folder into rows (one per job and probe folder) and groups; see the module
    docstring. Refuses a folder that is not a sweep or a sweep whose jobs have all not finished.
    ``include_unfinished``: a sweep still running (or stopped early) is summarised as far as its
    jobs got, each unfinished one up to its last logged step, in the groups (its state says so)."""
    jobs = read_sweep(folder)
    summarised = [job for job in jobs if include_unfinished or job.state == FINISHED]
    if not summarised:
        states = ", ".join(f"{job.label}: {job.describe_state()}" for job in jobs)
        raise ConfigError(f"no job of sweep {str(folder)!r} has finished training, so there is nothing to summarise "
                          f"({states}).")
    keys = group_keys(jobs)
    rows, settings, curves, notes = [], {}, {}, []
    for job in jobs:
        saved = job.config.get("attention")
        attention = RunAttention.create(OmegaConf.to_container(saved, resolve=True) if saved is not None else None)
        base = {"job": job.num, "state": job.describe_state(), **{k: job.swept.get(k, "") for k in keys},
                SEED_KEY: job.seed, "layout": attention.tag, "kind": attention.kind, "folder": str(job.folder)}
        train, run_curves = read_training_log(job)
        probes = probe_results(job) if job in summarised else {}
        if job.state != FINISHED:
            notes.append(f"{job.label} is {job.describe_state()}: " + (
                "summarised up to its last logged step." if job in summarised else "listed, left out of the groups."))
        for name, results in (probes or {"": None}).items():
            random = bool(results and results.get("random_init"))
            row = {**base, "probe": name, "weights": "random" if random else "pretrained", "in_groups": job in summarised,
                   **train,
                   **probe_columns(results)}
            if random:  # a random-weight baseline has no training of its own; its cost is the architecture's
                row.update(train_loss_final=None, val_loss_final=None)
            rows.append(row)
            if results:
                settings[id(row)] = results.get("settings") or {}
        if job in summarised:
            curves.setdefault(tuple(f"{k}={base[k]}" for k in keys), []).append(run_curves)
    check_probed_alike(rows, settings)
    if not any(r["probe"] for r in rows):
        notes.append("no job has probe results, so the probe columns are empty; run python probe.py "
                     f"sweep={folder} to fill them.")
    groups = make_groups(rows, keys)
    return SweepSummary(Path(folder), keys, rows, groups, notes, curves)


def make_groups(rows: list[dict], keys: list[str]) -> list[Group]:
    groups: dict[tuple[str, ...], Group] = {}
    for row in rows:
        if not row["in_groups"]:
            continue
        key = (*(f"{k}={row[k]}" for k in keys), row["probe"])
        groups.setdefault(key, Group(key, row["kind"], row["weights"])).rows.append(row)
    for group in groups.values():
        group.stats = {m: mean_se([r[m] for r in group.rows]) for m in METRICS}
    accuracy = accuracy_metric(list(groups.values()))
    for cost in ("attention_flop_ratio", "step_time_median_s"):
        ranked = [g for g in groups.values() if accuracy and g.weights == "pretrained" and g.stats[accuracy][0] is not None
                  and g.stats[cost][0] is not None]
        for g, on_front in zip(ranked, pareto_front([(g.stats[cost][0], g.stats[accuracy][0]) for g in ranked])):
            g.pareto[cost] = on_front
    return list(groups.values())


def format_value(value: float, percent: bool, sign: str = "") -> str:
    """A fraction as a percentage to 2 decimals, anything else to 4 significant digits; sign="+"
    always shows the sign."""
    return f"{100 * value:{sign}.2f}" if percent else f"{value:{sign}.4g}"


def format_stat(stat: tuple[float | None, float | None, int], percent: bool = False) -> str:
    """'35.20 ± 1.10 (n=3)', '35.20 (n=1)', or '' for no value (see format_value)."""
    mean, se, n = stat
    if mean is None:
        return ""
    if se is None:
        return f"{format_value(mean, percent)} (n={n})"
    return f"{format_value(mean, percent)} ± {format_value(se, percent)} (n={n})"


def significant_differences(summary: SweepSummary, metric: str | None = None) -> list[str]:
    """Each pair of pretrained groups, with their difference in ``metric`` (default: the
    summary's accuracy column) and whether it exceeds two combined standard errors
    (sqrt(se_a² + se_b²)); pairs where a group has one run say so."""
    metric = metric or summary.accuracy
    if metric is None:
        return []
    groups = [g for g in summary.groups if g.weights == "pretrained" and g.stats[metric][0] is not None]
    percent = metric in PERCENT  # differences in points of accuracy; other metrics in their own unit
    unit = " points" if percent else ""
    lines = []
    for i, a in enumerate(groups):
        for b in groups[i + 1:]:
            (ma, sa, na), (mb, sb, nb) = a.stats[metric], b.stats[metric]
            if sa is None or sb is None:
                lines.append(f"{a.label} vs {b.label}: {format_value(ma - mb, percent, '+')}{unit}; no error bar (a group has one run).")
                continue
            combined = math.sqrt(sa ** 2 + sb ** 2)
            verdict = "exceeds" if abs(ma - mb) > 2 * combined else "does not exceed"
            lines.append(f"{a.label} vs {b.label}: {format_value(ma - mb, percent, '+')}{unit}, {verdict} two combined standard errors "
                         f"(2 x {format_value(combined, percent)}).")
    return lines


def ranks(values: list[float]) -> list[float]:
    """1-based ranks, ties sharing the mean of the ranks they span."""
    order = sorted(range(len(values)), key=values.__getitem__)
    result = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for i in order[start:end + 1]:
            result[i] = (start + end) / 2 + 1
        start = end + 1
    return result


def spearman(a: list[float], b: list[float]) -> float | None:
    """Spearman's rank correlation (Pearson's of the tie-averaged ranks); None when either list
    has fewer than three values or no spread."""
    if len(a) < 3:
        return None
    ra, rb = ranks(a), ranks(b)
    ma, mb = statistics.fmean(ra), statistics.fmean(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    var = math.sqrt(sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb))
    return cov / var if var else None


def ranking_agreement(summary: SweepSummary) -> list[str]:
    """Whether the online k-NN at the end of training orders the pretrained runs (and the groups'
    means) as the probe does: Spearman's rho over the runs that have both, one line each."""
    probe = next((m for m in ("probe_selected_top1", "probe_best_top1")
                  if any(r.get(m) is not None for r in summary.rows)), None)
    if probe is None:
        return []
    lines = []
    runs = [r for r in summary.rows if r["in_groups"] and r["weights"] == "pretrained"
            and r.get(probe) is not None and r.get("knn_top1_final") is not None]
    groups = [g for g in summary.groups if g.weights == "pretrained" and g.stats[probe][0] is not None
              and g.stats["knn_top1_final"][0] is not None]
    for what, pairs in (("runs", [(r["knn_top1_final"], r[probe]) for r in runs]),
                        ("groups' means", [(g.stats["knn_top1_final"][0], g.stats[probe][0]) for g in groups])):
        rho = spearman([a for a, _ in pairs], [b for _, b in pairs])
        if rho is not None:
            lines.append(f"over {len(pairs)} {what}: Spearman's rho = {rho:+.2f} between knn_top1_final and {probe} "
                         f"(+1: the same order, 0: unrelated, -1: reversed).")
    return lines


def write_csv(summary: SweepSummary, path: Path) -> None:
    columns = ["job", "state", *summary.keys, SEED_KEY, "layout", "kind", "probe", "weights", *METRICS, "folder"]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        for row in summary.rows:
            writer.writerow({c: "" if row.get(c) is None else row.get(c) for c in columns})


def markdown(summary: SweepSummary) -> str:
    header = [*summary.keys, "probe", "kind", "weights", "n", *METRICS]
    lines = [f"# Summary of {summary.folder}", "",
             "Groups: every swept key but the seed. Each cell: mean ± standard error (n) over seeds; a group of one "
             "run has no error bar. Top-1/top-5 in percent.", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for g in summary.groups:
        n = max(g.stats[m][2] for m in METRICS)
        cells = [*g.key[:-1], g.key[-1] or "-", g.kind, g.weights, str(n),
                 *(format_stat(g.stats[m], m in PERCENT) for m in METRICS)]
        lines.append("| " + " | ".join(cells) + " |")
    front = [g.label for g in summary.groups if g.pareto.get("attention_flop_ratio")]
    if front:
        lines += ["", f"Pareto front ({summary.accuracy} against attention FLOP ratio): {', '.join(front)}."]
    differences = significant_differences(summary)
    if differences:
        lines += ["", f"Differences in {summary.accuracy}:", *(f"- {d}" for d in differences)]
    agreement = ranking_agreement(summary)
    if agreement:
        lines += ["", "Does the online k-NN rank the runs as the probe does?", *(f"- {a}" for a in agreement)]
    lines += ["", "Columns:", *(f"- `{m}`: {what}" for m, what in METRICS.items())]
    if summary.notes:
        lines += ["", "Notes:", *(f"- {n}" for n in summary.notes)]
    return "\n".join(lines) + "\n"


def rich_table(summary: SweepSummary):
    import rich.table

    table = rich.table.Table(title=f"{summary.folder}: mean ± standard error (n) over seeds; green: Pareto "
                                   f"front of top-1 against attention FLOPs")
    shown = {"probe_selected_top1": "top-1 % (held-out head)", "probe_best_top1": "top-1 % (best head)",
             "knn_top1_start": "k-NN top-1 % (step 0)", "knn_top1_final": "k-NN top-1 % (end)",
             "attention_flop_ratio": "attn FLOPs / full", "step_time_median_s": "step (s)",
             "train_loss_final": "train loss"}
    shown = {m: h for m, h in shown.items() if any(g.stats[m][0] is not None for g in summary.groups)}
    table.add_column("group")
    table.add_column("kind")
    for header in shown.values():
        table.add_column(header, justify="right")
    for g in summary.groups:
        style = "bold green" if g.pareto.get("attention_flop_ratio") else None
        table.add_row(g.label, g.kind, *(format_stat(g.stats[m], m in PERCENT) for m in shown), style=style)
    return table


def write_summary(summary: SweepSummary) -> dict[str, Path]:
    """summary.csv, summary.md and summary.png inside the sweep folder."""
    from .checkpoint_io import atomic_write_text

    paths = {name: summary.folder / f"summary.{name}" for name in ("csv", "md", "png")}
    write_csv(summary, paths["csv"])
    atomic_write_text(paths["md"], markdown(summary))
    plot_summary(summary, paths["png"])
    return paths
