"""The ``model`` and ``attention`` config groups -> encoder and predictor.

This is the one place that knows how config keys map to constructor arguments, so it also
turns the models' :class:`~stjepa.models.ArgumentError` (which names constructor arguments)
into a :class:`~stjepa.errors.ConfigError` naming the key the user set, e.g.
``attention.predictor.area_end`` or ``model.pred_num_heads``. Defaults live in the YAML
(``conf/model``, ``conf/attention``) and, for keys left null, in the constructors.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, Mapping, TypeVar

from .errors import ConfigError
from .models import ArgumentError, AttentionSettings, VisionTransformer, VisionTransformerPredictor, vit
from .models.attention_settings import attention_keys
from .architecture import size_args

T = TypeVar("T")

ENCODER_ARGS = frozenset(inspect.signature(VisionTransformer).parameters) | {"size"}
# model-group key -> predictor argument (the predictor's own width and depth carry a pred_ prefix)
PREDICTOR_KEYS = {"pred_depth": "depth", "pred_embed_dim": "predictor_embed_dim", "pred_num_heads": "num_heads",
                  "num_mask_tokens": "num_mask_tokens", "zero_init_mask_tokens": "zero_init_mask_tokens",
                  "use_activation_checkpointing": "use_activation_checkpointing", "version": "version"}
# encoder arguments that come from the data group
DATA_KEYS = {"img_size": "data.crop_size", "num_frames": "data.frames_per_clip"}


def split_attention(attention: Mapping[str, Any] | None) -> tuple[dict, dict]:
    """``attention`` settings hold the encoder's layout plus an optional ``predictor`` entry."""
    settings = dict(attention or {})
    predictor = dict(settings.pop("predictor", None) or {})
    return settings, predictor


@dataclass(frozen=True)
class RunAttention:
    """The ``attention`` group of one run, built once and handed down: ``group`` is the plain
    group as given (what a checkpoint stores and a logger shows), ``encoder`` and ``predictor``
    the layouts built from it. Errors name the user's keys (``attention.predictor.area_end``)."""

    group: dict
    encoder: AttentionSettings
    predictor: AttentionSettings

    @classmethod
    def create(cls, attention: "RunAttention | Mapping[str, Any] | None") -> "RunAttention":
        if isinstance(attention, RunAttention):
            return attention
        group = dict(attention or {})
        encoder, predictor = split_attention(group)
        return cls(group, in_config_terms("encoder", lambda: AttentionSettings.create(encoder)),
                   in_config_terms("predictor", lambda: AttentionSettings.create(predictor)))

    @classmethod
    def from_checkpoint(cls, attention: Mapping[str, Any] | None) -> "RunAttention":
        """An attention group as stored in a checkpoint, read as it was trained. Checkpoints
        written before spatial_splits became a refused-on-conflict shorthand let it override
        height and width splits (the old full preset stored spatial_splits: 1); new ones never
        hold a conflict."""
        def resolved(layout: Mapping[str, Any]) -> dict:
            layout = dict(layout)
            if layout.get("spatial_splits") is not None:
                layout["height_splits"] = layout["width_splits"] = None
            return layout

        encoder, predictor = split_attention(attention)
        return cls.create({**resolved(encoder), "predictor": resolved(predictor)})

    @property
    def tag(self) -> str:
        """The encoder layout's tag: every setting that tells two layouts apart."""
        return self.encoder.tag

    @property
    def kind(self) -> str:
        """The encoder's kinds of local attention in words: 'full', 'area', 'shifted area',
        'area+neighborhood' (markers and groups of a sweep's verdict)."""
        kinds = [entry.built_kind.label for entry in self.encoder.entries if entry.restricts_own_layers]
        return "+".join(kinds) or "full"

    def tags(self) -> list[str]:
        """Logger tags: the encoder layout, and the predictor's when it has local attention."""
        tags = [f"attn:{self.tag}"]
        if self.predictor.has_local_layers:
            tags.append(f"pred-attn:{self.predictor.tag}")
        return tags


