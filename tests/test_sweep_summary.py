"""The sweep summary against a sweep folder made by hand with known numbers: rows, group means and
standard errors, the Pareto front and the significance lines worked out by hand; the files; and
bad sweeps refused in one sentence."""
import csv
import json
import math

import pytest
import torch
import yaml

from stjepa.errors import ConfigError
from stjepa.sweep_summary import (markdown, pareto_front, ranking_agreement, significant_differences, spearman,
                                  summarize_sweep, write_summary)
from train_helpers import ROOT, run_script

FULL = {"kind": "area"}
AREA = {"kind": "area", "spatial_splits": 2}
NBHD = {"kind": "neighborhood", "window": [3, 3, 3]}
SETTINGS = {"probe": {"lrs": [0.001]}, "data": {"val_size": 512}, "seed": 0, "max_steps": 300, "attention": None}


def make_job(sweep, num, attention_value, attention, seed, top1=None, loss=(0.9, 0.5), ratio=1.0, step_time=0.5,
             trained=100, max_steps=100, settings=SETTINGS, random_top1=None, folder=None, knn=None):
    """One job folder as train.py -m and probe.py sweep=... leave it, with chosen numbers."""
    job = sweep / (folder or str(num))
    (job / ".hydra").mkdir(parents=True)
    config = {"seed": seed, "attention": attention, "trainer": {"max_steps": max_steps}}
    (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    # num=None: a single run (train.py without -m) placed in the folder, whose job number is ???
    (job / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"job": {"num": "???" if num is None else num}}}))
    overrides = [f"attention={attention_value}", f"seed={seed}", "trainer.max_steps=100"]
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (job / "csv").mkdir()
    with open(job / "csv" / "metrics.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["step", "train/loss", "flops/attention_ratio", "perf/step_time_s", "perf/tokens_per_s",
                         "perf/peak_memory_gib", "val/loss", "online/knn_top1"])
        for step in range(20):  # the loss falls linearly from loss[0] to loss[1]; steps < 10 are slower
            value = loss[0] + (loss[1] - loss[0]) * step / 19
            writer.writerow([step, value, ratio, step_time * (3 if step < 10 else 1), 100.0, 0.25 + step / 100,
                             value + 0.1 if step == 19 else "", knn if knn is not None and step == 19 else ""])
    if trained is not None:
        (job / "checkpoints").mkdir()
        torch.save({"global_step": trained}, job / "checkpoints" / "last.ckpt")
    for name, value, random in (("probe", top1, False), ("probe_random", random_top1, True)):
        if value is not None:
            (job / name).mkdir()
            results = {"random_init": random, "best": {"top1": value + 0.02, "top5": 0.9},
                       "selected": {"top1": value, "top5": 0.8}, "settings": settings}
            (job / name / "results.json").write_text(json.dumps(results))
    return job


@pytest.fixture
def sweep(tmp_path):
    """full x 3 seeds, area_2x2 x 3 seeds, nbhd x 1 seed, and one unfinished area job."""
    root = tmp_path / "sweep"
    root.mkdir()
    (root / "multirun.yaml").write_text("hydra: {}\n")
    jobs = [("full", FULL, 0, 0.30, 1.0, 0.50), ("full", FULL, 1, 0.34, 1.0, 0.50), ("full", FULL, 2, 0.32, 1.0, 0.50),
            ("area_2x2", AREA, 0, 0.40, 0.5, 0.30), ("area_2x2", AREA, 1, 0.42, 0.5, 0.30),
            ("area_2x2", AREA, 2, 0.38, 0.5, 0.30), ("nbhd_3x3x3", NBHD, 0, 0.35, 0.7, 0.60)]
    for num, (value, attention, seed, top1, ratio, step_time) in enumerate(jobs):
        # folder names deliberately unrelated to the job numbers: keys come from the saved configs
        make_job(root, num, value, attention, seed, top1, ratio=ratio, step_time=step_time,
                 random_top1=0.29 if value == "full" else None, folder=f"run-{100 - num}")
    make_job(root, 7, "area_2x2", AREA, 3, trained=40, folder="late")
    return root


