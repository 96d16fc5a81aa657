"""Moving-shapes synthetic videos: determinism, layout, motion geometry, labels, validation."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from stjepa.data.synthetic import (
    DIRECTIONS,
    LABEL_TASKS,
    SHAPES,
    SPEEDS,
    MIN_CONTRAST,
    MONO_BACKGROUND,
    MONO_SHAPE,
    ClipParams,
    MovingShapesDataset,
    ShapeParams,
    label_of,
    num_classes,
    render_clip,
    sample_params,
)

WHITE_ON_BLACK = dict(color=(1.0, 1.0, 1.0), background=(0.0, 0.0, 0.0))


def make_params(shape: int = 0, direction: int = 0, speed: int = 0, start=(0.5, 0.5), radius: float = 0.1,
                boundary: str = "bounce", **colors) -> ClipParams:
    colors = colors or WHITE_ON_BLACK
    obj = ShapeParams(color=colors["color"], start=start, radius=radius)
    return ClipParams(shape=shape, direction=direction, speed=speed, background=colors["background"],
                      objects=(obj,), boundary=boundary)


def foreground(clip: torch.Tensor, background: tuple[float, float, float]) -> torch.Tensor:
    """Bool (T, H, W): pixels that differ clearly from the background colour."""
    bg = torch.tensor(background) * 255.0
    return (clip.float() - bg).abs().amax(dim=-1) > 40.0


def centroids(mask: torch.Tensor) -> torch.Tensor:
    """(T, 2) centre of mass (y, x) of each frame's mask, in pixel-centre coordinates."""
    t, h, w = mask.shape
    m = mask.float()
    count = m.sum(dim=(1, 2))
    ys = torch.arange(h, dtype=torch.float32) + 0.5
    xs = torch.arange(w, dtype=torch.float32) + 0.5
    cy = (m.sum(dim=2) * ys).sum(dim=1) / count
    cx = (m.sum(dim=1) * xs).sum(dim=1) / count
    return torch.stack([cy, cx], dim=1)


# ---------------------------------------------------------------- determinism


def test_same_seed_and_index_give_identical_items():
    a = MovingShapesDataset(num_samples=8, seed=3)
    b = MovingShapesDataset(num_samples=8, seed=3)
    torch.manual_seed(123)  # the global RNG must play no part
    first = a[5]
    torch.manual_seed(999)
    _ = b[2]  # a different access order must not matter either
    second = b[5]
    assert torch.equal(first["video"], second["video"])
    assert first["label"] == second["label"] and first["index"] == second["index"] == 5


def test_different_indices_and_seeds_differ():
    ds = MovingShapesDataset(num_samples=4, seed=0)
    other = MovingShapesDataset(num_samples=4, seed=1)
    assert not torch.equal(ds[0]["video"], ds[1]["video"])
    assert not torch.equal(ds[0]["video"], other[0]["video"])
    assert ds.params(0) != ds.params(1)


def test_sample_params_uses_only_the_generator():
    torch.manual_seed(0)
    a = sample_params(torch.Generator().manual_seed(42))
    torch.manual_seed(1)
    b = sample_params(torch.Generator().manual_seed(42))
    assert a == b
    assert torch.equal(render_clip(a, 4, 32), render_clip(b, 4, 32))


def test_sampled_params_are_in_range_and_cover_all_classes():
    gen = torch.Generator().manual_seed(0)
    params = [sample_params(gen) for _ in range(400)]
    for p in params:
        assert 0 <= p.shape < len(SHAPES) and 0 <= p.direction < DIRECTIONS and 0 <= p.speed < len(SPEEDS)
        (obj,) = p.objects
        assert all(0.0 <= v <= 1.0 for v in obj.color + p.background)
        assert all(0.2 <= v <= 0.8 for v in obj.start) and 0.0 < obj.radius < 0.5
        # The shape must be visible: every channel differs clearly from the background.
        assert min(abs(c - b) for c, b in zip(obj.color, p.background)) >= 0.25
    assert {p.direction for p in params} == set(range(DIRECTIONS))
    assert {p.shape for p in params} == set(range(len(SHAPES)))
    assert {p.speed for p in params} == set(range(len(SPEEDS)))


# ---------------------------------------------------------------- layout


def test_render_clip_shape_dtype_and_noise():
    p = make_params(color=(0.2, 0.6, 0.9), background=(0.5, 0.5, 0.5))
    clip = render_clip(p, frames=5, size=40)
    assert clip.shape == (5, 40, 40, 3) and clip.dtype == torch.uint8
    assert torch.equal(clip, render_clip(p, frames=5, size=40))
    # Background pixels: noisy (not flat) but only mildly so.
    corner = clip[:, :4, :4].float()
    assert corner.std() > 0.5
    assert (corner - 127.5).abs().max() <= 20
    flat = render_clip(p, frames=5, size=40, noise=0)
    assert set(map(tuple, flat.reshape(-1, 3).unique(dim=0).tolist())) == {(128, 128, 128), (51, 153, 230)}


