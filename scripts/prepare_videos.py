"""Prepare the videos of a manifest once for fast training: re-encode each to a short side of
320 px (or --short-side, or keep) with a keyframe at least every 32 frames, fast to decode, in parallel
processes, resumable. Writes OUT/manifest.txt (same labels), OUT/prepare_report.tsv (broken and
too-short videos named) and, for named labels, OUT/manifest_classes.json. The rules and the
trade-off of each option: stjepa/data/prepare.py.

    python scripts/prepare_videos.py k400/train.csv /data/k400_320p --video-root /data/k400 --split train
    python scripts/prepare_videos.py train.txt /data/prepared --short-side keep --fps 30 --processes 8
    # then train on it: python train.py data=kinetics data.train_manifest=/data/prepared/manifest.txt

Run it again with the same settings to finish an interrupted run: finished videos are skipped.
The "too short" check uses the clip of conf/data/kinetics.yaml (frames_per_clip, fps, frame_step)
unless --clip-frames / --clip-fps / --clip-frame-step say otherwise.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from stjepa.data.prepare import ClipSpec, PrepareSettings, prepare_manifest
from stjepa.errors import UserError

DATA_CONFIG = Path(__file__).resolve().parents[1] / "conf" / "data" / "kinetics.yaml"


def _keep_or(kind):
    def parse(text: str):
        return None if text == "keep" else kind(text)
    return parse


def main(argv: list[str] | None = None) -> int:
    defaults, data = PrepareSettings(), OmegaConf.load(DATA_CONFIG)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("manifest", help="a V-JEPA list, a Kinetics annotations CSV or a folder of class folders")
    p.add_argument("out", help="output folder (created; an earlier run's folder is resumed)")
    p.add_argument("--short-side", type=_keep_or(int), default=defaults.short_side, help="pixels, or keep")
    p.add_argument("--fps", type=_keep_or(float), default=defaults.fps, help="frame rate, or keep (default)")
    p.add_argument("--keyframe-interval", type=int, default=defaults.keyframe_interval, help="frames")
    p.add_argument("--crf", type=int, default=defaults.crf, help="libx264 quality (lower: better, larger)")
    p.add_argument("--preset", default=defaults.preset, help="libx264 speed preset")
    p.add_argument("--processes", type=int, default=os.cpu_count() or 1, help="videos prepared at once")
    p.add_argument("--threads", type=int, default=1, help="decoding/encoding threads per process (0: FFmpeg's choice)")
    p.add_argument("--video-root", help="folder holding the videos of a Kinetics CSV or relative list paths")
    p.add_argument("--split", help="keep only Kinetics CSV rows of this split")
    p.add_argument("--clip-frames", type=int, default=data.frames_per_clip)
    p.add_argument("--clip-fps", type=_keep_or(float), default=data.fps, help="clip frame rate (keep: use --clip-frame-step)")
    p.add_argument("--clip-frame-step", type=int, default=data.frame_step)
    args = p.parse_args(argv)
    settings = PrepareSettings(args.short_side, args.fps, args.keyframe_interval, args.crf, args.preset)
    clip = ClipSpec(args.clip_frames, args.clip_fps, args.clip_frame_step)
    columns = (TextColumn("preparing"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
               TextColumn("{task.fields[broken]} broken"))
    t0 = time.perf_counter()
    try:
        with Progress(*columns, transient=False) as progress:
            task = progress.add_task("videos", total=None, broken=0)
            broken = 0

            def on_done(outcome):
                nonlocal broken
                broken += outcome.status == "broken"
                progress.update(task, advance=1, broken=broken)

            summary = prepare_manifest(args.manifest, args.out, clip, settings, args.video_root, args.split,
                                       args.processes, args.threads, on_start=lambda n: progress.update(task, total=n),
                                       on_done=on_done)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    now = summary.prepared_now
    busy = sum(o.seconds for o in now)
    rate = f"{len(now) / busy:.2f} videos/s per process" if busy else "nothing new to prepare"
    damaged = sum(o.damaged for o in summary.outcomes)
    print(f"{summary.count('ok')} ok, {summary.count('short')} shorter than one clip, {summary.count('broken')} "
          f"broken, {damaged} damaged (frames before the damage kept) of {len(summary.outcomes)} videos ({len(now)} prepared now: {rate}; "
          f"{time.perf_counter() - t0:.0f} s in all); manifest: {summary.manifest}; report: {summary.report}")
    if summary.count("broken") or summary.count("short") or damaged:
        print(f"warning: see {summary.report} for the broken, damaged and short videos (broken ones are commented "
              "out in the manifest, damaged ones named in a comment above their entry; short ones are kept and "
              "padded or skipped as data.short_video says).",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
