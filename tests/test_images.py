"""Images as data: folders and lists, Pillow decoding against the rendered pixels, bad files
skipped and counted, the image data module, bad image sources refused in one sentence."""
from __future__ import annotations

import logging
from pathlib import Path

import make_synthetic_dataset
import numpy as np
import pytest
import torch
from PIL import Image

from stjepa.data.datamodule import ImageDataModule
from stjepa.data.image_dataset import ImageDataset, ImageError, decode_image
from stjepa.data.manifests import ManifestError, load_manifests, read_manifest
from stjepa.data.synthetic import MovingShapesDataset, render_clip
from stjepa.data.transforms import EvalTransform, TrainTransform
from stjepa.errors import ConfigError


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("images")
    make_synthetic_dataset.make_image_dataset(out, num_images=24, sizes=(64, 96), bad=True)
    return out


def records(root: Path, split: str) -> set[tuple[str, int]]:
    """(absolute path, label) of every image the generator wrote for ``split``: the hand count."""
    import json

    classes = json.loads((root / "classes.json").read_text())
    return {(str(p), classes[p.parent.name]) for p in (root / split).glob("*/*.*")}


# -- parsing --------------------------------------------------------------------------------------
def test_a_class_folder_and_a_list_give_the_same_images(image_dir):
    folder, folder_map = load_manifests(image_dir / "train", media="image")
    assert folder_map == {"circle": 0, "square": 1, "triangle": 2}  # alphabetical class names
    assert {(s.path, s.label) for s in folder} == records(image_dir, "train")
    listed, _ = load_manifests(image_dir / "train.txt", media="image")
    assert {(s.path, s.label) for s in listed} == records(image_dir, "train")


def test_non_images_and_hidden_files_are_not_listed(tmp_path):
    (tmp_path / "root" / "cat" / "nested").mkdir(parents=True)
    for name in ("a.JPG", "b.png", "nested/c.webp", "notes.txt", ".hidden.jpg", "clip.mp4"):
        (tmp_path / "root" / "cat" / name).write_bytes(b"")
    found = sorted(Path(s.path).name for s in read_manifest(tmp_path / "root", media="image").samples)
    assert found == ["a.JPG", "b.png", "c.webp"]
    assert [Path(s.path).name for s in read_manifest(tmp_path / "root").samples] == ["clip.mp4"]  # videos stay videos


@pytest.mark.parametrize("layout, message", [
    ({}, r"folder '.*root' is empty; a folder source needs one subfolder per class \(root/<class>/<image files>\)"),
    ({"a.jpg": b""}, r"folder '.*root' has no class subfolders, only files"),
    ({"cat/readme.txt": b""}, r"manifest '.*root' lists no images\."),
])
def test_empty_folders_and_folders_without_classes_are_refused(tmp_path, layout, message):
    root = tmp_path / "root"
    root.mkdir()
    for name, data in layout.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    with pytest.raises(ManifestError, match=message):
        read_manifest(root, media="image")


def test_a_kinetics_csv_is_no_image_source(tmp_path):
    (tmp_path / "k.csv").write_text("label,youtube_id,time_start,time_end\ncat,abc,0,10\n")
    with pytest.raises(ManifestError, match="Kinetics annotations CSV, which lists videos; an image source is"):
        read_manifest(tmp_path / "k.csv", video_root=tmp_path, media="image")


# -- decoding -------------------------------------------------------------------------------------
def test_decoded_pixels_match_what_was_rendered(tmp_path):
    params = MovingShapesDataset(num_samples=1, seed=3).params(0)
    frame = render_clip(params, 1, 48, noise=0)[0].numpy()  # the reference: the renderer's own uint8 pixels
    Image.fromarray(frame).save(tmp_path / "x.png")
    Image.fromarray(frame).save(tmp_path / "x.jpg", quality=95)
    assert np.array_equal(decode_image(str(tmp_path / "x.png")).numpy(), frame)  # PNG is lossless
    jpeg = decode_image(str(tmp_path / "x.jpg")).numpy().astype(float)
    assert jpeg.shape == frame.shape and np.abs(jpeg - frame).mean() < 3.0
    Image.fromarray(frame).convert("L").save(tmp_path / "gray.png")  # grayscale becomes 3 equal channels
    gray = decode_image(str(tmp_path / "gray.png"))
    assert gray.shape == (48, 48, 3) and torch.equal(gray[..., 0], gray[..., 2])


@pytest.mark.parametrize("name, reason", [("corrupt.jpg", "cannot be decoded"), ("truncated.png", "truncated"),
                                          ("not_an_image.jpg", "not in an image format"),
                                          ("missing.jpg", "does not exist")])
def test_each_bad_file_gets_one_sentence(image_dir, name, reason):
    with pytest.raises(ImageError, match=rf"^image '.*{name}' .*{reason}.*\.$"):
        decode_image(str(image_dir / "bad" / name))


