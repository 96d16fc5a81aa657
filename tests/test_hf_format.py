"""transformers' V-JEPA 2 format against transformers itself: tiny random VJEPA2Model and
VJEPA2ForVideoClassification models built here, saved with save_pretrained and read by stjepa
(and stjepa's exports read by from_pretrained); outputs compared on the same video and masks."""
import json

import pytest
import torch

from stjepa import hf_format
from stjepa.errors import CheckpointError
from stjepa.models import VisionTransformerPredictor, vit
from stjepa.weights import load_encoder, load_networks

transformers = pytest.importorskip("transformers", minversion="4.53")  # the dev extra; CI installs it
from transformers import VJEPA2Config, VJEPA2ForVideoClassification, VJEPA2Model  # noqa: E402

F64 = torch.float64
# head width 16: RoPE rotates 3 x 4 channels and leaves 4, so the unrotated tail is exercised too
TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, crop_size=64, frames_per_clip=4,
            pred_hidden_size=32, pred_num_attention_heads=2, pred_num_hidden_layers=2, pred_num_mask_tokens=3,
            pred_zero_init_mask_tokens=False, num_pooler_layers=2)
N = 2 * 4 * 4  # tokens of a 4-frame 64 px clip: 2 tubelets x 4 x 4 patches


def randomized(model):
    """Every parameter moved off its initial value (norms too), so that no key can be wrong unseen."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.to(F64).eval()


@pytest.fixture(scope="module")
def hf_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf") / "vjepa2-tiny"
    model = randomized(VJEPA2Model(VJEPA2Config(**TINY)))
    model.save_pretrained(folder)
    return model, folder


def video_and_masks(seed=1, batch=2, context=12):
    g = torch.Generator().manual_seed(seed)
    video = torch.randn(batch, 4, 3, 64, 64, generator=g, dtype=F64)  # transformers' (B, T, C, H, W)
    perm = torch.stack([torch.randperm(N, generator=g) for _ in range(batch)])
    return video, perm[:, :context], perm[:, context:]


def stjepa_outputs(encoder, predictor, video, context, target, mask_index=1):
    """stjepa's encoder on the whole clip and its predictor from the context tokens, as
    transformers' VJEPA2Model computes them (its default mask token is index 1)."""
    with torch.no_grad():
        features = encoder(video.permute(0, 2, 1, 3, 4))
        visible = torch.gather(features, 1, context[..., None].expand(-1, -1, features.shape[-1]))
        return features, predictor(visible, context, target, mask_index=mask_index)


def transformers_outputs(model, video, context, target):
    with torch.no_grad():
        out = model(video, context_mask=[context], target_mask=[target])
    return out.last_hidden_state, out.predictor_output.last_hidden_state


@pytest.mark.parametrize("pointer", ["folder", "config.json", "model.safetensors"])
def test_a_transformers_folder_loads_with_equal_outputs(hf_model, pointer):
    model, folder = hf_model
    path = folder if pointer == "folder" else folder / pointer
    nets = load_networks(path)
    encoder, predictor = nets["encoder"].to(F64).eval(), nets["predictor"].to(F64).eval()
    assert (encoder.depth, encoder.num_heads, encoder.img_size, encoder.num_frames) == (2, 4, 64, 4)
    assert (predictor.depth, predictor.num_heads, len(predictor.mask_tokens)) == (2, 2, 3)
    video, context, target = video_and_masks()
    ours = stjepa_outputs(encoder, predictor, video, context, target)
    for mine, theirs in zip(ours, transformers_outputs(model, video, context, target)):
        torch.testing.assert_close(mine, theirs)


def test_a_wrong_key_map_gives_other_outputs(hf_model, monkeypatch):
    """The comparison above can fail: query and key swapped in the map change the outputs."""
    model, folder = hf_model
    monkeypatch.setitem(hf_format.FUSED, "qkv", ("key", "query", "value"))
    nets = load_networks(folder)
    video, context, target = video_and_masks()
    mine = stjepa_outputs(nets["encoder"].to(F64).eval(), nets["predictor"].to(F64).eval(), video, context, target)
    theirs = transformers_outputs(model, video, context, target)
    assert not torch.allclose(mine[0], theirs[0], atol=1e-3)


