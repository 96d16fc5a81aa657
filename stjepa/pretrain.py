"""JEPA pretraining as a LightningModule: context encoder + predictor regress the layer-normed
features of an EMA target encoder at masked positions (V-JEPA 2)."""
from __future__ import annotations

import copy
from typing import Any, Mapping

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor

from .checkpoint import CheckpointError, load_strict, read_checkpoint, strip_prefixes
from .models.factory import build_encoder, build_predictor, split_attention
from .models.flops import Flops, encoder_flops, patch_embed_flops, predictor_flops
from .models.sequence import gather_tokens
from .models.vision_transformer import token_grid
from .schedules import cosine, learning_rate, linear

DEFAULT_OPTIM = dict(
    lr=5.25e-4, start_lr=1e-4, final_lr=1e-6, warmup_steps=0, lr_schedule="warmup_cosine", schedule_scale=1.0,
    weight_decay=0.04, final_weight_decay=0.04, betas=(0.9, 0.999), eps=1e-8, ema=(0.99925, 0.99925), loss_exp=1.0,
)


NONFINITE_ACTIONS = ("stop", "skip")


class NonFiniteLossError(RuntimeError):
    """The loss or the gradients are NaN/inf; training stops without saving."""


def jepa_loss(predictions: list[Tensor], targets: list[Tensor], loss_exp: float = 1.0) -> Tensor:
    """mean |pred - target|^p / p per mask set, averaged over mask sets (p = 1: L1)."""
    per_set = [(p - t).abs().pow(loss_exp).mean() / loss_exp for p, t in zip(predictions, targets)]
    return torch.stack(per_set).mean()


