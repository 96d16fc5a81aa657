"""CUDA-only paths: varlen and compiled flex backends (with gradients) and bf16 encoder runs.
Skipped without a GPU; run them on a GPU machine before publishing GPU figures."""
import pytest
import torch

from stjepa.models import AreaLayout, vit
from test_area_attention import qkv, reference_area_attention, uneven_areas

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.mark.parametrize("backend", ["varlen", "flex", "padded", "equal_or_auto"])
def test_cuda_backends_match_reference_in_bf16(backend):
    area = uneven_areas(batch=3, tokens=200, num_areas=6).cuda()
    q, k, v = (t.detach().cuda().to(torch.bfloat16).requires_grad_() for t in qkv((3, 4, 200, 64)))
    ref = reference_area_attention(q.float(), k.float(), v.float(), area)
    layout = AreaLayout(area, 6, "auto" if backend == "equal_or_auto" else backend)
    out = layout.attend(q, k, v)
    torch.testing.assert_close(out.float(), ref, atol=2e-2, rtol=2e-2)
    g = torch.randn_like(ref)
    grads = torch.autograd.grad(out.float(), (q, k, v), g)
    ref_grads = torch.autograd.grad(ref, (q, k, v), g)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got.float(), want.float(), atol=5e-2, rtol=5e-2)


def test_bf16_area_encoder_close_to_fp32_dense():
    torch.manual_seed(0)
    cfg = dict(temporal_splits=2, spatial_splits=2)
    fast = vit("vit_small", img_size=128, num_frames=8, attention=cfg).cuda()
    ref = vit("vit_small", img_size=128, num_frames=8, attention=dict(cfg, backend="dense")).cuda()
    ref.load_state_dict(fast.state_dict())
    x = torch.randn(2, 3, 8, 128, 128, device="cuda")
    masks = torch.stack([torch.randperm(256, device="cuda")[:70] for _ in range(2)])
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = fast(x, masks)
    want = ref(x, masks)
    assert (out.float() - want).abs().mean() < 3e-2
    assert fast(x).shape == (2, 256, 384)  # the unmasked grid takes the equal-area path


def window_kind(name):
    from stjepa.models.kinds.neighborhood import NeighborhoodKind
    from stjepa.models.kinds.sliding_tile import SlidingTileKind
    from stjepa.models.kinds.topk_blocks import TopkBlocksKind

    return {"neighborhood": NeighborhoodKind([3, 5, 5], [1, 1, 1]), "sliding_tile": SlidingTileKind([2, 2, 2], [1, 3, 3]),
            "topk_blocks": TopkBlocksKind([1, 2, 4], 3)}[name]


@pytest.mark.parametrize("kind_name, backend", [("neighborhood", "flex"), ("sliding_tile", "flex"),
                                                ("sliding_tile", "gather"), ("topk_blocks", "flex"),
                                                ("topk_blocks", "gather")])
@pytest.mark.parametrize("keep", [150, 256])  # sparse tokens, every token of the 4 x 8 x 8 grid
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-4), (torch.bfloat16, 5e-2)])
def test_cuda_window_kinds_match_the_dense_reference_with_gradients(kind_name, backend, keep, dtype, tol):
    """Each fast backend against the kind's dense backend in fp32 on the same (bf16-rounded)
    inputs, so top-k blocks choose the same blocks in both."""
    grid, kind = (4, 8, 8), window_kind(kind_name)
    ids = torch.stack([torch.randperm(256)[:keep].sort().values for _ in range(2)]).cuda()
    order, (fast,) = kind.prepare(ids, grid, backend)
    _, (dense,) = kind.prepare(ids, grid, "dense")
    q, k, v = (torch.randn(2, 4, keep, 64, device="cuda", dtype=dtype, requires_grad=True) for _ in range(3))
    out, ref = fast.attend(q, k, v), dense.attend(q.float(), k.float(), v.float())
    torch.testing.assert_close(out.float(), ref, atol=tol, rtol=tol)
    g = torch.randn_like(ref)
    for got, want in zip(torch.autograd.grad(out.float(), (q, k, v), g), torch.autograd.grad(ref, (q, k, v), g)):
        torch.testing.assert_close(got.float(), want.float(), atol=2 * tol, rtol=2 * tol)


def test_a_full_attention_training_step_on_cuda_never_waits_for_the_device(tmp_path):
    """Forward and backward of the V-JEPA step read nothing back on the host: the mask range
    checks run on the device (torch._assert_async), so the step can be queued ahead and captured."""
    from hydra.utils import instantiate

    from stjepa.data.collate import MaskingCollate
    from stjepa.utils.host_syncs import HostSyncCounter
    from train_helpers import compose_config

    cfg = compose_config(tmp_path, ["data.crop_size=128", "data.frames_per_clip=16"])
    module = instantiate(cfg.module, _convert_="all").cuda()
    collate = MaskingCollate(module.encoder.default_grid, [dict(v) for v in cfg.mask.values()], seed=0)
    batch = collate([{"video": torch.randn(3, 16, 128, 128), "index": i} for i in range(4)])
    batch = {k: ([m.cuda() for m in v] if isinstance(v, list) else v.cuda() if torch.is_tensor(v) else v)
             for k, v in batch.items()}
    with HostSyncCounter() as syncs:
        loss = module.shared_step(batch)[0]
        loss.backward()
    assert syncs.total == 0, syncs.by_place
    torch.cuda.synchronize()
