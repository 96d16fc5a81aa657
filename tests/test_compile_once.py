"""Compile once: with ``compile=true`` and static masks, 50 training steps on fresh masks and a
mixture of video and image batches compile each network once per modality and never again.

The graphs (torch._dynamo's counters): the context encoder, the no-grad target encoder, the
predictor and the loss, each one graph per modality (video clips and 2.1's 1-frame images have
different shapes): 8 in all. After the first step of each modality a recompilation is an error
(``error_on_recompile``), so a changed shape anywhere in the step fails the test. The backend is
``eager``: dynamo's capture and guards, which decide recompilation and which graphs exist, are
the same for every backend, and inductor's code generation takes minutes on a CPU
(``tests/test_host_syncs.py`` compiles an encoder and a predictor with ``aot_eager``, backward
included).
"""
import random

import pytest
import torch

from stjepa.data.collate import MaskingCollate
from stjepa.data.masks import V_JEPA2_MASKS
from step_helpers import CROP, FRAMES, IMAGE_MASKS, build_module

STEPS = 50


@pytest.mark.slow
def test_fifty_steps_of_video_and_images_compile_once_per_modality(monkeypatch):
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    module = build_module("2x2", "2.1")  # area attention in the encoder and the predictor
    module.compile_models, module.compile_backend = True, "eager"
    module.configure_model()
    collates = {FRAMES: MaskingCollate((4, 4, 4), V_JEPA2_MASKS, seed=0, pad=True),
                1: MaskingCollate((1, 4, 4), IMAGE_MASKS, seed=0, pad=True)}
    unpadded = {FRAMES: MaskingCollate((4, 4, 4), V_JEPA2_MASKS, seed=0), 1: MaskingCollate((1, 4, 4), IMAGE_MASKS, seed=0)}
    order = [FRAMES, 1] + random.Random(0).choices([FRAMES, 1], k=STEPS - 2)
    shapes, official_shapes = set(), set()
    for i, frames in enumerate(order):
        if i == 2:  # both modalities compiled: from here on a recompilation raises
            graphs = counters["stats"]["unique_graphs"]
            monkeypatch.setattr(torch._dynamo.config, "error_on_recompile", True)
        clips = [torch.randn(3, frames, CROP, CROP) for _ in range(2)]
        samples = [{"video": c, "index": 2 * i + j} for j, c in enumerate(clips)]
        batch = collates[frames](samples)
        shapes.add(tuple(m.shape[1] for m in batch["masks_enc"]) + (frames,))
        official_shapes.add(tuple(m.shape[1] for m in unpadded[frames](samples)["masks_enc"]) + (frames,))
        batch["video"] = module.on_after_batch_transfer(batch, 0)["video"]
        loss = module.shared_step(batch)[0]
        loss.backward()
        assert torch.isfinite(loss)
    assert graphs == 8  # encoder, target encoder, predictor, loss: one each per modality
    assert counters["stats"]["unique_graphs"] == graphs
    assert len(shapes) == 2 and sum(order) not in (STEPS, STEPS * FRAMES)  # both modalities, static shapes each
    assert len(official_shapes) > 10  # ... while the unpadded lists change shape from step to step
