"""Video decoding backends (``stjepa.data.decoding``) on real files from ``scripts/make_synthetic_dataset.py``.

The files are the seeded moving-shapes clips encoded with PyAV (H.264 in mp4, VP9 in webm,
MJPEG in avi; 12 videos of 32 frames at 64 and 96 px, 8 and 12 fps, keyframe every 10 frames
so that seeking matters), written once per module into a temporary folder.

Measured on these files (PyAV 18 / FFmpeg 8 for PyAV, decord 0.6.0's bundled FFmpeg):

* decord and PyAV frames are bit-identical (max abs difference 0) on every file, so the
  backend comparison is exact (``torch.equal``); both count the same number of frames.
* Decoded vs the rendered source (``render_clip``, which adds +-6 uniform noise, mean abs
  3.2 by itself): mean abs difference 3.2 .. 4.4 per video (bound 5.5); vs the noise-free
  render 1.4 .. 3.4 (bound 4.5).
* A truncated mp4 (first 30% of the bytes) cannot be opened by either backend: PyAV writes the
  ``moov`` index at the end of the file, so it is lost -> VideoError at open. A truncated
  AVI (MJPEG) opens and decodes partially: both backends count only the packets present
  (the AVI header still claims every frame, so the PyAV reader counts packets, like decord),
  every index below ``num_frames`` decodes, and the last, cut-off frame is garbage that differs
  between the backends.
"""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

av = pytest.importorskip("av")
pytest.importorskip("decord")

from stjepa.data import decoding  # noqa: E402
from stjepa.data.decoding import (  # noqa: E402
    DECODERS,
    VideoError,
    VideoReader,
    available_decoders,
    open_video,
)
from stjepa.data.synthetic import MovingShapesDataset, render_clip  # noqa: E402
from train_helpers import CHILD_TIMEOUT  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NUM_VIDEOS, FRAMES, SIZES, FPS, SEED, GOP = 12, 32, (64, 96), (8, 12), 0, 10
MAX_MEAN_ABS_TO_SOURCE = 5.5  # measured <= 4.4 (noise alone: 3.2)
MAX_MEAN_ABS_TO_CLEAN = 4.5  # measured <= 3.4


def _load_script():
    path = ROOT / "scripts" / "make_synthetic_dataset.py"
    spec = importlib.util.spec_from_file_location("make_synthetic_dataset", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


mkds = _load_script()
FORMATS = tuple(f for f in ("mp4", "webm", "avi") if f in mkds.available_formats())
BACKENDS = [d for d in ("decord", "pyav", "torchcodec") if d in available_decoders()]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes")
    summary = mkds.make_dataset(out, num_videos=NUM_VIDEOS, frames=FRAMES, sizes=SIZES, fps=FPS, formats=FORMATS,
                                seed=SEED, label="direction", val_fraction=0.25, bad=True, gop=GOP)
    return out, summary


def _video_path(out: Path, record: dict) -> str:
    return str(out / record["path"])


def _index_lists(n: int) -> list[list[int]]:
    return [
        [0], [n - 1], list(range(0, n, 2)),  # first, last, a sorted stride-2 clip
        [n - 1, 3, 17, 3, 0, 11, 11],  # unsorted with repeats, across keyframes
        [5, 5, 5], [25, 26, 27, 28], [12], [1, n - 2],  # seeks forwards and backwards
        [21], [23, 24], [24, 26],  # later frames in the same GOP: PyAV decodes on without seeking
        list(range(n)),
    ]


# ------------------------------------------------------------------------------ dataset writer


def test_dataset_layout_and_manifests(dataset):
    out, summary = dataset
    classes = json.loads((out / "classes.json").read_text())
    assert classes == {f"dir{k}": k for k in range(8)}
    assert list(classes) == sorted(classes)
    records = {r["path"]: r for r in summary["videos"]}
    assert len(records) == NUM_VIDEOS
    ds = MovingShapesDataset(num_samples=NUM_VIDEOS, seed=SEED)
    seen = []
    for split, expected in (("train", NUM_VIDEOS - 3), ("val", 3)):  # round(12 * 0.25) = 3
        lines = (out / f"{split}.txt").read_text().splitlines()
        assert len(lines) == expected
        for line in lines:
            rel, label = line.split(" ")
            record = records[rel]
            assert (out / rel).is_file() and int(label) == record["label"] and record["split"] == split
            assert Path(rel).parts[:2] == ("videos", f"dir{label}") and rel.endswith("." + record["format"])
            assert int(label) == ds.params(record["index"]).direction
            seen.append(rel)
    assert sorted(seen) == sorted(records)  # every video in exactly one split
    # Round robin over every combination: format fastest, then size, then fps.
    combos = {(r["format"], r["size"], r["fps"]) for r in summary["videos"]}
    assert len(combos) == len(FORMATS) * len(SIZES) * len(FPS)
    meta = json.loads((out / "metadata.json").read_text())
    assert [v["path"] for v in meta["videos"]] == [r["path"] for r in summary["videos"]]


def test_make_dataset_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="format='mov' is not known"):
        mkds.make_dataset(tmp_path, num_videos=1, frames=2, formats=["mov"])
    with pytest.raises(ValueError, match="sizes=65"):
        mkds.make_dataset(tmp_path, num_videos=1, frames=2, sizes=[65])
    with pytest.raises(ValueError, match="label='colour'"):
        mkds.make_dataset(tmp_path, num_videos=1, frames=2, label="colour")
    assert not (tmp_path / "videos").exists()


