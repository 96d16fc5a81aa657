"""Model weights in files: the formats stjepa reads, strict loading, and the official export.

- An official V-JEPA 2 or 2.1 ``.pt`` is a dict with ``encoder``, ``predictor`` and
  ``target_encoder`` state dicts (plus optimizer state and counters); parameters carry a
  ``module.backbone.`` prefix from the DDP and multi-mask wrappers of the training code. The
  distilled 2.1 ViT-B/L hub files hold their encoder as ``ema_encoder`` (read as the target
  encoder). A network's generation is told by its keys (2.1: ``norms_block``; 2.0: one final
  ``norm``), the signatures in :mod:`stjepa.models.versions`.
- A ``train.py`` ``.ckpt`` is a Lightning checkpoint of the pretraining module: ``state_dict``
  with ``encoder.``, ``predictor.`` and ``target_encoder.`` prefixes, and the module's
  ``hyper_parameters`` (the arguments of :func:`~stjepa.networks.build_encoder`), from
  which its architecture is rebuilt.

- A transformers folder (``config.json`` + ``*.safetensors``): :mod:`stjepa.hf_format`.

The architecture of an official file or a folder comes from the file (:mod:`stjepa.architecture`).
:func:`read_weights` tells the formats apart; everything else works on its result.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from . import hf_format
from .architecture import Architecture, official_architecture, predictor_shape, size_args
from .checkpoint_io import atomic_save
from .errors import CheckpointError
from .networks import (ENCODER_HPARAMS, RunAttention, build_encoder, build_predictor, config_key, encoder_args,
                       predictor_args)
from .models import VIT_SIZES, VisionTransformer, VisionTransformerPredictor
from .models.attentive_probe import AttentiveClassifier
from .models.versions import generation_of_state

OFFICIAL_KEYS = ("encoder", "predictor", "target_encoder")
OFFICIAL_PREFIX = "module.backbone."
# the head counts of the encoder and predictor, which no tensor shape tells (stjepa's exports only)
HEADS_KEY = "stjepa_num_heads"
# Present in some files but unused with RoPE; the official loaders drop them too.
IGNORED_KEYS = ("pos_embed", "predictor_pos_embed")


def read_checkpoint(path: str | os.PathLike, mmap: bool = False) -> dict[str, Any]:
    """A torch file's dict; ``mmap`` maps its tensors instead of reading them (files written in
    torch's zip format; others are read whole)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {str(path)!r} does not exist.")
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False, mmap=mmap)
        except RuntimeError:  # not the zip format: mmap cannot map it
            if not mmap:
                raise
            obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises many types for truncated or foreign files
        raise CheckpointError(f"checkpoint file {str(path)!r} could not be read as a torch file ({exc}).") from exc
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint file {str(path)!r} holds a {type(obj).__name__}, not a dict of state dicts.")
    return obj


def strip_prefixes(state: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Drop the DDP ``module.`` and wrapper ``backbone.`` prefixes and unused keys."""
    out = {}
    for key, value in state.items():
        for prefix in ("module.", "backbone."):
            if key.startswith(prefix):
                key = key[len(prefix) :]
        if key not in IGNORED_KEYS:
            out[key] = value
    return out


def load_strict(module: nn.Module, state: Mapping[str, torch.Tensor], what: str,
                reason: str = "does not match the model architecture") -> None:
    """Load ``state`` into ``module``; on any mismatch raise one error listing all of them
    (``what`` ``reason``: ...). A module on the meta device is only checked."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(
        f"{k} (file {tuple(state[k].shape)}, model {tuple(own[k].shape)})"
        for k in set(own) & set(state)
        if tuple(state[k].shape) != tuple(own[k].shape)
    )
    if missing or unexpected or shapes:

        def listing(name: str, keys: list[str]) -> str:
            more = f" and {len(keys) - 8} more" if len(keys) > 8 else ""
            return f"{name} ({len(keys)}): {', '.join(keys[:8])}{more}" if keys else ""

        parts = [p for p in (listing("missing", missing), listing("unexpected", unexpected),
                             listing("mis-shaped", shapes)) if p]
        raise CheckpointError(f"{what} {reason}: " + "; ".join(parts) + ".")
    if not any(t.is_meta for t in own.values()):
        module.load_state_dict(state, strict=True)


