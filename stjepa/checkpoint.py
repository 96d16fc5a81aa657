"""Official V-JEPA 2 checkpoints: load into stjepa modules, and export back to that layout.

An official ``.pt`` file is a dict with ``encoder``, ``predictor`` and ``target_encoder``
state dicts (plus optimizer state and counters); parameters carry a ``module.backbone.``
prefix from the DDP and multi-mask wrappers of the training code.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from .models import VIT_SIZES, VisionTransformer, VisionTransformerPredictor, vit

OFFICIAL_KEYS = ("encoder", "predictor", "target_encoder")
OFFICIAL_PREFIX = "module.backbone."
# Present in some files but unused with RoPE; the official loaders drop them too.
IGNORED_KEYS = ("pos_embed", "predictor_pos_embed")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used, with the reason in one message."""


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {str(path)!r} does not exist.")
    try:
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


def load_strict(module: nn.Module, state: Mapping[str, torch.Tensor], what: str) -> None:
    """Load ``state`` into ``module``; on any mismatch raise one error listing all of them."""
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
        raise CheckpointError(f"{what} does not match the model architecture: " + "; ".join(parts) + ".")
    module.load_state_dict(state, strict=True)


def count_mask_tokens(state: Mapping[str, Any]) -> int:
    return sum(1 for k in state if k.startswith("mask_tokens."))


def load_official(
    path: str | os.PathLike,
    size: str = "vit_large",
    encoder: Mapping[str, Any] | None = None,
    predictor: Mapping[str, Any] | None = None,
    keys: tuple[str, ...] = OFFICIAL_KEYS,
) -> dict[str, nn.Module]:
    """Build modules from an official V-JEPA 2 ``.pt`` and load its weights strictly.

    ``size`` names the encoder size; ``encoder`` holds constructor overrides (img_size,
    num_frames, attention, ...); ``predictor`` holds predictor arguments (depth,
    predictor_embed_dim, num_heads, attention, ...; ``num_mask_tokens`` defaults to the
    number stored in the file). Returns a dict with the requested ``keys``.
    """
    ckpt = read_checkpoint(path)
    absent = [k for k in keys if k not in ckpt]
    if absent:
        raise CheckpointError(
            f"checkpoint file {str(path)!r} has no {absent[0]!r} entry; it has {', '.join(map(str, ckpt))}."
        )
    modules: dict[str, nn.Module] = {}
    for key in keys:
        state = strip_prefixes(ckpt[key])
        if key == "predictor":
            kwargs = {"num_mask_tokens": count_mask_tokens(state) or 10, **dict(predictor or {})}
            kwargs.setdefault("embed_dim", (encoder or {}).get("embed_dim") or encoder_width(size))
            kwargs.setdefault("img_size", (encoder or {}).get("img_size", 224))
            kwargs.setdefault("num_frames", (encoder or {}).get("num_frames", 16))
            module: nn.Module = VisionTransformerPredictor(**kwargs)
        else:
            module = vit(size, **dict(encoder or {}))
        load_strict(module, state, f"{key!r} in {str(path)!r}")
        modules[key] = module
    return modules


def encoder_width(size: str) -> int:
    if size not in VIT_SIZES:
        raise ValueError(f"model.size={size!r} is not known; allowed values are {', '.join(VIT_SIZES)}.")
    return VIT_SIZES[size][0]


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

    out: dict[str, Any] = {"encoder": prefixed(encoder)}
    if predictor is not None:
        out["predictor"] = prefixed(predictor)
    out["target_encoder"] = prefixed(target_encoder if target_encoder is not None else encoder)
    out.update(extra)
    atomic_save(out, path)


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """torch.save to a temporary file, then rename: a crash never leaves a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())  # the bytes are on disk before the rename makes them the checkpoint
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def _remove_stale_temporaries(path: Path) -> None:
    """Delete half-written temporaries of ``path`` left by writers that were killed mid-save
    (``.<name>.tmp-<pid>`` whose process is gone); those of a live process are left alone."""
    for tmp in path.parent.glob(f".{path.name}.tmp-*"):
        pid = tmp.name.rsplit("-", 1)[1]
        if pid.isdigit() and int(pid) != os.getpid() and not _process_alive(int(pid)):
            tmp.unlink(missing_ok=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists but belongs to someone else (PermissionError), or cannot be asked
        return True
    return True


def _fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_encoder(
    path: str | os.PathLike,
    key: str = "target_encoder",
    model: Mapping[str, Any] | None = None,
    attention: Mapping[str, Any] | None = None,
    img_size: int | None = None,
    num_frames: int | None = None,
    random_init: bool = False,
) -> VisionTransformer:
    """An encoder from a train.py ``.ckpt`` (its own architecture and attention layout) or an
    official V-JEPA 2 ``.pt`` (architecture from ``model``). ``attention`` replaces the stored
    layout; ``key`` picks ``target_encoder`` or ``encoder``; ``random_init`` keeps the
    architecture but not the weights (the baseline a probe must beat)."""
    from .models.factory import build_encoder, split_attention

    if key not in ("target_encoder", "encoder"):
        raise CheckpointError(f"probe.encoder_key={key!r} is not known; allowed values are target_encoder, encoder.")
    ckpt = read_checkpoint(path)
    if "state_dict" in ckpt and "hyper_parameters" in ckpt:  # a train.py checkpoint
        hp = ckpt["hyper_parameters"]
        ema = (hp.get("optim") or {}).get("ema")
        if key == "target_encoder" and not random_init and ema and all(float(m) == 1.0 for m in ema):
            warnings.warn(f"checkpoint file {str(path)!r} was trained with optim.ema={list(ema)}: its target encoder "
                          f"never moved from its initial weights, so probing it measures random weights; "
                          f"probe.encoder_key=encoder probes the trained encoder.", stacklevel=2)
        stored, _ = split_attention(hp.get("attention"))
        encoder = build_encoder(hp["model"], attention if attention is not None else stored,
                                hp["crop_size"], hp["frames_per_clip"])
        state = {k[len(key) + 1:]: v for k, v in ckpt["state_dict"].items() if k.startswith(key + ".")}
        if not state:
            raise CheckpointError(f"checkpoint file {str(path)!r} holds no {key!r} weights.")
    else:
        if key not in ckpt:
            raise CheckpointError(f"checkpoint file {str(path)!r} has no {key!r} entry; it has "
                                  f"{', '.join(map(str, ckpt))}.")
        model = dict(model or {})
        encoder = build_encoder(model, attention, img_size or 224, num_frames or 16)
        state = strip_prefixes(ckpt[key])
    if not random_init:
        load_strict(encoder, state, f"{key!r} in {str(path)!r}")
    return encoder
