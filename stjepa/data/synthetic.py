"""Seeded "moving shapes" videos, generated on the fly.

One clip shows ``num_shapes`` flat-coloured copies of one shape (circle, square or upright
triangle) on a flat background, all moving in a straight line with the same velocity. The
motion direction is one of ``DIRECTIONS`` angles, so a ``direction`` label can only be read from
how the frames change over time. The task is meant to tell a pretrained video encoder from a
random one (BENCHMARKS.md, "Frozen probe", has where that stands). At the borders a shape
either bounces (``boundary="bounce"``: it stays whole, and its direction flips) or wraps
around (``boundary="wrap"``: it leaves on one side and comes back on the other, so every shape
keeps the clip's direction for the whole clip). Colours are drawn per clip
(``colors="random"``) or fixed (``colors="mono"``: light shapes on a mid-gray background, so
that nothing about a clip but its shapes and their motion varies).
``frame_hold=2`` shows each rendered frame twice: with V-JEPA 2's 2-frame tubelets every
tubelet is then a still image, and the direction can only be read across tubelets (a random
encoder's patch embedding reads it from inside one tubelet otherwise).

Conventions (image coordinates): ``x`` is the column index, growing to the right; ``y`` is
the row index, growing downwards. Direction ``k`` has angle ``k * 45`` degrees measured
counter-clockwise *as seen on screen* from the +x axis, so 0 = right, 2 = up (y decreases),
4 = left, 6 = down (y increases), and the odd ones are the diagonals in between. The unit
motion vector is ``(dy, dx) = (-sin(angle), cos(angle))``.

The renderer (:func:`sample_params`, :func:`render_clip`) does not depend on the Dataset,
so the same clips can be written to video files.
"""
from __future__ import annotations

import hashlib
import math
import operator
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..checks import check_choice, check_ints
from ..errors import ConfigError
from .transforms import IMAGENET_MEAN, IMAGENET_STD

SHAPES = ("circle", "square", "triangle")
DIRECTIONS = 8  # angle k * 45 degrees, k in 0..7
SPEEDS = (1.0, 2.5)  # pixels per frame at 64 px (slow, fast); scaled by size / 64
LABEL_TASKS = ("direction", "shape", "speed", "shape_direction")
BOUNDARIES = ("bounce", "wrap")
COLOR_MODES = ("random", "mono")
MONO_BACKGROUND = (0.5, 0.5, 0.5)
MONO_SHAPE = (0.95, 0.95, 0.95)


NOISE = 6  # default per-pixel noise: uniform integer in [-NOISE, NOISE] on the 0..255 scale
RADIUS_RANGE = (0.09, 0.15)  # shape size as a fraction of the frame side
START_RANGE = (0.2, 0.8)  # start centre of the first shape as a fraction of the frame, per axis (others: anywhere)
MIN_CONTRAST = 0.3  # every colour channel differs from the background by at least this much

# Half-side of the square and circumradius of the triangle relative to ``radius``, chosen so
# all three shapes have the area of the circle (pi r^2): the pixel count says nothing of the shape.
_SQUARE_HALF = math.sqrt(math.pi) / 2.0
_TRIANGLE_R = math.sqrt(4.0 * math.pi / (3.0 * math.sqrt(3.0)))
# How far each shape reaches from its centre along y and x (the bounce keeps it inside the frame).
_EXTENT = {"circle": 1.0, "square": _SQUARE_HALF, "triangle": _TRIANGLE_R}


@dataclass(frozen=True)
class ShapeParams:
    """One moving shape of a clip."""

    color: tuple[float, float, float]  # RGB in [0, 1]
    start: tuple[float, float]  # (y, x) centre at frame 0 as a fraction of the frame
    radius: float  # size as a fraction of the frame side


@dataclass(frozen=True)
class ClipParams:
    shape: int  # index into SHAPES (every shape of the clip has this kind)
    direction: int  # 0..DIRECTIONS-1, see the module docstring for the convention
    speed: int  # index into SPEEDS
    background: tuple[float, float, float]  # RGB in [0, 1]
    objects: tuple[ShapeParams, ...]  # drawn in order, later ones on top
    boundary: str = "bounce"  # one of BOUNDARIES


