"""Weights in transformers' V-JEPA 2 format, read and written without transformers: a folder
with ``config.json`` (``model_type`` "vjepa2") and ``*.safetensors``, as the Hugging Face Hub's
``facebook/vjepa2-*`` models ship. A key map and shape rules are all it takes:

- transformers' ``VJEPA2Model`` holds ``encoder.`` and ``predictor.``; a
  ``VJEPA2ForVideoClassification`` holds the same under ``vjepa2.``, plus its trained attentive
  probe (``pooler.``, ``classifier.``), read into :class:`~stjepa.models.attentive_probe.AttentiveClassifier`.
- its attention keeps ``query``, ``key`` and ``value`` apart where stjepa (like the official
  code) fuses them in ``qkv``; its pooler's cross-attention keeps ``k_proj`` and ``v_proj``
  apart where stjepa fuses ``kv``. Its mask tokens are one (n, 1, 1, width) tensor.
- ``config.json`` states the whole architecture (:func:`config_architecture`).

What differs from stjepa, and is not in the weights: transformers has V-JEPA 2.0 only (2.0's
RoPE, a GELU MLP), so 2.1 and SwiGLU models have no transformers format; it runs global
attention everywhere, so a model trained with local attention keeps its layout only in the
``stjepa`` entry of ``config.json`` (read back by stjepa, ignored by transformers); its RoPE
positions assume a square input of ``crop_size`` pixels (stjepa's follow the input); its
predictor uses mask token 1 unless told otherwise (stjepa's ``mask_index`` 0) and its input
is (B, T, C, H, W) (stjepa's (B, C, T, H, W)).

Local folders only: a Hub download is the snapshot folder of the Hub cache
(``~/.cache/huggingface/hub/models--facebook--vjepa2-vitl-fpc64-256/snapshots/<hash>``).
"""
from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from .architecture import Architecture
from .errors import CheckpointError
from .networks import RunAttention

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
MODEL_TYPE = "vjepa2"
CLASSIFICATION = "VJEPA2ForVideoClassification"
STJEPA_ENTRY = "stjepa"  # config.json entry with what transformers does not model (the attention layout)

# transformers prefix template <-> stjepa prefix template, first match wins ({i}: a block index)
KEY_MAP = {
    "encoder": (("embeddings.patch_embeddings.proj.", "patch_embed.proj."),
                ("layer.{i}.attention.", "blocks.{i}.attn."),
                ("layer.{i}.", "blocks.{i}."),
                ("layernorm.", "norm.")),
    "predictor": (("embeddings.predictor_embeddings.", "predictor_embed."),
                  ("layer.{i}.attention.", "predictor_blocks.{i}.attn."),
                  ("layer.{i}.", "predictor_blocks.{i}."),
                  ("layernorm.", "predictor_norm."),
                  ("proj.", "predictor_proj.")),
    "classifier": (("pooler.self_attention_layers.{i}.self_attn.q_proj.", "pooler.blocks.{i}.attn.query."),
                   ("pooler.self_attention_layers.{i}.self_attn.k_proj.", "pooler.blocks.{i}.attn.key."),
                   ("pooler.self_attention_layers.{i}.self_attn.v_proj.", "pooler.blocks.{i}.attn.value."),
                   ("pooler.self_attention_layers.{i}.self_attn.out_proj.", "pooler.blocks.{i}.attn.proj."),
                   ("pooler.self_attention_layers.{i}.layer_norm", "pooler.blocks.{i}.norm"),
                   ("pooler.self_attention_layers.{i}.", "pooler.blocks.{i}."),
                   ("pooler.cross_attention_layer.cross_attn.q_proj.", "pooler.cross_attention_block.xattn.q."),
                   ("pooler.cross_attention_layer.cross_attn.k_proj.", "pooler.cross_attention_block.xattn.key."),
                   ("pooler.cross_attention_layer.cross_attn.v_proj.", "pooler.cross_attention_block.xattn.value."),
                   ("pooler.cross_attention_layer.layer_norm", "pooler.cross_attention_block.norm"),
                   ("pooler.cross_attention_layer.", "pooler.cross_attention_block."),
                   ("pooler.query_tokens", "pooler.query_tokens"),
                   ("classifier.", "linear.")),
}
# stjepa's fused projections and the transformers parts they stack, in order
FUSED = {"qkv": ("query", "key", "value"), "kv": ("key", "value")}
MASK_TOKENS = ("embeddings.mask_tokens", "mask_tokens")