def test_rows_groups_and_statistics_by_hand(sweep):
    summary = summarize_sweep(sweep)
    assert summary.keys == ["attention"]
    # 7 finished jobs, 3 of them with a random baseline too, plus the unfinished one
    assert len(summary.rows) == 7 + 3 + 1
    late = [r for r in summary.rows if r["job"] == 7]
    assert late[0]["state"] == "unfinished (step 40 of 100)" and late[0]["probe_selected_top1"] is None
    assert any("job 7 (attention=area_2x2 seed=3) is unfinished (step 40 of 100)" in n for n in summary.notes)
    groups = {g.label: g for g in summary.groups}
    assert set(groups) == {"attention=full", "attention=area_2x2", "attention=nbhd_3x3x3",
                           "attention=full random weights"}
    # full: top-1 0.30, 0.34, 0.32 -> mean 0.32, sample std 0.02, se 0.02 / sqrt(3)
    mean, se, n = groups["attention=full"].stats["probe_selected_top1"]
    assert (mean, n) == (pytest.approx(0.32), 3) and se == pytest.approx(0.02 / math.sqrt(3))
    assert groups["attention=full"].stats["probe_best_top1"][0] == pytest.approx(0.34)
    mean, se, n = groups["attention=area_2x2"].stats["probe_selected_top1"]  # the unfinished job is not in it
    assert (mean, n) == (pytest.approx(0.40), 3) and se == pytest.approx(0.02 / math.sqrt(3))
    assert groups["attention=nbhd_3x3x3"].stats["probe_selected_top1"] == (pytest.approx(0.35), None, 1)
    assert groups["attention=full random weights"].stats["probe_selected_top1"][0] == pytest.approx(0.29)
    assert groups["attention=full random weights"].stats["train_loss_final"] == (None, None, 0)
    # training metrics: the last 10% of 20 logged steps are steps 18 and 19 of a line from 0.9 to 0.5
    loss_18, loss_19 = 0.9 - 0.4 * 18 / 19, 0.5
    assert groups["attention=full"].stats["train_loss_final"][0] == pytest.approx((loss_18 + loss_19) / 2)
    assert groups["attention=full"].stats["val_loss_final"][0] == pytest.approx(0.6)
    assert groups["attention=area_2x2"].stats["step_time_median_s"][0] == pytest.approx(0.30)  # warm-up left out
    assert groups["attention=full"].stats["peak_memory_gib"][0] == pytest.approx(0.25 + 0.19)
    # Pareto front of (FLOP ratio, top-1): area (0.5, 0.40) dominates nbhd (0.7, 0.35) and full (1.0, 0.32)
    on_front = {g.label for g in summary.groups if g.pareto.get("attention_flop_ratio")}
    assert on_front == {"attention=area_2x2"}
    # against step time: area (0.30, 0.40) dominates both others as well
    assert {g.label for g in summary.groups if g.pareto.get("step_time_median_s")} == {"attention=area_2x2"}


def test_unfinished_jobs_join_their_group_only_when_asked(sweep):
    summary = summarize_sweep(sweep, include_unfinished=True)
    groups = {g.label: g for g in summary.groups}
    # job 7 (area_2x2, seed 3, 40 of 100 steps, no probe) now forms the area group of jobs not probed
    assert set(groups) == {"attention=full", "attention=area_2x2", "attention=nbhd_3x3x3",
                           "attention=full random weights", "attention=area_2x2 (not probed)"}
    late = groups["attention=area_2x2 (not probed)"]
    assert [r["job"] for r in late.rows] == [7] and late.stats["train_loss_final"][2] == 1
    assert groups["attention=area_2x2"].stats["probe_selected_top1"][2] == 3
    assert any("job 7 (attention=area_2x2 seed=3) is unfinished (step 40 of 100): summarised up to its last logged "
               "step." in n for n in summary.notes)
    assert len(summary.curves[("attention=area_2x2",)]) == 4
    assert len(summarize_sweep(sweep).curves[("attention=area_2x2",)]) == 3