def _stable_seed(*values: object) -> int:
    """A 63-bit seed from the repr of ``values``; unlike ``hash`` it is the same in every process."""
    digest = hashlib.blake2b(repr(values).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def direction_vector(direction: int) -> tuple[float, float]:
    """Unit motion vector ``(dy, dx)`` in image coordinates for a direction index."""
    angle = 2.0 * math.pi * direction / DIRECTIONS
    return -math.sin(angle), math.cos(angle)


def _contrasting(reference: tuple[float, ...], offsets: list[float]) -> tuple[float, float, float]:
    """A colour whose every channel is 0.3..0.7 (mod 1) away from ``reference``: >= MIN_CONTRAST apart."""
    return tuple((c + MIN_CONTRAST + o * (1.0 - 2.0 * MIN_CONTRAST)) % 1.0 for c, o in zip(reference, offsets))


def sample_params(generator: torch.Generator, num_shapes: int = 1, boundary: str = "bounce",
                  colors: str = "random") -> ClipParams:
    """Draw the parameters of one clip; all randomness comes from ``generator``.

    The first shape starts inside ``START_RANGE``; further shapes start anywhere in the frame
    and get their own colour, also at least ``MIN_CONTRAST`` away from the background. With
    ``colors="mono"`` the same numbers are drawn (so shapes, positions and motion are those of
    the ``random`` clip) and the colours are then replaced by the fixed mono palette.
    """
    check_choice(boundary, "data.boundary", BOUNDARIES)
    check_choice(colors, "data.colors", COLOR_MODES)
    ints = torch.randint(0, 2**31 - 1, (3,), generator=generator).tolist()
    u = torch.rand(10, generator=generator, dtype=torch.float64).tolist()
    color = tuple(u[0:3])
    background = _contrasting(color, u[3:6])
    lo, hi = START_RANGE
    r_lo, r_hi = RADIUS_RANGE
    objects = [ShapeParams(color, (lo + (hi - lo) * u[6], lo + (hi - lo) * u[7]), r_lo + (r_hi - r_lo) * u[8])]
    for _ in range(num_shapes - 1):
        v = torch.rand(6, generator=generator, dtype=torch.float64).tolist()
        objects.append(ShapeParams(_contrasting(background, v[0:3]), (v[3], v[4]), r_lo + (r_hi - r_lo) * v[5]))
    if colors == "mono":
        background = MONO_BACKGROUND
        objects = [ShapeParams(MONO_SHAPE, o.start, o.radius) for o in objects]
    return ClipParams(
        shape=ints[0] % len(SHAPES),
        direction=ints[1] % DIRECTIONS,
        speed=ints[2] % len(SPEEDS),
        background=background,  # type: ignore[arg-type]
        objects=tuple(objects),
        boundary=boundary,
    )


def _reflect(p: Tensor, lo: float, hi: float) -> Tensor:
    """Fold positions into [lo, hi] as a ball bouncing between two walls (triangle wave)."""
    length = hi - lo
    if length <= 0:  # shape as big as the frame: it cannot move
        return torch.full_like(p, (lo + hi) / 2.0)
    u = torch.remainder(p - lo, 2.0 * length)
    return lo + length - (u - length).abs()


def _shape_mask(name: str, ry: Tensor, rx: Tensor, r: float) -> Tensor:
    """Pixels inside a shape of size ``r`` (pixels), given offsets ``ry``, ``rx`` from its centre."""
    if name == "circle":
        return ry.square() + rx.square() <= r * r
    if name == "square":
        half = r * _SQUARE_HALF
        return (ry.abs() <= half) & (rx.abs() <= half)
    # upright equilateral triangle: inside all three edges (inradius = circumradius / 2)
    big_r = r * _TRIANGLE_R
    s = math.sqrt(3.0) / 2.0
    inner = big_r / 2.0
    # Outward edge normals (dy, dx): bottom (0, +1 down), upper right and upper left.
    return (ry <= inner) & (-0.5 * ry + s * rx <= inner) & (-0.5 * ry - s * rx <= inner)


def render_clip(
    params: ClipParams, frames: int, size: int, frame_step: float = 1.0, *, noise: int = NOISE, hold: int = 1
) -> Tensor:
    """Render one clip as a uint8 tensor ``(T, H, W, 3)`` with ``T = frames`` and ``H = W = size``.

    Each shape's centre at frame ``i`` is ``start + i * frame_step * speed * unit_vector`` (in
    pixels, with ``speed = SPEEDS[params.speed] * size / 64`` and the unit vector of the module
    docstring), reflected at the borders so the whole shape stays in view (``bounce``) or taken
    modulo the frame size (``wrap``: a shape crossing a border shows on both sides). ``noise``
    adds uniform integer noise in ``[-noise, noise]`` per pixel and channel, seeded from
    ``params`` (so the same params always give the same clip); ``noise=0`` gives flat colours.
    ``hold`` repeats every ``hold``-th frame of that clip ``hold`` times (frame ``i`` becomes
    frame ``i - i % hold``, noise included), like a low-frame-rate video played at a higher rate.
    """
    if frames < 1 or size < 1 or hold < 1:
        raise ValueError(f"render_clip needs frames, size and hold >= 1, got frames={frames}, size={size}, "
                         f"hold={hold}.")
    name = SHAPES[params.shape]
    speed = SPEEDS[params.speed] * size / 64.0
    dy, dx = direction_vector(params.direction)
    # Continuous pixel coordinates: pixel j covers [j, j + 1], so its centre is j + 0.5.
    t = torch.arange(frames, dtype=torch.float32) * (frame_step * speed)
    grid = torch.arange(size, dtype=torch.float32) + 0.5

    clip = torch.tensor(params.background).mul(255.0).round().to(torch.int16).expand(frames, size, size, 3)
    for obj in params.objects:
        r = obj.radius * size
        cy = obj.start[0] * size + t * dy
        cx = obj.start[1] * size + t * dx
        if params.boundary == "bounce":
            margin = r * _EXTENT[name]
            cy, cx = _reflect(cy, margin, size - margin), _reflect(cx, margin, size - margin)
        ry = grid.view(1, -1, 1) - cy.view(-1, 1, 1)  # (T, H, 1)
        rx = grid.view(1, 1, -1) - cx.view(-1, 1, 1)  # (T, 1, W)
        if params.boundary == "wrap":  # shortest offset on the torus
            ry = torch.remainder(ry + size / 2.0, size) - size / 2.0
            rx = torch.remainder(rx + size / 2.0, size) - size / 2.0
        color = torch.tensor(obj.color).mul(255.0).round().to(torch.int16)
        clip = torch.where(_shape_mask(name, ry, rx, r).unsqueeze(-1), color, clip)  # (T, H, W, 3) int16
    if noise > 0:
        gen = torch.Generator().manual_seed(_stable_seed(params, frames, size, frame_step))
        clip = clip + torch.randint(-noise, noise + 1, clip.shape, generator=gen, dtype=torch.int16)
    if hold > 1:
        clip = clip[torch.arange(frames) // hold * hold]
    return clip.clamp(0, 255).to(torch.uint8)


def label_of(params: ClipParams, task: str) -> int:
    """Class index of a clip for a label task (``shape_direction = shape * DIRECTIONS + direction``)."""
    if task == "direction":
        return params.direction
    if task == "shape":
        return params.shape
    if task == "speed":
        return params.speed
    if task == "shape_direction":
        return params.shape * DIRECTIONS + params.direction
    raise ValueError(_unknown_task(task))


def num_classes(task: str) -> int:
    """Number of classes of a label task."""
    counts = {"direction": DIRECTIONS, "shape": len(SHAPES), "speed": len(SPEEDS),
              "shape_direction": len(SHAPES) * DIRECTIONS}
    if task not in counts:
        raise ValueError(_unknown_task(task))
    return counts[task]


def _unknown_task(task: object) -> str:
    return f"data.label={task!r} is not known; allowed values are {', '.join(LABEL_TASKS)}."


class MovingShapesDataset(Dataset):
    """``num_samples`` clips; item ``i`` depends only on ``(seed, i)``, not on workers or order.

    Items are dicts ``{"video", "label", "index"}``. ``video`` is float32 ``(3, T, H, W)``
    normalised with the ImageNet mean/std, or, when ``transform`` is given, whatever it returns
    for the uint8 ``(T, H, W, 3)`` clip.
    """

    def __init__(
        self,
        num_samples: int = 512,
        frames_per_clip: int = 16,
        crop_size: int = 64,
        seed: int = 0,
        label: str = "direction",
        frame_step: float = 1.0,
        transform: Callable[[Tensor], Tensor] | None = None,
        num_shapes: int = 1,
        boundary: str = "bounce",
        colors: str = "random",
        noise: int = NOISE,
        frame_hold: int = 1,
    ) -> None:
        check_ints("data", num_samples=(num_samples, 1), frames_per_clip=(frames_per_clip, 1),
                   crop_size=(crop_size, 8), num_shapes=(num_shapes, 1), noise=(noise, 0), frame_hold=(frame_hold, 1))
        if label not in LABEL_TASKS:
            raise ConfigError(_unknown_task(label))
        if not (isinstance(frame_step, (int, float)) and frame_step > 0):
            raise ConfigError(f"data.frame_step={frame_step!r} is not allowed; allowed values are numbers > 0.")
        check_choice(boundary, "data.boundary", BOUNDARIES)
        check_choice(colors, "data.colors", COLOR_MODES)
        self.num_samples = num_samples
        self.frames_per_clip = frames_per_clip
        self.crop_size = crop_size
        self.seed = int(seed)
        self.label = label
        self.frame_step = float(frame_step)
        self.transform = transform
        self.num_shapes = num_shapes
        self.boundary = boundary
        self.colors = colors
        self.noise = noise
        self.frame_hold = frame_hold
        self._mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(3, 1, 1, 1)
        self._std = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(3, 1, 1, 1)

    def __len__(self) -> int:
        return self.num_samples

    def _index(self, i: int) -> int:
        i = operator.index(i)
        if i < 0:
            i += self.num_samples
        if not 0 <= i < self.num_samples:
            raise IndexError(f"index {i} is out of range for {self.num_samples} samples.")
        return i

    def params(self, i: int) -> ClipParams:
        """The parameters of item ``i`` (for labels, inspection, or writing the clip to a file)."""
        i = self._index(i)
        gen = torch.Generator().manual_seed(_stable_seed("moving_shapes", self.seed, i))
        return sample_params(gen, self.num_shapes, self.boundary, self.colors)

    def __getitem__(self, i: int) -> dict:
        i = self._index(i)
        params = self.params(i)
        clip = render_clip(params, self.frames_per_clip, self.crop_size, self.frame_step, noise=self.noise,
                           hold=self.frame_hold)
        if self.transform is not None:
            video = self.transform(clip)
        else:
            video = clip.permute(3, 0, 1, 2).float().div_(255.0)
            video = video.sub_(self._mean).div_(self._std)
        return {"video": video, "label": label_of(params, self.label), "index": i}