# --------------------------------------------------------------------------------- decoding


@pytest.mark.parametrize("decoder", BACKENDS)
def test_num_frames_and_fps_match_what_was_written(dataset, decoder):
    out, summary = dataset
    for record in summary["videos"]:
        with open_video(_video_path(out, record), decoder) as reader:
            assert isinstance(reader, VideoReader) and reader.decoder == decoder
            assert reader.num_frames == len(reader) == FRAMES, record["path"]
            assert reader.fps == pytest.approx(record["fps"], rel=1e-6), record["path"]
            assert (reader.height, reader.width) == (record["size"], record["size"])


@pytest.mark.parametrize("other", [d for d in BACKENDS if d != "decord"])
def test_backends_return_identical_frames(dataset, other):
    """Same indices -> bit-identical frames (measured max abs difference 0 for PyAV)."""
    out, summary = dataset
    for record in summary["videos"]:
        path = _video_path(out, record)
        with open_video(path, "decord") as ref, open_video(path, other) as reader:
            for indices in _index_lists(FRAMES):  # one reader for all: exercises seeking back and forth
                expected, got = ref.get_frames(indices), reader.get_frames(indices)
                assert got.dtype == torch.uint8 and got.shape == (len(indices), record["size"], record["size"], 3)
                assert torch.equal(got, expected), (record["path"], indices)


def test_writer_keeps_the_shape_count_and_boundary(tmp_path):
    """--num-shapes/--boundary: the files show the clips of data=synthetic's on-the-fly dataset."""
    summary = mkds.make_dataset(tmp_path, num_videos=2, frames=6, sizes=(64,), fps=(8,), formats=FORMATS[:1],
                                seed=3, num_shapes=3, boundary="wrap")
    ds = MovingShapesDataset(num_samples=2, seed=3, num_shapes=3, boundary="wrap")
    for record in summary["videos"]:
        params = ds.params(record["index"])
        assert len(record["params"]["objects"]) == 3 and record["params"]["boundary"] == "wrap"
        with open_video(_video_path(tmp_path, record), "pyav") as reader:
            decoded = reader.get_frames(range(6)).int()
        source = render_clip(params, 6, 64).int()
        assert (decoded - source).abs().float().mean() < MAX_MEAN_ABS_TO_SOURCE, record["path"]


