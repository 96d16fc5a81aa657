"""Pretrained minus random weights, job by job, from this folder's summary.csv (BENCHMARKS.md,
"The second verdict"): both probes of a job read the same architecture and the same
initialization (the random pass draws its weights from the job's training seed), so the paired
difference removes the spread between seeds that the group means carry.

    python scripts/results/verdict_kinds_micro_cpu_045362d/paired.py [summary.csv]
"""
import csv
import math
import sys
from collections import defaultdict
from pathlib import Path


def mean_se(values):
    n = len(values)
    mean = sum(values) / n
    se = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n) if n > 1 else float("nan")
    return mean, se, n


def main(path):
    pairs = defaultdict(dict)  # (group, seed) -> {weights: row}
    for row in csv.DictReader(open(path)):
        if row["probe_best_top1"]:
            pairs[(row["attention"], row["seed"])][row["weights"]] = row
    gains = defaultdict(lambda: defaultdict(list))
    for (group, seed), rows in sorted(pairs.items()):
        if {"pretrained", "random"} <= rows.keys():
            for metric in ("probe_best_top1", "probe_selected_top1"):
                gains[group][metric].append(100 * (float(rows["pretrained"][metric]) - float(rows["random"][metric])))
    print("| group | pretrained - random, best head (points) | held-out head (points) | seeds above random |")
    print("|---|---|---|---|")
    for group, by_metric in gains.items():
        cells = []
        for metric in ("probe_best_top1", "probe_selected_top1"):
            mean, se, n = mean_se(by_metric[metric])
            cells.append(f"{mean:+.2f} ± {se:.2f} (n={n})" if n > 1 else f"{mean:+.2f} (n=1)")
        above = sum(g > 0 for g in by_metric["probe_best_top1"])
        print(f"| {group} | {cells[0]} | {cells[1]} | {above} of {len(by_metric['probe_best_top1'])} |")
    everything = [g for by_metric in gains.values() for g in by_metric["probe_best_top1"]]
    if everything:
        mean, se, n = mean_se(everything)
        print(f"\nall jobs, best head: {mean:+.2f} ± {se:.2f} points (n={n}), "
              f"{sum(g > 0 for g in everything)} of {n} above their random weights")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).with_name("summary.csv"))
