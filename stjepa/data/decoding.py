"""Video decoding backends (decord, PyAV, torchcodec) behind one small interface.

    reader = open_video("clip.mp4", decoder="pyav")
    frames = reader.get_frames([0, 2, 4, 6])   # uint8 (4, H, W, 3) RGB
    reader.close()

Frame numbering is decord's: frame ``i`` is the ``i``-th frame of the first video stream in
presentation order, counted from the start of the stream, and ``num_frames`` is the number of
packets of that stream (decord indexes a file by demuxing every packet when it opens it). The
PyAV reader counts packets the same way, so both backends agree on ``num_frames`` even where a
container header disagrees with the data (a truncated AVI keeps the full frame count in its
header). On constant-frame-rate files the index of a decoded frame is also
``round((pts - start_time) * time_base * average_fps)``; the PyAV reader maps each frame's pts
through the packet table it built when opening the file (the exact decord rule, right for
variable frame rates too) and uses that formula only for a pts missing from the table.

Colour: decord and PyAV both convert with libswscale to RGB24 at the native size; on the
files written by ``scripts/make_synthetic_dataset.py`` (H.264, VP9, MJPEG; see
``tests/test_decoding.py``) the frames are bit-identical.

Every file that cannot be used raises :class:`VideoError`, whose message is one sentence
naming the file and the reason. Decoding libraries are imported only when a reader is opened.
"""
from __future__ import annotations

import importlib
import importlib.util
import operator
import os
import re
from bisect import bisect_right
from collections.abc import Iterator, Sequence
from fractions import Fraction
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError

DECODERS = ("decord", "pyav", "torchcodec")

_PACKAGES = {"decord": "decord", "pyav": "av", "torchcodec": "torchcodec"}


class VideoError(Exception):
    """A video that cannot be used; ``str(e)`` is one sentence naming the file and the reason."""


def _sentence(text: str) -> str:
    text = " ".join(str(text).split())
    return text if text.endswith((".", "!", "?")) else text + "."


def _reason(exc: BaseException) -> str:
    """A short, one-line reason from a decoding library's exception (no stack traces)."""
    strerror = getattr(exc, "strerror", None)  # av.error.FFmpegError carries the bare reason
    text = strerror if isinstance(strerror, str) and strerror else str(exc)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    text = lines[0] if lines else type(exc).__name__
    # decord: "[12:00:00] /path/to/file.cc:61: Check failed: ... reason"
    text = re.sub(r"^\[[\d:]+\]\s+\S+:\d+:\s*", "", text)
    text = re.sub(r"^\[Errno -?\d+\]\s*", "", text)
    # decord: "Check failed: <expression> (-22 vs. 0) <message>" -> "<message>"
    text = re.sub(r"^Check failed: .*\(-?\d+ vs\. -?\d+\)\s*(\S.*)$", r"\1", text)
    if text.startswith("Error reading "):  # decord's open failure; FFmpeg's reason only goes to stderr
        text = "not a video container FFmpeg can read"
    text = text.rstrip(". ")
    if len(text) > 200:
        text = text[:197] + "..."
    return text or type(exc).__name__


