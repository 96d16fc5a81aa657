"""Several data sources side by side (video and images, as V-JEPA 2 and 2.1 pretrain): every
training step takes one batch from one source, so a batch never mixes modalities.

Which source a step uses:

- one schedule for every rank (the default, and the only choice on one device): sources take
  turns in proportion to ``weights`` (smooth weighted round robin: with weights 3 and 1 the
  steps go V V I V, V V I V, ...; any window of steps holds each source within one step of its
  share). All ranks take the same source at the same step.
- ``rank_ratio`` (several devices; V-JEPA 2.1's split): the lowest ``int(world * rank_ratio)``
  ranks train on the image sources only, the others on the video sources only, each group
  taking turns among its own sources by weight. The gradient all-reduce then mixes both
  modalities in every optimizer step.

Inside a source, batches come from that source's own seeded stream (its StreamSampler), shared
by the ranks of its group. The schedule and the streams depend only on the seed and the number
of steps already trained, so a resumed run continues exactly where the first one stopped.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator, Mapping, Sequence

import lightning as L
from torch.utils.data import DataLoader, Dataset

from ..errors import ConfigError
from .collate import batch_seed
from .datamodule import ResumableDataLoader, VideoDataModule
from .file_dataset import FileDataset
from .masks import STATIC_SLOTS, Grid
from .sampler import StreamSampler


def weighted_turns(weights: Sequence[float], steps: int, start: int = 0) -> list[int]:
    """Source index of each step in [start, start + steps) under smooth weighted round robin."""
    credit, total, turns = [0.0] * len(weights), float(sum(weights)), []
    for step in range(start + steps):
        for i, w in enumerate(weights):
            credit[i] += w
        pick = max(range(len(weights)), key=lambda i: (credit[i], -i))
        credit[pick] -= total
        if step >= start:
            turns.append(pick)
    return turns


class MixtureDataset(Dataset):
    """Items of several datasets, addressed by ``(source, key)``."""

    def __init__(self, datasets: Sequence[Dataset]):
        self.datasets = list(datasets)

    def __len__(self) -> int:
        return sum(len(d) for d in self.datasets)

    def __getitem__(self, address: tuple[int, int]) -> dict:
        source, key = address
        return {**self.datasets[source][key], "source_index": source}


class MixtureBatchSampler:
    """Batches of ``(source, key)`` addresses, one source per step (see the module docstring).
    ``position_fn`` returns the steps already trained; ``turn_of`` maps steps to source indices."""

    def __init__(self, streams: Mapping[int, StreamSampler], batch_sizes: Sequence[int],
                 weights: Sequence[float], length: int, position_fn: Callable[[], int]):
        self.streams, self.batch_sizes, self.weights = dict(streams), list(batch_sizes), list(weights)
        self.length, self.position_fn = length, position_fn
        self.members = sorted(self.streams)  # the sources this rank draws from

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        start = self.position_fn()
        weights = [self.weights[i] for i in self.members]
        turns = weighted_turns(weights, start + self.length)
        used = [0] * len(self.members)  # batches each source gave before `start`
        for t in turns[:start]:
            used[t] += 1
        for t in turns[start:]:
            source, size = self.members[t], self.batch_sizes[self.members[t]]
            stream = self.streams[source]
            yield [(source, stream.key_at(used[t] * size + j)) for j in range(size)]
            used[t] += 1


class MixtureCollate:
    """Collates each batch with its source's own collate function (masks of its modality)."""

    def __init__(self, collates: Sequence[Callable[[list[dict]], dict]]):
        self.collates = list(collates)

    def __call__(self, samples: list[dict]) -> dict:
        source = samples[0].pop("source_index")
        for item in samples[1:]:
            item.pop("source_index")
        return self.collates[source](samples)


