"""Faithfulness to the official V-JEPA 2 code: key layout, RoPE quirk, encoder and predictor
outputs against the plain restatement in vjepa2_reference.py, and the checkpoint round trip."""
import pytest
import torch

import vjepa2_reference as ref
from stjepa.errors import CheckpointError
from stjepa.weights import export_official, load_official
from stjepa.models import VisionTransformerPredictor, vit
from stjepa.models.rope import RopeTables, apply_rope

F64 = torch.float64

# Key names and shapes of the official ViT-L encoder block 0 and the predictor (from the
# published module tree), checked against what our modules declare.
OFFICIAL_VITL_KEYS = {
    "patch_embed.proj.weight": (1024, 3, 2, 16, 16),
    "patch_embed.proj.bias": (1024,),
    "blocks.0.norm1.weight": (1024,),
    "blocks.0.attn.qkv.weight": (3072, 1024),
    "blocks.0.attn.qkv.bias": (3072,),
    "blocks.0.attn.proj.weight": (1024, 1024),
    "blocks.0.norm2.bias": (1024,),
    "blocks.0.mlp.fc1.weight": (4096, 1024),
    "blocks.0.mlp.fc2.weight": (1024, 4096),
    "blocks.23.mlp.fc2.bias": (1024,),
    "norm.weight": (1024,),
}
OFFICIAL_PREDICTOR_KEYS = {
    "predictor_embed.weight": (384, 1024),
    "mask_tokens.0": (1, 1, 384),
    "mask_tokens.9": (1, 1, 384),
    "predictor_blocks.11.attn.qkv.weight": (1152, 384),
    "predictor_norm.weight": (384,),
    "predictor_proj.weight": (1024, 384),
    "predictor_proj.bias": (1024,),
}


def test_vit_large_and_predictor_key_layout_matches_official():
    with torch.device("meta"):
        enc = vit("vit_large")
        pred = VisionTransformerPredictor(embed_dim=1024, predictor_embed_dim=384, depth=12, num_heads=12)
    enc_shapes = {k: tuple(v.shape) for k, v in enc.state_dict().items()}
    pred_shapes = {k: tuple(v.shape) for k, v in pred.state_dict().items()}
    for key, shape in OFFICIAL_VITL_KEYS.items():
        assert enc_shapes[key] == shape, key
    for key, shape in OFFICIAL_PREDICTOR_KEYS.items():
        assert pred_shapes[key] == shape, key
    assert len(enc_shapes) == 2 + 24 * 12 + 2  # patch embed, 12 tensors per block, final norm
    D, M = 1024, 4096  # hand count: qkv, proj, fc1, fc2 with biases, two norms per block
    per_block = (D * 3 * D + 3 * D) + (D * D + D) + (D * M + M) + (M * D + D) + 4 * D
    patch = D * 3 * 2 * 16 * 16 + D
    assert sum(v.numel() for v in enc.parameters()) == 24 * per_block + patch + 2 * D


