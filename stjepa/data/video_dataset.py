"""Clips from video files listed in manifests, robust to bad files
(:class:`~stjepa.data.file_dataset.FileDataset`): a video that is missing, unreadable, corrupt,
has no frames, or (with ``short_video='skip'``) is shorter than one clip is skipped and counted
in each item's ``bad_videos``.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from ..errors import ConfigError
from .clips import clip_indices, clip_span, frame_step_for
from .decoding import VideoError, open_video
from .file_dataset import FileDataset
from .manifests import VideoSample

SHORT_VIDEO = ("pad", "skip")


class VideoClipDataset(FileDataset):
    noun, error, hint = "video", VideoError, "check the paths, data.video_root and data.decoder"

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
        super().__init__(samples, manifests, seed, max_retries)
        self.transform = transform
        self.frames_per_clip, self.frame_step, self.fps = frames_per_clip, frame_step, fps
        self.num_clips, self.random_start = num_clips, random_start
        self.decoder, self.short_video = decoder, short_video

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
