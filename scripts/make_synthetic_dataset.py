"""Write the seeded moving-shapes clips (``stjepa.data.synthetic``) as real video files.

Video ``i`` shows clip ``MovingShapesDataset(seed=seed, num_shapes=..., boundary=...).params(i)``
(item ``i`` of the on-the-fly dataset, rendered at the file's size), encoded with PyAV. The
defaults write one bouncing shape per clip; ``--num-shapes 4 --boundary wrap`` gives the shapes
of ``data=synthetic``'s defaults. Files hold every frame at the base speed (``frame_step`` 1):
the speed a clip shows is chosen when it is read (``data.fps`` or ``data.frame_step``). Layout::

    OUT_DIR/videos/<class_name>/shapes_00000.mp4   # class folders, Kinetics style
    OUT_DIR/train.txt, OUT_DIR/val.txt             # V-JEPA manifests: "<relative path> <int label>"
    OUT_DIR/classes.json                           # {class_name: id}, ids in alphabetical order of names
    OUT_DIR/metadata.json                          # one record per video (size, fps, format, params, ...)
    OUT_DIR/bad.txt, OUT_DIR/bad/                  # with --bad: broken files plus a few good lines

Class names sort in label order (``dir0``..``dir7``; ``circle``, ``square``, ``triangle``;
``speed0_slow``, ``speed1_fast``; ``circle_dir0``..), so ``classes.json`` ids equal
``stjepa.data.synthetic.label_of``. Size, fps and format are assigned round-robin over every
combination: format varies fastest, then size, then fps (video ``i`` gets
``formats[i % F]``, ``sizes[(i // F) % S]``, ``fps[(i // (F * S)) % R]``).

Formats: ``mp4`` (H.264 libx264, yuv420p, crf 18, preset fast), ``webm`` (VP9 libvpx-vp9,
crf 24), ``mkv`` (MPEG-4 part 2) and ``avi`` (MJPEG); each needs its encoder in PyAV's FFmpeg.

    python scripts/make_synthetic_dataset.py data/shapes --num-videos 24 --frames 48 \\
        --sizes 96 128 --fps 8 12 --formats mp4 webm --seed 0 --label direction --bad

``--images`` writes still frames instead (item ``i``'s first frame), ImageNet style, labelled by
shape unless ``--label`` says otherwise; sizes and formats (``jpg``, ``png``) round-robin::

    OUT_DIR/train/<class_name>/shapes_00000.jpg    # python probe.py data=images data.train_manifest=OUT_DIR/train
    OUT_DIR/val/<class_name>/shapes_00003.png      #   data.val_manifest=OUT_DIR/val
    OUT_DIR/train.txt, OUT_DIR/val.txt             # the same images as "<relative path> <int label>" lists
    OUT_DIR/classes.json
    OUT_DIR/bad.txt, OUT_DIR/bad/                  # with --bad: a corrupt JPEG, a truncated PNG, a text
                                                   # file named .jpg and a missing file, plus good lines

    python scripts/make_synthetic_dataset.py data/stills --images --num-images 96 --sizes 64 96 --bad
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import torch

from stjepa.data.synthetic import (
    BOUNDARIES,
    COLOR_MODES,
    DIRECTIONS,
    LABEL_TASKS,
    SHAPES,
    SPEEDS,
    MovingShapesDataset,
    label_of,
    num_classes,
    render_clip,
)

# extension -> encoder settings (PyAV stream options are FFmpeg AVOptions of the encoder)
FORMATS: dict[str, dict] = {
    "mp4": dict(codec="libx264", pix_fmt="yuv420p", options={"crf": "18", "preset": "fast"}),
    "webm": dict(codec="libvpx-vp9", pix_fmt="yuv420p",
                 options={"crf": "24", "b": "0", "deadline": "good", "cpu-used": "5", "row-mt": "1"}),
    "mkv": dict(codec="mpeg4", pix_fmt="yuv420p", options={"qmin": "1", "qmax": "3"}, bit_rate=20_000_000),
    "avi": dict(codec="mjpeg", pix_fmt="yuvj420p", options={"qmin": "1", "qmax": "3"}, bit_rate=20_000_000),
}


def available_formats() -> list[str]:
    """The keys of ``FORMATS`` whose encoder PyAV's FFmpeg has."""
    import av

    return [ext for ext, spec in FORMATS.items() if spec["codec"] in av.codecs_available]