class JEPAPretrainModule(L.LightningModule):
    def __init__(
        self,
        model: Mapping[str, Any],
        attention: Mapping[str, Any] | None = None,
        optim: Mapping[str, Any] | None = None,
        frames_per_clip: int = 16,
        crop_size: int = 224,
        compile: bool = False,
        log_flops_every_n_steps: int = 10,
        on_nonfinite: str = "stop",
    ):
        super().__init__()
        self.save_hyperparameters()
        self.optim = {**DEFAULT_OPTIM, **dict(optim or {})}
        enc_attention, pred_attention = split_attention(attention)
        self.encoder = build_encoder(model, enc_attention, crop_size, frames_per_clip)
        self.predictor = build_predictor(model, pred_attention, self.encoder)
        self.target_encoder = copy.deepcopy(self.encoder)
        self.target_encoder.requires_grad_(False)
        if model.get("init_from"):
            self.load_initial_weights(model["init_from"])
        self.compile_models = compile
        self.log_flops_every_n_steps = log_flops_every_n_steps
        if on_nonfinite not in NONFINITE_ACTIONS:
            raise ValueError(f"on_nonfinite={on_nonfinite!r} is not known; allowed values are "
                             f"{', '.join(NONFINITE_ACTIONS)}.")
        self.on_nonfinite = on_nonfinite
        self._total_steps = 1
        self._skip_step = False  # set when this step's loss or gradients are not finite (skip mode)
        self.skipped_steps = 0

    # -- weights ---------------------------------------------------------------------------
    def load_initial_weights(self, path: str) -> None:
        """Anneal from an official V-JEPA 2 ``.pt`` or a ``train.py`` ``.ckpt`` (weights only)."""
        ckpt = read_checkpoint(path)
        if "state_dict" in ckpt:  # a Lightning checkpoint of this module
            state = ckpt["state_dict"]
            parts = {name: {k[len(name) + 1:]: v for k, v in state.items() if k.startswith(name + ".")}
                     for name in ("encoder", "predictor", "target_encoder")}
        elif "encoder" in ckpt:
            parts = {name: strip_prefixes(ckpt[name]) for name in ("encoder", "predictor", "target_encoder")
                     if name in ckpt}
        else:
            raise CheckpointError(f"model.init_from={path!r} is neither a V-JEPA 2 checkpoint (keys encoder, "
                                  f"predictor, target_encoder) nor a train.py checkpoint (key state_dict).")
        load_strict(self.encoder, parts["encoder"], f"'encoder' in {path!r}")
        if parts.get("predictor"):
            load_strict(self.predictor, parts["predictor"], f"'predictor' in {path!r}")
        target = parts.get("target_encoder") or parts["encoder"]
        load_strict(self.target_encoder, target, f"'target_encoder' in {path!r}")

    def configure_model(self) -> None:
        if self.compile_models:
            for module in (self.encoder, self.predictor, self.target_encoder):
                module.compile()

    # -- schedules -------------------------------------------------------------------------
    def build_optimizer(self, fused: bool | None = None) -> torch.optim.AdamW:
        """AdamW over encoder and predictor; no weight decay on biases and 1-D weights (as
        upstream). Fused on CUDA unless told otherwise."""
        o = self.optim
        decay, no_decay = [], []
        for module in (self.encoder, self.predictor):
            for name, p in module.named_parameters():
                if p.requires_grad:
                    (no_decay if p.ndim == 1 or name.endswith(".bias") else decay).append(p)
        groups = [{"params": decay, "weight_decay": o["weight_decay"]},
                  {"params": no_decay, "weight_decay": 0.0, "exclude_from_wd": True}]
        fused = self.device.type == "cuda" if fused is None else fused
        return torch.optim.AdamW(groups, lr=o["lr"], betas=tuple(o["betas"]), eps=o["eps"], fused=fused)

    def configure_optimizers(self):
        self._total_steps = max(int(self.trainer.estimated_stepping_batches * self.optim["schedule_scale"]), 1)
        return self.build_optimizer()

    def schedule_values(self, step: int) -> dict[str, float]:
        o, total = self.optim, self._total_steps
        return {
            "lr": learning_rate(
                o["lr_schedule"], step, total, o["warmup_steps"], o["start_lr"], o["lr"], o["final_lr"]
            ),
            "wd": cosine(step, total, o["weight_decay"], o["final_weight_decay"]),
            "ema": linear(step, total, o["ema"][0], o["ema"][1]),
        }

    def _apply_schedules(self) -> dict[str, float]:
        values = self.schedule_values(self.global_step)
        for group in self.optimizers().optimizer.param_groups:
            group["lr"] = values["lr"]
            if not group.get("exclude_from_wd"):
                group["weight_decay"] = values["wd"]
        return values

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        self._skip_step = False
        super().optimizer_step(*args, **kwargs)  # runs training_step and backward (the closure)
        if not self._skip_step:
            self.update_target_encoder(self.schedule_values(self.global_step)["ema"])

    # -- numerical faults ------------------------------------------------------------------
    def _all_finite(self, value: Tensor) -> bool:
        """Whether ``value`` is finite on every rank (ranks must agree to stop or skip together)."""
        return self.trainer.strategy.reduce_boolean_decision(bool(torch.isfinite(value).all()), all=True)

    def _nonfinite(self, what: str) -> None:
        """Stop (raise) or mark the step to be skipped, per ``on_nonfinite``."""
        if self.on_nonfinite == "stop":
            raise NonFiniteLossError(
                f"the {what} is not finite at step {self.global_step}; training stopped and the last checkpoint "
                f"is kept (module.on_nonfinite=skip skips such batches instead).")
        self._skip_step = True
        self.skipped_steps += 1
        self.log("train/skipped_steps", float(self.skipped_steps), batch_size=1)

    def on_before_optimizer_step(self, optimizer) -> None:
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not grads:
            return
        squared = torch.stack(torch._foreach_norm(grads)).square().sum()
        if type(self.trainer.strategy).__name__ == "FSDPStrategy":  # each rank holds a shard of the gradients
            squared = self.trainer.strategy.reduce(squared, reduce_op="sum")
        norm = squared.sqrt()
        self.log("train/grad_norm", norm, batch_size=1)
        if not self._all_finite(norm):
            self._nonfinite("gradient norm")
            optimizer.zero_grad(set_to_none=True)  # AdamW leaves parameters without gradients untouched

    @torch.no_grad()
    def update_target_encoder(self, momentum: float) -> None:
        """target <- m * target + (1 - m) * online."""
        target = [p for p in self.target_encoder.parameters()]
        online = [p.detach() for p in self.encoder.parameters()]
        torch._foreach_lerp_(target, online, 1.0 - momentum)

    # -- steps -----------------------------------------------------------------------------
    def shared_step(self, batch: dict) -> tuple[Tensor, list[Tensor], Tensor]:
        clips, masks_enc, masks_pred = batch["video"], batch["masks_enc"], batch["masks_pred"]
        with torch.no_grad():
            h = self.target_encoder(clips)
            h = F.layer_norm(h, (h.shape[-1],))
            targets = [gather_tokens(h, m) for m in masks_pred]
        z = self.encoder(clips, masks_enc)
        grid = token_grid(tuple(clips.shape), self.encoder.patch_size, self.encoder.tubelet_size)
        preds = self.predictor(z, masks_enc, masks_pred, mask_index=0, grid=grid)
        loss = jepa_loss(preds, targets, self.optim["loss_exp"])
        return loss, z, h

    def training_step(self, batch: dict, batch_idx: int) -> Tensor | None:
        values = self._apply_schedules()
        loss, z, _ = self.shared_step(batch)
        B = batch["video"].shape[0]
        if not self._all_finite(loss.detach()):
            self._nonfinite("training loss")  # raises in stop mode
            return None  # Lightning skips backward and the optimizer step
        self.log("train/loss", loss, prog_bar=True, batch_size=B)
        self.log_dict({"train/lr": values["lr"], "train/wd": values["wd"], "train/ema_momentum": values["ema"],
                       "train/visible_tokens": float(sum(m.shape[1] for m in batch["masks_enc"])),
                       "train/feature_std": feature_std(z[0].detach())}, batch_size=B)
        if "bad_videos" in batch:  # files skipped by the data pipeline: per step and summed per epoch
            self.log("data/bad_videos", batch["bad_videos"].sum().float(), on_step=True, on_epoch=True,
                     reduce_fx="sum", batch_size=B)
        if self.log_flops_every_n_steps and self.global_step % self.log_flops_every_n_steps == 0:
            flops = self.step_flops(batch)
            self.log_dict({"flops/step_total": flops.total * 1.0, "flops/attention": flops.attention,
                           "flops/attention_if_full": flops.attention_if_full,
                           "flops/attention_ratio": flops.attention / max(flops.attention_if_full, 1.0)},
                          batch_size=B)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        loss, z, _ = self.shared_step(batch)
        B = batch["video"].shape[0]
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=B)
        self.log("val/feature_std", feature_std(z[0]), sync_dist=True, batch_size=B)

    def step_flops(self, batch: dict) -> Flops:
        """FLOPs of one training step: 3x (forward + backward) for the context encoder and the
        predictor, 1x for the target encoder's forward. The context encoder embeds each clip
        once, whatever the number of mask sets."""
        clips = batch["video"]
        B = clips.shape[0]
        grid = token_grid(tuple(clips.shape), self.encoder.patch_size, self.encoder.tubelet_size)
        total = encoder_flops(self.target_encoder, B, grid)
        trained = patch_embed_flops(self.encoder, B, grid)
        for mx, my in zip(batch["masks_enc"], batch["masks_pred"]):
            mx, my = mx.cpu(), my.cpu()
            trained = trained + encoder_flops(self.encoder, B, grid, mx, embed=False)
            trained = trained + predictor_flops(self.predictor, mx, my, grid)
        return total + trained.scale(3.0)


def feature_std(features: Tensor) -> Tensor:
    """Std over all tokens of each feature, averaged over features; near 0 means collapse."""
    return features.float().reshape(-1, features.shape[-1]).std(dim=0).mean()
