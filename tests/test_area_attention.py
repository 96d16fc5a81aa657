"""Area attention backends against an explicit masked-softmax reference."""
import math

import pytest
import torch

from stjepa.models import AreaLayout, AttentionSettings, vit
from stjepa.models.kinds.area import area_index

F64 = torch.float64  # tight tolerances against the reference

def reference_area_attention(q, k, v, area):
    """softmax(q k^T / sqrt(d) masked to the same area) v, one sample at a time."""
    outs = []
    for b in range(q.shape[0]):
        same = area[b][:, None] == area[b][None, :]
        scores = q[b] @ k[b].transpose(-1, -2) / math.sqrt(q.shape[-1])
        scores = scores.masked_fill(~same, float("-inf"))
        outs.append(scores.softmax(-1) @ v[b])
    return torch.stack(outs)


def uneven_areas(batch=3, tokens=23, num_areas=6, seed=0):
    """Sorted area ids per sample with empty, single-token and large areas."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for b in range(batch):
        # area 0 holds one token, area 2 is empty, the rest random
        rest = torch.randint(3, num_areas, (tokens - 2,), generator=g)
        row = torch.cat([torch.tensor([0, 1]), rest]) if b != 1 else torch.cat([torch.tensor([1, 1]), rest])
        rows.append(row.sort().values)
    return torch.stack(rows)


def qkv(shape, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=g, dtype=F64).requires_grad_() for _ in range(3)]


@pytest.mark.parametrize("backend", ["dense", "padded", "flex"])
def test_backend_matches_reference_outputs_and_gradients(backend):
    area = uneven_areas()
    counts = torch.stack([torch.bincount(a, minlength=6) for a in area])
    assert (counts == 0).any() and (counts == 1).any()  # the cases that matter are present
    q, k, v = qkv((3, 2, area.shape[1], 8))
    ref = reference_area_attention(q, k, v, area)
    grad_out = torch.randn_like(ref)
    ref_grads = torch.autograd.grad(ref, (q, k, v), grad_out)

    layout = AreaLayout(area, num_areas=6, backend=backend)
    if backend == "flex":  # FlexAttention has no CPU backward; check the forward only
        with torch.no_grad():
            out = layout.attend(q.float(), k.float(), v.float())
        torch.testing.assert_close(out.double(), ref.detach(), atol=2e-5, rtol=1e-4)
        return
    out = layout.attend(q, k, v)
    torch.testing.assert_close(out, ref)
    for got, want in zip(torch.autograd.grad(out, (q, k, v), grad_out), ref_grads):
        torch.testing.assert_close(got, want)


def test_equal_backend_matches_reference():
    area = torch.arange(4).repeat_interleave(6).expand(2, 24)
    q, k, v = qkv((2, 3, 24, 8))
    layout = AreaLayout(area, num_areas=4)
    assert layout.backend == "equal"
    out = layout.attend(q, k, v)
    ref = reference_area_attention(q, k, v, area)
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(ref)
    for got, want in zip(torch.autograd.grad(out, (q, k, v), g), torch.autograd.grad(ref, (q, k, v), g)):
        torch.testing.assert_close(got, want)


def test_auto_backend_on_cpu_uses_padding_for_uneven_areas():
    assert AreaLayout(uneven_areas(), num_areas=6).backend == "padded"


def test_per_layer_reorder_inside_attention_matches_reference():
    # tokens in a scrambled order; the layout sorts them itself and restores the order
    area = uneven_areas()
    perm = torch.stack([torch.randperm(area.shape[1], generator=torch.Generator().manual_seed(b)) for b in range(3)])
    scrambled = area.gather(1, perm)
    q, k, v = qkv((3, 2, area.shape[1], 8))
    order = scrambled.argsort(dim=1, stable=True)
    layout = AreaLayout(scrambled, num_areas=6, backend="padded", reorder=order)
    torch.testing.assert_close(layout.attend(q, k, v), reference_area_attention(q, k, v, scrambled))


def test_area_index_hand_count():
    # grid 4 x 3 x 5 with 2 x 2 x 3 splits: floor(pos * S / L) per axis
    t, h, w = torch.tensor([0, 1, 2, 3, 3]), torch.tensor([0, 1, 2, 2, 1]), torch.tensor([0, 1, 2, 4, 3])
    splits = AttentionSettings.create(dict(temporal_splits=2, height_splits=2, width_splits=3)).built_kind.splits
    ids = area_index(t, h, w, (4, 3, 5), splits)
    # t-slice: 0,0,1,1,1   h-slice: 0,0,1,1,0   w-slice: 0,0,1,2,1 (3*3//5=1, 4*3//5=2)
    expected = [(0 * 2 + 0) * 3 + 0, (0 * 2 + 0) * 3 + 0, (1 * 2 + 1) * 3 + 1, (1 * 2 + 1) * 3 + 2, (1 * 2 + 0) * 3 + 1]
    assert ids.tolist() == expected


def small_encoder(**attention):
    torch.manual_seed(0)
    return vit("vit_tiny", img_size=64, num_frames=4, depth=4, attention=attention or None).double()


def random_masks(batch, keep, numel, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(numel, generator=g)[:keep] for _ in range(batch)])


@pytest.mark.parametrize("backend", ["padded"])
@pytest.mark.parametrize("reorder", ["once", "per_layer"])
def test_encoder_backends_match_dense_outputs_and_grads(backend, reorder):
    cfg = dict(temporal_splits=2, spatial_splits=2, area_end=3, reorder=reorder)
    model = small_encoder(**cfg, backend=backend)
    ref_model = small_encoder(**cfg, backend="dense")
    ref_model.load_state_dict(model.state_dict())
    x = torch.randn(3, 3, 4, 64, 64, dtype=F64)
    masks = [random_masks(3, 11, 32, seed=1), random_masks(3, 5, 32, seed=2)]
    outs, refs = model(x, masks), ref_model(x, masks)
    for o, r in zip(outs, refs):
        torch.testing.assert_close(o, r)
    sum(o.pow(2).sum() for o in outs).backward()
    sum(r.pow(2).sum() for r in refs).backward()
    for (name, p), p_ref in zip(model.named_parameters(), ref_model.parameters()):
        torch.testing.assert_close(p.grad, p_ref.grad, msg=name)


def test_sorting_once_equals_sorting_in_every_layer():
    cfg = dict(temporal_splits=2, spatial_splits=2, area_start=1, area_end=4)
    once = small_encoder(**cfg, reorder="once")
    per_layer = small_encoder(**cfg, reorder="per_layer")
    per_layer.load_state_dict(once.state_dict())
    x = torch.randn(2, 3, 4, 64, 64, dtype=F64)
    masks = random_masks(2, 19, 32, seed=3)
    torch.testing.assert_close(once(x, masks), per_layer(x, masks))
    torch.testing.assert_close(once(x), per_layer(x))


def test_output_follows_caller_order():
    model = small_encoder(spatial_splits=2)
    x = torch.randn(2, 3, 4, 64, 64, dtype=F64)
    masks = random_masks(2, 17, 32, seed=4)
    perm = torch.randperm(17)
    torch.testing.assert_close(model(x, masks)[:, perm], model(x, masks[:, perm]))


@pytest.mark.parametrize("backend", ["auto", "dense", "padded", "equal"])
def test_one_area_is_full_attention(backend):
    q, k, v = qkv((2, 3, 17, 8))
    layout = AreaLayout(torch.zeros(2, 17, dtype=torch.long), num_areas=1, backend=backend)
    scores = (q @ k.transpose(-1, -2) / math.sqrt(8)).softmax(-1)  # plain global attention
    torch.testing.assert_close(layout.attend(q, k, v), scores @ v)


def test_single_area_config_runs_global_layers():
    assert small_encoder(temporal_splits=1, spatial_splits=1, area_end=4).attention_pattern == (False,) * 4


def test_full_weights_load_strictly_into_area_model_and_area_changes_function():
    full = small_encoder()
    area = small_encoder(temporal_splits=2, spatial_splits=2)
    area.load_state_dict(full.state_dict(), strict=True)
    assert full.state_dict().keys() == area.state_dict().keys()
    x = torch.randn(1, 3, 4, 64, 64, dtype=F64)
    assert not torch.allclose(full(x), area(x))  # the layout matters, the parameters do not differ


def test_area_attention_is_block_local_in_the_encoder():
    # changing the pixels of one area must not move features of another area in the first layer
    model = vit("vit_tiny", img_size=64, num_frames=2, depth=1, attention=dict(spatial_splits=2, area_end=1))
    model = model.double().eval()
    x = torch.randn(1, 3, 2, 64, 64, dtype=F64)
    y = x.clone()
    y[..., :32, :32] += 1.0  # top-left area only
    fx, fy = model(x), model(y)
    grid_h = torch.arange(16) // 4
    grid_w = torch.arange(16) % 4
    top_left = (grid_h < 2) & (grid_w < 2)
    assert torch.allclose(fx[0, ~top_left], fy[0, ~top_left])
    assert not torch.allclose(fx[0, top_left], fy[0, top_left])
