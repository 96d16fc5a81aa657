"""Decoded + augmented clips (and images) per second for one data worker.

Writes a few 320p (568x320) H.264 videos of moving shapes at 30 fps, then times the training
data path exactly as a DataLoader worker runs it (one process, one decoding thread): decode the
16 frames of one clip at 4 fps (a span of 128 source frames), random resized crop to 256 px,
flip, normalize. Reports clips/s per worker for each decoder. Then the image path: JPEGs of
ImageNet's typical 500x375 (quality 90), decoded with Pillow, random resized crop to 256 px,
flip, normalize: images/s per worker.

    python scripts/bench_data.py                        # decord and PyAV, 40 clips each; 200 images
    python scripts/bench_data.py --decoders decord --clips 200 --images 500 --csv data.csv
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from stjepa.data.decoding import available_decoders
from stjepa.data.image_dataset import ImageDataset
from stjepa.data.manifests import VideoSample
from stjepa.data.synthetic import render_clip, sample_params
from stjepa.data.transforms import TrainTransform
from stjepa.data.video_dataset import VideoClipDataset
from stjepa.utils.bench import write_csv
from stjepa.utils.timing import describe_device, git_commit


def write_320p_videos(folder: Path, count: int, frames: int, fps: int) -> list[Path]:
    import av

    paths = []
    for i in range(count):
        params = sample_params(torch.Generator().manual_seed(i))
        video = render_clip(params, frames, 568)[:, 124:444]  # 568x568 -> 568 wide x 320 high
        path = folder / f"clip{i}.mp4"
        with av.open(str(path), "w") as container:
            stream = container.add_stream("libx264", rate=fps)
            stream.width, stream.height, stream.pix_fmt = 568, 320, "yuv420p"
            stream.options = {"crf": "23", "preset": "veryfast"}
            for frame in video.numpy():
                container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            container.mux(stream.encode())
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


def time_items(dataset, count: int) -> float:
    """Median seconds per item over ``count`` items after one warm-up item."""
    dataset[0]
    times = []
    for i in range(count):
        t0 = time.perf_counter()
        dataset[i % len(dataset)]
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--decoders", nargs="+", default=[d for d in ("decord", "pyav", "torchcodec") if d in available_decoders()])
    p.add_argument("--clips", type=int, default=40)
    p.add_argument("--videos", type=int, default=6)
    p.add_argument("--source-frames", type=int, default=300, help="10 s at 30 fps")
    p.add_argument("--images", type=int, default=200, help="images to time (0: skip the image path)")
    p.add_argument("--csv", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # a worker's share
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_320p_videos(Path(tmp), args.videos, args.source_frames, 30)
        samples = [VideoSample(str(path), 0) for path in paths]
        for decoder in args.decoders:
            ds = VideoClipDataset(samples, ["bench"], TrainTransform(256), frames_per_clip=16, fps=4.0,
                                  decoder=decoder, seed=0)
            assert ds[0]["video"].shape == (3, 16, 256, 256)
            med = time_items(ds, args.clips)
            row = dict(decoder=decoder, device=describe_device(torch.device("cpu")), commit=git_commit(),
                       source="568x320 H.264 30fps", clip="16 frames @ 4 fps, 256px", median_ms=round(med * 1e3, 2),
                       items_per_s_per_worker=round(1.0 / med, 2))
            rows.append(row)
            print(f"{decoder:>10}: {med * 1e3:7.1f} ms per clip -> {1.0 / med:6.1f} clips/s per worker")
        if args.images:
            paths = write_jpegs(Path(tmp), min(args.images, 50))
            ds = ImageDataset([VideoSample(str(path), 0) for path in paths], ["bench"], TrainTransform(256), seed=0)
            assert ds[0]["image"].shape == (3, 256, 256)
            med = time_items(ds, args.images)
            rows.append(dict(decoder="pillow", device=describe_device(torch.device("cpu")), commit=git_commit(),
                             source="500x375 JPEG q90", clip="1 image, 256px", median_ms=round(med * 1e3, 2),
                             items_per_s_per_worker=round(1.0 / med, 2)))
            print(f"{'pillow':>10}: {med * 1e3:7.1f} ms per image -> {1.0 / med:6.1f} images/s per worker")
    if args.csv:
        write_csv(rows, args.csv)


if __name__ == "__main__":
    main()
