"""LightningDataModules. Every data source shares the keys users set most:
``data.batch_size`` (per device), ``data.num_workers``, ``data.frames_per_clip``,
``data.crop_size``; pretraining adds V-JEPA masks to each batch via :meth:`configure_masking`.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from .collate import MaskingCollate
from .sampler import StreamSampler
from .synthetic import LABEL_TASKS, MovingShapesDataset, num_classes


class ResumableDataLoader(DataLoader):
    """A DataLoader whose position is restored through its StreamSampler (which reads the
    trainer's progress), so Lightning may treat it as stateful: nothing else to save."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class VideoDataModule(L.LightningDataModule):
    def __init__(
        self,
        batch_size: int = 8,
        num_workers: int = 0,
        frames_per_clip: int = 16,
        crop_size: int = 224,
        seed: int = 0,
        pin_memory: bool | None = None,
    ):
        super().__init__()
        for key, value, low in (("batch_size", batch_size, 1), ("frames_per_clip", frames_per_clip, 1),
                                ("crop_size", crop_size, 1), ("num_workers", num_workers, 0)):
            if not isinstance(value, int) or value < low:
                raise ValueError(f"data.{key} must be an integer >= {low}, got {value!r}.")
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.frames_per_clip = frames_per_clip
        self.crop_size = crop_size
        self.seed = seed
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.masking: MaskingCollate | None = None
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None

    # -- to be provided by each source ---------------------------------------------------------
    def build_datasets(self) -> tuple[Dataset, Dataset | None]:
        raise NotImplementedError

    @property
    def num_classes(self) -> int:
        raise NotImplementedError

    # -- shared ------------------------------------------------------------------------------
    def configure_masking(self, grid: tuple[int, int, int], mask_sets: Sequence[Mapping[str, Any]]) -> None:
        """Draw V-JEPA masks for token grid ``grid`` in the collate function."""
        self.masking = MaskingCollate(grid, mask_sets, seed=self.seed)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            self.train_set, self.val_set = self.build_datasets()

    def _world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def _consumed_samples(self) -> int:
        """Samples this rank has already trained on (restored on resume)."""
        trainer = self.trainer
        if trainer is None:
            return 0
        return trainer.fit_loop.epoch_loop.batch_progress.total.completed * self.batch_size

    def _loader(self, dataset: Dataset, sampler, drop_last: bool) -> DataLoader:
        cls = ResumableDataLoader if isinstance(sampler, StreamSampler) else DataLoader
        return cls(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=self.masking or default_collate,
            pin_memory=self.pin_memory,
            drop_last=drop_last,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        self.setup("fit")
        rank, world = self._world()
        per_rank = len(self.train_set) // world
        if per_rank < self.batch_size:
            raise ValueError(
                f"data.batch_size={self.batch_size} is larger than the {per_rank} training clips each of the "
                f"{world} devices gets; lower data.batch_size or add data."
            )
        batches = per_rank // self.batch_size
        sampler = StreamSampler(len(self.train_set), batches * self.batch_size, self.seed, True, rank, world,
                                position_fn=self._consumed_samples)
        return self._loader(self.train_set, sampler, drop_last=True)

    def val_dataloader(self) -> DataLoader | list:
        self.setup("validate")
        if self.val_set is None or len(self.val_set) == 0:
            return []
        rank, world = self._world()
        sampler = None
        if world > 1:
            sampler = torch.utils.data.distributed.DistributedSampler(self.val_set, world, rank, shuffle=False)
        return self._loader(self.val_set, sampler, drop_last=False)


class SyntheticDataModule(VideoDataModule):
    """Moving-shapes videos made on the fly (no files): the default for a first run."""

    def __init__(self, train_size: int = 2048, val_size: int = 256, label: str = "direction",
                 frame_step: float = 1.0, **common: Any):
        super().__init__(**common)
        if label not in LABEL_TASKS:
            raise ValueError(f"data.label={label!r} is not known; allowed values are {', '.join(LABEL_TASKS)}.")
        for key, value, low in (("train_size", train_size, 1), ("val_size", val_size, 0)):
            if not isinstance(value, int) or value < low:
                raise ValueError(f"data.{key} must be an integer >= {low}, got {value!r}.")
        self.train_size, self.val_size, self.label, self.frame_step = train_size, val_size, label, frame_step

    @property
    def num_classes(self) -> int:
        return num_classes(self.label)

    def build_datasets(self) -> tuple[Dataset, Dataset | None]:
        def make(n: int, seed: int) -> MovingShapesDataset:
            return MovingShapesDataset(n, self.frames_per_clip, self.crop_size, seed, self.label, self.frame_step)

        # distinct seeds: validation clips are never training clips
        return make(self.train_size, self.seed), (make(self.val_size, self.seed + 7919) if self.val_size else None)