def test_an_export_with_a_wrong_key_map_gives_other_outputs_in_transformers(tmp_path, monkeypatch):
    """The export comparison can fail too: query and key swapped in the map load without a key
    warning but compute something else."""
    encoder, predictor = tiny_stjepa()
    monkeypatch.setitem(hf_format.FUSED, "qkv", ("key", "query", "value"))
    model, info = VJEPA2Model.from_pretrained(hf_format.export_hf(tmp_path / "export", encoder, predictor),
                                              output_loading_info=True)
    assert {k: v for k, v in info.items() if v} == {}
    video, context, target = video_and_masks(seed=4)
    mine = stjepa_outputs(encoder, predictor, video, context, target)
    theirs = transformers_outputs(model.to(F64).eval(), video, context, target)
    assert not torch.allclose(mine[0], theirs[0], atol=1e-3)


def test_a_conflicting_architecture_key_is_refused_naming_both_values(hf_model):
    _, folder = hf_model
    with pytest.raises(CheckpointError, match=r"^predictor\['depth'\]=12 but the predictor in folder .*vjepa2-tiny' "
                                              r"has 2 blocks; give predictor\['depth'\]=2 \(the file fixes it\).$"):
        load_networks(folder, predictor=dict(depth=12))
    with pytest.raises(CheckpointError, match=r"^model.num_heads=8 but the encoder in folder .* has 4 heads; give "
                                              r"model.num_heads=4 \(the file fixes it\).$"):
        load_encoder(folder, model=dict(num_heads=8))
    # every contradicting number in the one sentence, so that one fix is enough
    with pytest.raises(CheckpointError, match=r"holds an encoder \(width 64, depth 2\) but model.size=vit_large; give "
                                              r"model.embed_dim=64, model.depth=2 and model.num_heads=4.$"):
        load_encoder(folder, model=dict(size="vit_large"))
    with pytest.raises(CheckpointError, match=r"^predictor\['depth'\]=12 and predictor\['num_mask_tokens'\]=10 but the "
                                              r"predictor in folder .* has 2 blocks and 3 mask tokens; give "
                                              r"predictor\['depth'\]=2 and predictor\['num_mask_tokens'\]=3 \(the file "
                                              r"fixes them\).$"):
        load_networks(folder, predictor=dict(depth=12, num_mask_tokens=10))


def test_bad_folders_are_one_sentence_each(hf_model, tmp_path):
    _, folder = hf_model
    bare = tmp_path / "bare"
    bare.mkdir()
    with pytest.raises(CheckpointError, match=r"^folder '.*bare' has no config.json; give a transformers V-JEPA 2 "
                                              r"folder \(config.json and \*.safetensors\), an official .pt or a "
                                              r"train.py .ckpt.$"):
        load_networks(bare)
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "vit", "hidden_size": 64}))
    with pytest.raises(CheckpointError, match=r"describes a model of type 'vit', not 'vjepa2' \(V-JEPA 2\)"):
        load_networks(other)
    # weights that do not fit their config.json: listed before anything is built
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    (wrong / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    config = json.loads((folder / "config.json").read_text())
    (wrong / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 3}))
    with pytest.raises(CheckpointError, match=r"^the encoder weights in folder '.*wrong' do not match its "
                                              r"config.json: missing \(12\): blocks.2.attn.proj.bias"):
        load_networks(wrong)
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    (truncated / "config.json").write_text(json.dumps(config))
    (truncated / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes()[:5000])
    with pytest.raises(CheckpointError, match=r"model.safetensors' could not be read as safetensors .* a truncated "
                                              r"download reads like this: fetch the file again.$"):
        load_networks(truncated)


def tiny_stjepa(attention=None):
    torch.manual_seed(3)
    encoder = vit("vit_tiny", img_size=64, num_frames=4, depth=2, embed_dim=64, num_heads=4, attention=attention)
    predictor = VisionTransformerPredictor(img_size=64, num_frames=4, embed_dim=64, predictor_embed_dim=32, depth=2,
                                           num_heads=2, num_mask_tokens=3, zero_init_mask_tokens=False)
    return randomized(encoder), randomized(predictor)


