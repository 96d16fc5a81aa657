"""Prepare the videos of a manifest once, so that clips decode fast: a copy of every video at a
small size, with a short keyframe interval.

Rule: every video of the manifest (any format :func:`~stjepa.data.manifests.read_manifest`
reads) is decoded with PyAV (first video stream; audio is dropped, training reads none),
resized so that its short side is ``short_side`` (never enlarged; both sides even, as yuv420p
needs), resampled to ``fps`` (each output frame is the input frame nearest in time), and
encoded as H.264 (libx264, yuv420p, ``tune=fastdecode``) in an mp4 with a keyframe (IDR) at
least every ``keyframe_interval`` frames and B-frames that no other frame references. Decoding
a clip then starts at most ``keyframe_interval - 1`` frames before the clip's first frame (a
raw Kinetics file may start 250 frames before), the frames between two wanted ones that are
B-frames can be skipped (see ``skip_nonref`` in :mod:`stjepa.data.decoding`), and every frame
decodes faster: fastdecode turns off CABAC, the deblocking filter and weighted prediction, for
files ~10% larger at the same crf (on 320p sources it halved PyAV's time per clip; without it
the shorter GOP alone gained little, see BENCHMARKS.md).

The output folder holds the videos (same relative layout as the inputs below their common
folder, ``.mp4`` names), ``manifest.txt`` (a V-JEPA list, paths relative to the folder, the
same labels; broken inputs as ``#`` comment lines), ``manifest_classes.json`` for named labels
(Kinetics CSVs, class folders; ids alphabetical as :func:`build_label_map` gives them),
``prepare_report.tsv`` (one row per input: ok / short / broken, frames, reason) and
``prepare_settings.json``. An input that decodes for a while and then fails (damaged in the
middle, cut off) keeps the frames before the damage: its row's reason and a ``#`` line above
its manifest entry say where decoding stopped (kept for a resumed run in ``.<name>.damaged``). The prepared folder is an ordinary manifest: nothing else changes to
read it (``data.train_manifest=<out>/manifest.txt``).

A run is resumable: a finished video was renamed from its temporary name (``.<name>.partial``)
after its last byte, so a video present under its final name is complete and skipped; leftover
temporary files of a killed run are removed (its worker processes end with it, so none still
writes them). A folder prepared with other settings is refused.

Options and their trade-offs:

* ``short_side`` (default 320; None keeps the size): a smaller side decodes faster (cost is
  about proportional to pixels) and makes smaller files; the training crop (a 30-100% box
  resized to 224-256 px) is enlarged from a 320 px short side at most scales anyway, so 320
  loses little. Keep the size only for training at crops above ~300 px.
* ``fps`` (default None keeps the rate): a lower rate (e.g. 8 for clips sampled at 4 fps)
  decodes fewer frames per clip and makes smaller files, but fixes the clip frame rates that
  remain possible; None keeps every frame.
* ``keyframe_interval`` (default 32 frames, below the 112-128 frames a 16-frame clip at 4 fps
  spans): shorter wastes less decoding before a clip but makes larger files (every keyframe
  costs several P-frames' bits, and decoding time grows with the bits); 16, 32 and 64 decoded
  equally fast on 320p sources.
* ``crf`` (default 23, x264's default) and ``preset`` (default veryfast): libx264's quality and
  speed; a lower crf is closer to the source but larger and slower to decode; a slower preset is
  smaller at the same quality and slower to prepare.
"""
from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path

from ..checks import check_choice, check_int
from ..errors import ConfigError, ManifestError
from .clips import clip_span, frame_step_for
from .decoding import VideoError, _reason, check_video_file
from .manifests import build_label_map, read_manifest, save_label_map

MANIFEST_NAME = "manifest.txt"
LABEL_MAP_NAME = "manifest_classes.json"
REPORT_NAME = "prepare_report.tsv"
SETTINGS_NAME = "prepare_settings.json"
X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")
STATUSES = ("ok", "short", "broken")  # short: fewer frames than one clip (kept; training pads or skips it)