class VideoReader:
    """A video opened for random access to its frames (see :func:`open_video`).

    Attributes: ``path``; ``decoder`` (backend name); ``num_frames`` (frames in the first video
    stream, as decodable); ``fps`` (average frame rate); ``height`` and ``width``.
    Usable as a context manager (``close`` on exit).
    """

    decoder: str = ""

    def __init__(self, path: str) -> None:
        self.path = str(path)
        self.num_frames = 0
        self.fps = 0.0
        self._size: tuple[int, int] | None = None  # (H, W), filled lazily by some backends

    @property
    def height(self) -> int:
        return self._frame_size()[0]

    @property
    def width(self) -> int:
        return self._frame_size()[1]

    def _frame_size(self) -> tuple[int, int]:
        if self._size is None:
            frame = self._get_frames([0])
            self._size = (int(frame.shape[1]), int(frame.shape[2]))
        return self._size

    def error(self, reason: str) -> VideoError:
        return VideoError(_sentence(f"video {self.path!r} {reason}"))

    def get_frames(self, indices: Sequence[int]) -> torch.Tensor:
        """Frames ``indices`` as uint8 ``(len(indices), H, W, 3)`` RGB.

        Indices may repeat and need not be sorted; one outside ``[0, num_frames)`` raises
        :class:`VideoError`.
        """
        if isinstance(indices, (torch.Tensor, np.ndarray)):
            indices = indices.reshape(-1).tolist()
        try:
            wanted = [operator.index(i) for i in indices]
        except TypeError as exc:
            raise TypeError(f"frame indices must be integers, got {indices!r}.") from exc
        bad = [i for i in wanted if not 0 <= i < self.num_frames]
        if bad:
            raise self.error(f"has {self.num_frames} frames, so frame index {bad[0]} is out of range "
                             f"(allowed 0..{self.num_frames - 1})")
        if not wanted:
            return torch.empty((0, self.height, self.width, 3), dtype=torch.uint8)
        return self._get_frames(wanted)

    def _get_frames(self, indices: list[int]) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __len__(self) -> int:
        return self.num_frames

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(path={self.path!r}, num_frames={self.num_frames}, fps={self.fps:g})"


# --------------------------------------------------------------------------------------------- decord


class DecordReader(VideoReader):
    decoder = "decord"

    def __init__(self, path: str, num_threads: int = 1) -> None:
        super().__init__(path)
        import decord  # lazy: decord is heavy and prints to stderr on import in some builds

        try:
            self._vr = decord.VideoReader(self.path, ctx=decord.cpu(0), num_threads=num_threads)
        except Exception as exc:  # decord raises RuntimeError / DECORDError with C++ log text
            raise self.error(f"could not be opened by decord: {_reason(exc)}") from exc
        try:
            self.num_frames = len(self._vr)
            self.fps = float(self._vr.get_avg_fps())
        except Exception as exc:
            raise self.error(f"could not be read by decord: {_reason(exc)}") from exc
        if self.num_frames < 1:
            raise self.error("has no frames")

    def _get_frames(self, indices: list[int]) -> torch.Tensor:
        try:
            batch = self._vr.get_batch(indices).asnumpy()
        except Exception as exc:
            raise self.error(f"could not be decoded by decord at frames {indices}: {_reason(exc)}") from exc
        return torch.from_numpy(np.ascontiguousarray(batch))

    def close(self) -> None:
        self._vr = None


# ----------------------------------------------------------------------------------------------- PyAV