def test_pareto_front_by_hand():
    # (cost, accuracy): b is cheaper and better than a; c is dearer but best; d equals b (neither dominates)
    points = [(1.0, 0.3), (0.5, 0.4), (2.0, 0.5), (0.5, 0.4), (0.6, 0.35)]
    assert pareto_front(points) == [False, True, True, True, False]


def test_markdown_shows_error_bars_only_for_several_seeds_and_the_two_standard_error_rule(sweep):
    text = markdown(summarize_sweep(sweep))
    se = 100 * 0.02 / math.sqrt(3)
    assert f"| 32.00 ± {se:.2f} (n=3) |" in text  # full, selected top-1
    assert "| 35.00 (n=1) |" in text and "35.00 ±" not in text  # nbhd: one seed, no error bar
    combined = math.sqrt(2) * se  # area vs full: +8 points against 2 x 1.63
    assert f"attention=full vs attention=area_2x2: -8.00 points, exceeds two combined standard errors " \
           f"(2 x {combined:.2f})." in text
    assert "attention=full vs attention=nbhd_3x3x3: -3.00 points; no error bar (a group has one run)." in text
    # a metric that is not an accuracy: differences in its own unit, not in points
    steps = significant_differences(summarize_sweep(sweep), "step_time_median_s")
    assert "attention=full vs attention=area_2x2: +0.2, exceeds two combined standard errors (2 x 0)." in steps
    assert "attention=full vs attention=nbhd_3x3x3: -0.1; no error bar (a group has one run)." in steps


def test_files_are_written_inside_the_sweep(sweep):
    paths = write_summary(summarize_sweep(sweep))
    rows = list(csv.DictReader(open(paths["csv"])))
    assert len(rows) == 11 and {"attention", "seed", "probe_selected_top1", "step_time_median_s"} <= set(rows[0])
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and paths["png"].stat().st_size > 20_000
    assert paths["md"].read_text().startswith("# Summary of")


def test_learning_signal_curves_are_read_per_run_and_drawn_in_a_second_row(sweep):
    import matplotlib.image

    height_without = matplotlib.image.imread(write_summary(summarize_sweep(sweep))["png"]).shape[0]
    for folder, (start, final) in (("run-100", (0.25, 0.30)), ("run-99", (0.27, 0.34))):  # full, seeds 0 and 1
        path = sweep / folder / "csv" / "metrics.csv"
        rows = list(csv.DictReader(path.open()))
        rows[0]["online/knn_top1"], rows[19]["online/knn_top1"] = start, final
        rows[10]["collapse/rankme_online"] = 7.5
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, [*rows[0], "collapse/rankme_online"])
            writer.writeheader()
            writer.writerows(rows)
    summary = summarize_sweep(sweep)
    runs = summary.curves[("attention=full",)]
    assert sorted(r["online/knn_top1"] for r in runs if "online/knn_top1" in r) == [[(0, 0.25), (19, 0.30)],
                                                                                 [(0, 0.27), (19, 0.34)]]
    assert [r.get("collapse/rankme_online") for r in runs].count([(10, 7.5)]) == 2
    assert sum("online/knn_top1" not in r for r in runs) == 1  # the third seed logged none
    assert all(len(r["train/loss"]) == 20 for r in runs)
    full = next(g for g in summary.groups if g.label == "attention=full")
    assert full.stats["knn_gain"][0] == pytest.approx(0.06) and full.stats["knn_gain"][2] == 2
    height_with = matplotlib.image.imread(write_summary(summary)["png"]).shape[0]
    assert height_with == 2 * height_without  # a second row of panels, as tall as the first


def test_differently_probed_jobs_are_refused_in_one_sentence(sweep):
    other = {**SETTINGS, "probe": {"lrs": [0.01]}}
    make_job(sweep, 8, "full", FULL, 5, 0.31, settings=other)
    with pytest.raises(ConfigError, match=r"jobs 0 and 8 were probed into 'probe' with different settings "
                                          r"\(probe.lrs differs\)"):
        summarize_sweep(sweep)


