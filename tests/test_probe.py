"""probe.py: checkpoint loading, head independence, view aggregation and metrics, end to end."""
import copy
import json
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from stjepa.errors import CheckpointError
from stjepa.models import vit
from stjepa.probe_module import MultiHeadProbe, average_views
from stjepa.weights import export_official, load_encoder
from train_helpers import compose_config, exit_in_process, run_script, run_train


@pytest.fixture(scope="module")
def train_ckpt(tmp_path_factory):
    out = tmp_path_factory.mktemp("train")
    run_train(out, "trainer.max_steps=2", "attention=area_2x2")
    return out / "checkpoints" / "last.ckpt"


def official_pt(tmp_path, encoder):
    path = tmp_path / "official.pt"
    export_official(path, encoder, None, encoder)
    return path


def test_train_ckpt_loads_with_its_layout_or_an_override(train_ckpt):
    state = torch.load(train_ckpt, weights_only=False)["state_dict"]
    enc = load_encoder(train_ckpt)
    assert enc.attention.tag == "area-t1h2w2-L0:auto" and any(enc.attention_pattern)
    for k, v in enc.state_dict().items():
        assert torch.equal(v, state["target_encoder." + k]), k
    online = load_encoder(train_ckpt, key="encoder", attention=dict(spatial_splits=1))
    assert not any(online.attention_pattern)
    assert torch.equal(online.norm.weight, state["encoder.norm.weight"])
    # any kind of local attention (probe.py ... attention=nbhd_3x3x3)
    local = load_encoder(train_ckpt, attention=dict(kind="neighborhood", window=[3, 3, 3], dilation=None))
    assert local.attention.tag == "nbhd3x3x3-L0:auto" and any(local.attention_pattern)