def test_decoded_frames_match_the_rendered_source(dataset):
    """Ties decoding to an independent reference: decoded frame i is rendered frame i."""
    out, summary = dataset
    ds = MovingShapesDataset(num_samples=NUM_VIDEOS, seed=SEED)
    for record in summary["videos"]:
        params = ds.params(record["index"])
        source = render_clip(params, FRAMES, record["size"]).int()
        clean = render_clip(params, FRAMES, record["size"], noise=0).int()
        with open_video(_video_path(out, record), "pyav") as reader:
            decoded = reader.get_frames(range(FRAMES)).int()
        assert (decoded - source).abs().float().mean() < MAX_MEAN_ABS_TO_SOURCE, record["path"]
        assert (decoded - clean).abs().float().mean() < MAX_MEAN_ABS_TO_CLEAN, record["path"]
        for i in range(FRAMES):
            own = (decoded[i] - source[i]).abs().float().mean()
            for j in (i - 1, i + 1):
                if not 0 <= j < FRAMES:
                    continue
                # The source noise is drawn per frame, so the whole frame points at its own index...
                assert own < (decoded[i] - source[j]).abs().float().mean(), (record["path"], i, j)
                # ... and so do the pixels the moving shape covers in one frame but not the other.
                band = (clean[i] != clean[j]).any(-1)
                if band.any():
                    near = (decoded[i] - clean[i]).abs().float()[band].mean()
                    assert near < (decoded[i] - clean[j]).abs().float()[band].mean(), (record["path"], i, j)


def test_pyav_falls_back_to_the_start_when_a_seek_overshoots(dataset, monkeypatch):
    out, summary = dataset
    record = next(r for r in summary["videos"] if r["format"] == "mp4")
    path = _video_path(out, record)
    with open_video(path, "decord") as ref:
        expected = ref.get_frames([13, 14, 21])
    with open_video(path, "pyav") as reader:
        last = reader._pts_of(FRAMES - 1)
        monkeypatch.setattr(reader, "_pts_of", lambda index: last)  # every seek lands near the end
        assert torch.equal(reader.get_frames([13, 14, 21]), expected)


def test_pyav_decodes_on_instead_of_seeking_within_a_gop(dataset, monkeypatch):
    out, summary = dataset
    record = next(r for r in summary["videos"] if r["format"] == "mp4")
    path = _video_path(out, record)
    with open_video(path, "pyav") as reader:
        keys = reader._keys
        assert keys is not None and len(keys) >= 3  # keyframe every GOP = 10 frames
        start = max(k for k in keys if k < FRAMES - 4)
        seeks = []
        real_seek = reader._seek
        monkeypatch.setattr(reader, "_seek", lambda index: seeks.append(index) or real_seek(index))
        clips = [[start + 1], [start + 2, start + 3], [start + 3]]
        got = [reader.get_frames(c) for c in clips]
        assert seeks == [start + 1, start + 3]  # the second clip continues, the third goes back
        with open_video(path, "decord") as ref:
            for clip, frames in zip(clips, got):
                assert torch.equal(frames, ref.get_frames(clip))


def test_pyav_timestamp_formula_matches_the_packet_table(dataset):
    """Without the packet-pts table (a pts it lacks) the PyAV reader numbers frames by
    ``round((pts - start_time) * time_base * fps)``: same frames on every container."""
    out, summary = dataset
    indices = [0, 27, 9, 9, 31, 14]
    for record in summary["videos"][: 2 * len(FORMATS)]:
        path = _video_path(out, record)
        with open_video(path, "decord") as ref, open_video(path, "pyav") as reader:
            reader._pts_index = None  # frame index from the formula
            reader._pts = None  # seek target from the formula too
            assert torch.equal(reader.get_frames(indices), ref.get_frames(indices)), record["path"]


def test_num_threads_do_not_change_frames(dataset):
    out, summary = dataset
    path = _video_path(out, summary["videos"][0])
    indices = [30, 2, 2, 17]
    with open_video(path, "decord") as ref:
        expected = ref.get_frames(indices)
    for decoder in ("decord", "pyav"):
        for threads in (0, 2):
            with open_video(path, decoder, num_threads=threads) as reader:
                assert torch.equal(reader.get_frames(indices), expected), (decoder, threads)


@pytest.mark.parametrize("decoder", BACKENDS)
def test_index_checks(dataset, decoder):
    out, summary = dataset
    record = summary["videos"][0]
    path = _video_path(out, record)
    with open_video(path, decoder) as reader:
        for bad in ([FRAMES], [0, -1], [FRAMES + 100]):
            with pytest.raises(VideoError, match="out of range") as info:
                reader.get_frames(bad)
            assert record["path"] in str(info.value)
        assert reader.get_frames([]).shape == (0, record["size"], record["size"], 3)
        assert torch.equal(reader.get_frames(torch.tensor([3, 1])), reader.get_frames([3, 1]))