def test_a_sweep_without_probes_summarises_training_and_says_so(tmp_path):
    root = tmp_path / "sweep"
    for num, value in enumerate(("full", "area_2x2")):
        make_job(root, num, value, AREA if value != "full" else FULL, 0, ratio=1.0 - num / 2)
    summary = summarize_sweep(root)
    assert all(r["probe_selected_top1"] is None for r in summary.rows)
    assert any("no job has probe results, so the probe columns are empty" in n for n in summary.notes)
    assert write_summary(summary)["png"].stat().st_size > 0
    assert [g.label for g in summary.groups] == ["attention=full (not probed)", "attention=area_2x2 (not probed)"]
    path = root / "1" / "csv" / "metrics.csv"  # the area job ran the online k-NN at step 0 and at the end
    rows = list(csv.DictReader(path.open()))
    rows[0]["online/knn_top1"], rows[19]["online/knn_top1"] = 0.2, 0.25
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    summary = summarize_sweep(root)
    assert [g.label for g in summary.groups] == ["attention=full (not probed)", "attention=area_2x2 (online k-NN)"]
    assert summary.accuracy == "knn_top1_final"
    assert summary.groups[1].stats["knn_gain"][0] == pytest.approx(0.05)


@pytest.mark.slow
@pytest.mark.parametrize("make, message", [
    (lambda root: None, "is not a sweep: no sub-folder holds a job's .hydra/config.yaml"),
    (lambda root: make_job(root, 0, "full", FULL, 0, trained=None),
     "no job of sweep '{root}' has finished training, so there is nothing to summarise (job 0: no checkpoint)."),
])
def test_summarize_sweep_script_refuses_bad_folders_in_one_line(tmp_path, make, message):
    root = tmp_path / "sweep"
    root.mkdir()
    make(root)
    out = run_script(str(ROOT / "scripts" / "summarize_sweep.py"), str(root))
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert out.stderr.strip().splitlines()[-1].startswith("error: ") and message.format(root=root) in out.stderr


def test_spearman_matches_scipy_with_ties():
    scipy_stats = pytest.importorskip("scipy.stats")
    generator = torch.Generator().manual_seed(0)
    for n in (3, 5, 21):
        a = torch.randint(0, 4, (n,), generator=generator).tolist()  # few values: many ties
        b = torch.rand(n, generator=generator).tolist()
        expected = scipy_stats.spearmanr(a, b).statistic
        got = spearman(a, b)
        assert (got is None) if math.isnan(expected) else got == pytest.approx(expected, abs=1e-12)
    assert spearman([1.0, 2.0], [2.0, 1.0]) is None  # two points say nothing


@pytest.mark.parametrize("order, rho", [("same", 1.0), ("reversed", -1.0)])
def test_ranking_agreement_of_the_online_knn_and_the_probe(tmp_path, order, rho):
    root = tmp_path / "sweep"
    root.mkdir()
    top1 = [0.30, 0.34, 0.32, 0.40]
    for num, value in enumerate(top1):
        make_job(root, num, "area_2x2", AREA, num, value, knn=value if order == "same" else 1 - value)
    lines = ranking_agreement(summarize_sweep(root))
    assert lines == [f"over 4 runs: Spearman's rho = {rho:+.2f} between knn_top1_final and probe_selected_top1 "
                     "(+1: the same order, 0: unrelated, -1: reversed)."]  # one group: no line for the groups
    assert lines[0] in markdown(summarize_sweep(root))


def test_single_runs_placed_in_a_sweep_get_free_job_numbers(tmp_path):
    from stjepa.sweeps import read_sweep

    root = tmp_path / "sweep"
    root.mkdir()
    for folder, num in (("a", 0), ("b", 5), ("5", None), ("3", None), ("z", None)):
        make_job(root, num, "full", FULL, 0, folder=folder)
    numbers = {job.folder.name: job.num for job in read_sweep(root)}
    # folder names that are free numbers keep them; "5" is job b's, so it and "z" come after all
    assert numbers == {"a": 0, "b": 5, "3": 3, "5": 6, "z": 7}