def _pattern(template: str) -> re.Pattern:
    return re.compile("^" + re.escape(template).replace(re.escape("{i}"), r"(?P<i>\d+)"))


def renamed(key: str, rules: tuple[tuple[str, str], ...], reverse: bool = False) -> str | None:
    """``key`` under the first rule whose prefix it starts with (transformers -> stjepa, or back)."""
    for hf, ours in rules:
        source, target = (ours, hf) if reverse else (hf, ours)
        match = _pattern(source).match(key)
        if match:
            return target.replace("{i}", match.groupdict().get("i") or "") + key[match.end():]
    return None


def to_stjepa(state: Mapping[str, torch.Tensor], where: str) -> dict[str, dict[str, torch.Tensor]]:
    """A transformers state dict -> stjepa state dicts by part (encoder, predictor, classifier)."""
    parts: dict[str, dict[str, torch.Tensor]] = {part: {} for part in KEY_MAP}
    unknown = []
    for key, value in state.items():
        key = key.removeprefix("vjepa2.")
        part, _, rest = key.partition(".")
        if part not in ("encoder", "predictor"):
            part, rest = "classifier", key
        if part == "predictor" and rest == MASK_TOKENS[0]:
            parts[part].update({f"mask_tokens.{k}": t for k, t in enumerate(value.reshape(len(value), 1, 1, -1))})
            continue
        name = renamed(rest, KEY_MAP[part])
        if name is None:
            unknown.append(key)
        else:
            parts[part][name] = value
    if unknown:
        raise CheckpointError(f"the weights in {where} hold keys that are no part of a V-JEPA 2 model: "
                              f"{', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}.")
    return {part: fuse(state) for part, state in parts.items()}