def check_file_generation(path: str | os.PathLike, key: str, state: Mapping[str, Any], module: nn.Module) -> None:
    """A file's network against the model's generation (``model.version``), in one sentence
    naming both; a predictor's level count too."""
    found, wanted = generation_of_state(state), module.generation
    if found != wanted:
        raise CheckpointError(f"{key!r} in {str(path)!r} is a V-JEPA {found.name} network but the model is V-JEPA "
                              f"{wanted.name}; set model.version={found.name} to load it.")
    if found.deep_supervision and isinstance(module, VisionTransformerPredictor):
        levels = predictor_shape(state, module.predictor_embed_width)["levels"]
        if levels != module.levels:
            raise CheckpointError(f"{key!r} in {str(path)!r} predicts {levels} level(s) but the model's predictor "
                                  f"predicts {module.levels}; a one-level (distilled) predictor loads with "
                                  f"stjepa.weights.load_official, which reads the level count from the file.")


def official_entries(ckpt: Mapping[str, Any]) -> dict[str, Any]:
    """An official file's entries, the distilled 2.1 ViT-B/L hub files' ``ema_encoder`` read as
    the target encoder."""
    if "ema_encoder" in ckpt and "target_encoder" not in ckpt:
        return {**ckpt, "target_encoder": ckpt["ema_encoder"]}
    return dict(ckpt)


def load_networks(
    path: "str | os.PathLike | Weights",
    size: str | None = None,
    encoder: Mapping[str, Any] | None = None,
    predictor: Mapping[str, Any] | None = None,
    keys: tuple[str, ...] = OFFICIAL_KEYS,
) -> dict[str, nn.Module]:
    """Build networks from an official V-JEPA 2 or 2.1 ``.pt`` or a transformers folder
    (:mod:`stjepa.hf_format`) and load their weights strictly.

    The architecture comes from the file (:mod:`stjepa.architecture`: sizes, depths, widths,
    heads where the file states them, mask tokens, version, a 2.1 predictor's levels and target
    width); ``size`` (an encoder size name), ``encoder`` and ``predictor`` (constructor
    arguments) may restate it, and one that contradicts the file is refused naming the file's
    number. They also carry what the file does not fix: img_size, num_frames (a transformers
    folder's crop_size and frames_per_clip by default), attention (by default the layout a
    stjepa export stored, else global). The 2.1 hub builds its predictor without
    ``interpolate_rope`` (its training did not): pass ``predictor=dict(interpolate_rope=False)``
    to reproduce the hub's predictor. Returns a dict with the requested ``keys``
    (``target_encoder`` is read from ``ema_encoder`` in the distilled 2.1 files, and is the
    encoder of a transformers folder, which holds one); ``"classifier"`` in ``keys`` gives a
    classification folder's trained attentive probe
    (:class:`~stjepa.models.attentive_probe.AttentiveClassifier`). ``path`` may be a file
    already read (:func:`read_weights`).
    """
    weights = path if isinstance(path, Weights) else read_weights(path)
    path, arch = weights.path, weights.architecture
    if arch is None:
        raise CheckpointError(f"checkpoint file {str(path)!r} is a train.py checkpoint; its networks load with "
                              f"stjepa.weights.load_encoder or JEPAPretrainModule.load_from_checkpoint.")
    states = {key: weights.part(key) for key in keys}  # every part asked for is there, before any work
    layout = RunAttention.from_checkpoint(weights.attention) if weights.attention else None
    enc_args = arch.encoder_args({"size": size, **dict(encoder or {})}) if arch.encoder else dict(encoder or {})
    enc_args = {**weights.input_size, "attention": layout and layout.encoder, **enc_args}
    modules: dict[str, nn.Module] = {}
    for key, state in states.items():
        if key == "classifier":
            module: nn.Module = AttentiveClassifier(**weights.classifier)
        elif key == "predictor":
            kwargs = {"attention": layout and layout.predictor, **arch.predictor_args(predictor)}
            kwargs.setdefault("img_size", enc_args.get("img_size", 224))
            kwargs.setdefault("num_frames", enc_args.get("num_frames", 16))
            module = VisionTransformerPredictor(**kwargs)
        else:
            module = VisionTransformer(**enc_args)
        if key != "classifier":
            check_file_generation(path, key, state, module)
        load_strict(module, state, f"{key!r} in {str(path)!r}")
        modules[key] = module
    return modules


