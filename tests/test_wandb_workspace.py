"""The sweep workspace (stjepa/wandb_workspace.py) and its command (scripts/wandb_workspace.py),
offline: the workspace is checked in the form W&B would receive it, and nothing is sent."""
import os
import socket

import pytest
import wandb_workspace as workspace_cli
import wandb_workspaces.workspaces as ws
from hydra.core.hydra_config import HydraConfig

from stjepa.errors import ConfigError
from stjepa.loggers import sweep_group
from stjepa.wandb_workspace import group_of_sweep_dir, sweep_workspace
from train_helpers import ROOT, compose_config, run_script

GROUP = "train-2025-01-31_12-00-00"
LAYOUT_GROUPING = [{"section": "config", "name": "layout/encoder.value"}]


def spec(workspace):
    """The workspace as saved: W&B's view spec (built offline)."""
    return workspace._to_model().model_dump(by_alias=True, exclude_none=True)["spec"]["section"]


def panels_by_section(section_spec):
    return {s["name"]: [(p["viewType"], p["config"]) for p in s["panels"]]
            for s in section_spec["panelBankConfig"]["sections"]}


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a network connection was attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.mark.parametrize("group", [GROUP, "it's a group"])
def test_runset_holds_exactly_the_group_grouped_by_layout(group):
    workspace = sweep_workspace("me", "stjepa", group)
    assert (workspace.entity, workspace.project, workspace.name) == ("me", "stjepa", f"sweep {group}")
    (runset,) = spec(workspace)["runSets"]
    assert runset["filters"] == {"filterFormat": "filterV2", "filters": [
        {"key": {"section": "run", "name": "group"}, "op": "=", "value": group, "disabled": False}]}
    assert runset["grouping"] == LAYOUT_GROUPING
    assert spec(workspace)["settings"]["useRunsTableGroupingInPanels"] is True


def test_sections_hold_the_named_panels_and_metric_keys():
    sections = panels_by_section(spec(sweep_workspace("me", "stjepa", GROUP)))
    assert list(sections) == ["Loss", "Accuracy per FLOP", "Learning signals", "Speed"]
    signals = [(kind, c["xAxis"], c.get("metrics") or c.get("yAxis")) for kind, c in sections["Learning signals"]]
    assert signals == [("Run History Line Plot", "_step", ["online/knn_top1"]),
                       ("Run History Line Plot", "_step", ["collapse/rankme_target", "collapse/rankme_online"]),
                       ("Scatter Plot", "summary:flops/attention_ratio", "summary:online/knn_top1")]

    lines = [(kind, c["xAxis"], c["metrics"], c["groupAgg"], c["groupArea"]) for kind, c in sections["Loss"]]
    assert lines == [("Run History Line Plot", "_step", ["train/loss"], "mean", "stddev"),
                     ("Run History Line Plot", "_step", ["val/loss"], "mean", "stddev")]

    scatters = [(kind, c["xAxis"], c["yAxis"]) for kind, c in sections["Accuracy per FLOP"]]
    assert scatters == [("Scatter Plot", "summary:flops/attention_ratio", "summary:probe/selected_top1"),
                        ("Scatter Plot", "summary:flops/attention_ratio", "summary:probe/best_top1")]

    (bar_kind, bar), (scatter_kind, scatter) = sections["Speed"]
    assert (bar_kind, bar["metrics"], bar["groupAgg"], bar["groupArea"]) == (
        "Bar Chart", ["perf/step_time_s"], "mean", "stddev")
    assert (scatter_kind, scatter["xAxis"], scatter["yAxis"]) == (
        "Scatter Plot", "summary:perf/step_time_s", "summary:probe/selected_top1")


def test_other_grouping_keys_and_name():
    workspace = sweep_workspace("me", "stjepa", GROUP, name="windows", layout_keys=["attention/window"])
    assert workspace.name == "windows"
    assert spec(workspace)["runSets"][0]["grouping"] == [{"section": "config", "name": "attention/window.value"}]