class MixtureDataModule(L.LightningDataModule):
    """``sources``: named data modules (instantiated from their own configs); ``weights``: one
    per source name; ``rank_ratio``: null, or the share of ranks on image sources;
    ``num_workers``: the workers of the one loader that serves every source.
    ``frames_per_clip``, ``crop_size`` and ``batch_size`` repeat the video source's values for
    the model and the config checks (conf/data/mixture.yaml interpolates them); the sources
    read their own."""

    modality = "mixture"  # each source has its own (stjepa.preflight.data_modalities reads them)

    def __init__(self, sources: Mapping[str, VideoDataModule], weights: Mapping[str, float],
                 rank_ratio: float | None = None, seed: int = 0, num_workers: int = 0,
                 frames_per_clip: int | None = None, crop_size: int | None = None, batch_size: int | None = None):
        super().__init__()
        if not sources:
            raise ConfigError("data.sources must name at least one data source.")
        self.names = list(sources)
        for name, source in sources.items():
            if not isinstance(source, VideoDataModule):
                raise ConfigError(f"data.sources.{name} is not a data source (give a config with a _target_ such as "
                                  f"stjepa.data.datamodule.ImageDataModule).")
            source.name = name
        weights = dict(weights or {})
        if set(weights) != set(self.names):
            raise ConfigError(f"data.weights names {sorted(weights)} but data.sources are {sorted(self.names)}; "
                              f"give one weight per source.")
        values = [weights[n] for n in self.names]
        if any(isinstance(w, bool) or not isinstance(w, (int, float)) or w < 0 for w in values) or sum(values) <= 0:
            raise ConfigError(f"data.weights={weights} must be numbers >= 0 with a positive sum.")
        if rank_ratio is not None and not (isinstance(rank_ratio, (int, float)) and 0 < rank_ratio < 1):
            raise ConfigError(f"data.rank_ratio={rank_ratio!r} must be null or a number in (0, 1) (the share of "
                              f"devices that train on images).")
        self.sources = [sources[n] for n in self.names]
        self.weights = [float(w) for w in values]
        self.rank_ratio, self.seed, self.num_workers = rank_ratio, seed, num_workers
        if rank_ratio is not None and len({s.modality for s in self.sources}) < 2:
            raise ConfigError("data.rank_ratio splits devices between image and video sources, but data.sources "
                              "hold only one modality; set data.rank_ratio=null.")

    @property
    def modalities(self) -> set[str]:
        return {s.modality for s in self.sources}

    def configure_masking(self, grid_of: Callable[[tuple[int, ...]], Grid],
                          mask_sets: Mapping[str, Sequence[Mapping[str, Any]]], pad: bool = False,
                          slots: str | float = STATIC_SLOTS) -> None:
        for i, source in enumerate(self.sources):  # own mask seeds: no two sources draw the same masks
            source.configure_masking(grid_of, mask_sets, seed=batch_seed(self.seed, [i]), pad=pad, slots=slots)

    def setup(self, stage: str | None = None) -> None:
        for source in self.sources:
            source.trainer = self.trainer
            source.setup(stage)

    def _world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def _group(self, rank: int, world: int) -> tuple[list[int], int, int]:
        """The sources this rank trains on, its rank within its group and the group's size."""
        everyone = list(range(len(self.sources)))
        if self.rank_ratio is None or world == 1:
            return everyone, rank, world
        image_ranks = int(world * self.rank_ratio)
        if not 0 < image_ranks < world:
            raise ConfigError(f"data.rank_ratio={self.rank_ratio} of {world} devices leaves "
                              f"{image_ranks} for images and {world - image_ranks} for videos; both need one.")
        image = rank < image_ranks
        members = [i for i in everyone if (self.sources[i].modality == "image") == image]
        return members, (rank if image else rank - image_ranks), (image_ranks if image else world - image_ranks)

    def _steps_done(self) -> int:
        trainer = self.trainer
        return 0 if trainer is None else trainer.fit_loop.epoch_loop.batch_progress.total.completed

    def train_dataloader(self) -> DataLoader:
        self.setup("fit")
        rank, world = self._world()
        members, group_rank, group_size = self._group(rank, world)
        streams = {}
        for i in members:
            source = self.sources[i]
            if len(source.train_set) // group_size < source.batch_size:
                raise ConfigError(f"data.sources.{source.name}.batch_size={source.batch_size} is larger than the "
                                  f"{len(source.train_set) // group_size} training items each of its {group_size} "
                                  f"devices gets; lower it or add data.")
            streams[i] = StreamSampler(len(source.train_set), 0, batch_seed(self.seed, [i, 1]) % 2**31, True, group_rank,
                                       group_size, weights=source.sample_weights(),
                                       yield_pass=isinstance(source.train_set, FileDataset))
        # one epoch: a pass over every source at its batch size, the same length on every rank
        length = max(1, sum(len(s.train_set) // s.batch_size for s in self.sources) // world)
        sampler = MixtureBatchSampler(streams, [s.batch_size for s in self.sources], self.weights, length,
                                      self._steps_done)
        return ResumableDataLoader(
            MixtureDataset([s.train_set for s in self.sources]), batch_sampler=sampler,
            num_workers=self.num_workers, pin_memory=self.sources[0].pin_memory,
            persistent_workers=self.num_workers > 0,
            collate_fn=MixtureCollate([s.masking or s._loader_collate() for s in self.sources]),
        )

    def val_dataloader(self) -> list[DataLoader]:
        """One loader per source with validation data, in source order."""
        loaders = []
        for source in self.sources:
            loader = source.val_dataloader()
            if loader != []:
                loaders.append(loader)
        return loaders
