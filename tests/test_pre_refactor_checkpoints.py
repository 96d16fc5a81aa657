"""Checkpoints written before the second structure pass (commit f43fae2) still load as they were
trained: the same attention layout (area + neighborhood stage, shifted areas, predictor splits),
the same outputs, and training resumes from them. The reference outputs were computed by the
code of that commit (tests/fixtures/make_pre_refactor_checkpoints.py), not by the code under test."""
from pathlib import Path

import pytest
import torch

from train_helpers import run_train

FIXTURES = Path(__file__).parent / "fixtures"
SMALL = ["model.embed_dim=48", "model.depth=4", "model.num_heads=2", "model.pred_depth=2",
         "model.pred_embed_dim=32", "model.pred_num_heads=2", "data.batch_size=2", "export_official=false"]
RUNS = {
    "v20": ["attention=area_2x2_then_nbhd_3x3x3", "attention.area_end=2", "attention.stages.0.area_start=2",
            "attention.stages.0.area_end=3", "attention.predictor.spatial_splits=2"],
    "v21": ["experiment=vjepa2_1_tiny", "attention=area_2x2_shift", "attention.area_end=2"],
}


def close(actual, expected):
    if isinstance(expected, (list, tuple)):
        assert len(actual) == len(expected)
        for a, e in zip(actual, expected):
            close(a, e)
    else:
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", sorted(RUNS))
def test_old_checkpoint_gives_the_outputs_it_gave_when_written(name):
    from stjepa.pretrain_module import JEPAPretrainModule
    from stjepa.weights import load_encoder

    ref = torch.load(FIXTURES / f"pre_refactor_{name}_outputs.pt")
    ckpt = FIXTURES / f"pre_refactor_{name}.ckpt"
    module = JEPAPretrainModule.load_from_checkpoint(ckpt, map_location="cpu").eval()
    clip, ctx, tgt = ref["clip"], ref["context"], ref["targets"]
    grid = module.encoder.input_grid(clip.shape)
    deep = name == "v21"
    levels = "all" if deep else None
    with torch.no_grad():
        enc = module.encoder(clip, [ctx], levels=levels)
        close(enc, ref["encoder"])
        close(module.target_encoder(clip, levels=levels), ref["target_encoder"])
        if deep:
            pred, context_pred = module.predictor(enc, [ctx], [tgt], grid=grid, return_context=True)
            close([*pred, *context_pred], ref["predictor"])
        else:
            close(module.predictor(enc, [ctx], [tgt], grid=grid), ref["predictor"])
        # the probe's loader: the target encoder alone, with the layout it was trained with
        encoder = load_encoder(ckpt).eval()
        close(encoder(clip, levels=levels), ref["target_encoder"])


@pytest.mark.parametrize("name", ["v20"])
def test_training_resumes_from_an_old_checkpoint(tmp_path, name):
    run_train(tmp_path, *SMALL, *RUNS[name], "trainer.max_steps=3",
                    f"ckpt_path={FIXTURES / f'pre_refactor_{name}.ckpt'}")
    ckpt = torch.load(next(tmp_path.rglob("last.ckpt")), map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 3