def test_group_of_a_multirun_folder_is_the_group_train_py_gave_it(tmp_path):
    sweep = tmp_path / "multiruns" / "2025-01-31_12-00-00"
    sweep.mkdir(parents=True)
    # as Hydra writes it: the whole config, with hydra's own keys left unresolved
    (sweep / "multirun.yaml").write_text("hydra:\n  sweep:\n    dir: ${paths.log_dir}/${now:%Y}\ntask_name: train\n")
    assert group_of_sweep_dir(sweep) == "train-2025-01-31_12-00-00"
    assert group_of_sweep_dir(f"{sweep}/") == "train-2025-01-31_12-00-00"

    cfg = compose_config(tmp_path, ["hydra.mode=MULTIRUN", f"hydra.sweep.dir={sweep}"])
    try:
        assert sweep_group(cfg) == "train-2025-01-31_12-00-00"
    finally:
        HydraConfig.instance().cfg = None


def test_group_of_a_multirun_folder_without_multirun_yaml_reads_a_job(tmp_path):
    sweep = tmp_path / "2025-02-01_08-00-00"
    (sweep / "0" / ".hydra").mkdir(parents=True)
    (sweep / "0" / ".hydra" / "config.yaml").write_text("task_name: synthetic_motion\nseed: 0\n")
    assert group_of_sweep_dir(sweep) == "synthetic_motion-2025-02-01_08-00-00"
    with pytest.raises(ConfigError, match="is not a multirun folder"):
        group_of_sweep_dir(sweep / "0")


@pytest.fixture
def offline_env(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # no ./.env of the checkout
    for name in ("WANDB_API_KEY", "WANDB_ENTITY", "WANDB_PROJECT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")


def test_command_without_entity_says_so_in_one_sentence(offline_env, no_network, capsys):
    assert workspace_cli.main(["--group", GROUP]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "No W&B entity (give --entity or set WANDB_ENTITY); nothing was saved."


def test_command_offline_builds_but_saves_nothing(offline_env, no_network, monkeypatch, capsys):
    def save(self):
        raise AssertionError("save() called offline")

    monkeypatch.setattr(ws.Workspace, "save", save)
    assert workspace_cli.main(["--entity", "me", "--group", GROUP]) == 2
    out = capsys.readouterr()
    assert out.out == ""
    assert out.err.strip().count("\n") == 0
    assert out.err.startswith(f"The workspace for group {GROUP} was not saved because W&B is offline")


def test_command_online_saves_the_workspace_of_the_folder_group(offline_env, no_network, monkeypatch, tmp_path,
                                                                  capsys):
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("WANDB_API_KEY", "not-a-real-key")
    monkeypatch.setenv("WANDB_ENTITY", "team")
    saved = []
    monkeypatch.setattr(ws.Workspace, "save", lambda self: saved.append(self) or self)
    monkeypatch.setattr(ws.Workspace, "url", property(lambda self: "https://wandb.example/team/stjepa?nw=x"))
    sweep = tmp_path / "2025-01-31_12-00-00"
    sweep.mkdir()
    (sweep / "multirun.yaml").write_text("task_name: train\n")
    assert workspace_cli.main(["--group", str(sweep), "--name", "ST-A2 vs full"]) == 0
    assert capsys.readouterr().out.strip() == "https://wandb.example/team/stjepa?nw=x"
    (workspace,) = saved
    assert (workspace.entity, workspace.project, workspace.name) == ("team", "stjepa", "ST-A2 vs full")
    assert spec(workspace)["runSets"][0]["filters"]["filters"][0]["value"] == GROUP


def test_command_with_a_folder_that_is_no_sweep_says_so(offline_env, no_network, tmp_path, capsys):
    assert workspace_cli.main(["--entity", "me", "--group", str(tmp_path)]) == 2
    assert "is not a multirun folder" in capsys.readouterr().err


@pytest.mark.slow  # the process imports Lightning (through stjepa.loggers): seconds on 2 cores
def test_command_as_a_process_offline(tmp_path):
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_API_KEY": "", "WANDB_ENTITY": "me"}
    out = run_script(str(ROOT / "scripts" / "wandb_workspace.py"), "--group", GROUP, cwd=tmp_path, env=env)
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stdout == ""
    assert out.stderr.strip() == (
        f"The workspace for group {GROUP} was not saved because W&B is offline (no WANDB_API_KEY, or "
        "WANDB_MODE=offline); set WANDB_API_KEY and unset WANDB_MODE=offline to save it.")
