"""Which frames of a video make a clip, as V-JEPA 2's VideoDataset chooses them.

A video of ``num_frames`` frames is cut into ``num_clips`` equal partitions and one clip of
``frames_per_clip`` frames is taken from each. The frame step is ``ceil(video_fps / fps)`` when
a target ``fps`` is given, else ``frame_step``; a clip spans ``frames_per_clip * step`` frames.
Within a partition longer than that span the clip starts at a random offset (training) or at
the partition's start (evaluation); its indices are ``linspace`` over the span, as upstream.
A partition shorter than the span is read densely and padded with its last frame.
"""
from __future__ import annotations

import math

import numpy as np


def frame_step_for(video_fps: float, fps: float | None, frame_step: int) -> int:
    """Frames to advance per clip frame: from a target fps if given, else the fixed step."""
    if fps is not None and fps > 0 and video_fps and video_fps > 0:
        return max(1, math.ceil(video_fps / fps))
    return max(1, int(frame_step))


def clip_span(frames_per_clip: int, step: int) -> int:
    return frames_per_clip * step


def clip_indices(
    num_frames: int,
    frames_per_clip: int,
    step: int,
    num_clips: int = 1,
    random_start: bool = True,
    rng: np.random.Generator | None = None,
) -> list[np.ndarray]:
    """``num_clips`` int64 arrays of ``frames_per_clip`` frame indices in ``[0, num_frames)``."""
    if num_frames < 1:
        raise ValueError("a video needs at least one frame to sample a clip from.")
    rng = rng if rng is not None else np.random.default_rng()
    span = clip_span(frames_per_clip, step)
    partition = num_frames // num_clips
    clips = []
    for i in range(num_clips):
        if partition > span:
            end = int(rng.integers(span, partition)) if random_start else span
            start = end - span
            idx = np.linspace(start, end, num=frames_per_clip)
            idx = np.clip(idx, start, end - 1).astype(np.int64) + i * partition
        else:
            # too short for one span: every step-th frame, then the partition's last frame repeated
            length = max(partition, 1)
            dense = length // step
            idx = np.concatenate([np.linspace(0, length, num=dense), np.full(frames_per_clip - dense, length)])
            idx = np.clip(idx, 0, length - 1).astype(np.int64) + i * partition
        clips.append(np.minimum(idx, num_frames - 1))
    return clips
