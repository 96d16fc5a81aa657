"""Prints the curve table of BENCHMARKS.md's "The 4000-step pair" from the two runs' metrics and
the checkpoint-probe table from probes/*.json (python table.py, from this folder or any)."""
import csv
import gzip
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
NAMES = {0: "EMA 1.0 (recipe)", 1: "EMA 0.99 (collapse)"}
KEYS = ("online/knn_top1", "online/knn_top5", "collapse/rankme_online", "collapse/rankme_target",
        "collapse/rankme_pred", "collapse/rankme_pred_targets")


def curves(run: int) -> dict[int, dict[str, float]]:
    with gzip.open(HERE / f"metrics_run{run}.csv.gz", "rt") as f:
        out: dict[int, dict[str, float]] = {}
        for row in csv.DictReader(f):
            for key in KEYS:
                if row.get(key):
                    out.setdefault(int(row["step"]), {})[key] = float(row[key])
        return out


def latest(d: dict[int, dict[str, float]], step: int, key: str) -> float:
    """The collapse monitor logs every 20 steps: its last value at or before ``step``."""
    steps = [s for s in d if s <= step and key in d[s]]
    return d[max(steps)][key] if steps else float("nan")


print("| step | run | k-NN top-1 | k-NN top-5 | RankMe online | RankMe target | RankMe predictions | RankMe of their targets |")
print("|---|---|---|---|---|---|---|---|")
data = {run: curves(run) for run in NAMES}
for step in sorted(set(data[0]) | set(data[1])):
    for run, d in data.items():
        if "online/knn_top1" in d.get(step, {}) and (step % 500 == 0 or step == 250):
            r = d[step]
            print(f"| {step} | {NAMES[run]} | {100 * r['online/knn_top1']:.2f}% | {100 * r['online/knn_top5']:.1f}% | "
                  + " | ".join(f"{latest(d, step, k):.2f}" for k in KEYS[2:5]) + f" | {latest(d, step, KEYS[5]):.1f} |")
print()
print("| probe file | top-1 best | top-5 best | top-1 held-out head |")
print("|---|---|---|---|")
for path in sorted((HERE / "probes").glob("*.json")):
    r = json.loads(path.read_text())
    print(f"| {path.stem} | {100 * r['best']['top1']:.2f}% | {100 * r['best']['top5']:.1f}% | {100 * r['selected']['top1']:.2f}% |")