def config_key(arg: str, part: str) -> str:
    """The config key behind constructor argument ``arg`` of ``part`` ('encoder' or 'predictor')."""
    if arg.split(".")[0] in attention_keys():  # 'stages.1.window': a setting of the second stage
        return f"attention.{arg}" if part == "encoder" else f"attention.predictor.{arg}"
    if part == "predictor":
        return "model." + {v: k for k, v in PREDICTOR_KEYS.items()}.get(arg, arg)
    return DATA_KEYS.get(arg, f"model.{arg}")


def in_config_terms(part: str, build: Callable[[], T]) -> T:
    """Run ``build``; an ArgumentError becomes a ConfigError naming the user's keys."""
    try:
        return build()
    except ArgumentError as exc:
        raise ConfigError(exc.render(lambda arg: config_key(arg, part))) from None


def encoder_args(model: Mapping[str, Any]) -> dict[str, Any]:
    """The model-group keys that are encoder arguments; null keeps the size's (or constructor's) value."""
    return {k: v for k, v in model.items() if k in ENCODER_ARGS and v is not None}


def build_encoder(model: Mapping[str, Any], attention: RunAttention | Mapping[str, Any] | None, crop_size: int,
                  frames_per_clip: int) -> VisionTransformer:
    """The encoder from the ``model`` group and the run's attention (the encoder's layout) for
    clips of ``frames_per_clip`` frames at ``crop_size`` pixels. The pretraining module takes
    these same arguments, so its saved hyper-parameters rebuild the encoder."""
    args, layout = encoder_args(model), RunAttention.create(attention).encoder
    return in_config_terms("encoder", lambda: vit(img_size=crop_size, num_frames=frames_per_clip, attention=layout,
                                                  **args))


def predictor_args(model: Mapping[str, Any]) -> dict[str, Any]:
    """The model-group keys that are predictor arguments, by argument name; null keeps the constructor's."""
    return {arg: model[key] for key, arg in PREDICTOR_KEYS.items() if model.get(key) is not None}


def build_predictor(model: Mapping[str, Any], attention: RunAttention | Mapping[str, Any] | None,
                    encoder: VisionTransformer) -> VisionTransformerPredictor:
    """The predictor for ``encoder``, with the layout under ``attention.predictor``."""
    args = predictor_args(model)
    layout = RunAttention.create(attention).predictor
    return in_config_terms("predictor", lambda: VisionTransformerPredictor(
        img_size=encoder.img_size, num_frames=encoder.num_frames, patch_size=encoder.patch_size,
        tubelet_size=encoder.tubelet_size, embed_dim=encoder.embed_dim, attention=layout, **args))


def model_keys_of(architecture: Any) -> dict[str, Any]:
    """The ``model``-group keys an :class:`~stjepa.architecture.Architecture` fixes, by key name
    (``pred_depth`` for the predictor's depth). An encoder of a V-JEPA 2 size gives ``size`` and
    null for the numbers the size implies (as the presets write them). Numbers the file does not
    state are left out."""
    keys = {arg: value for arg, value in architecture.encoder.items() if arg in ENCODER_ARGS and value is not None}
    if architecture.encoder and architecture.size:
        implied = size_args(architecture.size)
        keys.update({arg: None for arg, value in keys.items() if arg in implied and implied[arg] == value},
                    size=architecture.size)
    key_of = {arg: key for key, arg in PREDICTOR_KEYS.items()}
    keys.update({key_of[arg]: value for arg, value in (architecture.predictor or {}).items()
                 if arg in key_of and value is not None})
    return keys


def init_weights_path(model: Mapping[str, Any]) -> str | None:
    """``model.init_from``: the file a run starts (or anneals) from, if any."""
    return model.get("init_from") or None


# what the pretraining module saves as hyper-parameters includes these, build_encoder's arguments
ENCODER_HPARAMS = tuple(inspect.signature(build_encoder).parameters)