def test_an_export_loads_in_transformers_without_warnings_and_gives_equal_outputs(tmp_path):
    encoder, predictor = tiny_stjepa()
    folder = hf_format.export_hf(tmp_path / "export", encoder, predictor)
    model, info = VJEPA2Model.from_pretrained(folder, output_loading_info=True)
    assert {k: v for k, v in info.items() if v} == {}  # no missing, unexpected or mismatched keys
    model = model.to(F64).eval()
    video, context, target = video_and_masks(seed=4)
    for mine, theirs in zip(stjepa_outputs(encoder, predictor, video, context, target),
                            transformers_outputs(model, video, context, target)):
        torch.testing.assert_close(mine, theirs)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # the temporary folder is gone


def test_an_export_that_fails_while_writing_leaves_the_earlier_one_whole(tmp_path, monkeypatch):
    """Exports go to a temporary folder renamed at the end: a write that fails half way (here the
    weights file, cut off by a full disk) leaves no half folder and the earlier export as it was."""
    import safetensors.torch

    encoder, predictor = tiny_stjepa()
    folder = hf_format.export_hf(tmp_path / "export", encoder, predictor)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    def half_written(state, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"\0" * 100)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", half_written)
    with torch.no_grad():
        encoder.norm.weight.add_(1.0)
    with pytest.raises(OSError, match="No space left"):
        hf_format.export_hf(folder, encoder, predictor)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    with pytest.raises(OSError, match="No space left"):
        hf_format.export_hf(tmp_path / "new", encoder, predictor)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


def test_a_local_attention_export_keeps_its_layout_for_stjepa(tmp_path):
    area = dict(temporal_splits=1, spatial_splits=2)
    encoder, predictor = tiny_stjepa(attention=area)
    folder = hf_format.export_hf(tmp_path / "export", encoder, predictor, attention=area)
    assert json.loads((folder / "config.json").read_text())["stjepa"] == {"attention": area}
    reloaded = load_networks(folder)["encoder"]
    assert reloaded.attention.tag == encoder.attention.tag and any(reloaded.attention_pattern)
    assert not any(load_encoder(folder, attention=dict(spatial_splits=1)).attention_pattern)


def test_a_2_1_model_has_no_transformers_format(tmp_path):
    encoder = vit("vit_tiny", img_size=64, num_frames=4, depth=4, version="2.1")
    predictor = VisionTransformerPredictor(img_size=64, num_frames=4, embed_dim=192, predictor_embed_dim=32, depth=1,
                                           num_heads=2, version="2.1")
    with pytest.raises(CheckpointError, match=r"^transformers has V-JEPA 2.0 models with GELU MLPs only; this "
                                              r"V-JEPA 2.1 model has no transformers format"):
        hf_format.export_hf(tmp_path / "export", encoder, predictor)
    assert not (tmp_path / "export").exists()


def test_a_classification_folder_gives_transformers_logits(tmp_path):
    config = VJEPA2Config(**TINY, id2label={i: f"class {i}" for i in range(5)})
    model = randomized(VJEPA2ForVideoClassification(config))
    model.save_pretrained(tmp_path / "cls")
    nets = load_networks(tmp_path / "cls", keys=("encoder", "classifier"))
    encoder, head = nets["encoder"].to(F64).eval(), nets["classifier"].to(F64).eval()
    video, _, _ = video_and_masks(seed=5)
    with torch.no_grad():
        mine = head(encoder(video.permute(0, 2, 1, 3, 4)))
        theirs = model(video).logits
    assert mine.shape == (2, 5)
    torch.testing.assert_close(mine, theirs)


