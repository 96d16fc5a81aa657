"""What a new user trips on, each answered with one sentence naming the key and what is allowed
(exit status 2, no traceback): W&B online without a key, a key mistyped at any depth, a list
where the config holds a mapping (and the reverse), a list or folder that does not exist; the
earlier names of renamed keys and classes still work; the data layer does not import the
config checker."""
from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from stjepa.cli import check_command_line, check_composition
from stjepa.errors import ConfigError, ManifestError, UserError
from train_helpers import ROOT, compose_config

CONF = ROOT / "conf"
WANDB_SENTENCE = ("logger.wandb logs to W&B online but no API key was found (no WANDB_API_KEY, no W&B entry in "
                  "~/.netrc); set WANDB_API_KEY in .env, or run offline with WANDB_MODE=offline.")


def one_sentence(message: str) -> bool:
    return message.count(". ") == 0 and "\n" not in message and message.endswith((".", "?"))


# -- W&B online without an API key ------------------------------------------------------------------
@pytest.fixture
def no_wandb_key(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_IDENTITY_TOKEN_FILE", raising=False)
    monkeypatch.delenv("WANDB_BASE_URL", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))  # no such file
    return tmp_path / "netrc"


@pytest.mark.parametrize("config_name", ["train", "probe"])
def test_wandb_online_without_a_key_is_refused_at_the_config_check(tmp_path, no_wandb_key, config_name):
    from stjepa.preflight import check_train_config
    from stjepa.probe_job import check_probe_config

    overrides = ["logger=wandb"] + (["ckpt=/nope.ckpt"] if config_name == "probe" else [])
    cfg = compose_config(tmp_path, overrides, config_name=config_name)
    with pytest.raises(ConfigError) as info:
        (check_train_config if config_name == "train" else check_probe_config)(cfg)
    assert str(info.value) == WANDB_SENTENCE and one_sentence(str(info.value))


def test_wandb_runs_with_a_key_in_netrc_or_offline(tmp_path, no_wandb_key, monkeypatch):
    from stjepa.loggers import check_wandb_login

    cfg = compose_config(tmp_path, ["logger=many"])
    with pytest.raises(ConfigError, match="set WANDB_API_KEY in .env"):
        check_wandb_login(cfg)
    no_wandb_key.write_text("machine api.wandb.ai\n  login user\n  password 0123456789abcdef\n")
    check_wandb_login(cfg)  # what `wandb login` writes
    no_wandb_key.unlink()
    monkeypatch.setenv("WANDB_MODE", "offline")
    check_wandb_login(cfg)
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("WANDB_API_KEY", "0123456789abcdef")
    check_wandb_login(cfg)
    check_wandb_login(compose_config(tmp_path, ["logger=csv"]))


# -- a key mistyped at any depth, a value of the wrong shape ----------------------------------------
@pytest.mark.parametrize("config_name, argv, message", [
    ("train", ["trainer.max_stepz=3"],
     "trainer.max_stepz is not a key of trainer (trainer=default); did you mean trainer.max_steps=3?"),
    ("train", ["data=images", "data.video_root=/v"],
     "data.video_root is not a key of data (data=images); did you mean data.image_root=/v?"),
    ("train", ["data=mixture", "data.sources.video.batch_sise=3"],
     "data.sources.video.batch_sise is not a key of data.sources.video; did you mean "
     "data.sources.video.batch_size=3?"),
    ("train", ["-m", "trainer.max_stepz=3,4"],  # a sweep: suggested with the values as given
     "trainer.max_stepz is not a key of trainer (trainer=default); did you mean trainer.max_steps=3,4?"),
    ("probe", ["ckpt=x.ckpt", "probe.levells=all"],
     "probe.levells is not a key of probe (probe=default); did you mean probe.levels=all?"),
    ("train", ["data.zzz=1"], "data.zzz is not a key of data (data=synthetic); its keys are batch_size, boundary, "
                              "colors, crop_size, frame_hold, frame_step, frames_per_clip, label, noise, num_shapes, "
                              "num_workers, seed, train_size, val_size."),
    ("train", ["probe.levels=[1]"], "probe.levels is not a key of the train config; its keys are anneal, attention, "),
    ("train", ["data=mixture", "data.weights=[1,-1]"],
     "data.weights=[1,-1] is a list, but in data (data=mixture) data.weights is a mapping; give it in that shape, "
     "for example data.weights={video:0.75,images:0.25}."),
    ("train", ["data=images", "data.random_resize_scale={a:1}"],
     "data.random_resize_scale={a:1} is a mapping, but in data (data=images) data.random_resize_scale is a list; "
     "give it in that shape, for example data.random_resize_scale=[0.3,1.0]."),
])
def test_a_command_line_hydra_cannot_apply_gets_one_sentence(config_name, argv, message):
    found = check_composition(argv, CONF, config_name)
    assert found is not None and found.startswith(message) and one_sentence(found), found


@pytest.mark.parametrize("argv", [["trainer.max_steps=3", "attention=area_2x2"], ["+trainer.new_key=1"],
                                  ["-m", "attention.spatial_splits=1,2,3"], ["data=images", "data.train_root=/x"],
                                  ["data=mixture", "data.weights={video:1,images:1}"]])
def test_a_command_line_hydra_applies_passes(argv):
    assert check_composition(argv, CONF, "train") is None