def test_probing_a_never_updated_target_encoder_warns(tmp_path, train_ckpt):
    ckpt = torch.load(train_ckpt, weights_only=False)
    ckpt["hyper_parameters"]["optim"]["ema"] = [1.0, 1.0]  # a frozen target: it keeps its initial weights
    path = tmp_path / "frozen_target.ckpt"
    torch.save(ckpt, path)
    with pytest.warns(UserWarning, match="target encoder never moved .* probe.encoder_key=encoder"):
        load_encoder(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_encoder(path, key="encoder")
        load_encoder(path, random_init=True)  # random weights asked for: nothing to warn about
        load_encoder(train_ckpt)  # the EMA target of an ordinary run


def test_official_pt_loads_with_the_configured_architecture(tmp_path):
    torch.manual_seed(0)
    source = vit("vit_tiny", img_size=64, num_frames=8)
    path = official_pt(tmp_path, source)
    enc = load_encoder(path, model=dict(size="vit_tiny", patch_size=16, tubelet_size=2), crop_size=64,
                       frames_per_clip=8, attention=dict(spatial_splits=2))
    assert any(enc.attention_pattern)  # probing a full-attention checkpoint with area attention
    x = torch.randn(1, 3, 8, 64, 64)
    enc_full = load_encoder(path, model=dict(size="vit_tiny"), crop_size=64, frames_per_clip=8)
    torch.testing.assert_close(enc_full(x), source(x))


def test_checkpoint_errors_name_the_file_or_key(tmp_path, train_ckpt):
    with pytest.raises(CheckpointError, match="nope.pt' does not exist"):
        load_encoder(tmp_path / "nope.pt")
    with pytest.raises(CheckpointError, match="probe.encoder_key='predictor' is not known"):
        load_encoder(train_ckpt, key="predictor")
    path = official_pt(tmp_path, vit("vit_tiny", img_size=64, num_frames=8))
    raw = torch.load(path)
    del raw["target_encoder"]
    torch.save(raw, path)
    with pytest.raises(CheckpointError, match="has no 'target_encoder' weights; it has encoder"):
        load_encoder(path, model=dict(size="vit_tiny"))
    # the wrong size: the file's own size is named (width and depth counted from its tensors)
    with pytest.raises(CheckpointError, match=r"holds a vit_tiny encoder \(width 192, depth 12\) but "
                                              r"model.size=vit_small; add model=vit_tiny.$"):
        load_encoder(path, key="encoder", model=dict(size="vit_small"))
    # an explicit architecture key that does not fit: the file's number
    with pytest.raises(CheckpointError, match=r"^model.embed_dim=384 and model.num_heads=6 but the encoder in checkpoint "
                                              r"file .*official.pt' has width 192 and 3 heads; give model.embed_dim=192 "
                                              r"and model.num_heads=3 \(the file fixes them\).$"):
        load_encoder(path, key="encoder", model=dict(size="vit_tiny", embed_dim=384, num_heads=6))


def test_official_pt_needs_no_architecture_keys(tmp_path):
    torch.manual_seed(0)
    source = vit("vit_tiny", img_size=64, num_frames=8, depth=2)
    path = official_pt(tmp_path, source)
    x = torch.randn(1, 3, 8, 64, 64)
    torch.testing.assert_close(load_encoder(path, crop_size=64, frames_per_clip=8)(x), source(x))
    cfg = compose_config(tmp_path, [f"ckpt={path}"], config_name="probe")
    assert cfg.get("model") is None  # probe.py's default: the checkpoint's architecture


def small_probe(num_classes=5, lrs=(1e-2, 1e-3), wds=(0.0, 0.5)):
    torch.manual_seed(0)
    encoder = vit("vit_tiny", img_size=32, num_frames=2, depth=1)
    return MultiHeadProbe(encoder, num_classes, lrs, wds, num_probe_blocks=2, num_heads=4)


def test_heads_are_independent_in_the_joint_step():
    probe = small_probe()
    tokens = torch.randn(6, 4, 192)
    labels = torch.randint(0, 5, (6,))
    reference = copy.deepcopy(probe.heads)
    optimizer = probe.configure_optimizers()
    sum(F.cross_entropy(h(tokens), labels) for h in probe.heads).backward()
    optimizer.step()
    # each head stepped alone with its own AdamW settings ends at the same parameters
    for i, (head, (lr, wd)) in enumerate(zip(reference, probe.grid)):
        alone = torch.optim.AdamW(
            [{"params": [p for n, p in head.named_parameters() if p.ndim > 1 and not n.endswith(".bias")],
              "weight_decay": wd},
             {"params": [p for n, p in head.named_parameters() if p.ndim <= 1 or n.endswith(".bias")],
              "weight_decay": 0.0}], lr=lr)
        F.cross_entropy(head(tokens), labels).backward()
        alone.step()
        for (name, a), b in zip(head.named_parameters(), probe.heads[i].parameters()):
            torch.testing.assert_close(a, b, msg=f"head {i} {name}")
    # and one head's loss gives gradients to that head only
    probe.zero_grad(set_to_none=True)
    F.cross_entropy(probe.heads[2](tokens), labels).backward()
    for i, head in enumerate(probe.heads):
        has_grad = any(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())
        assert has_grad == (i == 2)


def test_view_averaging_hand_count():
    logits = torch.tensor([[1.0, 0.0], [3.0, 2.0], [0.0, 4.0], [0.0, 0.0]])  # 2 videos x 2 views
    torch.testing.assert_close(average_views(logits, 2), torch.tensor([[2.0, 1.0], [0.0, 2.0]]))


class FixedLogits(nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, tokens):
        return self.logits


def test_metrics_and_best_head_against_a_hand_count():
    probe = small_probe(num_classes=6, lrs=(1e-3,), wds=(0.0, 0.1))
    labels = torch.tensor([0, 1, 2, 5])
    # 4 videos x 2 views; after averaging, head 0 ranks the label: 1st, 1st, 3rd, 6th; head 1: 1st every time
    view = torch.tensor([[5, 0, 0, 0, 0, 0], [0, 5, 0, 0, 0, 0], [4, 3, 2, 1, 0, 0], [5, 4, 3, 2, 1, 0]]).float()
    good = F.one_hot(labels, 6).float() * 9
    probe.heads = nn.ModuleList([FixedLogits(view.repeat_interleave(2, 0)), FixedLogits(good.repeat_interleave(2, 0))])
    video = torch.randn(4, 2, 3, 2, 32, 32)  # (B, views, C, T, H, W)
    probe.validation_step({"video": video, "label": labels, "index": torch.arange(4)}, 0)
    probe.log_dict = lambda *a, **k: None  # no trainer attached
    probe.on_validation_epoch_end()
    head0, head1 = probe.results
    assert head0["top1"] == pytest.approx(2 / 4) and head0["top5"] == pytest.approx(3 / 4)
    per_class = head0["per_class_top1"]
    assert per_class[:3] == [1.0, 1.0, 0.0] and per_class[5] == 0.0
    assert head1["top1"] == 1.0
    assert probe.best()["head"] == 1


def test_head_chosen_on_the_other_half_against_a_hand_count():
    """Clips with an even dataset index are one fold, odd the other. Six clips, indices 0, 1, 2, 3, 10, 11;
    head 0 is right on 0, 1, 2; head 1 on 0, 3, 10, 11.
    Even fold {0, 2, 10}: head 0 2/3, head 1 2/3 (a tie: the earlier head, 0, is chosen there).
    Odd fold {1, 3, 11}: head 0 1/3, head 1 2/3 (head 1 is chosen there).
    The even fold is scored by the head chosen on the odd fold (1): 2/3; the odd fold by the head chosen on the
    even fold (0): 1/3; pooled (2 + 1) / 6. The best head on all clips (head 1) reads 4/6: the flattering one."""
    probe = small_probe(num_classes=4, lrs=(1e-3,), wds=(0.0, 0.1))
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    right0 = torch.tensor([1, 1, 1, 0, 0, 0]).bool()
    right1 = torch.tensor([1, 0, 0, 1, 1, 1]).bool()
    logits = [torch.where(r[:, None], F.one_hot(labels, 4).float(), F.one_hot((labels + 1) % 4, 4).float())
              for r in (right0, right1)]
    probe.heads = nn.ModuleList([FixedLogits(logits[0]), FixedLogits(logits[1])])
    probe.validation_step({"video": torch.randn(6, 3, 2, 32, 32), "label": labels,
                           "index": torch.tensor([0, 1, 2, 3, 10, 11])}, 0)
    probe.log_dict = lambda *a, **k: None
    probe.on_validation_epoch_end()
    selected = probe.selected()
    assert selected["heads"] == [1, 0] and selected["fold_sizes"] == [3, 3]
    assert selected["top1"] == pytest.approx(3 / 6)
    assert probe.best()["top1"] == pytest.approx(4 / 6)
    assert [r["fold_top1"] for r in probe.results] == [[pytest.approx(2 / 3), pytest.approx(1 / 3)],
                                                       [pytest.approx(2 / 3), pytest.approx(2 / 3)]]


@pytest.mark.slow
def test_probe_py_end_to_end_beats_chance(tmp_path):
    run_train(tmp_path / "pre", "trainer.max_steps=30")
    ckpt = tmp_path / "pre" / "checkpoints" / "last.ckpt"
    out = run_script("probe.py", f"ckpt={ckpt}", "trainer.max_steps=100", "trainer.val_check_interval=100",
                     "data.num_workers=0", "data.val_size=256", "print_config=false",
                     f"hydra.run.dir={tmp_path / 'probe'}")
    assert out.returncode == 0, out.stderr[-3000:]
    shown = out.stdout + out.stderr
    for noise in ("in eval mode", "Total FLOPs", "Epoch 0/-2", "💡 Tip"):
        assert noise not in shown, noise
    results = json.loads((tmp_path / "probe" / "results.json").read_text())
    assert len(results["heads"]) == 6 and results["num_classes"] == 8  # the default grid: 3 lrs x 2 wds
    best = results["best"]
    assert best["top1"] == max(h["top1"] for h in results["heads"])
    assert best["top1"] > 1.5 * results["chance_top1"], best  # 8 directions: chance is 12.5%
    assert len(best["per_class_top1"]) == 8


@pytest.mark.slow
def test_probe_py_bad_checkpoint_is_one_line(tmp_path):
    out = run_script("probe.py", f"ckpt={tmp_path / 'missing.ckpt'}", f"hydra.run.dir={tmp_path}")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1] == f"error: ckpt='{tmp_path / 'missing.ckpt'}' does not exist; " \
                                                  "give a train.py .ckpt, an official V-JEPA 2 .pt or a transformers " \
                                                  "V-JEPA 2 folder."


