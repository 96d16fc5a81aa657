"""The architecture a weights file fixes, read from the file itself, and the architecture keys a
user gives checked against it: a key that contradicts the file is refused with the file's number
in one sentence, never loaded into a half-matching network (the official 2.1 ViT-L file holds a
12-block predictor while its config said 24, and non-strict loading left half of it random:
facebookresearch/vjepa2 #149).

Where the numbers come from:

- an official ``.pt`` has no config. Widths, depths, patch and tubelet sizes, MLP widths, the
  predictor's mask-token count and (2.1) levels and target width are read from tensor shapes.
  Head counts are in no shape: files that stjepa writes store them (``stjepa_num_heads``);
  otherwise an encoder whose width and depth are a V-JEPA 2 size (``VIT_SIZES``) has that size's
  heads and a predictor has 32-wide heads, as every released predictor (384 wide, 12 heads).
  Heads found by such a convention are not the file's number, so a given head count wins over
  them; a count the file states is checked like any other.
- a transformers folder's ``config.json`` states every number (:mod:`stjepa.hf_format`).

An :class:`Architecture` holds constructor arguments (``VisionTransformer``,
``VisionTransformerPredictor``); :meth:`Architecture.encoder_args` and
:meth:`Architecture.predictor_args` check what the user gave and return the arguments to build
with. ``name_of(arg, part)`` names a given argument as the user wrote it (a config key such as
``model.pred_depth``, or the keyword of :func:`stjepa.weights.load_networks`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch

from .errors import CheckpointError
from .models import VIT_SIZES
from .models.arguments import one_of
from .models.versions import generation_of_state

# head widths of the released networks, for files that do not state their head counts
OFFICIAL_PREDICTOR_HEAD_WIDTH = 32
# the arguments an encoder's tensors (and a size name) fix; the rest (img_size, attention,
# drop_path_rate, ...) the user chooses freely
ENCODER_FIXED = ("embed_dim", "depth", "num_heads", "mlp_ratio", "use_swiglu", "patch_size", "tubelet_size",
                 "version")
WORDS = {"embed_dim": "width {}", "predictor_embed_dim": "width {}", "depth": "{} blocks", "num_heads": "{} heads",
         "num_mask_tokens": "{} mask tokens", "patch_size": "patch size {}", "tubelet_size": "tubelet size {}",
         "mlp_ratio": "MLP ratio {:g}", "use_swiglu": "use_swiglu={}", "version": "V-JEPA {}", "levels": "{} levels",
         "out_embed_dim": "target width {}", "predict_context": "predict_context={}", "norm_eps": "LayerNorm eps {:g}",
         "qkv_bias": "qkv_bias={}"}
NameOf = Callable[[str, str], str]


def keyword_name(arg: str, part: str) -> str:
    """How :func:`stjepa.weights.load_networks` spells an argument: ``predictor['depth']``."""
    return "size" if arg == "size" else f"{part}[{arg!r}]"


def block_count(state: Mapping[str, Any], prefix: str) -> int:
    return len({k.split(".")[1] for k in state if k.startswith(prefix)})


def listed(items: list[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def size_name(width: int, depth: int, swiglu: bool) -> str | None:
    names = [name for name, (dim, layers, _, _, gated) in VIT_SIZES.items() if (dim, layers, gated) == (width, depth, swiglu)]
    return names[0] if names else None


def size_args(size: str) -> dict[str, Any]:
    dim, depth, heads, ratio, swiglu = VIT_SIZES[one_of(size, "size", VIT_SIZES)]
    return dict(embed_dim=dim, depth=depth, num_heads=heads, mlp_ratio=ratio, use_swiglu=swiglu)


def same(arg: str, given: Any, found: Any, width: int) -> bool:
    """Equal as the constructor would build them (an MLP ratio builds int(width * ratio) units)."""
    if arg == "mlp_ratio":
        return int(width * float(given)) == int(width * float(found))
    if arg == "version":
        return str(given) == str(found)
    return given == found


@dataclass(frozen=True)
class Architecture:
    """``encoder`` and ``predictor`` (None: the file has none) hold the constructor arguments the
    file fixes; ``assumed`` the ``(part, arg)`` pairs that come from a convention, not the file
    (head counts of official files); ``where`` names the file in sentences."""

    where: str
    encoder: dict[str, Any]
    predictor: dict[str, Any] | None = None
    assumed: frozenset[tuple[str, str]] = field(default_factory=frozenset)

    @property
    def size(self) -> str | None:
        """The encoder's V-JEPA 2 size name, None for other widths and depths."""
        e = self.encoder
        return size_name(e["embed_dim"], e["depth"], bool(e.get("use_swiglu")))

    def describe(self) -> str:
        e = self.encoder
        return f"{'a ' + self.size if self.size else 'an'} encoder (width {e['embed_dim']}, depth {e['depth']})"

    def of(self, part: str) -> dict[str, Any]:
        return self.encoder if part == "encoder" else self.predictor

    def refuse(self, part: str, wrong: list[tuple[str, str, Any]]) -> CheckpointError:
        """One sentence for every ``(name, arg, given)`` that contradicts the file, so that a
        user fixes them all at once."""
        found = self.of(part)

        given = listed([f"{name}={value!r}" for name, _, value in wrong])
        has = listed([WORDS[arg].format(found[arg]) for _, arg, _ in wrong])
        fix = listed([f"{name}={found[arg]!r}" for name, arg, _ in wrong])
        return CheckpointError(f"{given} but the {part} in {self.where} has {has}; give {fix} "
                               f"(the file fixes {'it' if len(wrong) == 1 else 'them'}).")

    def built(self, part: str, given: dict[str, Any], name_of: NameOf, shape: str) -> dict[str, Any]:
        """``given`` with the file's numbers (a given head count wins over an assumed one);
        ``shape`` describes the network when neither the file nor ``given`` has its heads."""
        if self.of(part)["num_heads"] is None and "num_heads" not in given:
            raise CheckpointError(f"{shape} and does not state its heads; give {name_of('num_heads', part)}.")
        out = dict(given)
        for arg, value in self.of(part).items():
            if value is not None and not ((part, arg) in self.assumed and arg in given):
                out[arg] = value
        return out

    def check(self, part: str, given: Mapping[str, Any], name_of: NameOf, width: int) -> None:
        found = self.of(part)
        wrong = [(name_of(arg, part), arg, value) for arg, value in given.items()
                 if value is not None and arg in found and (part, arg) not in self.assumed and found[arg] is not None
                 and not same(arg, value, found[arg], width)]
        if wrong:
            raise self.refuse(part, wrong)

    def encoder_args(self, given: Mapping[str, Any] | None = None, name_of: NameOf = keyword_name) -> dict[str, Any]:
        """VisionTransformer arguments: the file's architecture, ``given``'s other arguments.
        ``given`` may name a ``size``: its numbers are checked as the size's (an explicit
        ``embed_dim`` ... given beside it wins over the size's)."""
        given = {k: v for k, v in (given or {}).items() if v is not None}
        size = given.pop("size", None)
        checked = given
        if size is not None:
            checked = {**size_args(size), **{k: v for k, v in given.items() if k in ENCODER_FIXED}}
            if any(arg not in given and checked[arg] != self.encoder[arg] for arg in ("embed_dim", "depth", "use_swiglu")):
                # every number of the size that the file contradicts, so that one fix is enough
                wrong = [arg for arg in ENCODER_FIXED if arg in checked and arg not in given
                         and ("encoder", arg) not in self.assumed and self.encoder.get(arg) is not None
                         and not same(arg, checked[arg], self.encoder[arg], self.encoder["embed_dim"])]
                hint = (f"add {name_of('size', 'encoder').split('.')[0]}={self.size}" if self.size else
                        "give " + listed([f"{name_of(a, 'encoder')}={self.encoder[a]}" for a in wrong]))
                raise CheckpointError(f"{self.where} holds {self.describe()} but {name_of('size', 'encoder')}={size}; "
                                      f"{hint}.")
            checked.update(given)
        self.check("encoder", checked, name_of, self.encoder["embed_dim"])
        return self.built("encoder", given, name_of, f"{self.where} holds an encoder of width "
                          f"{self.encoder['embed_dim']} and depth {self.encoder['depth']}, which is no V-JEPA 2 size,")

    def predictor_args(self, given: Mapping[str, Any] | None = None, name_of: NameOf = keyword_name) -> dict[str, Any]:
        """VisionTransformerPredictor arguments: the file's architecture, ``given``'s other arguments."""
        if self.predictor is None:
            raise CheckpointError(f"{self.where} holds no predictor.")
        given = {k: v for k, v in (given or {}).items() if v is not None}
        self.check("predictor", given, name_of, self.predictor["predictor_embed_dim"])
        return self.built("predictor", given, name_of, f"the predictor in {self.where} is "
                          f"{self.predictor['predictor_embed_dim']} wide, which no head count of the released "
                          f"predictors divides,")