@pytest.mark.slow
def test_a_training_run_writes_a_transformers_folder_and_the_command_exports_any_checkpoint(tmp_path, capsys):
    """The end of train.py writes checkpoints/vjepa2_hf (area attention: the layout kept for
    stjepa, the note about transformers' global attention); scripts/export_hf.py writes the same
    from the .ckpt, and refuses a missing file in one line."""
    import importlib.util

    from train_helpers import ROOT, run_train

    run_train(tmp_path / "run", "trainer.max_steps=2", "attention=area_2x2")
    ckpts = tmp_path / "run" / "checkpoints"
    folder = ckpts / "vjepa2_hf"
    model, info = VJEPA2Model.from_pretrained(folder, output_loading_info=True)
    assert {k: v for k, v in info.items() if v} == {}
    trained = load_encoder(ckpts / "last.ckpt")
    reloaded = load_encoder(folder)
    assert reloaded.attention.tag == trained.attention.tag and any(reloaded.attention_pattern)
    for key, value in trained.state_dict().items():
        assert torch.equal(reloaded.state_dict()[key], value), key

    spec = importlib.util.spec_from_file_location("export_hf", ROOT / "scripts" / "export_hf.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main([str(ckpts / "last.ckpt"), str(tmp_path / "again")]) == 0
    out = capsys.readouterr().out
    assert "note: transformers runs every layer with global attention; this model was trained with area" in out
    assert (tmp_path / "again" / "model.safetensors").read_bytes() == (folder / "model.safetensors").read_bytes()
    assert script.main([str(tmp_path / "nope.pt"), str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err.strip() == f"error: checkpoint file '{tmp_path / 'nope.pt'}' does not exist."
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_probe_scores_the_shipped_classifier_as_transformers_does(tmp_path, hf_model, capsys):
    """probe.py ckpt=<classification folder> probe=shipped: no training; its top-1 is the hand
    count of transformers' own predictions on the same validation clips. A folder without a
    classifier is refused in one line."""
    from hydra.utils import instantiate

    from stjepa.probe_job import probe
    from train_helpers import compose_config, exit_in_process

    overrides = ["data.crop_size=64", "data.frames_per_clip=4", "data.val_size=16", "data.train_size=16",
                 "data.batch_size=8", "data.num_workers=0", "print_config=false", "probe=shipped"]
    data = instantiate(compose_config(tmp_path, ["ckpt=x", *overrides], config_name="probe").data)
    data.setup("fit")
    labels = {i: f"direction {i}" for i in range(data.num_classes)}
    model = randomized(VJEPA2ForVideoClassification(VJEPA2Config(**TINY, id2label=labels))).float()
    model.save_pretrained(tmp_path / "cls")
    results = probe(compose_config(tmp_path / "probe", [f"ckpt={tmp_path / 'cls'}", *overrides], config_name="probe"))
    hits = total = 0
    with torch.no_grad():
        for batch in data.val_dataloader():
            logits = model(batch["video"].permute(0, 2, 1, 3, 4)).logits
            hits, total = hits + int((logits.argmax(1) == batch["label"]).sum()), total + len(logits)
    assert results["method"] == "shipped" and results["best"]["shipped"] and results["heads"][0]["val_clips"] == total
    assert results["best"]["top1"] == pytest.approx(hits / total)
    _, folder = hf_model
    status, err = exit_in_process(capsys, tmp_path / "bad", [f"ckpt={folder}", *overrides], "probe")
    assert status == 2 and err.strip().splitlines()[-1] == (
        f"error: probe=shipped scores the trained classifier of a transformers VJEPA2ForVideoClassification folder; "
        f"ckpt='{folder}' is none (probe=default trains one).")


def test_training_starts_from_a_transformers_folder_with_area_attention(hf_model, tmp_path):
    """train.py model.init_from=<folder>: the Hub weights annealed with area attention; a model
    group that contradicts config.json is refused naming both values."""
    from safetensors.torch import load_file

    from stjepa.preflight import instantiate_checked
    from train_helpers import compose_config

    _, folder = hf_model
    tiny = ["model.embed_dim=64", "model.depth=2", "model.num_heads=4", "model.pred_depth=2", "model.pred_embed_dim=32",
            "model.pred_num_heads=2", "model.num_mask_tokens=3", "data.crop_size=64", "data.frames_per_clip=4",
            "attention=area_2x2", f"model.init_from={folder}"]
    module = instantiate_checked(compose_config(tmp_path, tiny).module, _convert_="all")
    assert any(module.encoder.attention_pattern)
    hub = load_file(folder / "model.safetensors")
    q, k, v = (hub[f"encoder.layer.1.attention.{p}.weight"] for p in ("query", "key", "value"))
    for net in (module.encoder, module.target_encoder):
        assert torch.equal(net.blocks[1].attn.qkv.weight, torch.cat([q, k, v]).float())
        assert torch.equal(net.norm.bias, hub["encoder.layernorm.bias"].float())
    assert torch.equal(module.predictor.mask_tokens[2], hub["predictor.embeddings.mask_tokens"][2].float())
    assert torch.equal(module.predictor.predictor_proj.weight, hub["predictor.proj.weight"].float())
    with pytest.raises(CheckpointError, match=r"^model.pred_num_heads=4 but the predictor in folder .* has 2 heads; "
                                              r"give model.pred_num_heads=2 \(the file fixes it\).$"):
        instantiate_checked(compose_config(tmp_path, [*tiny, "model.pred_num_heads=4"]).module, _convert_="all")


def test_train_py_takes_the_architecture_from_config_json_and_refuses_a_contradicting_command_line(
        hf_model, tmp_path, caplog):
    """train.py model.init_from=<folder> with no model keys: every architecture number is
    config.json's (TINY: width 64, 2 blocks, 4 heads; predictor 32 wide, 2 blocks, 2 heads, 3
    mask tokens), not the default vit_tiny preset's (192, 12, 3; 96, 4, 4, 10); the run trains and
    its checkpoint records them. A model= or model.<key> on the command line that contradicts the
    file is refused before any work, naming the key, its value and the file's."""
    import logging

    from stjepa.errors import UserError
    from stjepa.preflight import architecture_from_init_file
    from train_helpers import compose_config, run_train

    _, folder = hf_model
    clip = ["data.crop_size=64", "data.frames_per_clip=4", f"model.init_from={folder}"]
    expected = dict(embed_dim=TINY["hidden_size"], depth=TINY["num_hidden_layers"],
                    num_heads=TINY["num_attention_heads"], pred_depth=TINY["pred_num_hidden_layers"],
                    pred_embed_dim=TINY["pred_hidden_size"], pred_num_heads=TINY["pred_num_attention_heads"],
                    num_mask_tokens=TINY["pred_num_mask_tokens"])
    with caplog.at_level(logging.INFO):
        metrics = run_train(tmp_path / "run", *clip, "trainer.max_steps=1", "export_hf=false")
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("model.init_from")]
    assert len(said) == 1 and "model.pred_depth=2 (the model group had 4)" in said[0], said
    saved = torch.load(metrics["last_ckpt"], map_location="cpu", weights_only=False)["hyper_parameters"]["model"]
    assert {key: saved[key] for key in expected} == expected
    for wrong, sentence in [
            (["model=vit_small"], r"holds an encoder \(width 64, depth 2\) but model.size=vit_small"),
            (["model.pred_depth=4"], r"^model.pred_depth=4 but the predictor in folder .* has 2 blocks; give "
                                     r"model.pred_depth=2 \(the file fixes it\).$")]:
        with pytest.raises(UserError, match=sentence):
            architecture_from_init_file(compose_config(tmp_path / "bad", [*clip, *wrong]))
    agreeing = compose_config(tmp_path / "ok", [*clip, "model.pred_depth=2"])  # stated and equal: kept, rest filled
    assert architecture_from_init_file(agreeing)["depth"] == (None, 2) and agreeing.model.pred_depth == 2


@pytest.mark.slow
def test_a_2_1_run_says_once_at_its_start_that_it_writes_no_transformers_folder(tmp_path, caplog):
    """export_hf=true (the default) on a model transformers does not have: no vjepa2_hf, one log
    line before training (not a warning at the end), vjepa2_official.pt written as usual."""
    import logging
    import warnings

    from train_helpers import run_train

    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.INFO):
        warnings.simplefilter("always")
        run_train(tmp_path / "run", "experiment=vjepa2_1_tiny", "trainer.max_steps=1")
    said = [r.getMessage() for r in caplog.records if "transformers" in r.getMessage()]
    assert said == [f"export_hf: no checkpoints/vjepa2_hf for this run: transformers has V-JEPA 2.0 models with "
                    f"GELU MLPs only; this V-JEPA 2.1 model has no transformers format (its official .pt, "
                    f"vjepa2_official.pt, keeps it)."]
    assert not [w for w in caught if "transformers" in str(w.message)]
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["last.ckpt", "vjepa2_official.pt"]