def test_the_command_line_check_exits_2_with_the_sentence(capsys):
    with pytest.raises(SystemExit) as info:
        check_command_line(["trainer.max_stepz=3"], CONF, "train")
    assert info.value.code == 2
    assert capsys.readouterr().err.strip() == ("error: trainer.max_stepz is not a key of trainer (trainer=default); "
                                               "did you mean trainer.max_steps=3?")


def test_manifest_weights_given_as_a_mapping_name_the_list_shape():
    from stjepa.data.datamodule import ManifestDataModule

    with pytest.raises(ConfigError) as info:
        ManifestDataModule(train_manifest=__file__, weights=OmegaConf.create({"a": 1.0}))
    assert str(info.value) == ("data.weights={'a': 1.0} is a mapping, but this data source takes one weight per train "
                               "manifest in their order, as a list (for example data.weights=[0.7,0.3]).")


# -- lists and folders: one key name, what a missing one is -------------------------------------------
@pytest.fixture
def class_folders(tmp_path):
    root = tmp_path / "train"
    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((16, 16, 3), 60 * i, np.uint8)).save(root / label / f"{i}.png")
    return root


@pytest.mark.parametrize("key", ["train_manifest", "train_root"])
def test_a_missing_image_folder_is_named_by_its_key(tmp_path, key):
    cfg = compose_config(tmp_path, ["data=images", "model.version=2.1", f"data.{key}={tmp_path / 'nope'}"])
    from stjepa.preflight import check_train_config, instantiate_checked

    check_train_config(cfg)
    with pytest.raises(ManifestError) as info:
        instantiate_checked(cfg.data)
    assert str(info.value) == (f"data.{key} names '{tmp_path / 'nope'}', which does not exist; give a folder of "
                               f"class folders (root/<class>/*.jpg) or a '<path> <integer label>' list file.")


def test_a_missing_video_manifest_is_named_by_its_key(tmp_path):
    from stjepa.data.datamodule import ManifestDataModule

    with pytest.raises(ManifestError, match=r"^data.val_manifest names '.*nope.txt', which does not exist; give a "
                                            r"V-JEPA '<path> <label>' list, a Kinetics annotations CSV or a folder"):
        ManifestDataModule(train_manifest=__file__, val_manifest=str(tmp_path / "nope.txt"))


def test_images_take_train_manifest_and_their_earlier_name_alike(tmp_path, class_folders):
    from stjepa.preflight import check_train_config, instantiate_checked

    modules = []
    for key in ("train_manifest", "train_root"):
        cfg = compose_config(tmp_path, ["data=images", "model.version=2.1", f"data.{key}={class_folders}",
                                        "data.num_workers=0"])
        check_train_config(cfg)
        modules.append(instantiate_checked(cfg.data))
        modules[-1].setup("fit")
    new, old = modules
    assert new.num_classes == old.num_classes == 2
    assert new.train_set.samples == old.train_set.samples and len(new.train_set.samples) == 4
    both = compose_config(tmp_path, ["data=images", "model.version=2.1", f"data.train_manifest={class_folders}",
                                     f"data.train_root={class_folders}"])
    with pytest.raises(UserError, match="^data.train_root is the earlier name of data.train_manifest; give one of "
                                        "them.$"):
        instantiate_checked(both.data)
    with pytest.raises(ConfigError, match=r"^data.train_manifest must be set"):
        check_train_config(compose_config(tmp_path, ["data=images", "model.version=2.1"]))


@pytest.mark.parametrize("val_key, train_key", [("val_manifest", "train_manifest"), ("val_root", "train_root")])
def test_a_val_list_without_a_train_list_names_the_keys_as_given(val_key, train_key):
    from stjepa.data.datamodule import ImageDataModule

    with pytest.raises(ConfigError, match=f"^data.{val_key} is set but data.{train_key} is not;"):
        ImageDataModule(**{val_key: "/somewhere"})


def test_the_manifest_data_module_keeps_its_earlier_name():
    from hydra.utils import get_class

    from stjepa.data.datamodule import KineticsDataModule, ManifestDataModule

    assert KineticsDataModule is ManifestDataModule  # old configs and checkpoints' _target_
    assert get_class("stjepa.data.datamodule.KineticsDataModule") is ManifestDataModule
    assert OmegaConf.load(CONF / "data" / "kinetics.yaml")._target_ == "stjepa.data.datamodule.ManifestDataModule"


# -- layering -----------------------------------------------------------------------------------------
def stjepa_imports(path: Path) -> set[str]:
    """Modules of stjepa that ``path`` imports, as absolute names."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            names.add(f"{base}.{node.module}" if node.level and node.module else base or node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {n for n in names if n and n.startswith("stjepa")}


def test_the_data_layer_does_not_import_the_config_checker():
    for path in (ROOT / "stjepa" / "data").glob("*.py"):
        assert not any(n.startswith("stjepa.preflight") for n in stjepa_imports(path)), path
    assert stjepa_imports(ROOT / "stjepa" / "checks.py") == {"stjepa.errors"}


# -- one run as a user starts it -----------------------------------------------------------------------
def test_train_py_answers_a_nested_typo_in_one_line():
    out = subprocess_run("train.py", "trainer.max_stepz=3")
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert out.stderr.strip().splitlines() == ["error: trainer.max_stepz is not a key of trainer (trainer=default); "
                                               "did you mean trainer.max_steps=3?"]


def subprocess_run(*args):
    import subprocess
    import sys

    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