class PyAVReader(VideoReader):
    """PyAV reader with decord's frame numbering; decodes only from the keyframe before the
    first wanted frame up to the last wanted frame (falling back to the start of the stream if
    the seek lands too late), and decodes on without seeking when the next call starts later
    in the same GOP as the previous one ended.

    ``skip_nonref`` (default on): packets of frames that are not wanted are decoded with
    FFmpeg's ``skip_frame=NONREF``, so a frame no other frame references (most B-frames) is not
    decoded at all unless it is wanted; the frames returned are the same. It pays on files with
    non-reference B-frames (x264's default and the files of :mod:`stjepa.data.prepare`; see
    BENCHMARKS.md) and costs nothing elsewhere.
    """

    decoder = "pyav"

    def __init__(self, path: str, num_threads: int = 1, skip_nonref: bool = True) -> None:
        super().__init__(path)
        self._skip_nonref = skip_nonref
        self._wanted_pts: set[int] | None = None  # pts of the frames wanted by the current call
        import av  # lazy

        self._av = av
        try:
            self._container = av.open(self.path, mode="r")
        except Exception as exc:  # av.error.FFmpegError subclasses OSError / ValueError
            raise self.error(f"could not be opened by PyAV: {_reason(exc)}") from exc
        try:
            self._setup(num_threads)
        except VideoError:
            self.close()
            raise
        except Exception as exc:
            self.close()
            raise self.error(f"could not be read by PyAV: {_reason(exc)}") from exc

    def _setup(self, num_threads: int) -> None:
        if not self._container.streams.video:
            raise self.error("has no video stream")
        stream = self._container.streams.video[0]
        self._stream = stream
        stream.thread_type = "AUTO"
        stream.codec_context.thread_count = num_threads  # 0 = let FFmpeg choose
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        self._rate = Fraction(rate) if rate else None
        self.fps = float(self._rate) if self._rate else 0.0
        self._time_base = Fraction(stream.time_base) if stream.time_base else None
        self._start = stream.start_time
        height, width = int(stream.codec_context.height or 0), int(stream.codec_context.width or 0)
        if height > 0 and width > 0:
            self._size = (height, width)

        # Count and index packets like decord does (demux only, no decoding): the header frame
        # count can disagree with the data (e.g. a truncated AVI keeps the full count).
        pts: list[int] = []
        key_pts: list[int] = []
        count = 0
        missing_pts = False
        for packet in self._container.demux(stream):
            if packet.size == 0:  # the flush packet PyAV yields at the end of the stream
                continue
            count += 1
            if packet.pts is None:
                missing_pts = True
            else:
                pts.append(int(packet.pts))
                if packet.is_keyframe:
                    key_pts.append(int(packet.pts))
        self.num_frames = count
        if count < 1:
            raise self.error("has no frames in its video stream")
        pts.sort()
        self._pts = None if missing_pts else pts
        self._pts_index = None if missing_pts else {p: i for i, p in enumerate(pts)}
        # Keyframe indices (for "decode on rather than seek"); None: unknown, always seek.
        self._keys = None if missing_pts or not key_pts else sorted(self._pts_index[p] for p in key_pts)
        self._frames: Iterator[tuple[int, Any]] | None = None  # live decoder output after get_frames
        self._pos = -1  # index of the last frame taken from self._frames
        if self._start is None:
            self._start = pts[0] if pts else 0

    # ---- frame index <-> timestamp
    def _index_of(self, frame: Any, previous: int) -> int:
        pts = frame.pts
        if pts is None:
            pts = getattr(frame, "dts", None)
        if pts is None:
            return previous + 1
        if self._pts_index is not None:
            index = self._pts_index.get(int(pts))
            if index is not None:
                return index
        if self._time_base is None or not self._rate:
            return previous + 1
        return round((int(pts) - self._start) * self._time_base * self._rate)

    def _pts_of(self, index: int) -> int | None:
        if self._pts is not None:
            return self._pts[index]
        if self._time_base is None or not self._rate:
            return None
        return self._start + int(Fraction(index) / self._rate / self._time_base)

    def _seek(self, index: int) -> bool:
        """Seek to the keyframe at or before frame ``index`` (0: the start). False on failure."""
        target = self._pts_of(index) if index > 0 else None
        if target is None:
            target = self._start
        try:
            self._container.seek(target, stream=self._stream, backward=True, any_frame=False)
        except self._av.error.FFmpegError:
            return False
        return True

    def _frame_iter(self) -> Iterator[tuple[int, Any]]:
        """``(index, frame)`` in presentation order from the current demuxer position."""
        index = -1
        context = self._stream.codec_context
        for packet in self._container.demux(self._stream):
            if self._wanted_pts is not None:  # per packet: FFmpeg reads it for each frame it decodes
                context.skip_frame = "DEFAULT" if packet.pts is None or packet.pts in self._wanted_pts else "NONREF"
            for frame in packet.decode():
                index = self._index_of(frame, index)
                yield index, frame

    def _can_continue(self, lo: int) -> bool:
        """Whether decoding on from the last call reaches ``lo`` without passing the keyframe a
        seek would land on (then it decodes no more frames than seeking would)."""
        if self._frames is None or self._pos >= lo or self._keys is None:
            return False
        k = bisect_right(self._keys, lo) - 1
        return k < 0 or self._keys[k] <= self._pos

    def _collect(self, lo: int, hi: int, wanted: set[int], check_first: bool) -> tuple[dict[int, np.ndarray], int]:
        """Take frames from the live iterator up to ``hi``; returns the wanted frames found and the
        index of the first frame taken (-1 if none). With ``check_first``, stops at once when
        that first frame is already past ``lo`` (a seek that overshot)."""
        found: dict[int, np.ndarray] = {}
        first = -1
        assert self._frames is not None
        for index, frame in self._frames:
            self._pos = index
            if first < 0:
                first = index
                if check_first and index > lo:
                    self._frames = None
                    return found, first
            if index in wanted:
                found[index] = self._to_rgb(frame)
            if index >= hi:
                return found, first
        self._frames = None  # end of stream
        return found, first

    def _to_rgb(self, frame: Any) -> np.ndarray:
        return frame.to_ndarray(format="rgb24")

    def _seek_and_collect(
        self, lo: int, hi: int, wanted: set[int], from_start: bool
    ) -> tuple[dict[int, np.ndarray], int]:
        self._frames, self._pos = None, -1
        if not self._seek(0 if from_start else lo):
            if not from_start:
                return {}, -1
            self._reopen()
        self._frames = self._frame_iter()
        return self._collect(lo, hi, wanted, check_first=not from_start)

    def _reopen(self) -> None:
        threads = self._stream.codec_context.thread_count
        self._container.close()
        self._container = self._av.open(self.path, mode="r")
        self._stream = self._container.streams.video[0]
        self._stream.thread_type = "AUTO"
        self._stream.codec_context.thread_count = threads

    def _get_frames(self, indices: list[int]) -> torch.Tensor:
        wanted = set(indices)
        lo, hi = min(wanted), max(wanted)
        if self._skip_nonref and self._pts is not None:
            self._wanted_pts = {self._pts[i] for i in wanted}
        try:
            found = None
            if self._can_continue(lo):  # e.g. consecutive clips in one GOP: no seek, no re-decoding
                found, _ = self._collect(lo, hi, wanted, check_first=False)
                if wanted - found.keys():
                    found = None
            if found is None:
                found, first = self._seek_and_collect(lo, hi, wanted, from_start=lo == 0)
                if lo != 0 and (first < 0 or first > lo):  # the seek landed after frame lo
                    found, first = self._seek_and_collect(lo, hi, wanted, from_start=True)
        except self._av.error.FFmpegError as exc:
            self._frames = None
            raise self.error(f"could not be decoded by PyAV at frames {sorted(wanted)}: {_reason(exc)}") from exc
        missing = sorted(wanted - found.keys())
        if missing:
            raise self.error(f"has {self.num_frames} packets but frame {missing[0]} could not be decoded by PyAV")
        return torch.from_numpy(np.stack([found[i] for i in indices]))

    def close(self) -> None:
        self._frames = None
        container = getattr(self, "_container", None)
        if container is not None:
            container.close()
            self._container = None


