"""Clips from video files listed in manifests, robust to bad files.

A video that is missing, unreadable, corrupt, has no frames, or (with
``short_video='skip'``) is shorter than one clip is warned about once per process, replaced by
another sample drawn deterministically, and counted: each item carries ``bad_videos``, the
number of files skipped to produce it, which the training module sums per epoch. The label
always belongs to the video actually returned.
"""
from __future__ import annotations

import logging
import os
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import ConfigError, NoUsableVideoError
from .clips import clip_indices, clip_span, frame_step_for
from .decoding import VideoError, open_video
from .manifests import VideoSample

log = logging.getLogger(__name__)
SHORT_VIDEO = ("pad", "skip")


class VideoClipDataset(Dataset):
    def __init__(
        self,
        samples: Sequence[VideoSample],
        manifests: Sequence[str],
        transform: Callable,
        frames_per_clip: int = 16,
        frame_step: int = 4,
        fps: float | None = None,
        num_clips: int = 1,
        random_start: bool = True,
        decoder: str = "decord",
        short_video: str = "pad",
        seed: int = 0,
        max_retries: int = 50,
    ):
        if short_video not in SHORT_VIDEO:
            raise ConfigError(f"data.short_video={short_video!r} is not known; allowed values are pad, skip.")
        self.samples = list(samples)
        self.manifests = list(manifests)
        self.transform = transform
        self.frames_per_clip, self.frame_step, self.fps = frames_per_clip, frame_step, fps
        self.num_clips, self.random_start = num_clips, random_start
        self.decoder, self.short_video = decoder, short_video
        self.seed, self.max_retries = seed, max_retries
        self._warned: set[str] = set()

    def __len__(self) -> int:
        return len(self.samples)

    def _rng(self, key: int, attempt: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, key, attempt])

    def load(self, sample: VideoSample, rng: np.random.Generator) -> torch.Tensor:
        """Decode the clip(s) of one video; raises VideoError for a file that cannot be used."""
        reader = open_video(sample.path, self.decoder)
        try:
            step = frame_step_for(reader.fps, self.fps, self.frame_step)
            if self.short_video == "skip" and reader.num_frames < clip_span(self.frames_per_clip, step):
                raise VideoError(f"video {sample.path!r} has {reader.num_frames} frames, fewer than one clip "
                                 f"({self.frames_per_clip} frames every {step}) with data.short_video='skip'.")
            clips = clip_indices(reader.num_frames, self.frames_per_clip, step, self.num_clips, self.random_start, rng)
            frames = reader.get_frames(np.concatenate(clips).tolist())
        finally:
            reader.close()
        per_clip = [self.transform(frames[i * self.frames_per_clip : (i + 1) * self.frames_per_clip], rng)
                    for i in range(len(clips))]
        # training transforms give (3, T, S, S) per clip, evaluation ones (views, 3, T, S, S)
        video = torch.cat([v if v.dim() == 5 else v.unsqueeze(0) for v in per_clip])
        return video[0] if video.shape[0] == 1 else video

    def _warn_once(self, sample: VideoSample, exc: Exception) -> None:
        if sample.path not in self._warned:
            self._warned.add(sample.path)
            log.warning("skipping a bad video (pid %d): %s", os.getpid(), exc)

    def __getitem__(self, key: int) -> dict:
        """``key`` is a sample index, or ``pass * len(self) + index`` from a StreamSampler."""
        bad, tried = 0, set()
        current = key % len(self.samples)
        for attempt in range(self.max_retries + 1):
            sample = self.samples[current]
            tried.add(current)
            rng = self._rng(key, attempt)
            try:
                video = self.load(sample, rng)
                # index: what was asked for (seeds masks); sample: the video actually returned
                return {"video": video, "label": sample.label, "index": key, "sample": current, "bad_videos": bad}
            except (VideoError, OSError, RuntimeError) as exc:  # decoders raise several types
                bad += 1
                self._warn_once(sample, exc if isinstance(exc, VideoError) else VideoError(f"video {sample.path!r}: {exc}"))
                if len(tried) == len(self.samples):
                    break
                current = int(rng.integers(len(self.samples)))
        where = f"manifest(s) {', '.join(self.manifests)}"
        what = (f"none of the {len(self.samples)} videos of {where} could be read" if len(tried) == len(self.samples)
                else f"{bad} videos in a row ({len(tried)} different files of {len(self.samples)}) could not be read "
                     f"from {where}")
        raise NoUsableVideoError(f"{what}; check the paths, data.video_root and data.decoder.")
