"""LightningDataModules. Every data source shares the keys users set most:
``data.batch_size`` (per device), ``data.num_workers``, ``data.frames_per_clip``,
``data.crop_size``; pretraining adds V-JEPA masks to each batch via :meth:`configure_masking`.
Video sources give clips, :class:`ImageDataModule` images (1-frame clips in the batch);
:mod:`stjepa.data.mixture` combines sources.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from ..checks import check_ints
from ..errors import ConfigError
from .collate import Collate, MaskingCollate
from .file_dataset import FileDataset
from .image_dataset import ImageDataset, SyntheticImages
from .manifests import RENAMED_KEYS, check_lists_exist, load_manifests, save_label_map
from .masks import STATIC_SLOTS, Grid
from .sampler import StreamSampler
from .synthetic import NOISE, MovingShapesDataset, num_classes
from .transforms import EvalTransform, TrainTransform
from .video_dataset import VideoClipDataset


class ResumableDataLoader(DataLoader):
    """A DataLoader whose position is restored through its StreamSampler (which reads the
    trainer's progress), so Lightning may treat it as stateful: nothing else to save."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class VideoDataModule(L.LightningDataModule):
    modality = "video"  # what one item is: "video" (a clip) or "image"

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
        check_ints("data", batch_size=(batch_size, 1), frames_per_clip=(frames_per_clip, 1), crop_size=(crop_size, 1),
                        num_workers=(num_workers, 0))
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.frames_per_clip = frames_per_clip
        self.crop_size = crop_size
        self.seed = seed
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.masking: MaskingCollate | None = None
        self.name: str | None = None  # the source's name in a mixture (tags its batches)
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None

    # -- to be provided by each source ---------------------------------------------------------
    def build_datasets(self) -> tuple[Dataset, Dataset | None]:
        raise NotImplementedError

    @property
    def num_classes(self) -> int:
        raise NotImplementedError

    def sample_weights(self) -> torch.Tensor | None:
        """Per training sample drawing weights, or None for uniform passes."""
        return None

    # -- shared ------------------------------------------------------------------------------
    @property
    def input_shape(self) -> tuple[int, int, int, int, int]:
        """(1, 3, T, S, S) of one batch item as the model receives it (images: T = 1)."""
        frames = 1 if self.modality == "image" else self.frames_per_clip
        return 1, 3, frames, self.crop_size, self.crop_size

    def configure_masking(self, grid_of: Callable[[tuple[int, ...]], Grid],
                          mask_sets: Mapping[str, Sequence[Mapping[str, Any]]], seed: int | None = None,
                          pad: bool = False, slots: str | float = STATIC_SLOTS) -> None:
        """Draw V-JEPA masks in the collate function: ``grid_of`` gives the model's token grid of
        an input shape, ``mask_sets`` the mask sets of each modality; ``pad``: static shapes, with
        ``slots`` the static_slots rule."""
        self.masking = MaskingCollate(grid_of(self.input_shape), mask_sets[self.modality],
                                      seed=self.seed if seed is None else seed, source=self.name, pad=pad, slots=slots)

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

    def _loader_collate(self) -> Collate:
        return self.masking or Collate(self.name)

    def _loader(self, dataset: Dataset, sampler, drop_last: bool) -> DataLoader:
        cls = ResumableDataLoader if isinstance(sampler, StreamSampler) else DataLoader
        return cls(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=self._loader_collate(),
            pin_memory=self.pin_memory,
            drop_last=drop_last,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        self.setup("fit")
        rank, world = self._world()
        per_rank = len(self.train_set) // world
        if per_rank < self.batch_size:
            items = "images" if self.modality == "image" else "clips"
            raise ConfigError(
                f"data.batch_size={self.batch_size} is larger than the {per_rank} training {items} each of the "
                f"{world} devices gets; lower data.batch_size or add data."
            )
        batches = per_rank // self.batch_size
        sampler = StreamSampler(len(self.train_set), batches * self.batch_size, self.seed, True, rank, world,
                                position_fn=self._consumed_samples, weights=self.sample_weights(),
                                yield_pass=isinstance(self.train_set, FileDataset))
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
                 frame_step: float = 1.0, num_shapes: int = 1, boundary: str = "bounce", colors: str = "random",
                 noise: int = NOISE, frame_hold: int = 1, **common: Any):
        super().__init__(**common)
        check_ints("data", train_size=(train_size, 1), val_size=(val_size, 0))
        self.train_size, self.val_size = train_size, val_size
        self.options = dict(label=label, frame_step=frame_step, num_shapes=num_shapes, boundary=boundary,
                            colors=colors, noise=noise, frame_hold=frame_hold)
        MovingShapesDataset(1, self.frames_per_clip, self.crop_size, **self.options)  # checks the options now

    @property
    def num_classes(self) -> int:
        return num_classes(self.options["label"])

    def build_datasets(self) -> tuple[Dataset, Dataset | None]:
        def make(n: int, seed: int) -> MovingShapesDataset:
            return MovingShapesDataset(n, self.frames_per_clip, self.crop_size, seed, **self.options)

        # distinct seeds: validation clips are never training clips
        return make(self.train_size, self.seed), (make(self.val_size, self.seed + 7919) if self.val_size else None)


def _as_list(value: str | Sequence[str] | None) -> list[str]:
    if value is None:
        return []
    return [str(value)] if isinstance(value, (str, Path)) else [str(v) for v in value]


class ManifestDataModule(VideoDataModule):
    """Video files listed in manifests (V-JEPA lists, Kinetics CSVs or class folders), decoded
    with decord (or PyAV / torchcodec), V-JEPA 2 clip sampling and augmentation (``data=kinetics``
    and every data config built on it)."""

    def __init__(
        self,
        train_manifest: str | Sequence[str],
        val_manifest: str | Sequence[str] | None = None,
        weights: Sequence[float] | None = None,
        video_root: str | None = None,
        decoder: str = "decord",
        fps: float | None = 4.0,
        frame_step: int = 4,
        num_clips: int = 1,
        eval_segments: int = 1,
        eval_views: int = 1,
        random_resize_scale: Sequence[float] = (0.3, 1.0),
        random_resize_aspect_ratio: Sequence[float] = (0.75, 1.35),
        horizontal_flip: bool = True,
        short_video: str = "pad",
        train_split: str | None = None,
        val_split: str | None = None,
        output_dir: str | None = None,
        **common: Any,
    ):
        super().__init__(**common)
        self.train_manifests = _as_list(train_manifest)
        self.val_manifests = _as_list(val_manifest)
        if not self.train_manifests:
            raise ConfigError("data.train_manifest must name at least one manifest (a path or a list of paths).")
        if isinstance(weights, Mapping):
            raise ConfigError(f"data.weights={dict(weights)} is a mapping, but this data source takes one weight per "
                              f"train manifest in their order, as a list (for example data.weights=[0.7,0.3]).")
        if weights is not None and len(weights) != len(self.train_manifests):
            raise ConfigError(f"data.weights has {len(weights)} values for {len(self.train_manifests)} train "
                             f"manifests; give one weight per manifest or null.")
        if weights is not None and (any(w < 0 for w in weights) or sum(weights) <= 0):
            raise ConfigError(f"data.weights={list(weights)} must be non-negative with a positive sum.")
        check_lists_exist("data.train_manifest", self.train_manifests, "video")
        check_lists_exist("data.val_manifest", self.val_manifests, "video")
        self.weights = None if weights is None else [float(w) for w in weights]
        self.video_root, self.decoder, self.output_dir = video_root, decoder, output_dir
        self.splits = [train_split] * len(self.train_manifests) + [val_split] * len(self.val_manifests)
        self.fps, self.frame_step, self.num_clips = fps, frame_step, num_clips
        self.eval_segments, self.eval_views = eval_segments, eval_views
        self.train_transform = TrainTransform(self.crop_size, tuple(random_resize_scale),
                                              tuple(random_resize_aspect_ratio), horizontal_flip)
        self.eval_transform = EvalTransform(self.crop_size, eval_views)
        self.short_video = short_video
        self.label_map: dict[str, int] = {}

    @property
    def num_classes(self) -> int:
        self.setup("fit")
        return max(self.label_map.values()) + 1

    def _dataset(self, samples, manifests, train: bool) -> VideoClipDataset:
        return VideoClipDataset(
            samples, manifests, self.train_transform if train else self.eval_transform, self.frames_per_clip,
            self.frame_step, self.fps, self.num_clips if train else self.eval_segments, random_start=train,
            decoder=self.decoder, short_video=self.short_video, seed=self.seed,
        )

    def build_datasets(self):
        # one label map over train and val manifests, ids in alphabetical order of the names
        samples, self.label_map = load_manifests(self.train_manifests + self.val_manifests, self.video_root,
                                                 split=self.splits)
        n = len(self.train_manifests)
        train = self._dataset([s for s in samples if s.source < n], self.train_manifests, train=True)
        val_samples = [s for s in samples if s.source >= n]
        val = self._dataset(val_samples, self.val_manifests, train=False) if self.val_manifests else None
        if self.output_dir:
            save_label_map(self.label_map, Path(self.output_dir) / "label_map.json")
        return train, val

    def sample_weights(self) -> torch.Tensor | None:
        if self.weights is None:
            return None
        sources = torch.tensor([s.source for s in self.train_set.samples])
        counts = torch.bincount(sources, minlength=len(self.train_manifests)).double()
        weights = torch.tensor(self.weights, dtype=torch.float64) / counts.clamp(min=1)
        return weights[sources]


KineticsDataModule = ManifestDataModule  # its earlier name, in configs and checkpoints written before


def list_key(name: str, value: Any, earlier_value: Any) -> tuple[str, Any]:
    """The config key a list was given under (``data.<name>`` or its earlier name, which is
    still read) and its value; both given is refused."""
    earlier = next(old for old, new in RENAMED_KEYS.items() if new == name)
    if value is not None and earlier_value is not None:
        raise ConfigError(f"data.{earlier} is the earlier name of data.{name}; give one of them.")
    return (f"data.{earlier}", earlier_value) if earlier_value is not None else (f"data.{name}", value)


class ImageDataModule(VideoDataModule):
    """Images from an ImageNet-style folder (``root/<class>/*.jpg``) or a ``<path> <label>``
    list (``data.train_manifest`` / ``data.val_manifest``, as for videos; their earlier names
    ``data.train_root`` / ``data.val_root`` are still read), decoded with Pillow, with V-JEPA 2's
    random resized crop and flip; bad images are skipped and counted. Without a train list,
    still frames of the synthetic shapes (no files), labelled by shape. ``frames_per_clip`` is
    the clip length the model is built for; the images themselves are single frames."""

    modality = "image"

    def __init__(
        self,
        train_manifest: str | None = None,
        val_manifest: str | None = None,
        image_root: str | None = None,
        random_resize_scale: Sequence[float] = (0.3, 1.0),
        random_resize_aspect_ratio: Sequence[float] = (0.75, 1.35),
        horizontal_flip: bool = True,
        train_size: int = 2048,
        val_size: int = 128,
        label: str = "shape",
        num_shapes: int = 1,
        colors: str = "random",
        noise: int = NOISE,
        output_dir: str | None = None,
        train_root: str | None = None,
        val_root: str | None = None,
        **common: Any,
    ):
        super().__init__(**common)
        train_key, train_manifest = list_key("train_manifest", train_manifest, train_root)
        val_key, val_manifest = list_key("val_manifest", val_manifest, val_root)
        if train_manifest is None and val_manifest is not None:  # the train key named as the val key was
            raise ConfigError(f"{val_key} is set but {val_key.replace('val_', 'train_')} is not; give both (folders "
                              f"or lists of images) or neither (synthetic images).")
        check_ints("data", train_size=(train_size, 1), val_size=(val_size, 0))
        check_lists_exist(train_key, _as_list(train_manifest), "image")
        check_lists_exist(val_key, _as_list(val_manifest), "image")
        self.train_manifest, self.val_manifest = train_manifest, val_manifest
        self.image_root, self.output_dir = image_root, output_dir
        self.train_size, self.val_size = train_size, val_size
        self.synthetic = dict(label=label, num_shapes=num_shapes, colors=colors, noise=noise)
        if train_manifest is None:
            SyntheticImages(1, self.crop_size, **self.synthetic)  # checks the options now
        self.train_transform = TrainTransform(self.crop_size, tuple(random_resize_scale),
                                              tuple(random_resize_aspect_ratio), horizontal_flip)
        self.eval_transform = EvalTransform(self.crop_size, 1)
        self.label_map: dict[str, int] = {}

    @property
    def num_classes(self) -> int:
        if self.train_manifest is None:
            return num_classes(self.synthetic["label"])
        self.setup("fit")
        return max(self.label_map.values()) + 1

    def build_datasets(self) -> tuple[Dataset, Dataset | None]:
        if self.train_manifest is None:
            val = SyntheticImages(self.val_size, self.crop_size, self.seed + 7919, **self.synthetic)
            return (SyntheticImages(self.train_size, self.crop_size, self.seed, **self.synthetic),
                    val if self.val_size else None)
        lists = [str(self.train_manifest)] + ([str(self.val_manifest)] if self.val_manifest else [])
        samples, self.label_map = load_manifests(lists, self.image_root, media="image")
        train = ImageDataset([s for s in samples if s.source == 0], lists[:1], self.train_transform, self.seed)
        val = None
        if self.val_manifest:
            val = ImageDataset([s for s in samples if s.source == 1], lists[1:], self.eval_transform, self.seed)
        if self.output_dir:
            save_label_map(self.label_map, Path(self.output_dir) / "label_map.json")
        return train, val
