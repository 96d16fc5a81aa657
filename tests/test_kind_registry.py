"""Adding a kind of local attention is one module: a toy kind, registered as a kind module
registers itself, is built through the normal config path, runs, is counted by the FLOP
counter and computes what its dense masked reference says."""
import math
import pkgutil

import pytest
import torch

from stjepa.errors import ConfigError
from stjepa.networks import build_encoder
from stjepa.models import AttentionSettings, kinds
from stjepa.models.arguments import ArgumentError, one_of, positive_int
from stjepa.models.attention_backends import masked_attend
from stjepa.models.flops import encoder_flops, layer_pairs
from stjepa.models.grid import grid_positions
from stjepa.models.kinds import LocalKind, LocalLayout, find_kinds, register_kind
from stjepa.utils.bench import preset_layouts

MODEL = {"size": "vit_tiny", "depth": 3}
CROP, FRAMES = 64, 8  # a (4, 4, 4) token grid


class SameSliceLayout:
    """Tokens in grid order; a query sees the real keys of its own temporal slice."""

    def __init__(self, t_slice, backend, valid):
        self.t_slice, self.backend, self.valid = t_slice, "dense" if backend == "auto" else backend, valid

    def attend(self, q, k, v):
        seen = self.t_slice[:, None, :, None] == self.t_slice[:, None, None, :]
        if self.valid is not None:
            seen = seen & self.valid[:, None, None, :] | ~self.valid[:, None, :, None]
        return masked_attend(q, k, v, seen)


class SameSliceKind:
    """A query attends to the tokens of its own slice of ``frames`` token frames."""

    name = "same_slice"
    label = "same slice"
    BACKENDS = ("auto", "dense")
    is_global = False

    def __init__(self, frames: int = 1):
        self.frames = positive_int(frames, "frames")

    @property
    def tag(self):
        return f"slice{self.frames}"

    def validate(self, grid):
        if self.frames >= grid[0]:
            raise ArgumentError(f"{{frames}} covers all {grid[0]} token frames; allowed values are "
                                f"1..{grid[0] - 1}.", frames=self.frames)

    validate_settings = validate

    def _slices(self, ids, grid):
        return torch.div(grid_positions(ids, grid)[0], self.frames, rounding_mode="floor")

    def prepare(self, ids, grid, backend="auto", valid=None):
        one_of(backend, "backend", self.BACKENDS)
        order = ids.argsort(dim=1)
        return order, (SameSliceLayout(self._slices(ids.gather(1, order), grid), backend,
                                       None if valid is None else valid.gather(1, order)),)

    def mask(self, ids, grid):
        s = self._slices(ids, grid)
        return (s[:, :, None] == s[:, None, :],)

    def pairs(self, ids, grid):
        return (int(self.mask(ids, grid)[0].sum()),)


@pytest.fixture
def same_slice():
    register_kind(SameSliceKind)  # what the module's @register_kind does when the package is listed
    yield SameSliceKind
    kinds._REGISTRY.pop(SameSliceKind.name)


def test_every_kind_module_is_listed_has_a_preset_and_fits_the_interface():
    modules = {info.name for info in pkgutil.iter_modules(kinds.__path__)}
    assert set(find_kinds()) == modules  # each module of the package is one kind
    built = [AttentionSettings.create(settings).built_kind for settings in preset_layouts().values()]
    assert {kind.name for kind in built} == modules
    assert all(isinstance(kind, LocalKind) for kind in built)


def test_a_new_kind_builds_runs_and_is_counted(same_slice):
    attention = {"kind": "same_slice", "frames": 2, "area_start": 0, "area_end": 2, "predictor": {}}
    encoder = build_encoder(MODEL, attention, CROP, FRAMES)
    assert isinstance(encoder.attention.built_kind, LocalKind)
    assert encoder.attention.tag == "slice2-L0:2" and encoder.attention_pattern == (True, True, False)

    torch.manual_seed(0)
    x = torch.randn(2, 3, FRAMES, CROP, CROP)
    ids = torch.stack([torch.randperm(64)[:40] for _ in range(2)])
    out = encoder(x, ids)
    assert out.shape == (2, 40, encoder.embed_dim) and torch.isfinite(out).all()
    order, layouts = encoder.attention.built_kind.prepare(ids, (4, 4, 4))
    assert all(isinstance(layout, LocalLayout) for layout in layouts)

    # the FLOP counter takes the kind's pairs: 40 tokens in 2 slices of 2 token frames each
    pairs = sum(int(((grid_positions(row, (4, 4, 4))[0] // 2) == s).sum()) ** 2 for row in ids for s in (0, 1))
    assert layer_pairs(ids, (4, 4, 4), encoder) == [pairs, pairs, 2 * 40 * 40]
    flops = encoder_flops(encoder, 2, (4, 4, 4), ids)
    assert flops.attention == 4.0 * encoder.embed_dim * (2 * pairs + 2 * 40 * 40)
    assert flops.attention < flops.attention_if_full


def test_a_new_kind_equals_dense_masked_attention_in_one_layer(same_slice):
    encoder = build_encoder(MODEL, {"kind": "same_slice", "frames": 1, "predictor": {}}, CROP, FRAMES)
    attn = encoder.blocks[0].attn
    ids = torch.stack([torch.randperm(64)[:24] for _ in range(2)])
    order, (layout,) = encoder.attention.built_kind.prepare(ids, (4, 4, 4))
    ids = ids.gather(1, order)
    x = torch.randn(2, 24, encoder.embed_dim, dtype=torch.float64)
    attn = attn.double()
    out = attn(x, None, layout)

    # the reference: explicit scores, -inf outside the query's own token frame, softmax
    B, N, C = x.shape
    heads, d = attn.num_heads, attn.head_dim
    q, k, v = attn.qkv(x).view(B, N, 3, heads, d).permute(2, 0, 3, 1, 4)
    t = grid_positions(ids, (4, 4, 4))[0]
    seen = t[:, None, :, None] == t[:, None, None, :]
    scores = (q @ k.transpose(-1, -2) / math.sqrt(d)).masked_fill(~seen, float("-inf"))
    expected = attn.proj((scores.softmax(-1) @ v).transpose(1, 2).reshape(B, N, C))
    torch.testing.assert_close(out, expected)


def test_a_new_kinds_settings_are_config_keys(same_slice):
    with pytest.raises(ConfigError, match=r"^attention.frames=4 covers all 4 token frames"):
        build_encoder(MODEL, {"kind": "same_slice", "frames": 4, "predictor": {}}, CROP, FRAMES)
    with pytest.raises(ConfigError, match=r"^attention.frames=2 is a same_slice attention setting, which "
                                          r"attention.kind='neighborhood' does not use"):
        build_encoder(MODEL, {"kind": "neighborhood", "window": [3, 3, 3], "frames": 2, "predictor": {}}, CROP,
                      FRAMES)