# ------------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize("decoder", BACKENDS)
def test_bad_files_raise_video_error_naming_the_file(dataset, decoder):
    out, summary = dataset
    reasons = {"missing": "does not exist", "empty": "empty", "text": "could not be opened",
               "truncated": "could not be opened"}
    lines = (out / "bad.txt").read_text().splitlines()
    bad_paths = {rel: name for name, rel in summary["bad_files"].items()}
    assert {line.split(" ")[0] for line in lines} >= set(bad_paths)
    good = 0
    for line in lines:
        rel = line.split(" ")[0]
        if rel not in bad_paths:
            with open_video(out / rel, decoder) as reader:
                assert reader.get_frames([0, FRAMES - 1]).shape[0] == 2
            good += 1
            continue
        with pytest.raises(VideoError) as info:
            open_video(out / rel, decoder)
        message = str(info.value)
        assert rel in message and reasons[bad_paths[rel]] in message, message
        assert "\n" not in message and message.endswith(".") and len(message) < 400, message
    assert good >= 2


def test_truncated_avi_decodes_partially_and_consistently(dataset, tmp_path):
    out, summary = dataset
    record = next((r for r in summary["videos"] if r["format"] == "avi"), None)
    if record is None:
        pytest.skip("no MJPEG encoder in PyAV's FFmpeg")
    data = (out / record["path"]).read_bytes()
    path = tmp_path / "truncated.avi"
    path.write_bytes(data[: int(len(data) * 0.3)])
    with open_video(path, "decord") as d, open_video(path, "pyav") as p:
        assert 0 < d.num_frames == p.num_frames < FRAMES  # both count the packets present
        n = d.num_frames
        whole = list(range(n - 1))  # the last packet is cut off: its pixels are undefined
        assert torch.equal(d.get_frames(whole), p.get_frames(whole))
        for reader in (d, p):
            assert reader.get_frames([n - 1]).shape[0] == 1
            with pytest.raises(VideoError, match="out of range"):
                reader.get_frames([n])


def test_no_video_stream(tmp_path):
    path = tmp_path / "audio_only.mkv"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(torch.zeros(1, 800, dtype=torch.int16).numpy(), format="s16",
                                           layout="mono")
        frame.sample_rate = 8000
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    for decoder in ("decord", "pyav"):
        with pytest.raises(VideoError) as info:
            open_video(path, decoder)
        assert "audio_only.mkv" in str(info.value)


def test_unknown_decoder_and_bad_threads(dataset):
    out, summary = dataset
    path = _video_path(out, summary["videos"][0])
    with pytest.raises(ValueError, match=r"data\.decoder='opencv' is not known; allowed values are "
                                         r"decord, pyav, torchcodec\."):
        open_video(path, "opencv")
    with pytest.raises(ValueError, match="num_threads"):
        open_video(path, "pyav", num_threads=-1)
    assert set(available_decoders()) <= set(DECODERS) and {"decord", "pyav"} <= set(available_decoders())


@pytest.mark.parametrize("installed", [False, True], ids=["absent", "without-ffmpeg"])
def test_an_unusable_torchcodec_says_what_to_install(dataset, monkeypatch, installed):
    # Both states are simulated, so the test does not depend on what this machine has installed.
    out, summary = dataset
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(decoding, "_importable", lambda name: name != "torchcodec")
    monkeypatch.setattr(decoding.importlib.util, "find_spec",
                        lambda name, *a: (object() if installed else None) if name == "torchcodec"
                        else real_find_spec(name, *a))
    expected = r"FFmpeg's shared libraries.*apt install ffmpeg" if installed else "pip install torchcodec"
    with pytest.raises(ValueError, match=expected):
        open_video(_video_path(out, summary["videos"][0]), "torchcodec")


def test_decoding_libraries_are_imported_lazily():
    code = ("import sys, stjepa.data.decoding as d; "
            "bad = [m for m in ('decord', 'av', 'torchcodec') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=CHILD_TIMEOUT)