def test_dataset_item_layout_and_normalisation():
    ds = MovingShapesDataset(num_samples=3, frames_per_clip=6, crop_size=32)
    assert len(ds) == 3
    item = ds[1]
    assert set(item) == {"video", "label", "index"}
    video = item["video"]
    assert video.shape == (3, 6, 32, 32) and video.dtype == torch.float32
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1, 1)
    pixels = video * std + mean
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5
    assert isinstance(item["label"], int) and 0 <= item["label"] < DIRECTIONS
    assert item["index"] == 1
    # Channel c of the video is channel c of the rendered RGB clip.
    raw = render_clip(ds.params(1), 6, 32)
    assert torch.allclose(pixels, raw.permute(3, 0, 1, 2).float() / 255, atol=1e-5)
    assert torch.equal(ds[-1]["video"], ds[2]["video"])
    with pytest.raises(IndexError):
        ds[3]


def test_transform_receives_the_uint8_clip():
    seen = []

    def transform(clip: torch.Tensor) -> torch.Tensor:
        seen.append((clip.shape, clip.dtype))
        return clip[:, ::2, ::2]

    ds = MovingShapesDataset(num_samples=2, frames_per_clip=4, crop_size=16, transform=transform)
    assert ds[0]["video"].shape == (4, 8, 8, 3)
    assert seen == [((4, 16, 16, 3), torch.uint8)]


# ---------------------------------------------------------------- motion


@pytest.mark.parametrize(
    "direction, sign_y, sign_x",
    [(0, 0, +1), (1, -1, +1), (2, -1, 0), (4, 0, -1), (6, +1, 0), (7, +1, +1)],
)
@pytest.mark.parametrize("speed", [0, 1])
def test_centroid_moves_in_the_requested_direction(direction, sign_y, sign_x, speed):
    size, frames = 64, 6
    p = make_params(direction=direction, speed=speed)
    clip = render_clip(p, frames, size, noise=0)
    c = centroids(foreground(clip, p.background))
    start = torch.tensor([0.5 * size, 0.5 * size])
    assert torch.allclose(c[0], start, atol=0.5)
    # Expected displacement per frame: SPEEDS px at 64 px; along each axis |cos| or |sin| of 45 deg steps.
    step = SPEEDS[speed] * (1.0 if direction % 2 == 0 else math.sqrt(0.5))
    expected = torch.arange(frames, dtype=torch.float32)[:, None] * step * torch.tensor([sign_y, sign_x])
    assert torch.allclose(c - c[0], expected, atol=0.6), (c - c[0]).tolist()


def test_fast_moves_farther_than_slow_and_speed_scales_with_size():
    frames = 5
    moved = {}
    for size in (64, 128):
        for speed in (0, 1):
            p = make_params(direction=0, speed=speed)
            c = centroids(foreground(render_clip(p, frames, size, noise=0), p.background))
            moved[size, speed] = (c[-1, 1] - c[0, 1]).item()
    assert moved[64, 1] > moved[64, 0] > 0
    assert moved[64, 1] == pytest.approx(moved[64, 0] * SPEEDS[1] / SPEEDS[0], rel=0.15)
    assert moved[128, 0] == pytest.approx(2 * moved[64, 0], rel=0.15)
    # frame_step 2 covers the same distance in half the frames.
    p = make_params(direction=0, speed=0)
    a = render_clip(p, 9, 64, noise=0)
    b = render_clip(p, 5, 64, frame_step=2.0, noise=0)
    assert torch.equal(a[::2], b)


def test_shape_bounces_off_the_border_and_stays_whole():
    size = 64
    p = make_params(direction=0, speed=1, start=(0.5, 0.75))  # heads right, close to the border
    mask = foreground(render_clip(p, 20, size, noise=0), p.background)
    cx = centroids(mask)[:, 1]
    turn = int(cx.argmax())
    assert 0 < turn < 19
    assert (cx[1:turn + 1] > cx[:turn]).all() and (cx[turn + 1:] < cx[turn:-1]).all()
    # Never clipped by the border: the pixel count stays that of the whole circle (pi r^2).
    area = math.pi * (0.1 * size) ** 2
    counts = mask.sum(dim=(1, 2)).float()
    assert ((counts - area).abs() < 0.1 * area).all()


