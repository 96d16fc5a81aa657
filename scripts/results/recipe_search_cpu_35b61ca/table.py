"""Prints the two tables of BENCHMARKS.md's "Looking for a recipe that learns within 1000 CPU steps"
(python table.py, from this folder or any): every probe file in probes/ (one per probe.py run), and the
online encoder's RankMe, train loss and step time from the three micro runs' metrics."""
import csv
import gzip
import json
import statistics
from pathlib import Path

HERE = Path(__file__).resolve().parent

print("| probe file | weights | heads | top-1 best head | top-5 best head | top-1 held-out head | top-1, every head |")
print("|---|---|---|---|---|---|---|")
for path in sorted((HERE / "probes").glob("*.json")):
    r = json.loads(path.read_text())
    print(f"| {path.stem} | {'random' if r['random_init'] else 'trained 1000 steps'} | {len(r['heads'])} | "
          f"{100 * r['best']['top1']:.2f}% | {100 * r['best']['top5']:.1f}% | {100 * r['selected']['top1']:.2f}% | "
          f"{100 * min(h['top1'] for h in r['heads']):.1f} to {100 * max(h['top1'] for h in r['heads']):.1f}% |")

print()
print("| run | RankMe online, steps 0 / 100 / 500 / 1000 | train loss, mean of steps 900-1000 | median step (s) |")
print("|---|---|---|---|")
for path in sorted(HERE.glob("metrics_*.csv.gz")):
    with gzip.open(path, "rt") as f:
        rows = list(csv.DictReader(f))
    rank = {int(r["step"]): float(r["collapse/rankme_online"]) for r in rows if r.get("collapse/rankme_online")}
    loss = [float(r["train/loss"]) for r in rows if r.get("train/loss") and int(r["step"]) >= 900]
    step = [float(r["perf/step_time_s"]) for r in rows if r.get("perf/step_time_s") and int(r["step"]) >= 10]
    print(f"| {path.name[len('metrics_'):-len('.csv.gz')]} | {' / '.join(f'{rank[s]:.2f}' for s in (0, 100, 500, 1000))} | "
          f"{statistics.mean(loss):.4f} | {statistics.median(step):.3f} |")
