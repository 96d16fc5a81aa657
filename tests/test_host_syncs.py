"""Host syncs of a training step, counted with stjepa.utils.host_syncs against hand counts."""
import pytest
import torch

from stjepa.data.collate import MaskingCollate
from stjepa.data.masks import V_JEPA2_MASKS
from stjepa.utils.host_syncs import HostSyncCounter
from step_helpers import CROP, FRAMES, IMAGE_MASKS, KIND_PRESETS, build_module
from train_helpers import CHILD_TIMEOUT


def test_the_counter_counts_reads_of_device_tensors_only():
    x = torch.arange(6.0)
    with HostSyncCounter(package="tests/") as syncs:
        host = x.cpu()            # 1: a device-to-host copy
        (host + 1).tolist()       # 0: already on the host
        bool(x.sum() > 0)         # 1
        int(x.argmax())           # 1
        x[x > 2]                  # 1: the output size depends on the data
        torch.cat([x, x]).view(3, 4).sum(0)  # 0: no read
        host[host > 2]            # 0
    assert syncs.total == 4, syncs.by_place


@pytest.mark.parametrize("version", ["2.0", "2.1"])
@pytest.mark.parametrize("layout", KIND_PRESETS)
def test_no_host_sync_in_a_training_step_forward_and_backward(layout, version):
    """Every attention preset of every kind (encoder and predictor), padded masks as the collate
    draws them, video and image steps: not one read of a device tensor by the host."""
    module = build_module(layout, version)
    for frames in (FRAMES, 1):
        clips = module.on_after_batch_transfer({"video": torch.randn(2, 3, frames, CROP, CROP)}, 0)["video"]
        grid = module.input_grid(clips.shape)
        try:
            module.encoder.attention.validate_grid(grid)
        except ValueError:
            continue  # a preset made for clips does not take a 1-frame grid
        specs = IMAGE_MASKS if grid[0] == 1 else V_JEPA2_MASKS
        collate = MaskingCollate(grid, specs, seed=0, pad=True)
        batch = collate([{"video": c, "index": i} for i, c in enumerate(clips)])
        with HostSyncCounter() as syncs:
            loss = module.shared_step(batch)[0]
            loss.backward()
        assert syncs.total == 0, syncs.by_place


def test_the_operation_counter_counts_kernels_not_views_or_allocations():
    from stjepa.utils.op_count import OpCounter

    x = torch.arange(6.0)
    with OpCounter() as ops:
        y = x + 1                  # 1: add
        z = y.view(2, 3)           # 0: a view
        w = z.t().contiguous()     # 1: the copy (t is a view)
        w.sum().item()             # 2: sum, and the scalar read (a sync on a GPU)
        torch.empty(3)             # 0: memory only
    assert (ops.total, ops.scalar_reads) == (4, 1), ops.by_op


@pytest.mark.slow
def test_count_launches_script_at_a_tiny_size(tmp_path):
    """The counting script end to end: neither the full-attention step nor the area step reads
    the device (the index range checks are device asserts, area sizes come from the grid)."""
    import csv
    import subprocess
    import sys

    from train_helpers import ROOT

    out = tmp_path / "counts.csv"
    result = subprocess.run([sys.executable, "scripts/count_launches.py", "--model", "vit_tiny", "--sizes",
                             "64px/8f-b2", "--layouts", "full", "2x2", "--csv", str(out)], cwd=ROOT,
                            capture_output=True, text=True, check=False, timeout=CHILD_TIMEOUT)
    assert result.returncode == 0, result.stderr
    rows = {r["layout"]: r for r in csv.DictReader(open(out))}
    assert int(rows["full"]["host_syncs"]) == 0 and rows["full"]["sync_places"] == ""
    assert int(rows["2x2"]["host_syncs"]) == 0 and int(rows["2x2"]["operations"]) > int(rows["full"]["operations"]) > 1000


def test_index_checks_raise_on_the_cpu_and_assert_on_the_device_when_compiled():
    from stjepa.models.grid import check_indices

    bad = torch.tensor([[0, 5, 8]])  # 8 is outside a 2x2x2 grid
    with pytest.raises(ValueError, match=r"mask indices must lie in 0..7 for a 2x2x2 token grid \(-1: an empty "
                                         r"slot\); got values in 0..8"):
        check_indices([bad], (2, 2, 2))
    with HostSyncCounter(package="stjepa/") as syncs:
        check_indices([torch.tensor([[0, 7, -1]])], (2, 2, 2))  # a good one passes without a host read
    assert syncs.total == 0, syncs.by_place
    checked = torch.compile(lambda ids: check_indices([ids], (2, 2, 2)) or ids + 1, fullgraph=True, backend="eager")
    assert torch.equal(checked(torch.tensor([[0, 7]])), torch.tensor([[1, 8]]))  # one graph, no host read
    with pytest.raises(RuntimeError, match="mask indices must lie in 0..7"):
        checked(bad)


@pytest.mark.slow
@pytest.mark.parametrize("version", ["2.0", "2.1"])
def test_encoder_and_predictor_compile_to_one_graph_each_and_match_eager(version):
    """torch.compile(fullgraph=True): no graph break (a break would be a host sync or Python
    control flow on device values), forward and gradients as in eager mode."""
    from stjepa.models import VisionTransformerPredictor, vit

    torch.manual_seed(0)
    encoder = vit("vit_tiny", img_size=32, num_frames=4, depth=4, version=version)
    predictor = VisionTransformerPredictor(img_size=32, num_frames=4, embed_dim=encoder.embed_dim,
                                           predictor_embed_dim=32, depth=2, num_heads=2, version=version)
    clips = torch.randn(2, 3, 4, 32, 32)
    grid = encoder.default_grid  # 2 x 2 x 2
    context = [torch.tensor([[0, 2, 5, 7], [1, 3, 4, 6]]), torch.tensor([[0, 1, 6, 7], [2, 3, 4, 5]])]
    targets = [torch.tensor([[1, 3, 4, 6], [0, 2, 5, 7]]), torch.tensor([[2, 3, 4, 5], [0, 1, 6, 7]])]
    levels = "all" if version == "2.1" else None

    def step(enc, pred):
        z = enc(clips, context, levels=levels)
        preds = pred(z, context, targets, mask_index=0, grid=grid)
        loss = sum(p.square().mean() for p in preds)
        grads = torch.autograd.grad(loss, [*encoder.parameters(), *predictor.parameters()], allow_unused=True)
        return loss, grads

    eager_loss, eager_grads = step(encoder, predictor)
    compiled_loss, compiled_grads = step(torch.compile(encoder, fullgraph=True, backend="aot_eager"),
                                         torch.compile(predictor, fullgraph=True, backend="aot_eager"))
    assert torch.allclose(compiled_loss, eager_loss, rtol=1e-5, atol=1e-6)
    for a, b in zip(eager_grads, compiled_grads):
        assert (a is None) == (b is None) and (a is None or torch.allclose(a, b, rtol=1e-4, atol=1e-6))