@dataclass(frozen=True)
class PrepareSettings:
    short_side: int | None = 320
    fps: float | None = None
    keyframe_interval: int = 32
    crf: int = 23
    preset: str = "veryfast"

    def check(self) -> PrepareSettings:
        """Itself, if every value is allowed, else a ConfigError naming the option."""
        if self.short_side is not None:
            check_int(self.short_side, "short_side", 2)
        if self.fps is not None and (isinstance(self.fps, bool) or not isinstance(self.fps, (int, float))
                                     or not 0 < self.fps <= 1000):
            raise ConfigError(f"fps={self.fps!r} is not allowed; allowed values are numbers in (0, 1000] or "
                              "None (keep the source rate).")
        check_int(self.keyframe_interval, "keyframe_interval", 1)
        if isinstance(self.crf, bool) or not isinstance(self.crf, int) or not 0 <= self.crf <= 51:
            raise ConfigError(f"crf={self.crf!r} is not allowed; allowed values are integers 0..51 (libx264).")
        check_choice(self.preset, "preset", X264_PRESETS)
        return self


@dataclass(frozen=True)
class ClipSpec:
    """The training clip a video must hold (data.frames_per_clip, data.fps, data.frame_step)."""

    frames: int
    fps: float | None
    frame_step: int

    def span(self, video_fps: float) -> int:
        """Frames of a video that one clip covers."""
        return clip_span(self.frames, frame_step_for(video_fps, self.fps, self.frame_step))


@dataclass(frozen=True)
class Job:
    source: str  # input video, absolute
    output: str  # prepared video, absolute
    clip: ClipSpec  # a video with fewer frames than this clip spans is reported as short


@dataclass
class Outcome:
    source: str
    output: str
    status: str  # one of STATUSES
    frames: int = 0
    fps: float = 0.0
    reason: str = ""
    damaged: bool = False  # decoding stopped early: only the frames before the damage were kept
    seconds: float = 0.0  # spent preparing (0 for a video finished by an earlier run)
    resumed: bool = False  # finished by an earlier run


@dataclass
class Summary:
    outcomes: list[Outcome] = field(default_factory=list)
    manifest: str = ""
    report: str = ""

    def count(self, status: str) -> int:
        return sum(o.status == status for o in self.outcomes)

    @property
    def prepared_now(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.resumed and o.status != "broken"]


# -- one video ------------------------------------------------------------------------------------

def partial_path(output: str | os.PathLike) -> Path:
    """The temporary name a video is written under until it is complete."""
    output = Path(output)
    return output.with_name(f".{output.name}.partial")


def output_size(height: int, width: int, short_side: int | None) -> tuple[int, int]:
    """(H, W) with the short side at ``short_side`` (never enlarged), both even."""
    scale = 1.0 if short_side is None else min(1.0, short_side / min(height, width))
    return max(2, round(height * scale / 2) * 2), max(2, round(width * scale / 2) * 2)


def _resampled(frames: Iterator, source_fps: float, fps: float | None) -> Iterator:
    """``frames`` at ``fps``: each output time j / fps takes the input frame nearest to it
    (input times from the frames' timestamps, else from their order); None keeps every frame."""
    if fps is None:
        yield from frames
        return
    previous, previous_time, start, emitted = None, 0.0, None, 0
    for i, frame in enumerate(frames):
        t = frame.time if frame.time is not None else i / source_fps
        start = t if start is None else start
        t -= start
        if previous is not None:
            while emitted / fps < (previous_time + t) / 2:  # nearer to the previous frame
                yield previous
                emitted += 1
        previous, previous_time = frame, t
    if previous is not None:
        while emitted / fps < previous_time + 0.5 / source_fps:
            yield previous
            emitted += 1


def encode_prepared(source: str, target: str | os.PathLike, settings: PrepareSettings,
                    threads: int = 1) -> tuple[int, float, str]:
    """Decode ``source`` and write it to ``target`` as the module docstring says; returns the
    number of frames written, their rate, and for an input damaged after its first frame a
    sentence saying where decoding stopped ("" otherwise). Raises VideoError for an input that
    cannot be used."""
    import av

    try:
        container = av.open(source, mode="r")
    except Exception as exc:  # av.error.FFmpegError subclasses OSError / ValueError
        raise VideoError(f"video {source!r} could not be opened by PyAV: {_reason(exc)}.") from exc
    written, damage = 0, ""
    try:
        if not container.streams.video:
            raise VideoError(f"video {source!r} has no video stream.")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        stream.codec_context.thread_count = threads
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate or 30
        source_fps = float(rate)
        out_rate = Fraction(rate) if settings.fps is None else Fraction(settings.fps).limit_denominator(1001)
        with av.open(str(target), mode="w", format="mp4") as out:
            encoder = None
            try:
                for frame in _resampled(container.decode(stream), source_fps, settings.fps):
                    if encoder is None:
                        height, width = output_size(frame.height, frame.width, settings.short_side)
                        encoder = out.add_stream("libx264", rate=out_rate, options={
                            "crf": str(settings.crf), "preset": settings.preset, "tune": "fastdecode",
                            # a keyframe at least every keyframe_interval frames (x264 may put one
                            # earlier, at a scene cut or to end a run of B-frames); no B-frame is a reference
                            "x264-params": f"keyint={settings.keyframe_interval}:b-pyramid=none"})
                        encoder.width, encoder.height, encoder.pix_fmt = width, height, "yuv420p"
                        encoder.codec_context.thread_count = threads
                    image = frame.reformat(width=encoder.width, height=encoder.height, format="yuv420p",
                                           interpolation="AREA")
                    image.pts, image.time_base = written, 1 / out_rate
                    out.mux(encoder.encode(image))
                    written += 1
            except av.error.FFmpegError as exc:
                if not written:
                    raise VideoError(f"video {source!r} could not be decoded by PyAV: {_reason(exc)}.") from exc
                # a file cut off or damaged in the middle: keep the frames before the damage, and say so
                damage = (f"damaged: decoding stopped after {written} frames ({_reason(exc)}); "
                          "the frames before are kept")
            if encoder is None:
                raise VideoError(f"video {source!r} has no decodable frames.")
            out.mux(encoder.encode())  # flush
    finally:
        container.close()
    return written, float(out_rate), damage


