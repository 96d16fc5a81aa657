"""Images from files listed in manifests or class folders, decoded with Pillow.

Pillow because it reads every common format (JPEG, PNG, WebP, ...), is a wheel on every
platform with no tie to the installed torch version (torchvision's decoders must match torch
exactly), and refuses truncated files instead of padding them with gray. Pillow-SIMD installs
under the same name for faster resizing. Training applies V-JEPA 2's video augmentation to the
image as a 1-frame clip (random resized crop, horizontal flip); evaluation a resize and center
crop. Bad files are skipped and counted in each item's ``bad_images``
(:class:`~stjepa.data.file_dataset.FileDataset`). Items hold ``image`` (3, S, S) float.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from .file_dataset import FileDataset
from .manifests import VideoSample
from .synthetic import MovingShapesDataset


class ImageError(Exception):
    """An image file that cannot be used; the message is one sentence naming it."""


def decode_image(path: str) -> torch.Tensor:
    """The RGB pixels of an image file as uint8 (H, W, 3); ImageError for a bad file."""
    try:
        with Image.open(path) as image:
            rgb = image.convert("RGB")  # decodes the whole file: a truncated one raises here
    except FileNotFoundError:
        raise ImageError(f"image {path!r} does not exist.") from None
    except IsADirectoryError:
        raise ImageError(f"image {path!r} is a directory, not a file.") from None
    except UnidentifiedImageError:
        raise ImageError(f"image {path!r} is not in an image format Pillow can read.") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ImageError(f"image {path!r} cannot be decoded: {str(exc).rstrip('.')}.") from None
    return torch.from_numpy(np.array(rgb, dtype=np.uint8))


class ImageDataset(FileDataset):
    noun, error, hint = "image", ImageError, "check the paths and data.image_root"

    def __init__(self, samples: Sequence[VideoSample], manifests: Sequence[str], transform: Callable,
                 seed: int = 0, max_retries: int = 50):
        super().__init__(samples, manifests, seed, max_retries)
        self.transform = transform  # a video transform: (1, H, W, 3) uint8 -> (3, 1, S, S) or (V, 3, 1, S, S)

    def load(self, sample: VideoSample, rng: np.random.Generator) -> torch.Tensor:
        out = self.transform(decode_image(sample.path).unsqueeze(0), rng)
        return (out[0] if out.dim() == 5 else out)[:, 0]


class SyntheticImages(Dataset):
    """Still frames of the synthetic moving shapes (no files), labelled by shape by default."""

    def __init__(self, num_samples: int, crop_size: int, seed: int = 0, label: str = "shape", **options):
        self.frames = MovingShapesDataset(num_samples, 1, crop_size, seed, label=label, **options)

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, i: int) -> dict:
        item = self.frames[i]
        return {"image": item["video"][:, 0], "label": item["label"], "index": item["index"]}