def test_shape_wraps_around_the_border_and_keeps_its_direction():
    size, frames, radius = 64, 24, 0.1
    p = make_params(direction=0, speed=1, start=(0.5, 0.75), radius=radius, boundary="wrap")  # heads right
    mask = foreground(render_clip(p, frames, size, noise=0), p.background)
    # Hand reference: the centre at frame i is 48 + 2.5 i (mod 64) px; a pixel column is lit when its
    # centre lies within the circle's half-width at the middle row, measured around the torus.
    area = math.pi * (radius * size) ** 2
    for i in range(frames):
        cx = (0.75 * size + 2.5 * i) % size
        cols = torch.arange(size) + 0.5
        offset = torch.remainder(cols - cx + size / 2, size) - size / 2
        expected = offset.abs() <= radius * size - 0.5  # columns surely inside, away from the edge
        assert mask[i, size // 2][expected].all(), i
        assert not mask[i, size // 2][offset.abs() > radius * size + 0.5].any(), i
        # whole on the torus: the pixel count stays that of the circle, split or not
        assert abs(mask[i].sum().item() - area) < 0.1 * area, i
    assert mask[:, :, 0].any() and mask[:, :, -1].any()  # it did cross the right border


def test_several_shapes_share_the_clip_motion():
    size, frames = 64, 5
    colors = [(1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)]
    starts = [(0.25, 0.25), (0.25, 0.75), (0.7, 0.5)]
    objects = tuple(ShapeParams(c, s, 0.08) for c, s in zip(colors, starts))
    p = ClipParams(shape=1, direction=7, speed=0, background=(0.0, 0.0, 0.0), objects=objects)
    clip = render_clip(p, frames, size, noise=0)
    step = SPEEDS[0] * math.sqrt(0.5)  # direction 7: down-right, 45 degrees
    for color, start in zip(colors, starts):
        mask = (clip.float() - torch.tensor(color) * 255).abs().amax(dim=-1) < 40  # this shape's pixels
        c = centroids(mask)
        expected = torch.tensor(start) * size + torch.arange(frames, dtype=torch.float32)[:, None] * step
        assert torch.allclose(c, expected, atol=0.6), (color, c.tolist())


def test_sampled_shapes_are_visible_and_of_one_kind():
    gen = torch.Generator().manual_seed(0)
    for _ in range(200):
        p = sample_params(gen, num_shapes=4, boundary="wrap")
        assert len(p.objects) == 4 and p.boundary == "wrap"
        for obj in p.objects:
            assert min(abs(c - b) for c, b in zip(obj.color, p.background)) >= MIN_CONTRAST - 1e-9
            assert all(0.0 <= v <= 1.0 for v in obj.start)
    ds = MovingShapesDataset(num_samples=4, num_shapes=3)
    assert all(len(ds.params(i).objects) == 3 for i in range(4))
    item = ds[0]["video"]
    assert item.shape == (3, 16, 64, 64)


def test_mono_clips_keep_the_motion_and_use_two_fixed_colours():
    kwargs = dict(num_samples=6, frames_per_clip=6, crop_size=48, num_shapes=3, boundary="wrap")
    colour, mono = MovingShapesDataset(**kwargs), MovingShapesDataset(colors="mono", **kwargs)
    for i in range(len(mono)):
        p, q = colour.params(i), mono.params(i)
        assert (q.shape, q.direction, q.speed) == (p.shape, p.direction, p.speed)
        assert [(o.start, o.radius) for o in q.objects] == [(o.start, o.radius) for o in p.objects]
        assert q.background == MONO_BACKGROUND and all(o.color == MONO_SHAPE for o in q.objects)
        clip_p, clip_q = render_clip(p, 6, 48, noise=0), render_clip(q, 6, 48, noise=0)
        # hand check: every pixel is one of the two palette values, and the shapes cover the same pixels
        values = {round(255 * c) for c in MONO_BACKGROUND + MONO_SHAPE}
        assert set(clip_q.unique().tolist()) <= values
        assert torch.equal(foreground(clip_p, p.background), foreground(clip_q, q.background))


def test_noise_setting_bounds_the_difference_to_the_clean_clip():
    ds = MovingShapesDataset(num_samples=2, frames_per_clip=4, crop_size=32, noise=40, transform=lambda c: c)
    clean = render_clip(ds.params(1), 4, 32, noise=0).int()
    diff = (ds[1]["video"].int() - clean).abs()
    assert 30 <= int(diff.max()) <= 40  # uniform in [-40, 40] (clamped at 0 and 255)
    quiet = MovingShapesDataset(num_samples=2, frames_per_clip=4, crop_size=32, noise=0, transform=lambda c: c)
    assert torch.equal(quiet[1]["video"], render_clip(ds.params(1), 4, 32, noise=0))


def test_frame_hold_repeats_frames_of_the_clip_without_hold():
    kwargs = dict(num_samples=3, frames_per_clip=7, crop_size=32, num_shapes=2, boundary="wrap", transform=lambda c: c)
    held = MovingShapesDataset(frame_hold=2, **kwargs)
    for i in range(len(held)):
        plain = render_clip(held.params(i), 7, 32, 1.0)  # the same clip, every frame its own
        clip = held[i]["video"]
        for t in range(7):  # hand check: frame t shows frame t - t % 2, noise included
            assert torch.equal(clip[t], plain[t - t % 2])
        assert not torch.equal(clip[0], clip[2])  # the shapes still move between tubelets
    assert torch.equal(MovingShapesDataset(**kwargs)[1]["video"], render_clip(held.params(1), 7, 32))


def test_frame_hold_reaches_the_dataset_from_the_data_config():
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(Path(__file__).parents[1] / "conf" / "data" / "synthetic.yaml")
    cfg.seed, cfg.frame_hold, cfg.train_size, cfg.val_size = 0, 2, 2, 0
    dm = instantiate(cfg)
    dm.setup()
    video = dm.train_set[0]["video"]  # (C, T, H, W)
    assert all(torch.equal(video[:, t], video[:, t + 1]) for t in range(0, video.shape[1], 2))
    assert not torch.equal(video[:, 0], video[:, 2])


def test_shapes_have_their_geometry():
    size = 128
    fill = {}
    for shape in range(len(SHAPES)):
        p = make_params(shape=shape, radius=0.15)
        m = foreground(render_clip(p, 1, size, noise=0), p.background)[0]
        rows = m.any(dim=1).nonzero().squeeze(1)
        cols = m.any(dim=0).nonzero().squeeze(1)
        box = m[rows[0]: rows[-1] + 1, cols[0]: cols[-1] + 1]
        fill[SHAPES[shape]] = box.float().mean().item()
        widths = box.sum(dim=1)
        if SHAPES[shape] == "triangle":  # upright: apex at the top, base at the bottom
            assert widths[0] < 0.2 * widths[-1]
    # Fraction of the bounding box that is filled: square 1, circle pi/4, triangle 1/2.
    assert fill["square"] == pytest.approx(1.0, abs=0.02)
    assert fill["circle"] == pytest.approx(math.pi / 4, abs=0.03)
    assert fill["triangle"] == pytest.approx(0.5, abs=0.04)


# ---------------------------------------------------------------- labels


def test_label_of_and_num_classes():
    p = make_params(shape=2, direction=5, speed=1)
    assert label_of(p, "direction") == 5
    assert label_of(p, "shape") == 2
    assert label_of(p, "speed") == 1
    assert label_of(p, "shape_direction") == 2 * 8 + 5 == 21
    assert label_of(make_params(shape=0, direction=0, speed=0), "shape_direction") == 0
    assert {t: num_classes(t) for t in LABEL_TASKS} == {"direction": 8, "shape": 3, "speed": 2, "shape_direction": 24}
    with pytest.raises(ValueError, match="data.label"):
        label_of(p, "colour")
    with pytest.raises(ValueError, match="data.label"):
        num_classes("colour")


@pytest.mark.parametrize("task", LABEL_TASKS)
def test_dataset_labels_follow_the_task(task):
    ds = MovingShapesDataset(num_samples=64, frames_per_clip=2, crop_size=16, label=task)
    labels = [ds[i]["label"] for i in range(len(ds))]
    assert labels == [label_of(ds.params(i), task) for i in range(len(ds))]
    assert all(0 <= y < num_classes(task) for y in labels)
    assert len(set(labels)) >= min(num_classes(task), 8)


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "kwargs, key",
    [
        (dict(num_samples=0), "data.num_samples"),
        (dict(frames_per_clip=0), "data.frames_per_clip"),
        (dict(crop_size=7), "data.crop_size"),
        (dict(label="colour"), "data.label"),
        (dict(frame_step=0.0), "data.frame_step"),
        (dict(num_shapes=0), "data.num_shapes"),
        (dict(boundary="torus"), "data.boundary"),
        (dict(colors="rgb"), "data.colors"),
        (dict(noise=-1), "data.noise"),
        (dict(frame_hold=0), "data.frame_hold"),
    ],
)
def test_bad_arguments_raise_value_error_naming_the_key(kwargs, key):
    with pytest.raises(ValueError, match=key) as info:
        MovingShapesDataset(**kwargs)
    assert "allowed values are" in str(info.value)


def test_unknown_label_message_lists_the_allowed_values():
    with pytest.raises(ValueError) as info:
        MovingShapesDataset(label="colour")
    assert str(info.value) == (
        "data.label='colour' is not known; allowed values are direction, shape, speed, shape_direction."
    )