def frames_and_fps(path: str | os.PathLike) -> tuple[int, float]:
    """Frames and frame rate of a prepared video (from the mp4 header, which the muxer wrote)."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return int(stream.frames), float(stream.average_rate or 0)


def damage_note_path(output: str | os.PathLike) -> Path:
    """Where the damage sentence of a video prepared from a damaged input is kept (for the
    report of a resumed run)."""
    output = Path(output)
    return output.with_name(f".{output.name}.damaged")


def _checked(job: Job, frames: int, fps: float, damage: str = "", **fields) -> Outcome:
    span = job.clip.span(fps)
    short = f"{frames} frames, fewer than one clip ({span} at {fps:g} fps)" if frames < span else ""
    reason = "; ".join(text for text in (damage, short) if text)
    return Outcome(job.source, job.output, "short" if short else "ok", frames, fps, reason=reason,
                   damaged=bool(damage), **fields)


def prepare_one(job: Job, settings: PrepareSettings, threads: int = 1) -> Outcome:
    """Prepare one video (skipped if its output exists); a broken input gives status broken."""
    note = damage_note_path(job.output)
    if os.path.exists(job.output):
        damage = note.read_text(encoding="utf-8") if note.exists() else ""
        return _checked(job, *frames_and_fps(job.output), damage, resumed=True)
    t0 = time.perf_counter()
    tmp = partial_path(job.output)
    try:
        check_video_file(job.source)
        tmp.parent.mkdir(parents=True, exist_ok=True)
        frames, fps, damage = encode_prepared(job.source, tmp, settings, threads)
        if damage:  # before the video: a video under its final name has its note
            _write_atomic(note, damage)
        else:
            note.unlink(missing_ok=True)
        os.replace(tmp, job.output)  # complete: only now under its final name
    except VideoError as exc:
        return Outcome(job.source, job.output, "broken", reason=str(exc), seconds=time.perf_counter() - t0)
    finally:
        tmp.unlink(missing_ok=True)
    return _checked(job, frames, fps, damage, seconds=time.perf_counter() - t0)


# -- a manifest -----------------------------------------------------------------------------------

def plan_outputs(sources: Sequence[str], out_dir: str | os.PathLike) -> dict[str, str]:
    """source -> prepared path: the layout below the sources' common folder, ``.mp4`` names.
    Two sources that would share an output name are refused."""
    unique = list(dict.fromkeys(sources))  # manifest order: the videos are prepared in it
    root = os.path.commonpath([os.path.dirname(s) for s in unique])
    out_dir = os.path.abspath(out_dir)
    outputs = {s: os.path.join(out_dir, os.path.splitext(os.path.relpath(s, root))[0] + ".mp4") for s in unique}
    seen: dict[str, str] = {}
    for source, output in outputs.items():
        if output in seen:
            raise ManifestError(f"videos '{seen[output]}' and '{source}' would both be prepared as '{output}'; "
                                "rename one of them (the prepared copies are .mp4 files of the same name).")
        seen[output] = source
    return outputs


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def _check_settings_file(out_dir: Path, settings: PrepareSettings) -> None:
    path = out_dir / SETTINGS_NAME
    wanted = asdict(settings)
    if path.exists():
        try:
            found = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            found = None
        if found != wanted:
            if isinstance(found, dict):
                differ = [k for k in wanted if found.get(k) != wanted[k]]
                found_text = ", ".join(f"{k}={found.get(k)!r}" for k in differ)
                wanted_text = ", ".join(f"{k}={wanted[k]!r}" for k in differ)
            else:
                found_text, wanted_text = "settings that cannot be read", str(wanted)
            raise ConfigError(f"output folder '{out_dir}' was prepared with {found_text} (see {path}), not "
                              f"{wanted_text}; resume with the same settings or choose another folder.")
        return
    _write_atomic(path, json.dumps(wanted, indent=2) + "\n")


def _exit_with(parent: int) -> None:
    """Pool initializer: end this worker as soon as ``parent`` (the run) is gone. A killed run's
    workers would otherwise go on with the videos queued to them, and a run started again at
    once would write the same temporary files as they do."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.2)
        os._exit(1)  # its temporary file is removed by the next run

    threading.Thread(target=watch, daemon=True).start()


