"""A sweep (-m) checks every job's config before its first job starts (the Hydra callback
hydra.callbacks.check_sweep): one bad job refuses the whole sweep with one line naming the job,
under the local and the submitit launchers."""
import itertools
import os
from contextlib import contextmanager

import pytest
from hydra import initialize_config_dir
from hydra._internal.callbacks import Callbacks
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.types import RunMode
from omegaconf import open_dict, read_write
from train_helpers import FAST, ROOT, compose_config, run_script

from stjepa.preflight import check_train_config
from stjepa.errors import ConfigError
from stjepa.sweep_check import CheckSweep, as_job, job_check, job_label, sweep_jobs, swept_keys

SPLITS_999 = "attention.spatial_splits=999 is more splits than"


def last_line(stderr):
    return stderr.strip().splitlines()[-1]


def single_run_sentence(tmp_path, *overrides):
    """What a single run with these overrides prints (its first check, made in-process)."""
    with pytest.raises(ConfigError) as caught:
        check_train_config(compose_config(tmp_path, list(overrides)))
    return str(caught.value)


# ---- the job list and its labels ---------------------------------------------------------------

@pytest.mark.parametrize("max_batch_size", [None, 4])
def test_jobs_are_the_basic_sweepers_in_launch_order(max_batch_size):
    arguments = ["a=1,2", "seed=7", "+b=x,y,z"]
    parsed = OverridesParser.create().parse_overrides(arguments)
    batches = BasicSweeper.split_arguments(parsed, max_batch_size)
    assert len(batches) == (1 if max_batch_size is None else 2)
    expected = [[f"a={a}", "seed=7", f"+b={b}"] for a, b in itertools.product("12", "xyz")]
    assert sweep_jobs(parsed, max_batch_size) == [job for batch in batches for job in batch] == expected


def test_job_label_names_the_number_and_the_swept_values():
    parsed = OverridesParser.create().parse_overrides(["a=1,2", "seed=7", "+b=x,y,z", "model@enc=vit_tiny,vit_small"])
    swept = swept_keys(parsed)
    assert swept == {"a", "+b", "model@enc"}
    jobs = sweep_jobs(parsed, None)
    assert job_label(5, jobs[5], swept) == "job 5 (a=1 +b=z model@enc=vit_small)"
    assert job_label(0, ["seed=7"], set()) == "job 0"


def test_tasks_without_a_check_are_not_checked():
    assert job_check("train") is check_train_config
    assert job_check("some_other_task") is None


# ---- in-process: Hydra's own multirun, with the configs from conf/ and launchers that must not run ----

@contextmanager
def sweep_config(tmp_path, arguments, config_name="train"):
    """Hydra set up as `<config_name>.py -m <arguments>` sets it up (GlobalHydra initialized from
    conf/, HydraConfig not yet set), and the sweep's config composed as Hydra.multirun composes it."""
    from stjepa.cli import register_resolvers

    register_resolvers()
    GlobalHydra.instance().clear()
    HydraConfig.instance().cfg = None  # each job's check must see its own Hydra config
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        hydra = GlobalHydra.instance().hydra
        cfg = hydra.compose_config(config_name, ["hydra.mode=MULTIRUN", f"hydra.sweep.dir={tmp_path / 'sweep'}",
                                                 *arguments], run_mode=RunMode.MULTIRUN)
        yield hydra, cfg


def multirun(tmp_path, monkeypatch, arguments, config_name="train"):
    """Run Hydra.multirun for `<config_name>.py -m <arguments>` (its callbacks, then its sweeper and
    launcher) with each launcher recording the jobs it is given instead of running them.
    Returns the launchers made and the jobs they were given."""
    launchers, launched = [], []
    instantiate_launcher = Plugins.instantiate_launcher

    def recording_launcher(self, *args, **kwargs):
        launcher = instantiate_launcher(self, *args, **kwargs)
        launcher.launch = lambda batch, initial_job_idx: launched.extend(batch) or []
        launchers.append(launcher)
        return launcher

    monkeypatch.setattr(Plugins, "instantiate_launcher", recording_launcher)
    with sweep_config(tmp_path, []) as (hydra, _):
        hydra.multirun(config_name, task_function=lambda _: pytest.fail("a job ran"), with_log_configuration=False,
                       overrides=["hydra.mode=MULTIRUN", f"hydra.sweep.dir={tmp_path / 'sweep'}", *arguments])
    return launchers, launched