def default_formats() -> tuple[str, ...]:
    """``mp4`` plus ``webm`` (VP9) when the encoder exists, else ``mp4`` plus ``avi`` (MJPEG)."""
    have = available_formats()
    return ("mp4", "webm") if "webm" in have else ("mp4", "avi")


def class_names(task: str) -> list[str]:
    """Class names of a label task, indexed by ``label_of`` and sorted alphabetically."""
    if task == "direction":
        names = [f"dir{k}" for k in range(DIRECTIONS)]
    elif task == "shape":
        names = list(SHAPES)
    elif task == "speed":
        names = [f"speed{k}_{'slow' if k == 0 else 'fast'}" for k in range(len(SPEEDS))]
    elif task == "shape_direction":
        names = [f"{shape}_dir{k}" for shape in SHAPES for k in range(DIRECTIONS)]
    else:
        raise ValueError(f"label={task!r} is not known; allowed values are {', '.join(LABEL_TASKS)}.")
    assert names == sorted(names) and len(names) == num_classes(task), names
    return names


def encode_video(path: str | os.PathLike, frames: torch.Tensor, fps: float, fmt: str, gop: int | None = None) -> None:
    """Encode uint8 ``(T, H, W, 3)`` RGB ``frames`` to ``path`` in format ``fmt`` (a ``FORMATS`` key)."""
    import av

    spec = FORMATS[fmt]
    rate = Fraction(str(fps)).limit_denominator(1001)
    _, height, width, _ = frames.shape
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(spec["codec"], rate=rate, options=dict(spec["options"]))
        stream.width, stream.height, stream.pix_fmt = width, height, spec["pix_fmt"]
        if "bit_rate" in spec:
            stream.codec_context.bit_rate = spec["bit_rate"]
        if gop:
            stream.codec_context.gop_size = gop
        for i, image in enumerate(frames.numpy()):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = i, 1 / rate
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():  # flush
            container.mux(packet)


def _check_positive_ints(name: str, values: Sequence, even: bool = False) -> list:
    values = list(values)
    if not values:
        raise ValueError(f"{name} needs at least one value.")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0 or (even and (v != int(v) or v % 2)):
            allowed = "even integers >= 16" if even else "numbers > 0"
            raise ValueError(f"{name}={v!r} is not allowed; allowed values are {allowed}.")
        if even and v < 16:
            raise ValueError(f"{name}={v!r} is not allowed; allowed values are even integers >= 16.")
    return values


