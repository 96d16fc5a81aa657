"""k-NN classifier and RankMe against independent references (scikit-learn, hand counts, matrices
of known rank), and the online k-NN of a training run: logged at the right steps, the same after a
resume, and without any effect on the trained weights."""
import math
import warnings

import numpy as np
import pytest
import torch
from sklearn.neighbors import KNeighborsClassifier

from stjepa.knn import knn_evaluate, knn_scores, pooled_features, rankme, topk_accuracy
from stjepa.online_eval import evaluation_indices, labelled_source
from train_helpers import FAST, compose_config, read_metrics, run_script, series


def test_knn_votes_match_scikit_learn_with_exponential_cosine_weights():
    g = torch.Generator().manual_seed(0)
    classes, k, temperature = 5, 7, 0.07
    centers = torch.randn(classes, 16, generator=g)
    bank_labels = torch.randint(0, classes, (300,), generator=g)
    bank = centers[bank_labels] + 1.5 * torch.randn(300, 16, generator=g)
    query_labels = torch.randint(0, classes, (120,), generator=g)
    queries = centers[query_labels] + 1.5 * torch.randn(120, 16, generator=g)
    # scikit-learn's cosine distance is 1 - similarity: weight exp(similarity / T) = exp((1 - d) / T)
    reference = KNeighborsClassifier(n_neighbors=k, metric="cosine", algorithm="brute",
                                     weights=lambda d: np.exp((1 - d) / temperature))
    reference.fit(bank.double().numpy(), bank_labels.numpy())
    expected = reference.predict_proba(queries.double().numpy())
    scores = knn_scores(bank, bank_labels, queries, classes, k, temperature, chunk=50).double()
    assert torch.allclose(scores / scores.sum(1, keepdim=True), torch.from_numpy(expected), atol=1e-5)
    top1 = float((torch.from_numpy(expected).argmax(1) == query_labels).double().mean())
    assert knn_evaluate(bank, bank_labels, queries, query_labels, classes, k, temperature)["top1"] == pytest.approx(top1)


def test_knn_by_hand():
    # bank on the unit circle; the query at angle 0 has neighbours at 0.1 (class 1), -0.2 (class 0), 0.3 (class 1)
    angles = torch.tensor([0.1, -0.2, 0.3, 3.0])
    bank = torch.stack([angles.cos(), angles.sin()], 1)
    labels = torch.tensor([1, 0, 1, 2])
    scores = knn_scores(bank, labels, torch.tensor([[2.0, 0.0]]), 3, k=3, temperature=0.5)
    expected = [math.exp(math.cos(0.2) / 0.5), math.exp(math.cos(0.1) / 0.5) + math.exp(math.cos(0.3) / 0.5), 0.0]
    assert scores[0].tolist() == pytest.approx(expected, rel=1e-5)
    assert topk_accuracy(scores, torch.tensor([1]), 1) == 1.0 and topk_accuracy(scores, torch.tensor([0]), 1) == 0.0
    assert topk_accuracy(scores, torch.tensor([0]), 2) == 1.0
    with pytest.raises(ValueError, match="k=0"):
        knn_scores(bank, labels, bank, 3, k=0)