def fuse(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Stack separate query / key / value projections into stjepa's qkv (or kv) ones."""
    out = dict(state)
    for fused, pieces in FUSED.items():
        for key in [k for k in state if re.search(rf"\.{pieces[0]}\.(weight|bias)$", k)]:
            stem, suffix = key.rsplit(f".{pieces[0]}.", 1)
            names = [f"{stem}.{p}.{suffix}" for p in pieces]
            if all(n in state for n in names) and (fused == "kv") == stem.endswith("xattn"):
                out[f"{stem}.{fused}.{suffix}"] = torch.cat([state[n] for n in names])
                for n in names:
                    del out[n]
    return out


def from_stjepa(part: str, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A stjepa encoder or predictor state dict -> transformers keys (with the part's prefix)."""
    out: dict[str, torch.Tensor] = {}
    tokens = []
    for key, value in state.items():
        if key.startswith("mask_tokens."):
            tokens.append((int(key.split(".")[1]), value))
            continue
        stem, _, suffix = key.rpartition(".")
        if stem.endswith(".qkv"):  # (3D, ...) -> query, key, value
            for piece, chunk in zip(FUSED["qkv"], value.chunk(3)):
                out[f"{part}.{renamed(f'{stem[:-4]}.{piece}.{suffix}', KEY_MAP[part], reverse=True)}"] = chunk
            continue
        name = renamed(key, KEY_MAP[part], reverse=True)
        if name is None:
            raise CheckpointError(f"the {part} parameter {key!r} has no place in transformers' V-JEPA 2 model.")
        out[f"{part}.{name}"] = value
    if tokens:
        out[f"{part}.{MASK_TOKENS[0]}"] = torch.stack([t.reshape(1, 1, -1) for _, t in sorted(tokens, key=lambda p: p[0])])
    return {k: v.detach().cpu().contiguous() for k, v in out.items()}


def folder_of(path: str | os.PathLike) -> Path | None:
    """The transformers folder ``path`` names (the folder, or a file inside it: ``config.json``,
    a ``.safetensors``); None for other files."""
    path = Path(path)
    if path.is_dir():
        if not (path / CONFIG).is_file():
            raise CheckpointError(f"folder {str(path)!r} has no {CONFIG}; give a transformers V-JEPA 2 folder "
                                  f"({CONFIG} and *.safetensors), an official .pt or a train.py .ckpt.")
        return path
    if path.is_file() and (path.name == CONFIG or path.suffix == ".safetensors"):
        return folder_of(path.parent)
    return None


def read_config(folder: Path) -> dict[str, Any]:
    where = str(folder / CONFIG)
    try:
        config = json.loads((folder / CONFIG).read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{where!r} could not be read as JSON ({exc}).") from exc
    if not isinstance(config, dict) or config.get("model_type") != MODEL_TYPE:
        found = config.get("model_type") if isinstance(config, dict) else None
        raise CheckpointError(f"{where!r} describes a model of type {found!r}, not {MODEL_TYPE!r} (V-JEPA 2); "
                              f"stjepa reads transformers folders of V-JEPA 2 models only.")
    return config


def square(value: Any, key: str, where: str) -> int:
    """transformers allows a patch size as a pair; stjepa's patches are square."""
    values = set(value) if isinstance(value, (list, tuple)) else {value}
    if len(values) != 1 or not isinstance(next(iter(values)), int):
        raise CheckpointError(f"{key}={value!r} in {where!r} is not allowed; stjepa needs one integer (square patches).")
    return values.pop()


def config_architecture(config: Mapping[str, Any], where: str) -> Architecture:
    """The encoder's and predictor's constructor arguments a transformers config fixes."""
    if config.get("hidden_act", "gelu") != "gelu":
        raise CheckpointError(f"hidden_act={config['hidden_act']!r} in {where!r} is not allowed; V-JEPA 2 MLPs use gelu.")
    common = dict(embed_dim=config["hidden_size"], version="2.0", norm_eps=config.get("layer_norm_eps", 1e-6),
                  qkv_bias=config.get("qkv_bias", True))
    encoder = dict(common, depth=config["num_hidden_layers"], num_heads=config["num_attention_heads"],
                   mlp_ratio=config.get("mlp_ratio", 4.0), use_swiglu=False,
                   patch_size=square(config.get("patch_size", 16), "patch_size", where),
                   tubelet_size=config.get("tubelet_size", 2))
    predictor = dict(common, predictor_embed_dim=config.get("pred_hidden_size", 384),
                     depth=config.get("pred_num_hidden_layers", 12), num_heads=config.get("pred_num_attention_heads", 12),
                     num_mask_tokens=config.get("pred_num_mask_tokens", 10), mlp_ratio=config.get("pred_mlp_ratio", 4.0),
                     patch_size=encoder["patch_size"], tubelet_size=encoder["tubelet_size"])
    return Architecture(f"folder {where!r}", encoder, predictor)


def input_size(config: Mapping[str, Any]) -> dict[str, int]:
    """The clip size the model was trained on (img_size, num_frames): defaults, not architecture."""
    return dict(img_size=config.get("crop_size", 256), num_frames=config.get("frames_per_clip", 64))


def classifier_args(config: Mapping[str, Any]) -> dict[str, Any]:
    """AttentiveClassifier arguments of a classification folder's pooler and classifier
    (transformers' pooler MLPs are 4 wide whatever the encoder's ratio)."""
    labels = config.get("id2label") or {}
    return dict(embed_dim=config["hidden_size"], num_classes=len(labels), num_heads=config["num_attention_heads"],
                depth=config.get("num_pooler_layers", 3) + 1, norm_eps=config.get("layer_norm_eps", 1e-6))


@dataclass
class Folder:
    """A transformers folder read: its config, its weights by part (stjepa keys), its architecture."""

    path: Path
    config: dict[str, Any]
    parts: dict[str, dict[str, torch.Tensor]]
    architecture: Architecture

    @property
    def is_classifier(self) -> bool:
        return bool(self.parts.get("classifier"))

    @property
    def attention(self) -> dict | None:
        """The attention layout stjepa trained it with (its export's ``stjepa`` entry), if any."""
        return (self.config.get(STJEPA_ENTRY) or {}).get("attention")


def read_folder(folder: Path) -> Folder:
    """config.json and every ``*.safetensors`` file (sharded models have several)."""
    from safetensors.torch import load_file

    config = read_config(folder)
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"folder {str(folder)!r} has {CONFIG} but no *.safetensors weights.")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        try:
            state.update(load_file(file))
        except Exception as exc:  # safetensors raises its own error types for truncated or foreign files
            raise CheckpointError(f"{str(file)!r} could not be read as safetensors ({exc}); a truncated download "
                                  f"reads like this: fetch the file again.") from exc
    return Folder(folder, config, to_stjepa(state, str(folder)), config_architecture(config, str(folder)))


def no_transformers_format(encoder: nn.Module) -> str | None:
    """Why ``encoder``'s model has no transformers format (V-JEPA 2.1, a SwiGLU MLP); None when it has one."""
    if encoder.generation.name == "2.0" and not hasattr(encoder.blocks[0].mlp, "fc3"):
        return None
    kind = f"V-JEPA {encoder.generation.name}" if encoder.generation.name != "2.0" else "SwiGLU-MLP"
    return (f"transformers has V-JEPA 2.0 models with GELU MLPs only; this {kind} model has no transformers format "
            f"(its official .pt, vjepa2_official.pt, keeps it)")


def hf_config(encoder: nn.Module, predictor: nn.Module, attention: Mapping[str, Any] | None,
              clip: tuple[int, int] | None = None) -> dict[str, Any]:
    """config.json for transformers' VJEPA2Model from stjepa networks (2.0, GELU MLPs); ``clip``
    (crop size, frames) replaces the encoder's own: transformers places RoPE positions on the
    crop_size grid, so it must be the size of the clips the model will see."""
    reason = no_transformers_format(encoder)
    if reason:
        raise CheckpointError(f"{reason}.")
    block, pred_block = encoder.blocks[0], predictor.predictor_blocks[0]
    width, pred_width = encoder.embed_dim, predictor.predictor_norm.normalized_shape[0]
    config = {
        "model_type": MODEL_TYPE, "architectures": ["VJEPA2Model"],
        "hidden_size": width, "num_hidden_layers": encoder.depth, "num_attention_heads": encoder.num_heads,
        "mlp_ratio": mlp_ratio(width, block.mlp.fc1.out_features), "hidden_act": "gelu",
        "patch_size": encoder.patch_size, "tubelet_size": encoder.tubelet_size,
        "in_chans": encoder.patch_embed.proj.in_channels, "crop_size": (clip or (encoder.img_size,))[0],
        "frames_per_clip": (clip or (0, encoder.num_frames))[1], "layer_norm_eps": block.norm1.eps,
        "qkv_bias": block.attn.qkv.bias is not None, "drop_path_rate": 0.0,
        "pred_hidden_size": pred_width, "pred_num_hidden_layers": predictor.depth,
        "pred_num_attention_heads": predictor.num_heads, "pred_num_mask_tokens": len(predictor.mask_tokens),
        "pred_mlp_ratio": mlp_ratio(pred_width, pred_block.mlp.fc1.out_features), "torch_dtype": "float32",
    }
    if attention:
        config[STJEPA_ENTRY] = {"attention": dict(attention)}
    return config


def mlp_ratio(width: int, hidden: int) -> float:
    """A ratio that transformers' int(width * ratio) turns back into ``hidden`` units."""
    ratio = hidden / width
    while int(width * ratio) < hidden:
        ratio = float(torch.nextafter(torch.tensor(ratio, dtype=torch.float64), torch.tensor(2.0 * ratio + 1)))
    return ratio


def local_attention_note(attention: Mapping[str, Any] | None) -> str | None:
    """The sentence an export of a model trained with local attention states; None for global attention."""
    run = RunAttention.create(attention)
    if not (run.encoder.has_local_layers or run.predictor.has_local_layers):
        return None
    return (f"transformers runs every layer with global attention; this model was trained with {run.kind} attention "
            f"({run.tag}), which stjepa reloads from the '{STJEPA_ENTRY}' entry of {CONFIG}.")


def export_hf(folder: str | os.PathLike, encoder: nn.Module, predictor: nn.Module,
              attention: Mapping[str, Any] | None = None, clip: tuple[int, int] | None = None) -> Path:
    """Write ``folder`` (config.json, model.safetensors) that ``VJEPA2Model.from_pretrained``
    loads; ``attention`` is the stjepa attention group the model was trained with, kept in
    config.json's ``stjepa`` entry when it has local layers (:func:`local_attention_note`).
    Written to a temporary folder renamed at the end: an earlier export at ``folder`` stays
    whole until the new one is complete. ``clip``: see :func:`hf_config`."""
    from safetensors.torch import save_file

    folder = Path(folder)
    config = hf_config(encoder, predictor, attention if local_attention_note(attention) else None, clip)
    state = {**from_stjepa("encoder", encoder.state_dict()), **from_stjepa("predictor", predictor.state_dict())}
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp, old = (folder.with_name(f".{folder.name}.{tag}-{os.getpid()}") for tag in ("tmp", "old"))
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        save_file(state, str(tmp / WEIGHTS), metadata={"format": "pt"})
        (tmp / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        if folder.exists():
            folder.rename(old)
        try:
            tmp.rename(folder)
        except OSError:
            if old.exists():  # the earlier export back in place
                old.rename(folder)
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return folder