# the name from before transformers folders were read, kept for code written against it
load_official = load_networks


def architecture_of(path: str | os.PathLike, ckpt: Mapping[str, Any]) -> Architecture:
    """The architecture of an official file's entries (:func:`official_entries`)."""
    encoder = next((strip_prefixes(ckpt[k]) for k in ("target_encoder", "encoder") if ckpt.get(k)), None)
    predictor = strip_prefixes(ckpt["predictor"]) if ckpt.get("predictor") else None
    return official_architecture(f"checkpoint file {str(path)!r}", encoder, predictor, ckpt.get(HEADS_KEY))


def export_official(
    path: str | os.PathLike,
    encoder: VisionTransformer,
    predictor: VisionTransformerPredictor | None = None,
    target_encoder: VisionTransformer | None = None,
    **extra: Any,
) -> None:
    """Write modules in the official key layout (``module.backbone.`` prefixes)."""

    def prefixed(module: nn.Module) -> dict[str, torch.Tensor]:
        return {OFFICIAL_PREFIX + k: v.detach().cpu() for k, v in module.state_dict().items()}

    out: dict[str, Any] = {"encoder": prefixed(encoder), HEADS_KEY: {"encoder": encoder.num_heads}}
    if predictor is not None:
        out["predictor"] = prefixed(predictor)
        out[HEADS_KEY]["predictor"] = predictor.num_heads
    out["target_encoder"] = prefixed(target_encoder if target_encoder is not None else encoder)
    out.update(extra)
    atomic_save(out, path)


@dataclass
class Weights:
    """The state dicts of a checkpoint file, by part (``encoder``, ``predictor``,
    ``target_encoder``; prefixes stripped), and either the pretraining module's hyper-parameters
    (a ``train.py`` checkpoint) or the architecture read from the file (other formats)."""

    path: str
    parts: dict[str, dict[str, torch.Tensor]]
    hparams: dict[str, Any] | None
    architecture: Architecture | None = None
    # a transformers folder's clip size, its stored stjepa attention layout, its classifier's arguments
    input_size: dict[str, int] = field(default_factory=dict)
    attention: dict | None = None
    classifier: dict[str, Any] | None = None

    def part(self, key: str) -> dict[str, torch.Tensor]:
        if not self.parts.get(key):
            raise CheckpointError(f"checkpoint file {self.path!r} has no {key!r} weights; it has "
                                  f"{', '.join(k for k, v in self.parts.items() if v) or 'none'}.")
        return self.parts[key]


def read_weights(path: str | os.PathLike, mmap: bool = False) -> Weights:
    """Read an official V-JEPA 2 ``.pt``, a ``train.py`` ``.ckpt`` or a transformers folder
    (``mmap``: a torch file's tensors are mapped, not read)."""
    folder = hf_format.folder_of(path)
    if folder is not None:
        return read_folder_weights(folder)
    ckpt = read_checkpoint(path, mmap)
    if "state_dict" in ckpt:  # a Lightning checkpoint of the pretraining module
        state = ckpt["state_dict"]
        parts = {name: {k[len(name) + 1:]: v for k, v in state.items() if k.startswith(name + ".")}
                 for name in OFFICIAL_KEYS}
        return Weights(str(path), parts, dict(ckpt.get("hyper_parameters") or {}))
    ckpt = official_entries(ckpt)
    if not any(k in ckpt for k in OFFICIAL_KEYS):
        raise CheckpointError(f"checkpoint file {str(path)!r} is neither a V-JEPA 2 checkpoint (keys encoder, "
                              f"predictor, target_encoder) nor a train.py checkpoint (key state_dict); it has "
                              f"{', '.join(map(str, list(ckpt)[:8]))}.")
    return Weights(str(path), {name: strip_prefixes(ckpt[name]) for name in OFFICIAL_KEYS if name in ckpt}, None,
                   architecture_of(path, ckpt))


