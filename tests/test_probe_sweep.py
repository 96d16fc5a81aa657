"""probe.py sweep=...: every finished job of a real 2 x 2 training sweep probed alike, a probe killed
mid-sweep and a failing job reported while the others go on, both finished by running the command again,
unfinished jobs listed, differently-set probes refused, and the accuracy written into each job's
W&B run; then the summary of the same folder."""
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from stjepa.sweep_summary import summarize_sweep
from train_helpers import CHILD_TIMEOUT, FAST, ROOT, run_script
from wandb_records import finished_records

PROBE = ["trainer.max_steps=2", "probe.val_check_interval=2", "data.val_size=16", "data.num_workers=0",
         "probe.lrs=[1e-3]", "probe.weight_decays=[0.01]", "print_config=false", "callbacks.rich_progress_bar=null"]


def summary_updates(run_folder):
    """Summary keys an offline W&B run folder recorded."""
    (run_file,) = glob.glob(str(run_folder / "*.wandb"))
    keys = {}
    for record in finished_records(run_file):
        if record.WhichOneof("record_type") == "summary":
            keys.update({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.summary.update})
    return keys


@pytest.mark.slow
def test_probe_every_job_of_a_sweep_resume_after_a_failure_and_summarise(tmp_path):
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_API_KEY": ""}
    sweep = tmp_path / "sweep"
    out = run_script("train.py", "-m", "attention=full,area_2x2", "seed=0,1", *FAST, "trainer.max_steps=2",
                     "logger=many", f"hydra.sweep.dir={sweep}", env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    # a fifth job that stopped early: its saved config asks for more steps than its checkpoint holds
    shutil.copytree(sweep / "3", sweep / "4")
    for name, edit in (("config.yaml", lambda c: c["trainer"].update(max_steps=50)),
                       ("hydra.yaml", lambda c: c["hydra"]["job"].update(num=4))):
        path = sweep / "4" / ".hydra" / name
        saved = yaml.safe_load(path.read_text())
        edit(saved)
        path.write_text(yaml.safe_dump(saved))
    # job 1's checkpoint is broken for now: it says step 2 but holds no weights
    good = sweep / "1" / "checkpoints" / "last.ckpt"
    shutil.move(good, tmp_path / "job1.ckpt")
    torch.save({"global_step": 2}, good)

    # killed (SIGKILL) as soon as the first job's results are written: no half-written results.json anywhere
    killed = subprocess.Popen([sys.executable, "probe.py", f"sweep={sweep}", *PROBE], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + CHILD_TIMEOUT
    while not (sweep / "0" / "probe" / "results.json").is_file() and killed.poll() is None:
        assert time.monotonic() < deadline, "probe.py wrote no results.json in time"
        time.sleep(0.1)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait(timeout=60)
    assert json.loads((sweep / "0" / "probe" / "results.json").read_text())["selected"] is not None
    assert not any((sweep / job / "probe" / "results.json").exists() for job in ("1", "2", "3"))
    stamp = (sweep / "0" / "probe" / "results.json").stat().st_mtime_ns

    first = run_script("probe.py", f"sweep={sweep}", *PROBE, env=env)
    assert first.returncode == 2, first.stderr[-3000:]
    assert (sweep / "0" / "probe" / "results.json").stat().st_mtime_ns == stamp  # job 0 kept from the killed run
    assert first.stderr.strip().splitlines()[-1].startswith(
        "error: 1 of 4 finished jobs could not be probed (job 1 (attention=full seed=1): "), first.stderr[-2000:]
    assert "unfinished" in first.stdout
    probed = {job: sweep / job / "probe" / "results.json" for job in ("0", "2", "3")}
    assert all(p.is_file() for p in probed.values()) and not (sweep / "1" / "probe" / "results.json").exists()
    assert not (sweep / "4" / "probe").exists()
    stamps = {job: p.stat().st_mtime_ns for job, p in probed.items()}
    results = json.loads(probed["0"].read_text())
    assert results["ckpt"] == str(sweep / "0" / "checkpoints" / "last.ckpt")
    assert results["settings"]["probe"]["lrs"] == [1e-3] and results["settings"]["max_steps"] == 2
    assert results["selected"]["fold_sizes"] == [8, 8]

    # the training run's W&B id now has a second offline folder holding the probe's accuracy
    results = json.loads(probed["2"].read_text())
    identity = json.loads((sweep / "2" / "wandb_run.json").read_text())
    runs = sorted((sweep / "2" / "wandb").glob(f"offline-run-*-{identity['id']}"))
    assert len(runs) == 2
    written = summary_updates(runs[-1])
    assert written["probe/selected_top1"] == pytest.approx(results["selected"]["top1"])
    assert written["probe/best_top1"] == pytest.approx(results["best"]["top1"])

    # the checkpoint is mended; the same command finishes the sweep and leaves the probed jobs alone
    shutil.move(tmp_path / "job1.ckpt", good)
    second = run_script("probe.py", f"sweep={sweep}", *PROBE, env=env)
    assert second.returncode == 0, second.stderr[-3000:]
    assert (sweep / "1" / "probe" / "results.json").is_file()
    assert {job: p.stat().st_mtime_ns for job, p in probed.items()} == stamps

    # other settings into the same folders are refused before any work
    third = run_script("probe.py", f"sweep={sweep}", *PROBE, "probe.lrs=[1e-2]", env=env)
    assert third.returncode == 2
    assert third.stderr.strip().splitlines()[-1] == (
        f"error: job 0 (attention=full seed=0) was already probed into {sweep / '0' / 'probe'} with other settings "
        "(probe.lrs differs); give probe_dir=<another name> to keep both, or delete that folder.")

    summary = summarize_sweep(sweep)
    by_job = {r["job"]: r for r in summary.rows}
    assert all(by_job[j]["probe_selected_top1"] is not None for j in range(4))
    assert by_job[4]["state"] == "unfinished (step 2 of 50)"
    assert {g.label for g in summary.groups} == {"attention=full", "attention=area_2x2"}
    assert all(g.stats["probe_selected_top1"][2] == 2 for g in summary.groups)


@pytest.mark.slow
@pytest.mark.parametrize("args, message", [
    (["sweep=NOWHERE"], "error: sweep='NOWHERE' is not a folder; give the folder a train.py -m run wrote "
                        "(logs/<task>/multiruns/<time>)."),
])
def test_probe_py_sweep_bad_input_is_one_line(tmp_path, args, message):
    args = [a.replace("NOWHERE", str(tmp_path / "nowhere")) for a in args]
    out = run_script("probe.py", *args, f"hydra.run.dir={tmp_path / 'run'}")
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert out.stderr.strip().splitlines()[-1] == message.replace("NOWHERE", str(tmp_path / "nowhere"))


@pytest.mark.slow
def test_probe_after_probes_each_job_as_probe_py_sweep_would_and_finishes_a_killed_probe(tmp_path):
    sweep = tmp_path / "sweep"
    after = ["probe_after=knn", "probe_after.encoder_key=encoder", "probe_after.k=5", "data.train_size=64",
             "data.val_size=32"]
    out = run_script("train.py", "-m", "seed=0,1", *FAST, "trainer.max_steps=2", *after,
                     f"hydra.sweep.dir={sweep}")
    assert out.returncode == 0, out.stderr[-3000:]
    results = {job: sweep / job / "probe_knn" / "results.json" for job in ("0", "1")}
    assert all(p.is_file() for p in results.values())
    for job, path in results.items():
        saved = json.loads(path.read_text())
        assert saved["ckpt"] == str(sweep / job / "checkpoints" / "last.ckpt")
        assert saved["method"] == "knn" and saved["encoder_key"] == "encoder" and saved["best"]["k"] == 5
        # the run's own data: its 64 training clips are the bank, its 32 validation clips the queries
        assert saved["heads"][0]["train_clips"] == 64 and saved["heads"][0]["val_clips"] == 32
    stamps = {job: p.stat().st_mtime_ns for job, p in results.items()}

    # the same probe through probe.py sweep= finds both jobs probed alike and leaves them alone
    again = run_script("probe.py", f"sweep={sweep}", "probe=knn", "probe.encoder_key=encoder", "probe.k=5",
                       "data.train_size=64", "data.val_size=32", "data.batch_size=8", "data.num_workers=0",
                       "print_config=false")
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("already probed") == 2, again.stdout[-2000:]
    assert {job: p.stat().st_mtime_ns for job, p in results.items()} == stamps

    # a job killed while it probed (no results.json): the same command with resume=true probes it only
    results["1"].unlink()
    rerun = run_script("train.py", "seed=1", *FAST, "trainer.max_steps=2", *after, "resume=true",
                       f"hydra.run.dir={sweep / '1'}")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert results["1"].is_file() and "Resuming" not in rerun.stderr + rerun.stdout


@pytest.mark.parametrize("overrides, message", [
    (["probe_after=knn", "probe_after.k=0"], "probe_after.k=0 is not allowed; allowed values are integers >= 1."),
    (["probe_after=default", "probe_after.lrs=[]"],
     "probe_after.lrs and probe_after.weight_decays must each hold at least one value."),
    (["probe_after=knn", "callbacks.last_checkpoint=null"],
     "probe_after probes the run's last.ckpt, which callbacks.last_checkpoint=null turns off; keep "
     "callbacks.last_checkpoint or drop probe_after."),
])
def test_a_bad_probe_after_is_refused_before_training(tmp_path, capsys, overrides, message):
    from train_helpers import exit_in_process

    code, err = exit_in_process(capsys, tmp_path, [*FAST, *overrides])
    assert code == 2 and err.strip().splitlines()[-1] == "error: " + message
    assert not (tmp_path / "checkpoints").exists()