def refusal(tmp_path, capsys, monkeypatch, arguments, config_name="train"):
    """The one line a refused sweep prints; asserts that it exits 2 before a sweeper or launcher
    exists, launching or writing nothing."""
    with pytest.raises(SystemExit) as exited:
        multirun(tmp_path, monkeypatch, arguments, config_name)
    assert exited.value.code == 2
    assert not (tmp_path / "sweep").exists()
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert HydraConfig.instance().cfg is None  # as it was before the check
    return err.strip()


def test_the_check_is_a_callback_of_every_task(tmp_path):
    for config_name in ("train", "probe"):
        with sweep_config(tmp_path, [], config_name) as (_, cfg):
            assert [type(c) for c in Callbacks(cfg).callbacks] == [CheckSweep]


def test_a_bad_value_in_the_first_swept_key_names_its_job(tmp_path, capsys, monkeypatch):
    line = refusal(tmp_path, capsys, monkeypatch, ["attention.spatial_splits=999,1", "data.frames_per_clip=4,8"])
    sentence = single_run_sentence(tmp_path, "attention.spatial_splits=999")
    assert sentence.startswith(SPLITS_999)
    assert line == f"error: job 0 (attention.spatial_splits=999 data.frames_per_clip=4): {sentence}"


@pytest.mark.parametrize("batches", [[], ["hydra.sweeper.max_batch_size=3"]])
def test_a_bad_combination_names_the_one_job_that_has_it(tmp_path, capsys, monkeypatch, batches):
    # frames 4 and 6 both suit tubelet 2, only 4 suits tubelet 4: the last of the four jobs is bad
    line = refusal(tmp_path, capsys, monkeypatch, [*batches, "data.frames_per_clip=4,6", "model.tubelet_size=2,4"])
    assert line == ("error: job 3 (data.frames_per_clip=6 model.tubelet_size=4): data.frames_per_clip=6 must be a "
                    "multiple of model.tubelet_size=4.")


def test_the_sweepers_own_params_come_first(tmp_path, capsys):
    # hydra.sweeper.params as a config file would set them (BasicSweeper expands them before the command line)
    with sweep_config(tmp_path, ["data.frames_per_clip=4,6"]) as (_, cfg):
        with read_write(cfg):
            cfg.hydra.sweeper.params = {"model.tubelet_size": "2,4"}
        with pytest.raises(SystemExit) as exited:
            Callbacks(cfg).on_multirun_start(config=cfg, config_name="train")
    assert exited.value.code == 2
    assert capsys.readouterr().err.strip() == ("error: job 3 (model.tubelet_size=4 data.frames_per_clip=6): "
                                               "data.frames_per_clip=6 must be a multiple of model.tubelet_size=4.")


def test_each_job_is_checked_with_its_own_hydra_config(tmp_path, capsys, monkeypatch):
    # "cannot start inside a local multirun" is known only from the job's Hydra config (its mode)
    line = refusal(tmp_path, capsys, monkeypatch, ["trainer=default,ddp", "trainer.accelerator=cpu", "trainer.devices=2"])
    assert line.startswith("error: job 1 (trainer=ddp): trainer.strategy=")
    assert "with 2 processes cannot start inside a local multirun" in line


def test_a_probe_sweep_is_checked_with_probes_check(tmp_path, capsys, monkeypatch):
    ckpt = tmp_path / "a.ckpt"
    ckpt.write_bytes(b"")  # the check asks only that it exists
    line = refusal(tmp_path, capsys, monkeypatch, [f"ckpt={ckpt},{tmp_path / 'missing.ckpt'}"], config_name="probe")
    assert line == (f"error: job 1 (ckpt={tmp_path / 'missing.ckpt'}): ckpt='{tmp_path / 'missing.ckpt'}' does not "
                    "exist; give a train.py .ckpt, an official V-JEPA 2 .pt or a transformers V-JEPA 2 folder.")


def test_slurm_sweeps_are_checked_before_submission(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)  # submitted from a login node
    slurm = ["hydra/launcher=slurm", "hydra.launcher.gpus_per_node=2"]
    line = refusal(tmp_path, capsys, monkeypatch, [*slurm, "attention.spatial_splits=1,999"])
    assert line.startswith(f"error: job 1 (attention.spatial_splits=999): {SPLITS_999}")
    # DDP jobs are fine under SLURM (srun starts each task), although this machine is no SLURM job
    launchers, launched = multirun(tmp_path, monkeypatch, [*slurm, "trainer=ddp", "attention.spatial_splits=1,2"])
    assert [type(launcher).__name__ for launcher in launchers] == ["SlurmLauncher"]
    assert [job[-1] for job in launched] == ["attention.spatial_splits=1", "attention.spatial_splits=2"]
    assert "SLURM_JOB_ID" not in os.environ and capsys.readouterr().err == ""