def read_architecture(path: str | os.PathLike) -> Architecture:
    """The architecture a weights file fixes, read cheaply: a transformers folder's config.json,
    the tensor shapes of an official ``.pt`` or of a ``train.py`` ``.ckpt`` (memory-mapped, so a
    run that then loads the file does not read it twice). A ``.ckpt`` states its head counts in
    its model group."""
    folder = hf_format.folder_of(path)
    if folder is not None:
        return hf_format.config_architecture(hf_format.read_config(folder), str(folder))
    weights = read_weights(path, mmap=True)
    if weights.architecture is not None:
        return weights.architecture
    model = (weights.hparams or {}).get("model") or {}  # a train.py checkpoint: stjepa's networks, official keys
    size_heads = size_args(model["size"])["num_heads"] if model.get("size") in VIT_SIZES else None
    heads = {part: n for part, n in (("encoder", model.get("num_heads") or size_heads),
                                     ("predictor", model.get("pred_num_heads"))) if n}
    return official_architecture(f"checkpoint file {str(path)!r}", weights.parts.get("target_encoder")
                                 or weights.parts.get("encoder") or None, weights.parts.get("predictor") or None, heads)


def read_folder_weights(folder: Path) -> Weights:
    """A transformers folder's weights, checked against its config.json before any use."""
    read = hf_format.read_folder(folder)
    arch, where = read.architecture, f"weights in folder {str(folder)!r}"
    parts = {"encoder": read.parts["encoder"], "target_encoder": read.parts["encoder"]}
    classifier = hf_format.classifier_args(read.config) if read.is_classifier else None
    with torch.device("meta"):  # shapes only: nothing is allocated
        expected = {"encoder": VisionTransformer(**arch.encoder_args())}
        if read.parts["predictor"] or not read.is_classifier:
            expected["predictor"] = VisionTransformerPredictor(**arch.predictor_args())
        if classifier is not None:
            expected["classifier"] = AttentiveClassifier(**classifier)
    for part, module in expected.items():
        load_strict(module, read.parts[part], f"the {part} {where}", f"do not match its {hf_format.CONFIG}")
        parts[part] = read.parts[part]
    return Weights(str(folder), parts, None, arch, hf_format.input_size(read.config), read.attention, classifier)


def load_pretraining_weights(path: str | os.PathLike, encoder: nn.Module, predictor: nn.Module,
                             target_encoder: nn.Module, model: Mapping[str, Any] | None = None) -> None:
    """Start (or anneal) from a file's weights: the encoder, the predictor when the file has
    one, and the target encoder (the encoder's weights when the file has no target). ``model``
    (the model group the networks were built from) is checked against the file's architecture
    first, so a mismatch names the model key and the file's number."""
    weights = read_weights(path)
    if weights.architecture is not None and model is not None:
        check_model_group(weights.architecture, model)
    parts = {"encoder": weights.parts.get("encoder") or weights.part("target_encoder"),
             "predictor": weights.parts.get("predictor"),
             "target_encoder": weights.parts.get("target_encoder") or weights.part("encoder")}
    for key, module in (("encoder", encoder), ("predictor", predictor), ("target_encoder", target_encoder)):
        if parts[key]:
            check_file_generation(path, key, parts[key], module)
            load_strict(module, parts[key], f"{key!r} in {str(path)!r}")