@pytest.mark.slow
def test_probe_py_multirun_over_checkpoints_and_layouts(tmp_path, train_ckpt):
    """`probe.py -m ckpt=a,b attention=...`: one job per combination, each with its own results.json."""
    other = tmp_path / "copy.ckpt"
    other.write_bytes(train_ckpt.read_bytes())
    sweep = tmp_path / "sweep"
    out = run_script("probe.py", "-m", f"ckpt={train_ckpt},{other}", "attention=full,area_2x2",
                     "trainer.max_steps=2", "trainer.val_check_interval=2", "data.num_workers=0", "data.val_size=8",
                     "probe.lrs=[1e-3]", "probe.weight_decays=[0.01]", "print_config=false",
                     "callbacks.rich_progress_bar=null", f"hydra.sweep.dir={sweep}")
    assert out.returncode == 0, out.stderr[-3000:]
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit())
    assert len(jobs) == 4
    seen = {(json.loads((j / "results.json").read_text())["ckpt"],
             json.loads((j / "results.json").read_text())["attention"]) for j in jobs}
    assert seen == {(str(c), tag) for c in (train_ckpt, other) for tag in ("full", "area-t1h2w2-L0:auto")}


def test_probe_yaml_settings_override_the_group_defaults(tmp_path):
    """probe.yaml's own data/trainer values must win over data=synthetic's and trainer=default's."""
    cfg = compose_config(tmp_path, ["ckpt=x.ckpt"], config_name="probe")
    assert (cfg.trainer.max_steps, cfg.trainer.val_check_interval, cfg.trainer.limit_val_batches) == (300, 100, 1.0)
    assert (cfg.data.batch_size, cfg.data.val_size) == (32, 512)
    assert len(cfg.probe.lrs) * len(cfg.probe.weight_decays) == 6
    cfg = compose_config(tmp_path, ["ckpt=x.ckpt", "trainer.max_steps=5", "data.batch_size=4"], config_name="probe")
    assert (cfg.trainer.max_steps, cfg.data.batch_size) == (5, 4)  # the command line still wins
    cfg = compose_config(tmp_path, ["ckpt=x.ckpt", "probe=thorough"], config_name="probe")
    assert (cfg.trainer.max_steps, cfg.trainer.val_check_interval) == (600, 200)
    assert len(cfg.probe.lrs) * len(cfg.probe.weight_decays) == 20 and cfg.probe.encoder_key == "target_encoder"
    cfg = compose_config(tmp_path, ["ckpt=x.ckpt", "probe=thorough", "trainer.max_steps=7"], config_name="probe")
    assert cfg.trainer.max_steps == 7