# ------------------------------------------------------------------------------------------ torchcodec


class TorchCodecReader(VideoReader):
    decoder = "torchcodec"

    def __init__(self, path: str, num_threads: int = 1) -> None:
        super().__init__(path)
        from torchcodec.decoders import VideoDecoder  # lazy, optional

        kwargs: dict[str, Any] = dict(dimension_order="NHWC", seek_mode="exact")
        try:
            try:
                self._dec = VideoDecoder(self.path, num_ffmpeg_threads=num_threads, **kwargs)
            except TypeError:  # older torchcodec without num_ffmpeg_threads
                self._dec = VideoDecoder(self.path, **kwargs)
            meta = self._dec.metadata
        except Exception as exc:
            raise self.error(f"could not be opened by torchcodec: {_reason(exc)}") from exc
        self.num_frames = int(meta.num_frames or 0)
        # the header's rate, as decord and PyAV report (average_fps is frames / duration, which the
        # rounded timestamps of a webm make 12.003 for 12 fps)
        self.fps = float(getattr(meta, "average_fps_from_header", None) or meta.average_fps or 0.0)
        if meta.height and meta.width:
            self._size = (int(meta.height), int(meta.width))
        if self.num_frames < 1:
            raise self.error("has no frames in its video stream")

    def _get_frames(self, indices: list[int]) -> torch.Tensor:
        try:
            batch = self._dec.get_frames_at(indices=indices).data
        except Exception as exc:
            raise self.error(f"could not be decoded by torchcodec at frames {indices}: {_reason(exc)}") from exc
        if batch.shape[-1] != 3:  # NCHW from a version that ignores dimension_order
            batch = batch.permute(0, 2, 3, 1)
        return batch.contiguous()

    def close(self) -> None:
        self._dec = None