def check_model_group(arch: Architecture, model: Mapping[str, Any]) -> dict[str, Any]:
    """The model group's architecture keys against a file's; returns the encoder arguments."""
    args = arch.encoder_args(encoder_args(model), config_key) if arch.encoder else encoder_args(model)
    if arch.predictor is not None:
        arch.predictor_args(predictor_args(model), config_key)
    return args


def load_encoder(
    path: str | os.PathLike,
    key: str = "target_encoder",
    model: Mapping[str, Any] | None = None,
    attention: Mapping[str, Any] | None = None,
    crop_size: int | None = None,
    frames_per_clip: int | None = None,
    random_init: bool = False,
    init_seed: int | None = None,
) -> VisionTransformer:
    """An encoder from a train.py ``.ckpt`` (its own architecture and attention layout) or an
    official V-JEPA 2 ``.pt`` (architecture from the file; the ``model`` group may restate
    it, and a key that contradicts the file is refused). ``attention`` (the
    attention group) replaces the stored layout; ``key`` picks ``target_encoder`` or
    ``encoder``; ``random_init`` keeps the architecture but not the weights (the baseline a
    probe must beat), drawn from ``init_seed`` when given (else from the current random state)."""
    if key not in ("target_encoder", "encoder"):
        raise CheckpointError(f"probe.encoder_key={key!r} is not known; allowed values are target_encoder, encoder.")
    return encoder_of(read_weights(path), key, model, attention, crop_size, frames_per_clip, random_init, init_seed)


def encoder_of(weights: Weights, key: str = "target_encoder", model: Mapping[str, Any] | None = None,
               attention: Mapping[str, Any] | None = None, crop_size: int | None = None,
               frames_per_clip: int | None = None, random_init: bool = False,
               init_seed: int | None = None) -> VisionTransformer:
    """:func:`load_encoder` on a file already read."""
    path = weights.path
    state = weights.part(key)
    if weights.hparams is not None:
        hp = weights.hparams
        ema = (hp.get("optim") or {}).get("ema")
        if key == "target_encoder" and not random_init and ema and all(float(m) == 1.0 for m in ema):
            warnings.warn(f"checkpoint file {str(path)!r} was trained with optim.ema={list(ema)}: its target encoder "
                          f"never moved from its initial weights, so probing it measures random weights; "
                          f"probe.encoder_key=encoder probes the trained encoder.", stacklevel=2)
        args = {name: hp[name] for name in ENCODER_HPARAMS}
        args["attention"] = attention if attention is not None else RunAttention.from_checkpoint(hp["attention"])
    else:
        stored = RunAttention.from_checkpoint(weights.attention) if weights.attention else None
        args = dict(model=weights.architecture.encoder_args(encoder_args(model or {}), config_key),
                    attention=attention if attention is not None else stored,
                    crop_size=crop_size or weights.input_size.get("img_size", 224),
                    frames_per_clip=frames_per_clip or weights.input_size.get("num_frames", 16))
    with torch.random.fork_rng(devices=[], enabled=random_init and init_seed is not None):
        if random_init and init_seed is not None:
            torch.manual_seed(init_seed)
        encoder = build_encoder(**args)
    check_file_generation(path, key, state, encoder)
    if not random_init:
        load_strict(encoder, state, f"{key!r} in {str(path)!r}")
    return encoder


def networks_for_export(path: str | os.PathLike, key: str = "target_encoder"
                        ) -> tuple[VisionTransformer, VisionTransformerPredictor, dict | None]:
    """The encoder (``key``) and predictor of any checkpoint format, with the attention group
    they were trained with (None: global attention, or not known)."""
    weights = read_weights(path)
    encoder = encoder_of(weights, key)
    if weights.hparams is not None:
        attention = RunAttention.from_checkpoint(weights.hparams["attention"])
        predictor = build_predictor(weights.hparams["model"], attention, encoder)
        load_strict(predictor, weights.part("predictor"), f"'predictor' in {str(path)!r}")
        return encoder, predictor, attention.group
    return encoder, load_networks(weights, keys=("predictor",))["predictor"], weights.attention
