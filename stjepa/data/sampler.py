"""A training sampler whose order depends only on (seed, position in the stream).

The stream is an endless sequence of seeded permutations of the dataset (one per pass). Each
time a loader is iterated it starts at the position the trainer has reached, read through
``position_fn``, so a run resumed in the middle of an epoch sees exactly the samples the
uninterrupted run would have seen, with any number of workers. Under data parallelism rank
``r`` of ``w`` takes stream items ``r, r + w, r + 2w, ...``.

With per-sample ``weights`` (mixing several manifests, as V-JEPA 2 mixes K710, SSv2 and
HowTo100M) each pass draws ``num_samples`` items with replacement in proportion to the weights.
"""
from __future__ import annotations

from typing import Callable, Iterator

import torch
from torch.utils.data import Sampler


class StreamSampler(Sampler[int]):
    def __init__(
        self,
        num_samples: int,
        length: int,
        seed: int = 0,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
        position_fn: Callable[[], int] | None = None,
        weights: torch.Tensor | None = None,
        yield_pass: bool = False,
    ):
        """``length`` is how many indices one iteration yields (one trainer epoch on this rank);
        ``position_fn`` returns how many samples this rank has already consumed."""
        self.num_samples = num_samples
        self.length = length
        self.seed = seed
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size
        self.position_fn = position_fn or (lambda: 0)
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        # yield pass * num_samples + index, so a dataset can vary its augmentation per pass
        self.yield_pass = yield_pass
        self._cycle, self._perm = -1, torch.empty(0, dtype=torch.long)

    def __len__(self) -> int:
        return self.length

    def _permutation(self, cycle: int) -> torch.Tensor:
        if not self.shuffle and self.weights is None:
            return torch.arange(self.num_samples)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + cycle)
        if self.weights is not None:
            return torch.multinomial(self.weights, self.num_samples, replacement=True, generator=g)
        return torch.randperm(self.num_samples, generator=g)

    def key_at(self, local: int) -> int:
        """The dataset key of item ``local`` of this rank's share of the stream."""
        flat = local * self.world_size + self.rank
        cycle = flat // self.num_samples
        if cycle != self._cycle:
            self._cycle, self._perm = cycle, self._permutation(cycle)
        index = int(self._perm[flat % self.num_samples])
        return cycle * self.num_samples + index if self.yield_pass else index

    def __iter__(self) -> Iterator[int]:
        start = self.position_fn()
        for local in range(start, start + self.length):
            yield self.key_at(local)
