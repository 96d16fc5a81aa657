"""Scaling out and surviving faults (CPU): DDP over gloo, submitit local sweeps, exact resume
after SIGKILL, atomic checkpoint writes, non-finite losses, gradient-norm logging, seeding."""
import os
import signal
import subprocess
import sys

import pytest
import torch

from stjepa.checkpoint_io import AtomicCheckpointIO
from stjepa.errors import NonFiniteLossError
from train_helpers import CHILD_TIMEOUT, FAST, ROOT, read_metrics, run_train, series

TESTS = str(ROOT / "tests")


def train_cmd(run_dir, *overrides, multirun=False):
    """train.py as its own process (as a user runs it), with tests/ importable for the helper callbacks."""
    args = [sys.executable, str(ROOT / "train.py"), *(["-m"] if multirun else []), *FAST, *overrides]
    if not multirun:
        args.append(f"hydra.run.dir={run_dir}")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([TESTS, str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "WANDB_MODE": "offline"}
    return args, env


def run_cmd(run_dir, *overrides, multirun=False):
    args, env = train_cmd(run_dir, *overrides, multirun=multirun)
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=CHILD_TIMEOUT)


def load_state(path):
    return torch.load(path, weights_only=False)["state_dict"]


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_ends_with_identical_weights(tmp_path):
    dump = tmp_path / "ranks"
    proc = run_cmd(tmp_path / "run", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
                   "trainer.max_steps=3", "+callbacks.dump._target_=fault_helpers.DumpRankState",
                   f"+callbacks.dump.out={dump}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = torch.load(dump / "rank0.pt", weights_only=False), torch.load(dump / "rank1.pt", weights_only=False)
    assert r0["world"] == r1["world"] == 2
    # each rank trained on its own clips, with its own masks
    seen0, seen1 = {i for b in r0["indices"] for i in b}, {i for b in r1["indices"] for i in b}
    assert len(r0["indices"]) == 3 and not seen0 & seen1
    assert any(not torch.equal(a[0], b[0]) for a, b in zip(r0["masks"], r1["masks"]))
    # gradients averaged, EMA applied to the same weights: every tensor, target encoder included, agrees
    for k in r0["state"]:
        assert torch.equal(r0["state"][k], r1["state"][k]), k
    ckpt = load_state(tmp_path / "run" / "checkpoints" / "last.ckpt")
    for k in ckpt:
        assert torch.equal(ckpt[k], r0["state"][k]), k
    assert torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 3


@pytest.mark.slow
def test_ddp_rank_ratio_trains_images_and_videos_on_separate_ranks_with_one_set_of_weights(tmp_path):
    """V-JEPA 2.1's split: rank 0 of 2 takes images through the 1-frame tokenizer, rank 1 clips;
    DDP averages both into one update."""
    dump = tmp_path / "ranks"
    proc = run_cmd(tmp_path / "run", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
                   "trainer.max_steps=3", "data=mixture", "data.rank_ratio=0.5", "model.version=2.1",
                   "+callbacks.dump._target_=fault_helpers.DumpRankState", f"+callbacks.dump.out={dump}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = torch.load(dump / "rank0.pt", weights_only=False), torch.load(dump / "rank1.pt", weights_only=False)
    assert r0["modalities"] == [("image", (8, 3, 1, 64, 64))] * 3
    assert r1["modalities"] == [("video", (8, 3, 8, 64, 64))] * 3
    for k in r0["state"]:
        assert torch.equal(r0["state"][k], r1["state"][k]), k


@pytest.mark.slow
def test_submitit_local_launcher_runs_a_two_job_sweep(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    sweep = tmp_path / "sweep"
    proc = run_cmd(None, "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=20",
                   "attention.spatial_splits=1,2", "trainer.max_steps=2", f"hydra.sweep.dir={sweep}", multirun=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    for job, layout in (("0", "full"), ("1", "area-t1h2w2")):
        ckpt = torch.load(sweep / job / "checkpoints" / "last.ckpt", weights_only=False)
        assert ckpt["global_step"] == 2
        assert ckpt["hyper_parameters"]["attention"]["spatial_splits"] == int(job) + 1
    assert (sweep / ".submitit").is_dir()  # the jobs really went through submitit


@pytest.mark.slow
@pytest.mark.parametrize("data", ["synthetic", "mixture"])
def test_sigkill_mid_epoch_then_the_same_command_resumes_to_the_same_weights(tmp_path, data):
    common = ["trainer.max_steps=8", "trainer.val_check_interval=100", "optim.warmup_steps=2",
              "callbacks.last_checkpoint.every_n_train_steps=2", "trainer.deterministic=true", f"data={data}"]
    straight = run_cmd(tmp_path / "straight", *common)
    assert straight.returncode == 0, straight.stderr[-3000:]
    killed = [*common, "resume=true", "+callbacks.kill._target_=fault_helpers.KillAtStep", "+callbacks.kill.step=5"]
    first = run_cmd(tmp_path / "killed", *killed)
    assert first.returncode == -signal.SIGKILL
    ckpt = tmp_path / "killed" / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, weights_only=False)["global_step"] == 4  # the last periodic save before the kill
    again = run_cmd(tmp_path / "killed", *killed)  # the same command
    assert again.returncode == 0, again.stderr[-3000:]
    assert torch.load(ckpt, weights_only=False)["global_step"] == 8
    assert_same_weights(load_state(tmp_path / "straight" / "checkpoints" / "last.ckpt"), load_state(ckpt))


KILL_DURING_SAVE = r"""
import os, signal, sys, torch
from stjepa.checkpoint_io import AtomicCheckpointIO
path = sys.argv[1]
real_save = torch.save
def dying_save(obj, f, *args, **kwargs):
    real_save(obj, f, *args, **kwargs)
    f.flush()
    f.truncate(f.tell() // 2)  # half of the new file is written when the process dies
    os.kill(os.getpid(), signal.SIGKILL)
torch.save = dying_save
AtomicCheckpointIO().save_checkpoint({"step": 2, "w": torch.full((1000,), 2.0)}, path)
"""


def test_kill_during_a_checkpoint_write_keeps_the_previous_file(tmp_path):
    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"step": 1, "w": torch.ones(1000)}, path)
    proc = subprocess.run([sys.executable, "-c", KILL_DURING_SAVE, str(path)], cwd=ROOT, capture_output=True,
                          timeout=CHILD_TIMEOUT)
    assert proc.returncode == -signal.SIGKILL
    kept = torch.load(path)
    assert kept["step"] == 1 and torch.equal(kept["w"], torch.ones(1000))
    # the killed writer's half-written temporary goes away at the next save; a live writer's stays
    left = [p.name for p in tmp_path.iterdir() if p.name.startswith(".last.ckpt.tmp-")]
    assert left, "the kill should have left the temporary behind"
    live = tmp_path / f".last.ckpt.tmp-{os.getppid()}"
    live.write_bytes(b"in progress")
    AtomicCheckpointIO().save_checkpoint({"step": 2}, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["last.ckpt", live.name])
    assert torch.load(path)["step"] == 2


def test_nonfinite_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    with pytest.raises(NonFiniteLossError, match="training loss is not finite at step 3"):
        run_train(tmp_path, "trainer.max_steps=6", "trainer.val_check_interval=100",
                  "callbacks.last_checkpoint.every_n_train_steps=2",
                  "+callbacks.poison._target_=fault_helpers.PoisonAtStep", "+callbacks.poison.step=3")
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 2
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())