_READERS = {"decord": DecordReader, "pyav": PyAVReader, "torchcodec": TorchCodecReader}


def _importable(name: str) -> bool:
    if name == "torchcodec":  # installed but unusable (FFmpeg libraries missing) counts as absent
        try:
            importlib.import_module("torchcodec.decoders")
        except Exception:
            return False
        return True
    return importlib.util.find_spec(_PACKAGES[name]) is not None


def available_decoders() -> list[str]:
    """The names in ``DECODERS`` whose library can be imported here."""
    return [name for name in DECODERS if _importable(name)]


def open_video(path: str | os.PathLike, decoder: str = "decord", num_threads: int = 1) -> VideoReader:
    """Open ``path`` for frame access with ``decoder`` (one of ``DECODERS``).

    Raises :class:`VideoError` for a missing, empty, unreadable or corrupt file, one without a
    video stream or without frames; ``ValueError`` for an unknown decoder or one whose library
    is not installed.
    """
    if not isinstance(decoder, str) or decoder not in DECODERS:
        raise ConfigError(f"data.decoder={decoder!r} is not known; allowed values are {', '.join(DECODERS)}.")
    if isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 0:
        raise ValueError(f"num_threads={num_threads!r} is not allowed; allowed values are integers >= 0 "
                         "(0 lets the decoder choose).")
    if not _importable(decoder):
        package = _PACKAGES[decoder]
        if importlib.util.find_spec(package) is not None:  # torchcodec without FFmpeg's libraries
            raise ConfigError(f"data.decoder={decoder!r} cannot be used: {package} is installed but cannot load "
                             f"FFmpeg's shared libraries (versions 4-8; `apt install ffmpeg` or `conda install "
                             f"ffmpeg` installs them), or choose another of {', '.join(DECODERS)}.")
        raise ConfigError(f"data.decoder={decoder!r} needs the {package} package, which is not installed "
                         f"(or cannot be imported); install it with `pip install {package}` or choose another "
                         f"of {', '.join(DECODERS)}.")
    path = check_video_file(path)
    return _READERS[decoder](path, num_threads=num_threads)


def check_video_file(path: str | os.PathLike) -> str:
    """``path`` as a string if it names a readable, non-empty file, else :class:`VideoError`."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise VideoError(f"video {path!r} does not exist.")
    if os.path.isdir(path):
        raise VideoError(f"video {path!r} is a directory, not a file.")
    try:
        size = os.path.getsize(path)
    except OSError as exc:
        raise VideoError(f"video {path!r} cannot be read: {_reason(exc)}.") from exc
    if size == 0:
        raise VideoError(f"video {path!r} is empty (0 bytes).")
    if not os.access(path, os.R_OK):
        raise VideoError(f"video {path!r} cannot be read: permission denied.")
    return path
