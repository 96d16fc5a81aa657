"""The GPU proof in one command: everything stjepa claims about CUDA, measured in one run that
fits a short lease, written to one folder (at most 8 files).

Parts, in order of value (a run cut short still returns the first ones), each a subprocess with
its own time limit taken from what is left of ``--budget-s``; a part that cannot finish in the
time left is skipped and the log says so:

1. ``tests.log``: ``tests/test_cuda.py`` (every backend of every attention kind against the dense
   reference, bf16 and fp32, forward and gradients, masked inputs).
2. ``train_step.csv``: the ViT-L training step (encoder + ViT-L predictor + EMA target, bf16,
   fused AdamW, V-JEPA 2 masks), full vs area 2x2 and 2x2x2 in layers [0, 18) at 384px/64f and
   256px/64f batch 1, and full attention at 256px/16f batch 24 (the official recipe; also as a
   V-JEPA 2.1 model): step time,
   peak memory, MFU against a matmul peak measured in the same run, area/full ratio.
   ``train_step_compile.csv``: the same with ``torch.compile``; ``train_step_graphs.csv``: the
   official-recipe size with ``torch.compile(mode="reduce-overhead")`` (CUDA graphs).
3. ``attention.csv``: ``bench_attention`` core and layer at 4,608 (384px/64f, 25% visible) and
   18,432 tokens (384px/64f unmasked) for every attention kind and backend.
4. ``launches.csv``: operations, kernel launches and host / device syncs of one step at
   256px/16f batch 4 (profiler), full and area.
5. ``motion.json``: if time remains, a ViT-S pretraining run on synthetic motion (the
   synthetic_motion recipe) and the motion probe of it against its random initialization.

``gpu_check.log`` holds every part's command, time and last output lines.
``--dry-run`` runs the same parts at tiny sizes on the CPU (CI runs it, so the script cannot rot).

    python scripts/gpu_check.py --out $OUT                 # on the GPU machine, < 8 minutes
    python scripts/gpu_check.py --out /tmp/check --dry-run # anywhere
    python scripts/gpu_check.py --report $OUT              # markdown tables of a run's files
"""
from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"


class Run:
    """Runs the parts against one deadline and logs each."""

    def __init__(self, out: Path, budget_s: float, dry_run: bool):
        self.out, self.dry_run = out, dry_run
        self.deadline = time.monotonic() + budget_s
        self.log = open(out / "gpu_check.log", "a", buffering=1)
        self.work = out.parent / f".{out.name}_runs"  # run folders stay out of the returned files
        self.work.mkdir(parents=True, exist_ok=True)

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def say(self, text: str) -> None:
        print(text, flush=True)
        self.log.write(text + "\n")

    def call(self, args: list[str], need_s: float, output: Path | None = None) -> bool:
        """Run ``python args...`` if ``need_s`` seconds are left; its output goes to the log
        (or to ``output``). False when skipped, failed or stopped at the deadline."""
        if self.left() < need_s:
            self.say(f"SKIP (needs ~{need_s:.0f} s, {self.left():.0f} s left): {' '.join(args)}")
            return False
        self.say(f"RUN: {' '.join(args)}")
        start = time.monotonic()
        try:
            proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                                  timeout=max(self.left(), 1.0))
        except subprocess.TimeoutExpired:
            self.say(f"STOPPED at the deadline after {time.monotonic() - start:.0f} s")
            return False
        text = proc.stdout + proc.stderr
        if output is not None:
            output.write_text(text)
        tail = "\n".join(text.strip().splitlines()[-25:])
        self.say(f"exit {proc.returncode} after {time.monotonic() - start:.0f} s\n{tail}\n")
        return proc.returncode == 0


def cuda_tests(run: Run) -> None:
    run.call(["-m", "pytest", "-q", "-rs", "tests/test_cuda.py"], 30, run.out / "tests.log")


def train_step(run: Run) -> None:
    if run.dry_run:
        tiny = ["--model", "vit_tiny", "--predictor-depth", "1", "--iters", "1", "--warmup", "0", "--threads", "1"]
        groups = [[*tiny, "--sizes", "64px/8f", "--batch", "2", "--layouts", "full", "2x2", "2x2x2"]]
    else:
        common = ["--iters", "5", "--warmup", "2"]
        official = [*common, "--sizes", "vjepa2", "--vjepa2-batch", "24", "--layouts", "full"]
        from stjepa.models.versions import DEFAULT_VERSION, GENERATIONS

        others = [[*official, "--version", name] for name in GENERATIONS if name != DEFAULT_VERSION]
        groups = [[*common, "--sizes", "384px/64f", "256px/64f", "--batch", "1", "--layouts", "full", "2x2", "2x2x2"],
                  *others, official]  # every generation next to the default, 2.0 (V-JEPA 2.1: issue 18)
    variants = (("train_step", [], groups), ("train_step_compile", ["--compile"], groups),
                ("train_step_graphs", ["--compile", "reduce-overhead"], groups[-1:]))
    for name, extra, chosen in variants:
        if extra and run.dry_run:
            run.say(f"SKIP {name} in the dry run (compiling on a CPU takes minutes)")
            continue
        parts = []
        for i, args in enumerate(chosen):
            part = run.work / f"{name}_{i}.csv"
            if run.call([str(SCRIPTS / "bench_train_step.py"), *args, *extra, "--csv", str(part)], 45):
                parts.append(part)
        concat_csv(parts, run.out / f"{name}.csv")