PROBE_BAD_INPUT = [  # (command line, last stderr line)
    ([], "error: give either ckpt=path/to/last.ckpt (one checkpoint) or sweep=path/to/multirun (every job of a "
         "train.py -m sweep), not neither."),
    (["ckpt=OFFICIAL", "model=vit_tiny", "probe.num_heads=5"], "error: probe.num_heads=5 does not divide the encoder width 192."),
    (["ckpt=OFFICIAL", "model=vit_large"], "error: checkpoint file 'OFFICIAL' holds a vit_tiny encoder (width 192, "
                                           "depth 12) but model.size=vit_large; add model=vit_tiny."),
    (["ckpt=OFFICIAL", "model=vit_tiny", "probe.num_probe_blocks=0"],
     "error: probe.num_probe_blocks=0 is not allowed; allowed values are integers >= 1."),
]


@pytest.mark.parametrize("overrides, last_line", PROBE_BAD_INPUT)
def test_probe_bad_input_exits_with_status_2_and_one_line(tmp_path, capsys, overrides, last_line):
    official = official_pt(tmp_path, vit("vit_tiny", img_size=64, num_frames=8))
    overrides = [o.replace("OFFICIAL", str(official)) for o in overrides]
    status, err = exit_in_process(capsys, tmp_path, overrides, "probe")
    assert status == 2 and err.strip().splitlines()[-1] == last_line.replace("OFFICIAL", str(official)), err


@pytest.mark.slow
@pytest.mark.parametrize("overrides, last_line", PROBE_BAD_INPUT[2:3])
def test_probe_py_bad_input_is_one_line_naming_the_key(tmp_path, overrides, last_line):
    official = official_pt(tmp_path, vit("vit_tiny", img_size=64, num_frames=8))
    overrides = [o.replace("OFFICIAL", str(official)) for o in overrides]
    out = run_script("probe.py", *overrides, f"hydra.run.dir={tmp_path / 'run'}")
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert out.stderr.strip().splitlines()[-1] == last_line.replace("OFFICIAL", str(official))
    assert not (tmp_path / "run").exists()


def test_random_weights_drawn_from_a_training_seed_are_that_runs_initialization(tmp_path):
    """With a frozen target (ema 1), a checkpoint's target encoder is the initialization training drew from its
    seed: the independent reference for probe.init_seed."""
    run_train(tmp_path, "trainer.max_steps=1", "seed=3", "optim.ema=[1.0,1.0]")
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the frozen-target warning is the point here
        initial = load_encoder(ckpt, "target_encoder").state_dict()
    same = load_encoder(ckpt, random_init=True, init_seed=3).state_dict()
    other = load_encoder(ckpt, random_init=True, init_seed=4).state_dict()
    assert all(torch.equal(initial[k], same[k]) for k in initial)
    assert not all(torch.equal(initial[k], other[k]) for k in initial)


