"""Items decoded from files listed in manifests, robust to bad files (videos and images alike).

A file that is missing, unreadable or corrupt is warned about once per process, replaced by
another sample drawn deterministically, and counted: each item carries ``bad_<noun>s`` (e.g.
``bad_videos``), the number of files skipped to produce it, which the training module sums per
epoch. The label always belongs to the file actually returned. Only when every file tried fails
does the dataset give up, with one sentence naming the manifests.
"""
from __future__ import annotations

import logging
import os
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import NoUsableVideoError
from .manifests import VideoSample

log = logging.getLogger(__name__)


class FileDataset(Dataset):
    """Subclasses set ``noun`` (what one file is), ``error`` (the exception their decoder
    raises for a bad file, with a one-sentence message), ``hint`` (the keys to check when
    nothing can be read) and implement :meth:`load`."""

    noun = "file"
    error: type[Exception] = OSError
    hint = "check the paths"

    def __init__(self, samples: Sequence[VideoSample], manifests: Sequence[str], seed: int = 0,
                 max_retries: int = 50):
        self.samples = list(samples)
        self.manifests = list(manifests)
        self.seed, self.max_retries = seed, max_retries
        self._warned: set[str] = set()

    @property
    def input_key(self) -> str:
        return self.noun  # "video" or "image": the key of the decoded tensor in each item

    @property
    def bad_key(self) -> str:
        return f"bad_{self.noun}s"

    def load(self, sample: VideoSample, rng: np.random.Generator) -> torch.Tensor:
        """Decode one sample; raises ``self.error`` (or OSError / RuntimeError) for a bad file."""
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.samples)

    def _rng(self, key: int, attempt: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, key, attempt])

    def _warn_once(self, sample: VideoSample, exc: Exception) -> None:
        if sample.path not in self._warned:
            self._warned.add(sample.path)
            log.warning("skipping a bad %s (pid %d): %s", self.noun, os.getpid(), exc)

    def __getitem__(self, key: int) -> dict:
        """``key`` is a sample index, or ``pass * len(self) + index`` from a StreamSampler."""
        bad, tried = 0, set()
        current = key % len(self.samples)
        for attempt in range(self.max_retries + 1):
            sample = self.samples[current]
            tried.add(current)
            rng = self._rng(key, attempt)
            try:
                data = self.load(sample, rng)
                # index: what was asked for (seeds masks); sample: the file actually returned
                return {self.input_key: data, "label": sample.label, "index": key, "sample": current,
                        self.bad_key: bad}
            except (self.error, OSError, RuntimeError) as exc:  # decoders raise several types
                bad += 1
                self._warn_once(sample, exc if isinstance(exc, self.error)
                                else self.error(f"{self.noun} {sample.path!r}: {exc}"))
                if len(tried) == len(self.samples):
                    break
                current = int(rng.integers(len(self.samples)))
        where = f"manifest(s) {', '.join(self.manifests)}"
        what = (f"none of the {len(self.samples)} {self.noun}s of {where} could be read"
                if len(tried) == len(self.samples)
                else f"{bad} {self.noun}s in a row ({len(tried)} different files of {len(self.samples)}) could not "
                     f"be read from {where}")
        raise NoUsableVideoError(f"{what}; {self.hint}.")
