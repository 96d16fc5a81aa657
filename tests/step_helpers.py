"""A tiny pretraining module for every attention preset that fits a (4, 4, 4) token grid, built
without Hydra (fast), and one training step's loss and gradients."""
import torch
from omegaconf import OmegaConf

from stjepa.models import AttentionSettings
from stjepa.pretrain_module import JEPAPretrainModule
from stjepa.utils.bench import attention_settings, preset_layouts
from train_helpers import ROOT

CROP, FRAMES = 64, 8  # a (4, 4, 4) token grid
TRAIN = OmegaConf.load(ROOT / "conf" / "train.yaml")
IMAGE_MASKS = [dict(OmegaConf.load(ROOT / "conf" / "image_mask" / "vjepa2_1.yaml")["images"])]


def fitting_presets() -> dict[str, dict]:
    """Every preset in conf/attention that fits the (4, 4, 4) grid, by the benchmarks' layout names."""
    fit = {}
    for name, settings in preset_layouts().items():
        try:
            AttentionSettings.create(settings).validate(2, (4, 4, 4))
        except ValueError:
            continue
        fit[name] = settings
    return fit


PRESETS = fitting_presets()


def one_per_kind() -> list[str]:
    """The first fitting preset of every kind (full attention, shifted areas apart)."""
    chosen = {}
    for name, settings in PRESETS.items():
        kind = AttentionSettings.create(settings).built_kind
        chosen.setdefault("full" if kind.is_global else (kind.name, bool(getattr(kind, "shift", False))), name)
    return list(chosen.values())


KIND_PRESETS = one_per_kind()


def build_module(layout: str, version: str = "2.0", **model_changes) -> JEPAPretrainModule:
    """A narrow 4-layer encoder (2.1 needs 4 levels) and 2-layer predictor, both with the preset's attention."""
    model = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "model" / "vit_tiny.yaml"))
    model.update(version=version, embed_dim=32, depth=4, num_heads=2, pred_depth=2, pred_embed_dim=16,
                 pred_num_heads=2, **model_changes)
    attention = attention_settings(layout, predictor_area=True)
    loss = {"context_weight": 0.5, "context_ramp": [0, 0], "distance_weighting": True}  # lambda = 0.5 at step 0
    torch.manual_seed(0)
    return JEPAPretrainModule(model, attention, OmegaConf.to_container(TRAIN.optim), FRAMES, CROP,
                              loss=loss if version == "2.1" else None)


def step(module, clips, masks_enc, masks_pred):
    """Loss and every parameter gradient of one training step (copies)."""
    module.zero_grad(set_to_none=True)
    loss = module.shared_step({"video": clips, "masks_enc": masks_enc, "masks_pred": masks_pred})[0]
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
