"""Real-file data path: clip sampling, transforms, bad videos, weighted mixing, train.py data=kinetics."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from stjepa.data.clips import clip_indices, frame_step_for
from stjepa.data.datamodule import ManifestDataModule
from stjepa.data.manifests import ManifestError, VideoSample
from stjepa.data.sampler import StreamSampler
from stjepa.data.transforms import EvalTransform, TrainTransform, random_resized_crop_box
from stjepa.data.video_dataset import VideoClipDataset
from stjepa.errors import NoUsableVideoError
from train_helpers import FAST, run_script

import make_synthetic_dataset  # scripts/ is on the path via conftest


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("videos")
    make_synthetic_dataset.make_dataset(out, num_videos=12, frames=40, sizes=(64, 96), fps=(8, 12),
                                        formats=("mp4", "webm"), bad=True)
    return out


# -- clip sampling, against hand counts ----------------------------------------------------------
def test_frame_step_from_target_fps():
    assert frame_step_for(30.0, 4, frame_step=2) == 8  # ceil(30 / 4)
    assert frame_step_for(25.0, 4, frame_step=2) == 7
    assert frame_step_for(30.0, None, frame_step=3) == 3


def test_clip_indices_long_video_hand_count():
    # 100 frames, 4 frames every 5 -> span 20; evaluation starts at 0: linspace(0, 20, 4) clipped to 19
    (idx,) = clip_indices(100, 4, 5, num_clips=1, random_start=False)
    assert idx.tolist() == [0, 6, 13, 19]
    # two segments of 50 frames: the second clip starts at frame 50
    a, b = clip_indices(100, 4, 5, num_clips=2, random_start=False)
    assert a.tolist() == [0, 6, 13, 19] and b.tolist() == [50, 56, 63, 69]


def test_clip_indices_random_start_stays_inside_and_varies():
    starts = set()
    for seed in range(20):
        (idx,) = clip_indices(100, 4, 5, random_start=True, rng=np.random.default_rng(seed))
        assert 0 <= idx.min() and idx.max() < 100 and (np.diff(idx) > 0).all()
        starts.add(int(idx[0]))
    assert len(starts) > 5


def test_short_video_is_padded_with_its_last_frame():
    # 10 frames, 8 frames every 2 (span 16): linspace(0, 10, 5) -> 0,2,5,7,10->9, then 9 repeated
    (idx,) = clip_indices(10, 8, 2, random_start=False)
    assert idx.tolist() == [0, 2, 5, 7, 9, 9, 9, 9]


# -- transforms ----------------------------------------------------------------------------------
def test_random_resized_crop_box_respects_scale_and_ratio():
    rng = np.random.default_rng(0)
    for _ in range(200):
        top, left, h, w = random_resized_crop_box(120, 160, (0.3, 1.0), (0.75, 1.35), rng)
        assert 0 <= top and top + h <= 120 and 0 <= left and left + w <= 160
        assert 0.3 * 120 * 160 * 0.9 <= h * w <= 120 * 160
        assert 0.7 <= w / h <= 1.45


def test_train_and_eval_transform_shapes_and_normalization():
    clip = torch.empty((4, 90, 120, 3), dtype=torch.uint8)
    clip[..., 0], clip[..., 1], clip[..., 2] = 124, 116, 104  # the ImageNet mean colour, 0..255
    out = TrainTransform(64)(clip, np.random.default_rng(0))
    assert out.shape == (3, 4, 64, 64) and out.abs().max() < 0.01  # normalizes to ~0
    views = EvalTransform(64, views=3)(clip)
    assert views.shape == (3, 3, 4, 64, 64)


def test_train_transform_matches_a_float_resize_within_rounding():
    """The uint8 resize against torch's float path of the same crop (antialiased bilinear, then
    normalize by hand): they differ only by rounding to whole levels (max 1, mean ~0.3)."""
    clip = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (4, 90, 120, 3), dtype=np.uint8))
    out = TrainTransform(64, horizontal_flip=False)(clip, np.random.default_rng(1))
    top, left, h, w = random_resized_crop_box(90, 120, (0.3, 1.0), (0.75, 1.35), np.random.default_rng(1))
    crop = clip[:, top : top + h, left : left + w].permute(0, 3, 1, 2).double()
    ref = torch.nn.functional.interpolate(crop, size=(64, 64), mode="bilinear", antialias=True)
    mean = torch.tensor([0.485, 0.456, 0.406], dtype=torch.double).view(1, 3, 1, 1) * 255
    std = torch.tensor([0.229, 0.224, 0.225], dtype=torch.double).view(1, 3, 1, 1) * 255
    levels = (out.permute(1, 0, 2, 3).double() * std + mean - ref).abs()
    assert levels.max() <= 1.0 + 1e-3 and 0.05 < levels.mean() < 0.5


def test_three_crop_evaluation_views_cover_left_center_right():
    clip = torch.zeros((1, 64, 128, 3), dtype=torch.uint8)
    clip[..., :20, 0] = 255  # red band on the left edge
    clip[..., -20:, 2] = 255  # blue band on the right edge
    views = EvalTransform(64, views=3, resize_ratio=1.0)(clip)  # short side 64: views are 0, 32, 64 px in
    red, blue = views[:, 0].mean(dim=(1, 2, 3)), views[:, 2].mean(dim=(1, 2, 3))
    assert red[0] > red[1] and red[0] > red[2]
    assert blue[2] > blue[1] and blue[2] > blue[0]


# -- datasets on real files ------------------------------------------------------------------------
def read_vjepa(path):
    root = Path(path).parent
    return [VideoSample(str(root / line.rsplit(" ", 1)[0]), int(line.rsplit(" ", 1)[1]))
            for line in Path(path).read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("decoder", ["decord", "pyav"])
def test_clips_from_files_have_the_right_shape_and_label(dataset_dir, decoder):
    samples = read_vjepa(dataset_dir / "train.txt")
    ds = VideoClipDataset(samples, ["train.txt"], TrainTransform(64), frames_per_clip=8, fps=4.0, decoder=decoder)
    for i in range(3):
        item = ds[i]
        assert item["video"].shape == (3, 8, 64, 64) and item["label"] == samples[i].label and item["bad_videos"] == 0
    ds_eval = VideoClipDataset(samples, ["train.txt"], EvalTransform(64, views=3), frames_per_clip=8, fps=4.0,
                               num_clips=2, random_start=False, decoder=decoder)
    assert ds_eval[0]["video"].shape == (6, 3, 8, 64, 64)  # 2 segments x 3 views


def test_decoders_give_the_same_clips(dataset_dir):
    samples = read_vjepa(dataset_dir / "train.txt")[:4]
    a = VideoClipDataset(samples, ["m"], TrainTransform(64), frames_per_clip=8, fps=4.0, decoder="decord")
    b = VideoClipDataset(samples, ["m"], TrainTransform(64), frames_per_clip=8, fps=4.0, decoder="pyav")
    for i in range(4):
        torch.testing.assert_close(a[i]["video"], b[i]["video"])


def test_bad_videos_are_skipped_counted_and_never_mislabelled(dataset_dir, caplog):
    samples = read_vjepa(dataset_dir / "bad.txt")
    is_bad = ["/bad/" in s.path for s in samples]
    assert sum(is_bad) == 4 and not all(is_bad)
    ds = VideoClipDataset(samples, ["bad.txt"], TrainTransform(64), frames_per_clip=8, fps=4.0)
    for key in range(len(samples)):
        item = ds[key]
        used = item["sample"]
        assert not is_bad[used] and item["label"] == samples[used].label  # a good video, its own label
        assert item["video"].shape == (3, 8, 64, 64)
        if is_bad[key]:
            assert item["bad_videos"] >= 1 and used != key
        else:
            assert item["bad_videos"] == 0 and used == key
    warnings = [r for r in caplog.records if "skipping a bad video" in r.getMessage()]
    assert len(warnings) == 4  # once per bad file, even when hit again as a replacement


def test_replacement_label_belongs_to_the_returned_video(dataset_dir):
    # every manifest entry but one is bad: whatever is returned must carry the good video's label
    samples = read_vjepa(dataset_dir / "bad.txt")
    good = [s for s in samples if "/bad/" not in s.path][:1]
    only_one_good = [s for s in samples if "/bad/" in s.path] + [VideoSample(good[0].path, 5)]
    ds = VideoClipDataset(only_one_good, ["m"], TrainTransform(64), frames_per_clip=8, fps=4.0)
    for key in range(4):
        item = ds[key]
        assert item["label"] == 5 and item["bad_videos"] >= 1


def test_all_bad_manifest_stops_with_an_error_naming_it(dataset_dir):
    samples = [s for s in read_vjepa(dataset_dir / "bad.txt") if "/bad/" in s.path]
    ds = VideoClipDataset(samples, [str(dataset_dir / "bad.txt")], TrainTransform(64), frames_per_clip=8,
                          max_retries=10)
    with pytest.raises(NoUsableVideoError, match="bad.txt"):
        ds[0]


def test_weighted_mixing_samples_in_proportion():
    sources = torch.tensor([0] * 30 + [1] * 10)  # manifest 0 has 3x the videos of manifest 1
    weights = torch.tensor([0.2, 0.8], dtype=torch.float64) / torch.bincount(sources).double()
    sampler = StreamSampler(40, 4000, seed=0, weights=weights[sources])
    drawn = torch.tensor(list(sampler))
    share = (sources[drawn] == 1).double().mean().item()
    assert abs(share - 0.8) < 0.03  # 4,000 draws: the standard error is 0.006


def test_datamodule_weights_from_config(dataset_dir):
    dm = ManifestDataModule(train_manifest=[str(dataset_dir / "train.txt"), str(dataset_dir / "val.txt")],
                            weights=[1.0, 3.0], batch_size=2, frames_per_clip=8, crop_size=64)
    dm.setup()
    w = dm.sample_weights()
    per_source = torch.zeros(2, dtype=torch.float64).index_add_(0, torch.tensor([s.source for s in dm.train_set.samples]), w)
    torch.testing.assert_close(per_source / per_source.sum(), torch.tensor([0.25, 0.75], dtype=torch.float64))
    with pytest.raises(ValueError, match="data.weights has 1 values for 2 train manifests"):
        ManifestDataModule(train_manifest=["a", "b"], weights=[1.0])


def test_empty_manifest_is_refused(tmp_path):
    (tmp_path / "empty.txt").write_text("\n# nothing here\n")
    dm = ManifestDataModule(train_manifest=str(tmp_path / "empty.txt"), batch_size=2)
    with pytest.raises(ManifestError, match="empty.txt' lists no videos"):
        dm.setup()


@pytest.mark.slow
def test_train_py_on_written_video_files(dataset_dir, tmp_path):
    out = run_script("train.py", *FAST, "data=kinetics", f"data.train_manifest={dataset_dir / 'bad.txt'}",
                     f"data.val_manifest={dataset_dir / 'val.txt'}", "data.frames_per_clip=8", "data.crop_size=64",
                     "data.batch_size=4", "data.num_workers=1", "trainer.max_steps=2", f"hydra.run.dir={tmp_path}")
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    # V-JEPA lists carry integer labels: the saved map is the identity on the labels listed
    label_map = json.loads((tmp_path / "label_map.json").read_text())
    listed = {line.rsplit(" ", 1)[1] for name in ("bad.txt", "val.txt")
              for line in (dataset_dir / name).read_text().splitlines() if line.strip()}
    assert label_map == {k: int(k) for k in listed}
    header, *rows = (tmp_path / "csv" / "metrics.csv").read_text().splitlines()
    assert "data/bad_videos_epoch" in header


@pytest.mark.slow
def test_train_py_with_an_all_bad_manifest_exits_naming_it(dataset_dir, tmp_path):
    bad_only = tmp_path / "only_bad.txt"
    bad_only.write_text("".join(line + "\n" for line in (dataset_dir / "bad.txt").read_text().splitlines()
                                if line.startswith("bad/")).replace("bad/", str(dataset_dir / "bad") + "/"))
    out = run_script("train.py", *FAST, "data=kinetics", f"data.train_manifest={bad_only}", "data.frames_per_clip=8",
                     "data.crop_size=64", "data.batch_size=2", "data.num_workers=0", f"hydra.run.dir={tmp_path / 'run'}")
    assert out.returncode == 2
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and "only_bad.txt" in last