def _run(jobs: list[Job], settings: PrepareSettings, processes: int, threads: int,
         on_done: Callable[[Outcome], None]) -> list[Outcome]:
    if processes == 1:
        outcomes = []
        for job in jobs:
            outcomes.append(prepare_one(job, settings, threads))
            on_done(outcomes[-1])
        return outcomes
    outcomes = []
    with ProcessPoolExecutor(max_workers=processes, initializer=_exit_with, initargs=(os.getpid(),)) as pool:
        for future in as_completed([pool.submit(prepare_one, job, settings, threads) for job in jobs]):
            outcomes.append(future.result())
            on_done(outcomes[-1])
    return outcomes


def prepare_manifest(
    manifest: str | os.PathLike,
    out_dir: str | os.PathLike,
    clip: ClipSpec,
    settings: PrepareSettings = PrepareSettings(),
    video_root: str | os.PathLike | None = None,
    split: str | None = None,
    processes: int = 1,
    threads: int = 1,
    on_start: Callable[[int], None] = lambda count: None,
    on_done: Callable[[Outcome], None] = lambda outcome: None,
) -> Summary:
    """Prepare every video of ``manifest`` into ``out_dir`` (see the module docstring).

    ``clip``: the training clip (a video with fewer frames than it spans is reported as
    short); ``processes`` videos are prepared at once, each with ``threads``
    decoding and encoding threads; ``on_start`` is called with the number of videos to go
    through, ``on_done`` with each video's outcome.
    """
    settings.check()
    check_int(clip.frames, "clip frames", 1)
    check_int(clip.frame_step, "clip frame step", 1)
    check_int(processes, "processes", 1)
    check_int(threads, "threads", 0)
    source = read_manifest(manifest, video_root, split)  # refuses a bad manifest before any work
    label_map = build_label_map([source])
    outputs = plan_outputs([s.path for s in source.samples], out_dir)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _check_settings_file(out_dir, settings)
    for output in outputs.values():  # leftovers of a killed run
        partial_path(output).unlink(missing_ok=True)
    jobs = [Job(s, o, clip) for s, o in outputs.items()]
    on_start(len(jobs))
    by_source = {o.source: o for o in _run(jobs, settings, processes, threads, on_done)}
    by_source = {job.source: by_source[job.source] for job in jobs}  # in manifest order

    lines, rows = [], ["status\tframes\tfps\tsource\toutput\treason"]
    for sample, name in zip(source.samples, source.label_names):
        outcome = by_source[sample.path]
        if outcome.status == "broken":
            lines.append(f"# broken, not prepared: {sample.path} {label_map[name]}: {outcome.reason}")
        else:
            if outcome.damaged:  # kept, and named
                lines.append(f"# damaged, its first {outcome.frames} frames kept: {sample.path}: {outcome.reason}")
            rel = os.path.relpath(outcome.output, out_dir)
            lines.append(f"{'./' + rel if rel.startswith('#') else rel} {label_map[name]}")  # '#' starts a comment
    for outcome in by_source.values():
        rows.append(f"{outcome.status}\t{outcome.frames}\t{outcome.fps:g}\t{outcome.source}\t{outcome.output}\t"
                    f"{outcome.reason}")
    _write_atomic(out_dir / MANIFEST_NAME, "".join(line + "\n" for line in lines))
    _write_atomic(out_dir / REPORT_NAME, "".join(row + "\n" for row in rows))
    if source.format != "vjepa":  # named labels: say which id is which
        save_label_map(label_map, out_dir / LABEL_MAP_NAME)
    return Summary(list(by_source.values()), str(out_dir / MANIFEST_NAME), str(out_dir / REPORT_NAME))
