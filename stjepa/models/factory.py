"""Encoder and predictor from the flat ``model`` / ``attention`` settings used in configs."""
from __future__ import annotations

from typing import Any, Mapping

from .predictor import VisionTransformerPredictor
from .vision_transformer import VIT_SIZES, VisionTransformer, vit

ENCODER_KEYS = ("embed_dim", "depth", "num_heads", "mlp_ratio", "patch_size", "tubelet_size", "drop_path_rate",
                "use_activation_checkpointing", "use_swiglu")


def split_attention(attention: Mapping[str, Any] | None) -> tuple[dict, dict]:
    """``attention`` settings hold the encoder's layout plus an optional ``predictor`` entry."""
    settings = dict(attention or {})
    predictor = dict(settings.pop("predictor", None) or {})
    return settings, predictor


def build_encoder(model: Mapping[str, Any], attention: Mapping[str, Any] | None, img_size: int,
                  num_frames: int) -> VisionTransformer:
    size = model.get("size", "vit_tiny")
    if size not in VIT_SIZES:
        raise ValueError(f"model.size={size!r} is not known; allowed values are {', '.join(VIT_SIZES)}.")
    overrides = {k: model[k] for k in ENCODER_KEYS if model.get(k) is not None}
    return vit(size, img_size=img_size, num_frames=num_frames, attention=attention, **overrides)


def build_predictor(model: Mapping[str, Any], attention: Mapping[str, Any] | None, encoder: VisionTransformer,
                    ) -> VisionTransformerPredictor:
    return VisionTransformerPredictor(
        img_size=encoder.img_size,
        num_frames=encoder.num_frames,
        patch_size=encoder.patch_size,
        tubelet_size=encoder.tubelet_size,
        embed_dim=encoder.embed_dim,
        predictor_embed_dim=model.get("pred_embed_dim", 384),
        depth=model.get("pred_depth", 12),
        num_heads=model.get("pred_num_heads", 12),
        num_mask_tokens=model.get("num_mask_tokens", 10),
        zero_init_mask_tokens=model.get("zero_init_mask_tokens", True),
        use_activation_checkpointing=bool(model.get("use_activation_checkpointing", False)),
        attention=attention,
    )