@pytest.mark.parametrize("rank", [1, 3, 10])
def test_rankme_of_matrices_of_known_rank(rank):
    g = torch.Generator().manual_seed(rank)
    u, _ = torch.linalg.qr(torch.randn(200, rank, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(32, rank, generator=g, dtype=torch.float64))
    equal = u @ v.T * 5.0  # `rank` equal singular values: the entropy is log(rank)
    assert rankme(equal) == pytest.approx(rank, rel=1e-3)
    # unequal singular values 4 and 1 (rank 2): p = (0.8, 0.2), exp(entropy) by hand
    two = u[:, :1] @ v[:, :1].T * 4 + (u[:, 1:2] @ v[:, 1:2].T if rank > 1 else 0)
    if rank > 1:
        assert rankme(two) == pytest.approx(math.exp(-(0.8 * math.log(0.8) + 0.2 * math.log(0.2))), rel=1e-3)


def test_pooled_features_average_tokens_then_views():
    class Tokens(torch.nn.Module):  # (B, 3, T, H, W) -> (B, T*H*W tokens, 3 channels)
        def forward(self, x):
            return x.flatten(2).transpose(1, 2)

    video = torch.randn(2, 3, 3, 2, 4, 4)  # 2 clips of 3 views
    expected = video.mean(dim=(3, 4, 5)).mean(dim=1)
    assert torch.allclose(pooled_features(Tokens(), video), expected, atol=1e-6)
    assert torch.allclose(pooled_features(Tokens(), video[:, 0]), video[:, 0].mean(dim=(2, 3, 4)), atol=1e-6)


def test_evaluation_clips_are_fixed_by_the_seed_and_queries_never_in_the_bank():
    bank, queries, overlap = evaluation_indices(100, 0, 30, 20, seed=3)
    assert (bank, queries) == evaluation_indices(100, 0, 30, 20, seed=3)[:2]
    assert overlap and not set(bank) & set(queries) and len(bank) == 30 and len(queries) == 20
    assert evaluation_indices(100, 0, 30, 20, seed=4)[0] != bank
    bank, queries, overlap = evaluation_indices(100, 12, 30, 20, seed=3)
    assert queries == list(range(12)) and not overlap


def test_evaluations_draw_the_same_randomness_and_leave_the_runs_random_state_alone():
    import random

    from stjepa.online_eval import fixed_random_state

    def draws():
        return float(torch.rand(1)), random.random(), float(np.random.rand())

    def reseed():
        torch.manual_seed(1)
        random.seed(1)
        np.random.seed(1)

    reseed()
    with fixed_random_state(5, torch.device("cpu")):
        inside = draws()
    after = draws()
    reseed()
    assert after == draws()  # as if the block had not run
    with fixed_random_state(5, torch.device("cpu")):
        assert draws() == inside  # every evaluation sees the same random crops


def test_unlabelled_data_switches_the_knn_off_with_one_sentence():
    class OneClass:
        modality, num_classes = "video", 1

    source, why = labelled_source(OneClass())
    assert source is None and "has no class labels" in why and "callbacks.online_knn=null" in why


KNN = ["callbacks.online_knn.every_n_train_steps=2", "callbacks.online_knn.at_start=true",
       "callbacks.online_knn.train_clips=24",
       "callbacks.online_knn.val_clips=16", "callbacks.online_knn.k=5", "callbacks.online_knn.batch_size=8",
       "data.val_size=16", "trainer.max_steps=5", "attention=area_2x2",
       "callbacks.collapse_monitor.every_n_train_steps=2", "callbacks.collapse_monitor.clips=8"]


def run_train(run_dir, *overrides):  # FAST, but with the online k-NN and the collapse monitor on
    from stjepa.train_job import train

    kept = [o for o in FAST if not o.startswith(("callbacks.online_knn", "callbacks.collapse_monitor"))]
    return train(compose_config(run_dir, [*kept, *overrides]))


def final_weights(run_dir):
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]


@pytest.mark.slow
def test_online_knn_logs_at_start_every_n_steps_and_end_and_changes_no_weight(tmp_path):
    run_train(tmp_path / "with", *KNN)
    run_train(tmp_path / "without", *KNN, "callbacks.online_knn=null", "callbacks.collapse_monitor=null")
    rows = read_metrics(tmp_path / "with")
    top1 = series(rows, "online/knn_top1")
    assert [s for s, _ in top1] == [0, 2, 4, 5]
    assert all(0.0 <= v <= 1.0 for _, v in top1 + series(rows, "online/knn_top5"))
    assert not series(read_metrics(tmp_path / "without"), "online/knn_top1")
    for key in ("collapse/rankme_target", "collapse/rankme_online", "collapse/rankme_pred", "collapse/rankme_pred_targets"):
        values = series(rows, key)
        assert [s for s, _ in values] == [0, 2, 4], key  # step 0: the starting weights
        # between 1 and the feature width; pooled features of the 8 clips: at most 8
        assert all(1.0 <= v <= (8 if key.endswith(("target", "online")) else 192) for _, v in values), key
    # at step 0 the target encoder is a copy of the online one: the same features, the same rank
    assert series(rows, "collapse/rankme_target")[0] == series(rows, "collapse/rankme_online")[0]
    assert [s for s, v in series(rows, "collapse/seconds") if v > 0] == [0, 2, 4]
    # the running maximum the warning compares with leaves the step-0 reference out
    (state,) = [v for k, v in torch.load(tmp_path / "with" / "checkpoints" / "last.ckpt",
                                         weights_only=False)["callbacks"].items() if "CollapseMonitor" in k]
    assert state["running_max"] == max(v for s, v in series(rows, "collapse/rankme_target") if s > 0)
    a, b = final_weights(tmp_path / "with"), final_weights(tmp_path / "without")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_online_knn_of_a_resumed_run_continues_the_curve_exactly(tmp_path):
    snapshots = ["callbacks.model_checkpoint.every_n_train_steps=2", "callbacks.model_checkpoint.monitor=null",
                 "callbacks.model_checkpoint.save_top_k=-1"]
    run_train(tmp_path / "straight", *KNN, *snapshots)
    run_train(tmp_path / "resumed", *KNN, *snapshots, f"ckpt_path={tmp_path / 'straight/checkpoints/step000002.ckpt'}")
    straight = dict(series(read_metrics(tmp_path / "straight"), "online/knn_top1"))
    resumed = dict(series(read_metrics(tmp_path / "resumed"), "online/knn_top1"))
    assert sorted(resumed) == [4, 5]
    assert resumed == {s: straight[s] for s in (4, 5)}
    # the collapse monitor measures step 0 only in a run that starts there, not after a resume
    straight_rank = dict(series(read_metrics(tmp_path / "straight"), "collapse/rankme_target"))
    resumed_rank = dict(series(read_metrics(tmp_path / "resumed"), "collapse/rankme_target"))
    assert sorted(straight_rank) == [0, 2, 4] and resumed_rank == {4: straight_rank[4]}