def test_a_run_stopped_by_a_nonfinite_loss_still_closes_its_wandb_run(tmp_path, monkeypatch):
    import glob

    from wandb_records import finished_records

    monkeypatch.setenv("WANDB_MODE", "offline")
    with pytest.raises(NonFiniteLossError):
        run_train(tmp_path, "logger=wandb", "trainer.max_steps=4", "+callbacks.poison._target_=fault_helpers.PoisonAtStep",
                  "+callbacks.poison.step=2")
    (run_file,) = glob.glob(str(tmp_path / "wandb" / "offline-run-*" / "*.wandb"))
    exits = [r.exit for r in finished_records(run_file) if r.WhichOneof("record_type") == "exit"]
    assert exits and exits[-1].exit_code == 0  # wandb.finish() ran; the run is not left "running"


def test_nonfinite_gradient_stops_naming_the_step(tmp_path):
    with pytest.raises(NonFiniteLossError, match="gradient norm is not finite at step 1"):
        run_train(tmp_path, "trainer.max_steps=3", "+callbacks.poison._target_=fault_helpers.PoisonAtStep",
                  "+callbacks.poison.step=1", "+callbacks.poison.what=grad")


@pytest.mark.parametrize("what", ["loss", "grad"])
def test_skip_mode_leaves_the_weights_of_a_nonfinite_step_untouched(tmp_path, what):
    out = tmp_path / "poisoned_step.pt"
    run_train(tmp_path, "trainer.max_steps=4", "callbacks.nonfinite_guard.action=skip",
              "+callbacks.poison._target_=fault_helpers.PoisonAtStep", "+callbacks.poison.step=2",
              f"+callbacks.poison.what={what}", f"+callbacks.poison.out={out}")
    record = torch.load(out)
    assert_same_weights(record["before"], record["after"])
    assert_same_weights(record["target_before"], record["target_after"])  # no EMA step either
    final = load_state(tmp_path / "checkpoints" / "last.ckpt")
    assert all(torch.isfinite(v).all() for v in final.values() if v.is_floating_point())
    assert not torch.equal(final["encoder.norm.weight"], record["after"]["norm.weight"])  # later steps train
    assert {v for _, v in series(read_metrics(tmp_path), "train/skipped_steps")} == {1.0}  # one skip, counted