def test_a_job_is_checked_as_it_will_run_and_the_sweep_state_comes_back(tmp_path, monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    with sweep_config(tmp_path, ["hydra/launcher=slurm", "seed=1,2", "+hydra.job.env_set.STJEPA_X=y"]) as (
            hydra, cfg):
        for sweep_hydra in (None, cfg):  # not yet set (on_multirun_start), or set
            if sweep_hydra is not None:
                HydraConfig.instance().set_config(sweep_hydra)
            before = HydraConfig.instance().cfg
            job_cfg = hydra.config_loader.load_sweep_config(cfg, ["seed=2"])
            with as_job(job_cfg, 1) as task_cfg:
                assert "hydra" not in task_cfg and task_cfg.seed == 2
                assert HydraConfig.get().job.num == 1
                assert task_cfg.paths.output_dir == str(tmp_path / "sweep" / "1")  # ${hydra:runtime.output_dir}
                assert os.environ["STJEPA_X"] == "y" and "SLURM_JOB_ID" in os.environ
            assert HydraConfig.instance().cfg is before
            assert "STJEPA_X" not in os.environ and "SLURM_JOB_ID" not in os.environ
        assert not (tmp_path / "sweep").exists()


def test_removing_the_callback_turns_the_check_off(tmp_path, monkeypatch):
    cfg = compose_config(tmp_path, ["~hydra.callbacks.check_sweep"])
    assert "check_sweep" not in (cfg.hydra.callbacks or {})
    # the bad grid is then launched whole, each job left to check itself
    launchers, launched = multirun(tmp_path, monkeypatch, ["~hydra.callbacks.check_sweep",
                                                           "attention.spatial_splits=1,999"])
    assert len(launchers) == 1 and [job[-1] for job in launched] == ["attention.spatial_splits=1",
                                                                     "attention.spatial_splits=999"]
    cfg = compose_config(tmp_path, ["hydra.sweeper.max_batch_size=3"])
    assert cfg.hydra.sweeper._target_ == "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
    assert cfg.hydra.sweeper.max_batch_size == 3
    assert "check_sweep" in cfg.hydra.callbacks


def test_other_sweepers_are_not_checked_ahead(tmp_path, capsys):
    with sweep_config(tmp_path, ["attention.spatial_splits=1,999"]) as (_, cfg):
        with open_dict(cfg), read_write(cfg):
            cfg.hydra.sweeper._target_ = "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"
        CheckSweep().on_multirun_start(config=cfg, config_name="train")  # no exit
    assert capsys.readouterr().err == ""


# ---- train.py as a user runs it ----------------------------------------------------------------

@pytest.mark.slow
def test_train_py_refuses_a_sweep_with_a_bad_job_before_job_0_runs(tmp_path):
    sweep = tmp_path / "sweep"
    out = run_script("train.py", "-m", "attention.spatial_splits=1,999", *FAST, "trainer.max_steps=1",
                     f"hydra.sweep.dir={sweep}")
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert last_line(out.stderr) == (f"error: job 1 (attention.spatial_splits=999): "
                                     f"{single_run_sentence(tmp_path, 'attention.spatial_splits=999')}")
    assert not sweep.exists()  # job 0 never ran, and no empty sweep folder is left


@pytest.mark.slow
def test_train_py_runs_every_job_of_a_good_sweep(tmp_path):
    sweep = tmp_path / "sweep"
    out = run_script("train.py", "-m", "attention.spatial_splits=1,2", *FAST, "trainer.max_steps=1",
                     "trainer.val_check_interval=1", "export_official=false", f"hydra.sweep.dir={sweep}")
    assert out.returncode == 0, out.stderr[-3000:]
    for job in ("0", "1"):
        assert (sweep / job / "checkpoints" / "last.ckpt").is_file(), job


@pytest.mark.slow
def test_submitit_local_sweep_with_a_bad_job_is_refused_before_submission(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    sweep = tmp_path / "sweep"
    out = run_script("train.py", "-m", "hydra/launcher=submitit_local", "attention.spatial_splits=1,999", *FAST,
                     "trainer.max_steps=1", f"hydra.sweep.dir={sweep}")
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert last_line(out.stderr).startswith(f"error: job 1 (attention.spatial_splits=999): {SPLITS_999}")
    assert not sweep.exists()  # no job folder, no .submitit folder: nothing was submitted