def test_collapse_monitor_logs_step_0_but_leaves_it_out_of_the_running_maximum():
    from types import SimpleNamespace

    from stjepa.online_eval import CollapseMonitor

    monitor = CollapseMonitor(every_n_train_steps=100, min_fraction=0.5)
    monitor.source = object()  # as after setup; measure() is replaced by known values below
    values = iter([10.0, 4.0])  # the random initialisation's rank, then a lower one in training
    monitor.measure = lambda pl_module: {"collapse/rankme_target": next(values)}
    logged = []
    logger = SimpleNamespace(log_metrics=lambda metrics, step: logged.append((step, metrics["collapse/rankme_target"])))
    trainer = SimpleNamespace(global_step=0, global_rank=0, loggers=[logger])
    monitor.on_train_start(trainer, None)
    trainer.global_step = 100
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 4 < 0.5 x 10 would warn if step 0 counted
        monitor.on_train_batch_end(trainer, None, None, None, 0)
    assert logged == [(0, 10.0), (100, 4.0)] and monitor.running_max == 4.0 and not monitor.warned


def test_collapse_monitor_warns_once_or_stops_below_the_fraction_of_its_running_maximum():
    from stjepa.errors import CollapseError
    from stjepa.online_eval import CollapseMonitor

    monitor = CollapseMonitor(min_fraction=0.5, encoder_key="encoder")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step, value in enumerate([4.0, 10.0, 6.0, 5.0, 4.9, 3.0]):
            monitor.check(value, step, trainer=None)
    assert monitor.running_max == 10.0
    (warning,) = caught  # once, at the first value below 5.0
    assert str(warning.message).startswith("step 4: the effective rank (RankMe) of the encoder's features fell to "
                                           "4.90, below 0.5 of its running maximum 10.00")
    stopping = CollapseMonitor(min_fraction=0.5, action="stop")
    stopping.check(8.0, 0, trainer=None)
    with pytest.raises(CollapseError, match="step 7: .* fell to 3.00.*keeps its last checkpoint"):
        stopping.check(3.0, 7, trainer=None)
    with pytest.raises(Exception, match="action"):
        CollapseMonitor(action="halt")


@pytest.mark.slow
def test_online_knn_under_ddp_runs_on_rank_0_over_the_same_clips_as_one_process(tmp_path):
    knn = ["+callbacks.knn._target_=stjepa.online_eval.OnlineKNN", "+callbacks.knn.every_n_train_steps=2",
           "+callbacks.knn.at_start=true",
           "+callbacks.knn.train_clips=24", "+callbacks.knn.val_clips=16", "+callbacks.knn.k=5", "data.val_size=16",
           "trainer.max_steps=3"]
    out = run_script("train.py", *FAST, *knn, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
                     f"hydra.run.dir={tmp_path / 'ddp'}")
    assert out.returncode == 0, out.stderr[-3000:]
    ddp = series(read_metrics(tmp_path / "ddp"), "online/knn_top1")
    assert [s for s, _ in ddp] == [0, 2, 3]  # once per evaluation: rank 0 alone logs
    out = run_script("train.py", *FAST, *knn, f"hydra.run.dir={tmp_path / 'one'}")
    assert out.returncode == 0, out.stderr[-3000:]
    one = series(read_metrics(tmp_path / "one"), "online/knn_top1")
    assert one[0] == ddp[0]  # step 0: the same weights, the same clips, the same reading
