"""Pure PyTorch model code: importable with torch and the standard library alone."""
from .kinds.area import BACKENDS, AreaLayout, AreaSplits, area_index
from .attention_backends import attend
from .arguments import ArgumentError
from .attention_settings import AttentionSettings
from .grid import token_grid
from .predictor import VisionTransformerPredictor
from .rope import RopeTables, apply_rope
from .vision_transformer import VIT_SIZES, VisionTransformer, vit

# the class's name before the second structure pass, kept for code written against it
AttentionConfig = AttentionSettings

__all__ = [
    "BACKENDS",
    "AreaLayout",
    "AreaSplits",
    "ArgumentError",
    "AttentionConfig",
    "AttentionSettings",
    "RopeTables",
    "VIT_SIZES",
    "VisionTransformer",
    "VisionTransformerPredictor",
    "apply_rope",
    "area_index",
    "attend",
    "token_grid",
    "vit",
]