@pytest.mark.parametrize("head_dim", [64, 80, 32, 22])
def test_rope_tables_reproduce_official_rotation(head_dim):
    g = torch.Generator().manual_seed(0)
    B, H, N = 2, 3, 40
    q = torch.randn(B, H, N, head_dim, generator=g, dtype=F64)
    t, h, w = (torch.randint(0, 16, (B, N), generator=g) for _ in range(3))
    r = 2 * ((head_dim // 3) // 2)
    parts = [ref.rotate_queries_or_keys(q[..., i * r : (i + 1) * r], p[:, None, :].repeat(1, H, 1).to(F64))
             for i, p in enumerate((t, h, w))] + [q[..., 3 * r :]]
    expected = torch.cat(parts, -1)
    got = apply_rope(q, RopeTables.from_positions(t, h, w, head_dim, F64))
    torch.testing.assert_close(got, expected)


def tiny_pair(**attention):
    torch.manual_seed(0)
    enc = vit("vit_tiny", img_size=64, num_frames=4, depth=3, attention=attention or None).double()
    pred = VisionTransformerPredictor(img_size=64, num_frames=4, embed_dim=192, predictor_embed_dim=96,
                                      depth=2, num_heads=4, num_mask_tokens=3).double()
    for p in pred.mask_tokens:  # non-zero tokens so a wrong token index would show
        torch.nn.init.normal_(p)
    return enc, pred


def masks_for(batch, keep, numel, seed):
    g = torch.Generator().manual_seed(seed)
    perms = [torch.randperm(numel, generator=g) for _ in range(batch)]
    return torch.stack([p[:keep] for p in perms]), torch.stack([p[keep:] for p in perms])


def test_encoder_matches_official_forward_unmasked_and_masked():
    enc, _ = tiny_pair()
    x = torch.randn(2, 3, 4, 64, 64, dtype=F64)
    sd = enc.state_dict()
    torch.testing.assert_close(enc(x), ref.encoder_forward(sd, x, num_heads=3))
    ctx, _ = masks_for(2, 12, 32, seed=1)
    ctx2, _ = masks_for(2, 12, 32, seed=2)
    expected = ref.encoder_forward(sd, x, num_heads=3, masks=[ctx, ctx2])
    got = torch.cat(enc(x, [ctx, ctx2]), 0)
    torch.testing.assert_close(got, expected)


def test_encoder_on_non_square_input_matches_official():
    enc, _ = tiny_pair()
    x = torch.randn(1, 3, 6, 48, 80, dtype=F64)
    torch.testing.assert_close(enc(x), ref.encoder_forward(enc.state_dict(), x, num_heads=3))


@pytest.mark.parametrize("mask_index", [0, 2, 4])
def test_predictor_matches_official_forward(mask_index):
    enc, pred = tiny_pair()
    ctx, tgt = masks_for(3, 10, 32, seed=3)
    z = torch.randn(3, 10, 192, dtype=F64)
    expected = ref.predictor_forward(pred.state_dict(), z, ctx, tgt, num_heads=4, grid=(2, 4, 4), mask_index=mask_index)
    torch.testing.assert_close(pred(z, ctx, tgt, mask_index=mask_index), expected)


def test_predictor_with_area_layers_is_batch_independent_and_order_equivariant():
    _, pred = tiny_pair()
    pred.set_attention(dict(spatial_splits=2, area_end=1))
    ctx, tgt = masks_for(3, 10, 32, seed=4)
    z = torch.randn(3, 10, 192, dtype=F64)
    out = pred(z, ctx, tgt)
    for b in range(3):  # no leakage across the batch
        torch.testing.assert_close(out[b : b + 1], pred(z[b : b + 1], ctx[b : b + 1], tgt[b : b + 1]))
    pc, pt = torch.randperm(10), torch.randperm(22)
    torch.testing.assert_close(pred(z[:, pc], ctx[:, pc], tgt[:, pt]), out[:, pt])


def official_file(tmp_path, enc, pred, target):
    path = tmp_path / "vjepa2.pt"
    export_official(path, enc, pred, target, epoch=3, opt={})
    return path


def test_checkpoint_round_trip_in_official_layout(tmp_path):
    enc, pred = tiny_pair()
    target, _ = tiny_pair()
    for p in target.parameters():
        p.data.add_(0.1)
    path = official_file(tmp_path, enc, pred, target)
    raw = torch.load(path)
    assert set(raw) >= {"encoder", "predictor", "target_encoder"}
    assert all(k.startswith("module.backbone.") for k in raw["encoder"])
    loaded = load_official(path, "vit_tiny", encoder=dict(img_size=64, num_frames=4, depth=3),
                           predictor=dict(predictor_embed_dim=96, depth=2, num_heads=4))
    assert loaded["predictor"].mask_tokens.__len__() == 3  # sized from the file
    x = torch.randn(1, 3, 4, 64, 64)
    for name, original in (("encoder", enc), ("target_encoder", target)):
        torch.testing.assert_close(loaded[name](x), original.float()(x))
    ctx, tgt = masks_for(1, 10, 32, seed=5)
    z = torch.randn(1, 10, 192)
    torch.testing.assert_close(loaded["predictor"](z, ctx, tgt), pred.float()(z, ctx, tgt))


def test_official_checkpoint_loads_into_area_model(tmp_path):
    enc, pred = tiny_pair()
    path = official_file(tmp_path, enc, pred, enc)
    area = dict(temporal_splits=2, spatial_splits=2)
    loaded = load_official(path, "vit_tiny", encoder=dict(img_size=64, num_frames=4, depth=3, attention=area),
                           predictor=dict(predictor_embed_dim=96, depth=2, num_heads=4), keys=("target_encoder",))
    assert loaded["target_encoder"].attention_pattern == (True, True, False)
    # the weights are the file's, every tensor: area attention changes no parameter
    written, read = enc.state_dict(), loaded["target_encoder"].state_dict()
    assert written.keys() == read.keys()
    for key, tensor in written.items():
        assert torch.equal(read[key], tensor), key


def test_checkpoint_errors_name_the_problem(tmp_path):
    enc, pred = tiny_pair()
    path = official_file(tmp_path, enc, pred, enc)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_official(tmp_path / "nope.pt")
    # an architecture key that contradicts the file: the file's number, in one sentence
    with pytest.raises(CheckpointError, match=r"^encoder\['depth'\]=4 but the encoder in checkpoint file .* has 3 "
                                              r"blocks; give encoder\['depth'\]=3 \(the file fixes it\).$"):
        load_official(path, "vit_tiny", encoder=dict(depth=4), keys=("encoder",))
    with pytest.raises(CheckpointError, match=r"holds an encoder \(width 192, depth 3\) but size=vit_small; give "
                                              r"encoder\['embed_dim'\]=192.$"):
        load_official(path, "vit_small", encoder=dict(depth=3, num_heads=3), keys=("encoder",))
    # a tensor whose shape no architecture explains: strict loading lists it
    raw = torch.load(path)
    raw["encoder"]["module.backbone.blocks.1.mlp.fc1.weight"] = torch.zeros(10, 192)
    torch.save(raw, path)
    with pytest.raises(CheckpointError, match=r"mis-shaped \(1\): blocks.1.mlp.fc1.weight \(file \(10, 192\), "
                                              r"model \(768, 192\)\)"):
        load_official(path, keys=("encoder",))
    del raw["target_encoder"]
    torch.save(raw, path)
    with pytest.raises(CheckpointError, match="has no 'target_encoder' weights; it has encoder, predictor"):
        load_official(path, "vit_tiny", encoder=dict(depth=3))
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="could not be read"):
        load_official(path)


def test_architecture_comes_from_the_file_and_a_contradiction_is_one_sentence(tmp_path):
    """load_official needs no architecture keys: widths, depths, mask tokens from the tensors, head
    counts from the export's record. The facebookresearch/vjepa2 #149 case: a file whose predictor
    has fewer blocks than the configuration says is refused, not loaded half random."""
    enc, pred = tiny_pair()
    path = official_file(tmp_path, enc, pred, enc)
    loaded = load_official(path)
    assert (loaded["encoder"].depth, loaded["encoder"].num_heads) == (3, 3)
    assert (loaded["predictor"].depth, loaded["predictor"].num_heads, len(loaded["predictor"].mask_tokens)) == (2, 4, 3)
    ctx, tgt = masks_for(1, 10, 32, seed=6)
    z = torch.randn(1, 10, 192)
    torch.testing.assert_close(loaded["predictor"](z, ctx, tgt, grid=(2, 4, 4)), pred.float()(z, ctx, tgt))
    with pytest.raises(CheckpointError, match=r"^predictor\['depth'\]=4 but the predictor in checkpoint file "
                                              r".*vjepa2.pt' has 2 blocks; give predictor\['depth'\]=2 \(the file "
                                              r"fixes it\).$"):
        load_official(path, predictor=dict(depth=4))
    # an official file states no head counts: 32-wide predictor heads (the released ones: 384 / 12) ...
    raw = torch.load(path)
    del raw["stjepa_num_heads"]
    torch.save(raw, path)
    with pytest.raises(CheckpointError, match=r"no V-JEPA 2 size, and does not state its heads; give "
                                              r"encoder\['num_heads'\].$"):
        load_official(path)
    assumed = load_official(path, encoder=dict(num_heads=3), keys=("predictor",))["predictor"]
    assert assumed.num_heads == 96 // 32
    # ... and a given count wins over that convention (it is not the file's number)
    assert load_official(path, encoder=dict(num_heads=3), predictor=dict(num_heads=4))["predictor"].num_heads == 4


def test_training_from_a_file_with_a_shallower_predictor_is_refused_naming_the_key(tmp_path):
    from stjepa.preflight import instantiate_checked
    from train_helpers import compose_config

    torch.manual_seed(0)
    enc = vit("vit_tiny", img_size=64, num_frames=4)
    pred = VisionTransformerPredictor(img_size=64, num_frames=4, embed_dim=192, predictor_embed_dim=96, depth=2,
                                      num_heads=4)
    path = official_file(tmp_path, enc, pred, enc)
    cfg = compose_config(tmp_path, [f"model.init_from={path}", "data.crop_size=64", "data.frames_per_clip=4"])
    assert cfg.model.pred_depth == 4  # the vit_tiny preset's
    with pytest.raises(CheckpointError, match=r"^model.pred_depth=4 but the predictor in checkpoint file .* has 2 "
                                              r"blocks; give model.pred_depth=2 \(the file fixes it\).$"):
        instantiate_checked(cfg.module, _convert_="all")
    cfg = compose_config(tmp_path, [f"model.init_from={path}", "model=vit_small"])
    with pytest.raises(CheckpointError, match=r"holds a vit_tiny encoder \(width 192, depth 12\) but "
                                              r"model.size=vit_small; add model=vit_tiny.$"):
        instantiate_checked(cfg.module, _convert_="all")


def test_train_py_builds_the_architecture_of_an_official_file_or_a_train_ckpt(tmp_path):
    """What train.py does before building the module: keys not on the command line are the
    file's (here the predictor's 2 blocks over the vit_tiny preset's 4), so the module builds and
    holds the file's weights; a key on the command line that contradicts the file is refused.
    The same from a train.py .ckpt, whose architecture is its own tensors' shapes."""
    from stjepa.preflight import architecture_from_init_file, instantiate_checked
    from train_helpers import compose_config

    torch.manual_seed(0)
    enc = vit("vit_tiny", img_size=64, num_frames=4)
    pred = VisionTransformerPredictor(img_size=64, num_frames=4, embed_dim=192, predictor_embed_dim=96, depth=2,
                                      num_heads=4, num_mask_tokens=3)
    clip = ["data.crop_size=64", "data.frames_per_clip=4"]
    official = official_file(tmp_path, enc, pred, enc)
    cfg = compose_config(tmp_path, [f"model.init_from={official}", *clip])
    assert architecture_from_init_file(cfg) == {"pred_depth": (4, 2), "num_mask_tokens": (10, 3)}
    module = instantiate_checked(cfg.module, _convert_="all")
    assert len(module.predictor.predictor_blocks) == 2
    for (k, a), b in zip(module.predictor.state_dict().items(), pred.state_dict().values()):
        assert torch.equal(a, b), k
    with pytest.raises(CheckpointError, match=r"^model.pred_depth=4 but the predictor in checkpoint file .* has 2 "
                                              r"blocks; give model.pred_depth=2 \(the file fixes it\).$"):
        architecture_from_init_file(compose_config(tmp_path, [f"model.init_from={official}", *clip,
                                                              "model.pred_depth=4"]))
    # a Lightning checkpoint of that module, read back by another run with the default preset
    ckpt = tmp_path / "run.ckpt"
    torch.save({"state_dict": {f"{part}.{k}": v for part in ("encoder", "predictor", "target_encoder")
                               for k, v in getattr(module, part).state_dict().items()},
                "hyper_parameters": {"model": dict(cfg.model)}}, ckpt)
    again = compose_config(tmp_path, [f"model.init_from={ckpt}", *clip])
    assert architecture_from_init_file(again) == {"pred_depth": (4, 2), "num_mask_tokens": (10, 3)}