def test_a_sweeps_random_baselines_take_each_jobs_training_seed(tmp_path):
    from omegaconf import OmegaConf

    from stjepa.probe_sweep import job_config
    from stjepa.sweeps import Job

    cfg = compose_config(tmp_path, ["sweep=x", "probe.random_init=true"], config_name="probe")
    job = Job(tmp_path / "7", 7, OmegaConf.create({"seed": 5, "trainer": {"max_steps": 2}}), {"seed": "5"}, 2)
    job_cfg = job_config(cfg, job, "probe_random")
    assert job_cfg.probe.init_seed == 5 and job_cfg.ckpt == str(tmp_path / "7" / "checkpoints" / "last.ckpt")
    assert job_cfg.paths.output_dir == str(tmp_path / "7" / "probe_random") and job_cfg.sweep is None
    fixed = compose_config(tmp_path, ["sweep=x", "probe.random_init=true", "probe.init_seed=11"], config_name="probe")
    assert job_config(fixed, job, "probe_random").probe.init_seed == 11  # a seed given on the command line wins


def test_knn_probe_matches_scikit_learn_on_the_encoders_own_tokens(tmp_path, train_ckpt):
    """probe=knn end to end: its results.json against scikit-learn's weighted k-NN on token means
    computed here from the loaded encoder and the dataset items."""
    import numpy as np
    from sklearn.neighbors import KNeighborsClassifier

    from stjepa.data.synthetic import MovingShapesDataset
    from stjepa.probe_job import probe

    cfg = compose_config(tmp_path, [f"ckpt={train_ckpt}", "probe=knn", "probe.k=7", "data.train_size=96",
                                    "data.val_size=40", "data.batch_size=16", "data.num_workers=0",
                                    "print_config=false"], config_name="probe")
    results = probe(cfg)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["method"] == "knn" and saved["best"]["k"] == 7 and len(saved["heads"]) == 1
    assert saved["selected"]["top1"] == saved["best"]["top1"] == results["best"]["top1"]

    encoder = load_encoder(train_ckpt).eval()
    options = dict(label="direction", frame_step=cfg.data.frame_step, num_shapes=cfg.data.num_shapes,
                   boundary=cfg.data.boundary, colors=cfg.data.colors, noise=cfg.data.noise)

    def features(n, seed):
        data = MovingShapesDataset(n, 8, 64, seed, **options)
        with torch.no_grad():
            video = torch.stack([data[i]["video"] for i in range(n)])
            return encoder(video).mean(1).double().numpy(), np.array([data[i]["label"] for i in range(n)])

    bank, bank_labels = features(96, 0)  # data.seed = seed 0; validation clips use seed + 7919
    queries, labels = features(40, 7919)
    reference = KNeighborsClassifier(n_neighbors=7, metric="cosine", algorithm="brute",
                                     weights=lambda d: np.exp((1 - d) / 0.07)).fit(bank, bank_labels)
    assert saved["best"]["top1"] == pytest.approx(float((reference.predict(queries) == labels).mean()))
    singular = np.linalg.svd(queries, compute_uv=False)
    p = singular / singular.sum() + 1e-7
    assert saved["best"]["rankme"] == pytest.approx(float(np.exp(-(p * np.log(p)).sum())), rel=1e-4)


@pytest.mark.slow
def test_probe_py_knn_of_a_sweep_goes_to_its_own_folder(tmp_path, train_ckpt):
    out = run_script("probe.py", f"ckpt={train_ckpt}", "probe=knn", "probe.k=0", "data.num_workers=0",
                     f"hydra.run.dir={tmp_path / 'bad'}")
    assert out.returncode == 2 and out.stderr.strip().splitlines()[-1] == \
        "error: probe.k=0 is not allowed; allowed values are integers >= 1."
    from stjepa.probe_sweep import probe_dir_name

    for overrides, name in (([], "probe_knn"), (["probe.random_init=true"], "probe_knn_random")):
        cfg = compose_config(tmp_path, ["sweep=x", "probe=knn", *overrides], config_name="probe")
        assert probe_dir_name(cfg) == name