def test_bad_images_are_skipped_counted_and_never_mislabelled(image_dir, caplog):
    samples, _ = load_manifests(image_dir / "bad.txt", media="image")
    ds = ImageDataset(samples, ["bad.txt"], EvalTransform(32))
    bad = {i for i, s in enumerate(samples) if "/bad/" in s.path}
    assert len(bad) == 4
    with caplog.at_level(logging.WARNING):
        items = [ds[i] for i in range(len(samples))]
    for i, item in enumerate(items):
        returned = samples[item["sample"]]
        assert "/bad/" not in returned.path and item["label"] == returned.label
        assert item["image"].shape == (3, 32, 32)
        assert (item["bad_images"] >= 1) == (i in bad)  # a replacement may be bad too: then it counts 2
    assert sum(item["bad_images"] for item in items) >= 4
    assert len([r for r in caplog.records if "skipping a bad image" in r.getMessage()]) == 4  # once per file


def test_training_and_evaluation_transforms_give_one_frame(image_dir):
    samples, _ = load_manifests(image_dir / "train.txt", media="image")
    train = ImageDataset(samples, ["train.txt"], TrainTransform(32))
    evaluate = ImageDataset(samples, ["train.txt"], EvalTransform(32))
    assert train[0]["image"].shape == evaluate[0]["image"].shape == (3, 32, 32)
    assert torch.equal(evaluate[0]["image"], evaluate[0]["image"])  # evaluation is deterministic
    assert not torch.equal(train[0]["image"], train[len(samples)]["image"])  # a new pass, a new crop


# -- the data module ------------------------------------------------------------------------------
def test_the_synthetic_default_gives_still_frames_labelled_by_shape():
    dm = ImageDataModule(batch_size=4, crop_size=32, num_workers=0, train_size=8, val_size=4)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["video"].shape == (4, 3, 1, 32, 32) and batch["modality"] == "image"
    assert dm.num_classes == 3
    reference = MovingShapesDataset(8, 1, 32, seed=0, label="shape")  # the same shapes, as 1-frame clips
    for index, image, label in zip(batch["index"], batch["video"], batch["label"]):
        assert torch.equal(image, reference[int(index)]["video"]) and label == reference[int(index)]["label"]


def test_images_from_folders_through_the_data_module(image_dir, tmp_path):
    dm = ImageDataModule(train_root=str(image_dir / "train"), val_root=str(image_dir / "val"), batch_size=4,
                         crop_size=32, num_workers=0, output_dir=str(tmp_path))
    dm.setup("fit")
    assert dm.num_classes == 3 and (tmp_path / "label_map.json").is_file()
    batch = next(iter(dm.val_dataloader()))
    assert batch["video"].shape == (4, 3, 1, 32, 32) and "bad_images" in batch


def test_val_root_without_train_root_is_refused():
    with pytest.raises(ConfigError, match="data.val_root is set but data.train_root is not"):
        ImageDataModule(val_root="/somewhere")


# -- models on images -----------------------------------------------------------------------------
def test_a_2_0_encoder_sees_an_image_as_a_clip_of_that_frame_repeated():
    from stjepa.models import vit

    encoder = vit("vit_tiny", img_size=32, num_frames=4).eval()
    image = torch.randn(2, 3, 32, 32)
    repeated = image.unsqueeze(2).repeat(1, 1, 2, 1, 1)  # the official 2.0 rule: one tubelet of the frame
    with torch.no_grad():
        expected = encoder(repeated)
        assert torch.allclose(encoder(image), expected, atol=1e-6)
        assert torch.allclose(encoder(image.unsqueeze(2)), expected, atol=1e-6)  # a 1-frame clip too


@pytest.mark.slow
@pytest.mark.parametrize("version", ["2.0", "2.1"])
def test_probe_py_on_image_folders(tmp_path, image_dir, version):
    import json

    from train_helpers import run_script, run_train

    data = ["data=mixture"] if version == "2.0" else ["data=synthetic_images", "model.version=2.1"]
    run_train(tmp_path / "train", "trainer.max_steps=2", *data)
    ckpt = tmp_path / "train" / "checkpoints" / "last.ckpt"
    out = run_script("probe.py", f"ckpt={ckpt}", "data=images", f"data.train_root={image_dir / 'train'}",
                     f"data.val_root={image_dir / 'val'}", "data.batch_size=4", "data.crop_size=32",
                     "data.num_workers=0", "trainer.max_steps=3", "probe.val_check_interval=3", "print_config=false",
                     f"hydra.run.dir={tmp_path / 'probe'}")
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads((tmp_path / "probe" / "results.json").read_text())
    best = results["best"]
    # 3 classes: the top 5 holds every class, so top-5 is exactly 1; top-1 is the class-weighted
    # mean of the per-class accuracies, so it lies between the worst and the best class
    assert results["num_classes"] == 3 and best["top5"] == 1.0 and len(best["per_class_top1"]) == 3
    assert min(best["per_class_top1"]) - 1e-6 <= best["top1"] <= max(best["per_class_top1"]) + 1e-6
    assert "top-1" in out.stdout and "chance 33.33%" in out.stdout
