"""Neighborhood attention against an independent reference: NATTEN's window written as lists of
cells, and an explicit masked softmax."""
import math

import pytest
import torch

from stjepa.models import ArgumentError, AttentionSettings, vit
from stjepa.models.kinds.neighborhood import NeighborhoodKind

F64 = torch.float64


def natten_cells(i, length, kernel, dilation):
    """The cells one query at i sees along an axis: the k cells of its residue class (every
    dilation-th cell) nearest to it, the run shifted inward at the ends."""
    same_class = list(range(i % dilation, length, dilation))
    j = same_class.index(i)
    start = min(max(j - kernel // 2, 0), len(same_class) - kernel)
    return set(same_class[start:start + kernel])


def reference_mask(ids, grid, window, dilation):
    T, H, W = grid
    out = torch.zeros(ids.shape[0], ids.shape[1], ids.shape[1], dtype=torch.bool)
    for b, row in enumerate(ids.tolist()):
        cells = [(i // (H * W), i // W % H, i % W) for i in row]
        for qi, q in enumerate(cells):
            seen = [natten_cells(c, n, k, d) for c, n, k, d in zip(q, grid, window, dilation)]
            for ki, key in enumerate(cells):
                out[b, qi, ki] = all(c in s for c, s in zip(key, seen))
    return out


def reference_attention(q, k, v, mask):
    """Masked softmax attention; ``mask`` is (B, N, N), or (B, heads, N, N) per head."""
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    return scores.masked_fill(~(mask if mask.dim() == 4 else mask[:, None]), float("-inf")).softmax(-1) @ v


def assert_same_attention(out, expected, q, k, v):
    """Equal outputs and, where q, k, v take gradients, equal gradients of a squared sum
    (FlexAttention has no CPU backward: its gradients are checked in test_cuda.py)."""
    torch.testing.assert_close(out, expected)
    if q.requires_grad:
        grads = torch.autograd.grad(out.square().sum(), (q, k, v))
        for a, b in zip(grads, torch.autograd.grad(expected.square().sum(), (q, k, v))):
            torch.testing.assert_close(a, b)


def sparse_ids(grid, batch, keep, seed):
    """Random visible cells per sample (sorted), as the context encoder gets them."""
    g = torch.Generator().manual_seed(seed)
    n = grid[0] * grid[1] * grid[2]
    return torch.stack([torch.randperm(n, generator=g)[:keep].sort().values for _ in range(batch)])


CASES = [((4, 6, 5), (3, 3, 3), (1, 1, 1)), ((3, 7, 8), (1, 5, 3), (1, 1, 2)), ((5, 8, 6), (3, 3, 1), (1, 2, 1)),
         ((2, 9, 9), (1, 3, 3), (2, 3, 3))]


@pytest.mark.parametrize("grid, window, dilation", CASES)
def test_mask_matches_the_listed_windows(grid, window, dilation):
    kind = NeighborhoodKind(window, dilation)
    kind.validate(grid)
    full = torch.arange(grid[0] * grid[1] * grid[2])[None]
    for ids in (full, sparse_ids(grid, 2, full.shape[1] // 3, seed=0)):
        expected = reference_mask(ids, grid, window, dilation)
        assert torch.equal(kind.mask(ids, grid)[0], expected)
        assert kind.pairs(ids, grid) == (int(expected.sum()),)
    # on a full grid every query sees exactly kt * kh * kw cells, at the border too
    assert (kind.mask(full, grid)[0].sum(-1) == math.prod(window)).all()


@pytest.mark.parametrize("backend", ["dense", "flex"])
@pytest.mark.parametrize("grid, window, dilation", CASES[:2])
def test_backends_match_the_masked_softmax_reference(backend, grid, window, dilation):
    kind = NeighborhoodKind(window, dilation)
    ids = sparse_ids(grid, 2, 37, seed=1)
    order, (layout,) = kind.prepare(ids, grid, backend)
    ids = ids.gather(1, order)  # the order the layers run in
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(2, 3, ids.shape[1], 8, generator=g, dtype=F64).requires_grad_(backend != "flex")
               for _ in range(3))
    expected = reference_attention(q, k, v, reference_mask(ids, grid, window, dilation))
    assert_same_attention(layout.attend(q, k, v), expected, q, k, v)


def test_an_encoder_whose_window_covers_the_grid_is_full_attention():
    torch.manual_seed(0)
    full = vit("vit_tiny", img_size=80, num_frames=6, depth=2).double()
    local = vit("vit_tiny", img_size=80, num_frames=6, depth=2,
                attention=dict(kind="neighborhood", window=[3, 5, 5], area_end=2)).double()
    local.load_state_dict(full.state_dict())
    assert all(local.attention_pattern)
    x = torch.randn(2, 3, 6, 80, 80, dtype=F64)
    masks = sparse_ids((3, 5, 5), 2, 30, seed=3)
    torch.testing.assert_close(local(x, masks), full(x, masks))
    # a smaller window is a different function
    local.set_attention(dict(kind="neighborhood", window=[1, 3, 3], area_end=2))
    assert not torch.allclose(local(x, masks), full(x, masks))


@pytest.mark.parametrize("settings, message", [
    (dict(window=[3, 4, 3]), r"^window=\[3, 4, 3\] needs odd sizes"),
    (dict(window=[3, 5]), r"^window=\[3, 5\] must be three odd window sizes"),
    (dict(window=[3, 9, 3]), r"^window=\[3, 9, 3\] with dilation=\[1, 1, 1\] does not fit the 4 cells of the h axis"),
    (dict(window=[3, 3, 3], dilation=[1, 2, 1]), r"does not fit the 4 cells of the h axis"),
    (dict(window=[3, 3, 3], temporal_splits=2), r"^temporal_splits=2 is an area attention setting, which "
                                                r"kind='neighborhood' does not use"),
    (dict(window=[3, 3, 3], backend="equal"), r"^backend='equal' is not known; allowed values are auto, dense, flex"),
])
def test_bad_settings_name_the_argument(settings, message):
    with pytest.raises(ArgumentError, match=message):
        vit("vit_tiny", img_size=64, num_frames=8, depth=2, attention=dict(kind="neighborhood", **settings))


def test_tags_and_patterns():
    config = AttentionSettings.create(dict(kind="neighborhood", window=[3, 7, 7], dilation=None, area_end=12))
    assert config.tag == "nbhd3x7x7-L0:12" and config.local_layer_flags(24) == (True,) * 12 + (False,) * 12
    assert AttentionSettings.create(dict(kind="neighborhood", window=[1, 3, 3], dilation=[1, 2, 2])).tag.startswith(
        "nbhd1x3x3d1x2x2")