def attention(run: Run) -> None:
    if run.dry_run:
        args = ["--sizes", "256px/16f", "--layouts", "full", "2x2", "nbhd3x5x5", "sta2x4x4", "topk2x4x4",
                "--parts", "core", "--backends", "auto", "--iters", "1", "--warmup", "0"]
    else:
        args = ["--sizes", "384px/64f", "384px/64f-full", "--parts", "core", "layer", "--iters", "5"]
    run.call([str(SCRIPTS / "bench_attention.py"), *args, "--csv", str(run.out / "attention.csv")], 40)


def launches(run: Run) -> None:
    if run.dry_run:
        args = ["--model", "vit_tiny", "--sizes", "64px/8f-b2", "--layouts", "full", "2x2"]
    else:
        args = ["--device", "cuda", "--sizes", "256px/16f-b4", "--layouts", "full", "2x2", "2x2x2"]
    run.call([str(SCRIPTS / "count_launches.py"), *args, "--csv", str(run.out / "launches.csv")], 30)


def motion(run: Run) -> None:
    """Pretrain on synthetic motion, then probe the online encoder against its initialization."""
    steps, probe_steps = (2, 2) if run.dry_run else (3000, 300)
    machine = ["trainer=gpu", "trainer.devices=1", "data.num_workers=4"]
    signals = []
    if run.dry_run:
        machine = ["trainer.accelerator=cpu", "trainer.devices=1", "data.num_workers=0", "data.batch_size=4"]
        # the preset's k-NN bank of 1024 clips cost about 18 of the dry run's 87 s on the 2-core CPU
        signals = ["callbacks.online_knn.train_clips=64", "callbacks.online_knn.val_clips=32",
                   "callbacks.collapse_monitor.clips=16"]
    model = "model=vit_tiny" if run.dry_run else "model=vit_small"
    train_dir = run.work / "motion_train"
    trained = run.call(["train.py", "experiment=synthetic_motion", model, *machine, f"trainer.max_steps={steps}",
                        f"trainer.val_check_interval={steps}", "print_config=false", *signals,
                        "logger=csv", f"hydra.run.dir={train_dir}"], 90 if not run.dry_run else 10)
    if not trained:
        return
    results = {"steps": steps, "model": model.split("=")[1]}
    for name, extra in (("pretrained", []), ("random_init", ["probe.random_init=true"])):
        probe_dir = run.work / f"motion_probe_{name}"
        ok = run.call(["probe.py", f"ckpt={train_dir / 'checkpoints' / 'last.ckpt'}", "data.colors=mono",
                       "data.frame_hold=2", "probe.encoder_key=encoder", *machine, f"trainer.max_steps={probe_steps}",
                       f"probe.val_check_interval={probe_steps}", "print_config=false",
                       *(["data.val_size=16"] if run.dry_run else []),
                       f"hydra.run.dir={probe_dir}", *extra], 30 if not run.dry_run else 5)
        if ok:
            best = json.loads((probe_dir / "results.json").read_text())["best"]
            results[name] = {k: best[k] for k in ("top1", "top5", "lr", "weight_decay")}
    (run.out / "motion.json").write_text(json.dumps(results, indent=2) + "\n")


PARTS = {"cuda_tests": cuda_tests, "train_step": train_step, "attention": attention, "launches": launches,
         "motion": motion}


def concat_csv(parts: list[Path], out: Path) -> None:
    rows = [row for part in parts for row in csv.DictReader(open(part))]
    if not rows:
        return
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def report(folder: Path) -> str:
    """Markdown tables of a run's CSVs and its motion result (for BENCHMARKS.md)."""
    lines = []
    for path in sorted(folder.glob("*.csv")):
        rows = list(csv.DictReader(open(path)))
        if not rows:
            continue
        columns = list(rows[0])
        lines += [f"### {path.name}", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(row.get(c, "") or "" for c in columns) + " |" for row in rows]
        lines.append("")
    if (folder / "motion.json").is_file():
        lines += ["### motion.json", "", "```json", (folder / "motion.json").read_text().strip(), "```", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, help="the folder for the (at most 8) result files")
    p.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU, the same code path")
    p.add_argument("--budget-s", type=float, default=450.0, help="stop starting parts after this many seconds")
    p.add_argument("--parts", nargs="+", choices=list(PARTS), default=list(PARTS))
    p.add_argument("--report", type=Path, help="print markdown tables of an earlier run's folder, and exit")
    args = p.parse_args(argv)
    if args.report:
        print(report(args.report))
        return 0
    if args.out is None:
        p.error("--out is required (or --report)")
    args.out.mkdir(parents=True, exist_ok=True)
    run = Run(args.out, args.budget_s, args.dry_run)
    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device"
    run.say(f"gpu_check: {device}, torch {torch.__version__}, dry run {args.dry_run}, budget {args.budget_s:.0f} s")
    if not args.dry_run and not torch.cuda.is_available():
        run.say("error: no CUDA device; use --dry-run to test the script on a CPU.")
        return 2
    for name in args.parts:
        run.say(f"== {name} ({run.left():.0f} s left)")
        PARTS[name](run)
    run.say(f"done, {run.left():.0f} s of the budget left; files: "
            f"{', '.join(sorted(p.name for p in args.out.iterdir()))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