def count_mask_tokens(state: Mapping[str, Any]) -> int:
    return sum(1 for k in state if k.startswith("mask_tokens."))


def predictor_shape(state: Mapping[str, torch.Tensor], embed_dim: int) -> dict[str, Any]:
    """Predictor arguments a deeply supervised (2.1) state dict fixes: levels, target width, context head."""
    fused = state.get("predictor_embed.0.weight")
    levels = 1 if fused is None else fused.shape[1] // fused.shape[0]  # Linear(levels * D, D)
    out = state["predictor_proj.weight"].shape[0] // levels
    return dict(levels=levels, out_embed_dim=None if out == embed_dim else out,
                predict_context="predictor_proj_context.weight" in state)


def official_architecture(where: str, encoder: Mapping[str, torch.Tensor] | None,
                          predictor: Mapping[str, torch.Tensor] | None,
                          heads: Mapping[str, int] | None = None) -> Architecture:
    """The architecture of official-layout state dicts (prefixes stripped): the encoder's and the
    predictor's (either may be None), ``heads`` the head counts the file states, if any."""
    heads, assumed = dict(heads or {}), set()
    enc: dict[str, Any] = {}
    if encoder is not None:
        patch = encoder["patch_embed.proj.weight"]  # (D, C, tubelet, patch, patch)
        width, depth = patch.shape[0], block_count(encoder, "blocks.")
        swiglu = "blocks.0.mlp.fc3.weight" in encoder
        name = size_name(width, depth, swiglu)
        preset = size_args(name) if name else {}
        enc = dict(embed_dim=width, depth=depth, use_swiglu=swiglu, patch_size=patch.shape[-1],
                   tubelet_size=patch.shape[2], version=generation_of_state(encoder).name,
                   mlp_ratio=preset.get("mlp_ratio") if swiglu else encoder["blocks.0.mlp.fc1.weight"].shape[0] / width)
        enc["num_heads"] = heads.get("encoder") or preset.get("num_heads")
        if "encoder" not in heads:
            assumed.add(("encoder", "num_heads"))
    pred = None
    if predictor is not None:
        found = generation_of_state(predictor)
        width = predictor["predictor_norm.weight"].shape[0]
        fused = predictor.get("predictor_embed.0.weight")  # 2.1 with levels: Linear(levels * D, D)
        embed = fused.shape[0] if fused is not None else predictor["predictor_embed.weight"].shape[1]
        pred = dict(embed_dim=embed, predictor_embed_dim=width, depth=block_count(predictor, "predictor_blocks."),
                    num_mask_tokens=count_mask_tokens(predictor), version=found.name,
                    mlp_ratio=predictor["predictor_blocks.0.mlp.fc1.weight"].shape[0] / width,
                    levels=None, out_embed_dim=None, predict_context=None)
        if found.deep_supervision:
            pred.update(predictor_shape(predictor, embed))
        pred["num_heads"] = heads.get("predictor") or (width // OFFICIAL_PREDICTOR_HEAD_WIDTH
                                                       if width % OFFICIAL_PREDICTOR_HEAD_WIDTH == 0 else None)
        if "predictor" not in heads:
            assumed.add(("predictor", "num_heads"))
    return Architecture(where, enc, pred, frozenset(assumed))