def _split(num_videos: int, val_fraction: float, seed: int) -> set[int]:
    """Indices of the validation videos: a seeded random subset of round(n * val_fraction)."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction={val_fraction!r} is not allowed; allowed values are in [0, 1).")
    n_val = round(num_videos * val_fraction)
    if val_fraction > 0 and num_videos >= 2:
        n_val = min(max(n_val, 1), num_videos - 1)
    order = torch.randperm(num_videos, generator=torch.Generator().manual_seed(int(seed) + 7919)).tolist()
    return set(order[:n_val])


def _write_lines(path: Path, lines: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines))


def make_dataset(
    out_dir: str | os.PathLike,
    num_videos: int = 24,
    frames: int = 48,
    sizes: Sequence[int] = (96, 128),
    fps: Sequence[float] = (8, 12),
    formats: Sequence[str] | None = None,
    seed: int = 0,
    label: str = "direction",
    val_fraction: float = 0.25,
    bad: bool = False,
    num_shapes: int = 1,
    boundary: str = "bounce",
    colors: str = "random",
    gop: int | None = None,
    verbose: bool = False,
) -> dict:
    """Write the dataset (see the module docstring) and return a summary dict.

    ``formats=None`` means :func:`default_formats`. ``gop`` sets the keyframe interval of the
    inter-frame codecs (``None``: the encoder's default). The summary has ``out_dir``,
    ``classes`` (name -> id), ``train`` / ``val`` / ``bad`` (manifest paths, ``bad`` only with
    ``bad=True``), ``videos`` (the metadata records) and ``bad_files`` (name -> relative path).
    """
    t0 = time.perf_counter()
    if isinstance(num_videos, bool) or not isinstance(num_videos, int) or num_videos < 1:
        raise ValueError(f"num_videos={num_videos!r} is not allowed; allowed values are integers >= 1.")
    if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1:
        raise ValueError(f"frames={frames!r} is not allowed; allowed values are integers >= 1.")
    sizes = [int(s) for s in _check_positive_ints("sizes", sizes, even=True)]
    fps = _check_positive_ints("fps", fps)
    formats = list(default_formats() if formats is None else formats)
    if not formats:
        raise ValueError("formats needs at least one value.")
    have = available_formats()
    for fmt in formats:
        if fmt not in FORMATS:
            raise ValueError(f"format={fmt!r} is not known; allowed values are {', '.join(FORMATS)}.")
        if fmt not in have:
            raise ValueError(f"format={fmt!r} needs the {FORMATS[fmt]['codec']} encoder, which PyAV's FFmpeg "
                             f"lacks; available formats here: {', '.join(have)}.")
    names = class_names(label)
    classes = {name: i for i, name in enumerate(names)}
    val_set = _split(num_videos, val_fraction, seed)

    out = Path(out_dir)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    dataset = MovingShapesDataset(num_samples=num_videos, seed=seed, label=label, num_shapes=num_shapes,
                                  boundary=boundary, colors=colors)
    records = []
    for i in range(num_videos):
        fmt = formats[i % len(formats)]
        size = sizes[(i // len(formats)) % len(sizes)]
        rate = fps[(i // (len(formats) * len(sizes))) % len(fps)]
        params = dataset.params(i)
        target = label_of(params, label)
        rel = Path("videos") / names[target] / f"shapes_{i:05d}.{fmt}"
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        encode_video(out / rel, render_clip(params, frames, size), rate, fmt, gop=gop)
        records.append(dict(
            index=i, path=rel.as_posix(), label=target, class_name=names[target],
            split="val" if i in val_set else "train", format=fmt, codec=FORMATS[fmt]["codec"],
            size=size, fps=rate, frames=frames, params=dataclasses.asdict(params),
        ))
        if verbose:
            print(f"  [{i + 1}/{num_videos}] {rel.as_posix()} ({size}px, {rate} fps, {frames} frames)")

    train_lines = [f"{r['path']} {r['label']}" for r in records if r["split"] == "train"]
    val_lines = [f"{r['path']} {r['label']}" for r in records if r["split"] == "val"]
    _write_lines(out / "train.txt", train_lines)
    _write_lines(out / "val.txt", val_lines)
    (out / "classes.json").write_text(json.dumps(classes, indent=1) + "\n")
    meta = dict(seed=seed, label=label, num_shapes=num_shapes, boundary=boundary, colors=colors, frames=frames,
                sizes=sizes, fps=fps, formats=formats, gop=gop, val_fraction=val_fraction, videos=records)
    (out / "metadata.json").write_text(json.dumps(meta, indent=1) + "\n")

    summary = dict(out_dir=str(out), classes=classes, train=str(out / "train.txt"), val=str(out / "val.txt"),
                   num_train=len(train_lines), num_val=len(val_lines), videos=records, bad_files={})
    if bad:
        summary.update(_write_bad(out, records, frames, gop))
    summary["seconds"] = time.perf_counter() - t0
    return summary


def _write_bad(out: Path, records: list[dict], frames: int, gop: int | None) -> dict:
    """Broken files for tests, listed in ``bad.txt`` together with a few good lines."""
    bad_dir = out / "bad"
    bad_dir.mkdir(exist_ok=True)
    good_mp4 = next((r for r in records if r["format"] == "mp4"), None)
    if good_mp4 is not None:
        data = (out / good_mp4["path"]).read_bytes()
    else:  # no mp4 among the formats: encode one just to truncate it
        first = records[0]
        tmp = bad_dir / "source.mp4"
        params = MovingShapesDataset(num_samples=1).params(0)
        encode_video(tmp, render_clip(params, frames, first["size"]), first["fps"], "mp4", gop=gop)
        data = tmp.read_bytes()
        tmp.unlink()
    files = {
        "truncated": "bad/truncated.mp4",  # first 30% of the bytes of a good mp4 (moov atom lost)
        "empty": "bad/empty.mp4",  # zero bytes
        "text": "bad/not_a_video.mp4",  # a text file with an .mp4 name
        "missing": "bad/missing.mp4",  # listed in bad.txt, never written
    }
    (out / files["truncated"]).write_bytes(data[: int(len(data) * 0.3)])
    (out / files["empty"]).write_bytes(b"")
    (out / files["text"]).write_text("This is a text file, not a video.\n")
    missing = out / files["missing"]
    if missing.exists():
        missing.unlink()
    good = records[: min(3, len(records))]
    lines = [f"{r['path']} {r['label']}" for r in good[:2]]
    lines += [f"{files[k]} 0" for k in ("truncated", "empty", "text", "missing")]
    lines += [f"{r['path']} {r['label']}" for r in good[2:]]
    _write_lines(out / "bad.txt", lines)
    return dict(bad=str(out / "bad.txt"), bad_files=files)


IMAGE_FORMATS = {"jpg": dict(format="JPEG", quality=95), "png": dict(format="PNG")}


def make_image_dataset(
    out_dir: str | os.PathLike,
    num_images: int = 96,
    sizes: Sequence[int] = (64, 96),
    formats: Sequence[str] = ("jpg", "png"),
    seed: int = 0,
    label: str = "shape",
    val_fraction: float = 0.25,
    bad: bool = False,
    num_shapes: int = 1,
    colors: str = "random",
) -> dict:
    """Write still frames as an image folder (see the module docstring); returns a summary dict
    with ``train_root``, ``val_root``, ``train`` / ``val`` / ``bad`` lists, ``classes``, ``images``."""
    from PIL import Image

    t0 = time.perf_counter()
    if isinstance(num_images, bool) or not isinstance(num_images, int) or num_images < 1:
        raise ValueError(f"num_images={num_images!r} is not allowed; allowed values are integers >= 1.")
    sizes = [int(s) for s in _check_positive_ints("sizes", sizes, even=True)]
    for fmt in formats:
        if fmt not in IMAGE_FORMATS:
            raise ValueError(f"image format={fmt!r} is not known; allowed values are {', '.join(IMAGE_FORMATS)}.")
    names = class_names(label)
    val_set = _split(num_images, val_fraction, seed)
    out = Path(out_dir)
    dataset = MovingShapesDataset(num_samples=num_images, seed=seed, label=label, num_shapes=num_shapes, colors=colors)
    records = []
    for i in range(num_images):
        fmt, size = formats[i % len(formats)], sizes[(i // len(formats)) % len(sizes)]
        params = dataset.params(i)
        target = label_of(params, label)
        split = "val" if i in val_set else "train"
        rel = Path(split) / names[target] / f"shapes_{i:05d}.{fmt}"
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(render_clip(params, 1, size)[0].numpy()).save(out / rel, **IMAGE_FORMATS[fmt])
        records.append(dict(index=i, path=rel.as_posix(), label=target, class_name=names[target], split=split,
                            format=fmt, size=size))
    for split in ("train", "val"):
        _write_lines(out / f"{split}.txt", [f"{r['path']} {r['label']}" for r in records if r["split"] == split])
    classes = {name: i for i, name in enumerate(names)}
    (out / "classes.json").write_text(json.dumps(classes, indent=1) + "\n")
    summary = dict(out_dir=str(out), train_root=str(out / "train"), val_root=str(out / "val"),
                   train=str(out / "train.txt"), val=str(out / "val.txt"), classes=classes, images=records,
                   num_train=sum(r["split"] == "train" for r in records), num_val=len(val_set), bad_files={})
    if bad:
        summary.update(_write_bad_images(out, records))
    summary["seconds"] = time.perf_counter() - t0
    return summary


def _write_bad_images(out: Path, records: list[dict]) -> dict:
    """A corrupt JPEG (scrambled after the start-of-scan marker), a truncated PNG (first half),
    a text file named .jpg and a missing file, listed in ``bad.txt`` between good lines."""
    from PIL import Image

    bad_dir = out / "bad"
    bad_dir.mkdir(exist_ok=True)
    pixels = Image.open(out / records[0]["path"]).convert("RGB")
    files = {"corrupt": "bad/corrupt.jpg", "truncated": "bad/truncated.png", "text": "bad/not_an_image.jpg",
             "missing": "bad/missing.jpg"}
    pixels.save(out / files["corrupt"], format="JPEG", quality=95)
    data = bytearray((out / files["corrupt"]).read_bytes())
    scan = data.find(b"\xff\xda")
    for k in range(scan + 20, len(data) - 2):
        data[k] = (data[k] * 7 + 13) % 256
    (out / files["corrupt"]).write_bytes(bytes(data))
    pixels.save(out / files["truncated"], format="PNG")
    png = (out / files["truncated"]).read_bytes()
    (out / files["truncated"]).write_bytes(png[: len(png) // 2])
    (out / files["text"]).write_text("This is a text file, not an image.\n")
    (out / files["missing"]).unlink(missing_ok=True)
    good = records[: min(3, len(records))]
    lines = [f"{r['path']} {r['label']}" for r in good[:2]] + [f"{files[k]} 0" for k in files]
    lines += [f"{r['path']} {r['label']}" for r in good[2:]]
    _write_lines(out / "bad.txt", lines)
    return dict(bad=str(out / "bad.txt"), bad_files=files)


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir")
    parser.add_argument("--num-videos", type=int, default=24)
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--sizes", type=int, nargs="+", default=[96, 128])
    parser.add_argument("--fps", type=float, nargs="+", default=[8, 12])
    parser.add_argument("--formats", nargs="+", choices=list(FORMATS), default=None,
                        help="default: mp4 webm (mp4 avi without a VP9 encoder)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--label", choices=list(LABEL_TASKS), default="direction")
    parser.add_argument("--val-fraction", type=float, default=0.25)
    parser.add_argument("--num-shapes", type=int, default=1, help="shapes per clip (data.num_shapes)")
    parser.add_argument("--boundary", choices=list(BOUNDARIES), default="bounce",
                        help="shapes bounce off or wrap around the borders (data.boundary)")
    parser.add_argument("--colors", choices=list(COLOR_MODES), default="random",
                        help="colours drawn per clip or the fixed mono palette (data.colors)")
    parser.add_argument("--gop", type=int, default=None, help="keyframe interval (default: the encoder's)")
    parser.add_argument("--bad", action="store_true", help="also write broken files and bad.txt")
    parser.add_argument("--images", action="store_true", help="write still images (jpg, png) instead of videos")
    parser.add_argument("--num-images", type=int, default=96)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    if args.images:
        summary = make_image_dataset(args.out_dir, num_images=args.num_images, sizes=args.sizes, seed=args.seed,
                                     label="shape" if args.label == "direction" else args.label,
                                     val_fraction=args.val_fraction, bad=args.bad, num_shapes=args.num_shapes,
                                     colors=args.colors)
        print(f"wrote {len(summary['images'])} images to {summary['out_dir']} in {summary['seconds']:.1f} s: "
              f"{summary['num_train']} train, {summary['num_val']} val, {len(summary['classes'])} classes"
              + (f"; bad files listed in {summary['bad']}" if "bad" in summary else ""))
        return summary
    fps = [int(f) if float(f).is_integer() else f for f in args.fps]
    summary = make_dataset(args.out_dir, num_videos=args.num_videos, frames=args.frames, sizes=args.sizes,
                           fps=fps, formats=args.formats, seed=args.seed, label=args.label,
                           val_fraction=args.val_fraction, bad=args.bad, gop=args.gop, verbose=not args.quiet,
                           num_shapes=args.num_shapes, boundary=args.boundary, colors=args.colors)
    by_format: dict[str, int] = {}
    for r in summary["videos"]:
        by_format[r["format"]] = by_format.get(r["format"], 0) + 1
    print(f"wrote {len(summary['videos'])} videos to {summary['out_dir']} in {summary['seconds']:.1f} s: "
          f"{summary['num_train']} train, {summary['num_val']} val, {len(summary['classes'])} classes, "
          f"formats {by_format}" + (f"; bad files listed in {summary['bad']}" if "bad" in summary else ""))
    return summary


if __name__ == "__main__":
    main()
