"""Compose train.py's config in-process (Hydra compose API) with a private output folder."""
import csv
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

ROOT = Path(__file__).resolve().parents[1]
FAST = ["trainer.max_steps=4", "trainer.val_check_interval=2", "trainer.limit_val_batches=1",
        "trainer.log_every_n_steps=1", "data.num_workers=0", "print_config=false",
        "callbacks.rich_progress_bar=null", "callbacks.rich_model_summary=null", "callbacks.online_knn=null",
        "callbacks.collapse_monitor=null"]


def compose_config(tmp_path, overrides=(), config_name="train"):
    from stjepa.cli import register_resolvers

    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name, overrides=list(overrides), return_hydra_config=True)
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path)
        cfg.paths.log_dir = str(tmp_path / "logs")
        cfg.hydra.runtime.output_dir = str(tmp_path)
    HydraConfig.instance().set_config(cfg)
    return cfg


def exit_in_process(capsys, tmp_path, overrides, config_name="train"):
    """What ``python train.py|probe.py <overrides>`` does up to its exit, run in this process:
    the command-line check, composing, and the job under ``run_or_exit``. Returns the exit
    status and stderr. (Each entry keeps real command-line runs of the same cases too.)"""
    import pytest

    from stjepa.cli import check_command_line, run_or_exit
    from stjepa.probe_job import probe
    from stjepa.train_job import train

    with pytest.raises(SystemExit) as exited:
        check_command_line(list(overrides), ROOT / "conf", config_name)
        run_or_exit(train if config_name == "train" else probe, compose_config(tmp_path, overrides, config_name))
    return exited.value.code, capsys.readouterr().err


def shape_only_official_file(path, cfg):
    """An official-layout ``.pt`` with the architecture of ``cfg``'s model group whose tensors
    all view one stored zero (a ViT-g in kilobytes): for the checks that read a file's
    architecture (model.init_from) without loading weights into a network."""
    import torch
    from omegaconf import OmegaConf

    from stjepa.networks import build_encoder, build_predictor
    from stjepa.weights import HEADS_KEY, OFFICIAL_PREFIX

    model, attention = OmegaConf.to_container(cfg.model), OmegaConf.to_container(cfg.attention)
    with torch.device("meta"):
        encoder = build_encoder(model, attention, cfg.data.crop_size, cfg.data.frames_per_clip)
        predictor = build_predictor(model, attention, encoder)
    zero = torch.zeros(())
    shapes = {name: {OFFICIAL_PREFIX + k: zero.expand(v.shape) for k, v in net.state_dict().items()}
              for name, net in (("encoder", encoder), ("predictor", predictor), ("target_encoder", encoder))}
    torch.save({**shapes, HEADS_KEY: {"encoder": encoder.num_heads, "predictor": predictor.num_heads}}, path)
    return path


def run_train(tmp_path, *overrides):
    from stjepa.train_job import train

    return train(compose_config(tmp_path, [*FAST, *overrides]))


def read_metrics(run_dir):
    rows = list(csv.DictReader(open(Path(run_dir) / "csv" / "metrics.csv")))
    return rows


def series(rows, key):
    return [(int(r["step"]), float(r[key])) for r in rows if r.get(key)]


# A child process of a test gets this long (seconds) before subprocess.TimeoutExpired fails the
# test: generous, because a busy 2-core machine is slow, not wrong; finite, so a hung child
# fails one test instead of hanging the suite.
CHILD_TIMEOUT = 900


def run_script(*args, cwd=ROOT, env=None):
    """A script as its own process, as a user runs it."""
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, env=env,
                          timeout=CHILD_TIMEOUT)