def test_gradient_norm_is_logged_every_step(tmp_path):
    out = tmp_path / "norms.pt"
    run_train(tmp_path, "+callbacks.norms._target_=fault_helpers.RecordGradNorm", f"+callbacks.norms.out={out}")
    expected = torch.load(out)
    logged = [v for _, v in series(read_metrics(tmp_path), "train/grad_norm")]
    assert len(logged) == len(expected) == 4
    torch.testing.assert_close(torch.tensor(logged), torch.tensor(expected), rtol=1e-5, atol=0)


def first_losses(run_dir, *overrides):
    run_train(run_dir, "trainer.max_steps=3", "trainer.val_check_interval=100", *overrides)
    state = load_state(run_dir / "checkpoints" / "last.ckpt")
    return [v for _, v in series(read_metrics(run_dir), "train/loss")], state


@pytest.mark.slow
def test_the_same_seed_gives_the_same_first_losses(tmp_path):
    a, state_a = first_losses(tmp_path / "a", "seed=3")
    b, state_b = first_losses(tmp_path / "b", "seed=3")
    c, state_c = first_losses(tmp_path / "c", "seed=4")
    assert len(a) == 3 and a == b
    assert_same_weights(state_a, state_b)
    assert all(x != y for x, y in zip(a, c))
    assert not torch.equal(state_a["encoder.patch_embed.proj.weight"], state_c["encoder.patch_embed.proj.weight"])


def test_slurm_launcher_settings_drive_the_trainer_and_mismatches_are_refused(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from stjepa.preflight import ConfigError, check_train_config
    from train_helpers import compose_config

    cfg = compose_config(tmp_path, ["hydra/launcher=slurm", "trainer=ddp", "hydra.launcher.nodes=2",
                                    "hydra.launcher.gpus_per_node=4", "hydra.launcher.partition=learn"])
    assert (cfg.trainer.devices, cfg.trainer.num_nodes, cfg.trainer.precision) == (4, 2, "bf16-mixed")
    assert cfg.hydra.launcher.tasks_per_node == 4 and cfg.hydra.launcher.timeout_min > 0
    cfg = compose_config(tmp_path, ["hydra/launcher=submitit_slurm", "trainer=ddp", "hydra.launcher.gpus_per_node=8"])
    with pytest.raises(ConfigError, match="tasks_per_node=1 but hydra.launcher.gpus_per_node=8"):
        check_train_config(cfg)
    fsdp = compose_config(tmp_path, ["trainer=fsdp", "trainer.accelerator=cpu"])
    with pytest.raises(ConfigError, match="trainer=fsdp needs GPUs"):
        check_train_config(fsdp)
    cpu = compose_config(tmp_path, ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"])
    assert (cpu.trainer.devices, cpu.trainer.num_nodes, cpu.trainer.precision) == (2, 1, "32-true")
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    OmegaConf.set_readonly(cpu.hydra, False)
    cpu.hydra.mode = "MULTIRUN"  # as inside `train.py -m ...`

    HydraConfig.instance().set_config(cpu)
    with pytest.raises(ConfigError, match="cannot start inside a local multirun"):
        check_train_config(cpu)
