"""Image + video mixtures: the per-step source schedule against a hand count, reproducible
under a seed and across a resume, the rank split, bad mixtures refused, and 2.0 / 2.1 models
training on a mixture."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from stjepa.preflight import check_train_config
from stjepa.data.datamodule import ImageDataModule, SyntheticDataModule
from stjepa.data.mixture import MixtureDataModule, weighted_turns
from stjepa.errors import ConfigError
from train_helpers import compose_config, read_metrics, run_train, series

VIDEO_GRID, IMAGE_GRID = (4, 4, 4), (1, 4, 4)
MASKS = {"video": [dict(num_blocks=2, spatial_scale=(0.2, 0.2))], "image": [dict(num_blocks=3, spatial_scale=(0.1, 0.1))]}


def fake_trainer(steps_done=0, rank=0, world=1):
    progress = SimpleNamespace(total=SimpleNamespace(completed=steps_done))
    return SimpleNamespace(global_rank=rank, world_size=world,
                           fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace(batch_progress=progress)))


def mixture(seed=0, weights=(0.75, 0.25), rank_ratio=None, **trainer):
    video = SyntheticDataModule(batch_size=4, frames_per_clip=8, crop_size=32, num_workers=0, train_size=64,
                                val_size=8, seed=seed)
    images = ImageDataModule(batch_size=6, crop_size=32, num_workers=0, train_size=60, val_size=6, seed=seed)
    dm = MixtureDataModule({"video": video, "images": images}, dict(zip(("video", "images"), weights)),
                           rank_ratio=rank_ratio, seed=seed)
    dm.trainer = fake_trainer(**trainer)
    dm.configure_masking(lambda shape: IMAGE_GRID if shape[2] == 1 else VIDEO_GRID, MASKS)
    return dm


def batches(dm, count):
    loader = dm.train_dataloader()
    out = []
    for batch in loader:
        out.append(batch)
        if len(out) == count:
            break
    return out


def test_sources_take_turns_by_weight():
    assert weighted_turns([3, 1], 8) == [0, 0, 1, 0, 0, 0, 1, 0]  # by hand: credits (3,1) -> pick 0 -> (-1,1) ...
    assert weighted_turns([1, 1], 4) == [0, 1, 0, 1]
    assert weighted_turns([0.2, 0.5, 0.3], 10).count(1) == 5
    turns = weighted_turns([0.7, 0.3], 1000)
    for start in range(0, 990, 7):  # any window holds each source within one step of its share
        window = turns[start:start + 10]
        assert abs(window.count(1) - 3) <= 1
    assert weighted_turns([3, 1], 5, start=3) == weighted_turns([3, 1], 8)[3:]


def test_each_step_is_one_modality_with_its_own_masks_and_batch_size():
    got = batches(mixture(), 8)
    assert [b["modality"] for b in got] == ["video", "video", "image", "video"] * 2
    for b in got:
        video = b["modality"] == "video"
        assert b["video"].shape == ((4, 3, 8, 32, 32) if video else (6, 3, 1, 32, 32))
        assert b["source"] == ("video" if video else "images")
        numel = 64 if video else 16
        assert all(int(m.max()) < numel for m in b["masks_enc"] + b["masks_pred"])
        assert len(b["masks_enc"]) == 1
        # by hand: an image block is int(0.1 * 16) = 1 cell, so 3 blocks cover at most 3 of 16; a video
        # block covers int(0.2 * 16) = 3 cells, at most 2 x 2 of them over 4 frames: 2 blocks <= 32 of 64
        assert 1 <= b["masks_pred"][0].shape[1] <= (32 if video else 3)


def test_the_same_seed_repeats_the_mixture_and_a_resume_continues_it_exactly():
    straight = batches(mixture(seed=3), 10)
    again = batches(mixture(seed=3), 10)
    resumed = batches(mixture(seed=3, steps_done=4), 6)  # a run restarted after 4 steps
    for a, b in zip(straight, again):
        assert torch.equal(a["index"], b["index"]) and torch.equal(a["video"], b["video"])
    for a, b in zip(straight[4:], resumed):
        assert a["modality"] == b["modality"] and torch.equal(a["index"], b["index"])
        assert torch.equal(a["video"], b["video"])
        assert all(torch.equal(x, y) for x, y in zip(a["masks_enc"] + a["masks_pred"], b["masks_enc"] + b["masks_pred"]))
    other = batches(mixture(seed=4), 10)
    assert any(not torch.equal(a["index"], b["index"]) for a, b in zip(straight, other))
    # within a source, consecutive steps continue its stream: no repeats before a pass ends
    video_indices = [i for b in straight if b["modality"] == "video" for i in b["index"].tolist()]
    assert len(video_indices) == len(set(video_indices))


def test_rank_ratio_puts_the_lowest_ranks_on_images_and_splits_each_stream():
    seen = {}
    for rank in range(4):
        got = batches(mixture(rank_ratio=0.5, rank=rank, world=4), 4)
        modalities = {b["modality"] for b in got}
        assert modalities == ({"image"} if rank < 2 else {"video"})
        seen[rank] = {i for b in got for i in b["index"].tolist()}
    assert not seen[0] & seen[1] and not seen[2] & seen[3]  # ranks of one group share its stream


def test_without_rank_ratio_every_rank_follows_the_same_schedule_on_its_own_samples():
    r0, r1 = batches(mixture(rank=0, world=2), 4), batches(mixture(rank=1, world=2), 4)
    assert [b["modality"] for b in r0] == [b["modality"] for b in r1]
    def items(got):
        return {(b["modality"], i) for b in got for i in b["index"].tolist()}

    assert not items(r0) & items(r1)


@pytest.mark.parametrize("kwargs, message", [
    (dict(weights={"video": 1.0}), r"data.weights names \['video'\] but data.sources are \['images', 'video'\]"),
    (dict(weights={"video": 1.0, "images": -1.0}), "must be numbers >= 0 with a positive sum"),
    (dict(weights={"video": 0.0, "images": 0.0}), "must be numbers >= 0 with a positive sum"),
    (dict(rank_ratio=1.5), r"data.rank_ratio=1.5 must be null or a number in \(0, 1\)"),
])
def test_bad_mixtures_are_refused_in_one_sentence(kwargs, message):
    sources = {"video": SyntheticDataModule(num_workers=0), "images": ImageDataModule(num_workers=0)}
    args = dict(weights={"video": 1.0, "images": 1.0}) | kwargs
    with pytest.raises(ConfigError, match=message):
        MixtureDataModule(sources, **args)


def test_rank_ratio_needs_both_modalities():
    sources = {"a": SyntheticDataModule(num_workers=0), "b": SyntheticDataModule(num_workers=0)}
    with pytest.raises(ConfigError, match="hold only one modality; set data.rank_ratio=null"):
        MixtureDataModule(sources, {"a": 1, "b": 1}, rank_ratio=0.5)


@pytest.mark.parametrize("overrides, message", [
    (["data=synthetic_images"], r"an image-only data source \(data=images, data=synthetic_images\) needs a model "
                                r"with an image path \(model.version=2.1"),
    (["data=images", "data.train_root=/x"], "an image-only data source"),
    (["data=mixture", "model.version=2.1", "trainer.devices=2"],
     "a V-JEPA 2.1 image\\+video mixture on 2 devices needs data.rank_ratio"),
    (["data=mixture", "image_mask.images.num_blocks=0"], "image_mask.images.num_blocks must be an integer >= 1"),
])
def test_configs_that_cannot_train_on_images_are_refused(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        check_train_config(compose_config(tmp_path, overrides))


def test_the_mixture_preset_composes_with_a_video_manifest_source(tmp_path):
    cfg = compose_config(tmp_path, ["data=mixture", "data@data.sources.video=kinetics",
                                    f"data.sources.video.train_manifest={__file__}", "data.rank_ratio=0.5"])
    assert cfg.data.sources.video._target_.endswith("ManifestDataModule")
    assert cfg.data.frames_per_clip == cfg.data.sources.video.frames_per_clip == 16
    check_train_config(cfg)


SOURCES_FAST = ["data=mixture",
                "trainer.max_steps=8", "trainer.val_check_interval=4"]


@pytest.mark.slow
@pytest.mark.parametrize("version", ["2.0", "2.1"])
def test_a_tiny_model_trains_on_the_mixture(tmp_path, version):
    extra = ["model.version=2.1", "loss.context_ramp=[0,4]"] if version == "2.1" else []
    metrics = run_train(tmp_path, *SOURCES_FAST, *extra)
    assert metrics["global_step"] == 8
    rows = read_metrics(tmp_path)
    losses = dict(series(rows, "train/loss"))
    # steps 0, 1, 3 of every 4 are video steps, step 2 images (weights 0.75 / 0.25); each source's
    # epoch mean is the mean of the step losses of its own steps (equal batch sizes within a source)
    expected = {"video": [0, 1, 3, 4, 5, 7], "images": [2, 6]}
    for source, steps in expected.items():
        (_, mean), = series(rows, f"train/loss_{source}")
        assert mean == pytest.approx(sum(losses[s] for s in steps) / len(steps), rel=1e-5)
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values()) and len(losses) == 8
    assert series(rows, "val/loss") and series(rows, "val/images/loss")  # each source validated


def test_probing_a_mixture_is_refused_naming_the_single_sources(tmp_path):
    from stjepa.probe_job import check_probe_config

    cfg = compose_config(tmp_path, ["ckpt=x.ckpt", "data=mixture"], config_name="probe")
    with pytest.raises(ConfigError, match="probe.py probes on one data source; give data=images, data=kinetics"):
        check_probe_config(cfg)
