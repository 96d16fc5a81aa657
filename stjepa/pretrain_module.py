"""JEPA pretraining as a LightningModule: context encoder + predictor regress the layer-normed
features of an EMA target encoder at masked positions (V-JEPA 2; with ``model.version=2.1``
every level, and the context tokens too, as V-JEPA 2.1 does: :mod:`stjepa.losses`).

The module holds the three networks, the training and validation steps, the loss and the
optimizer. Around it: schedules in :mod:`stjepa.optim`, the non-finite policy, FLOP and
throughput logging in :mod:`stjepa.callbacks`, weight files in :mod:`stjepa.weights`.
"""
from __future__ import annotations

import copy
from dataclasses import asdict
from typing import Any, Mapping

import lightning as L
import torch
from torch import Tensor

from .losses import ContextLoss, level_norm, step_loss
from .networks import RunAttention, build_encoder, build_predictor, init_weights_path
from .models.grid import gather_tokens, valid_slots
from .optim import OptimSettings, adamw, apply_schedule
from .weights import load_pretraining_weights


def feature_std(features: Tensor) -> Tensor:
    """Std over all tokens of each feature, averaged over features; near 0 means collapse."""
    return features.float().reshape(-1, features.shape[-1]).std(dim=0).mean()


class JEPAPretrainModule(L.LightningModule):
    """``model`` is the model group (read only by :mod:`stjepa.networks`'s builders);
    ``attention`` the run's attention, built (or its group, as a checkpoint stores it);
    ``optim`` and ``loss`` typed settings or their groups; ``frames_per_clip`` and ``crop_size``
    the clip size. ``model.init_from`` starts from the weights of an official ``.pt`` or a
    ``train.py`` ``.ckpt``."""

    def __init__(
        self,
        model: Mapping[str, Any],
        attention: RunAttention | Mapping[str, Any] | None,
        optim: OptimSettings | Mapping[str, Any],
        frames_per_clip: int,
        crop_size: int,
        compile: bool | str = False,
        loss: ContextLoss | Mapping[str, Any] | None = None,
    ):
        super().__init__()
        self.attention = RunAttention.create(attention)
        self.optim = optim if isinstance(optim, OptimSettings) else OptimSettings(**optim)
        self.context_loss = None if loss is None else ContextLoss.create(loss)
        # plain values only: checkpoints must not pickle this package's classes (classes move, files stay)
        self.save_hyperparameters({
            "model": dict(model), "attention": self.attention.group, "optim": asdict(self.optim),
            "frames_per_clip": frames_per_clip, "crop_size": crop_size, "compile": compile,
            "loss": None if self.context_loss is None else self.context_loss.group()})
        self.encoder = build_encoder(model, self.attention, crop_size, frames_per_clip)
        self.predictor = build_predictor(model, self.attention, self.encoder)
        self.target_encoder = copy.deepcopy(self.encoder)
        self.target_encoder.requires_grad_(False)
        self.generation = self.encoder.generation
        if self.generation.context_loss and self.context_loss is None:
            raise ValueError("a V-JEPA 2.1 model needs the loss settings (context_weight, context_ramp, "
                             "distance_weighting).")
        init_from = init_weights_path(model)
        if init_from:
            load_pretraining_weights(init_from, self.encoder, self.predictor, self.target_encoder, model)
        self.compile_models = compile
        self.step_loss = step_loss  # compiled with the networks (configure_model)
        self.schedule_length = 1  # optimizer steps the schedules span; set by configure_optimizers

    def configure_model(self) -> None:
        """With ``compile``: the encoder, the target encoder, the predictor and the loss, each one
        graph (fullgraph=True: a graph break is an error) per modality and grad mode, shapes
        static (dynamic=False: padded masks keep every batch's shapes)."""
        if self.compile_models:  # true, or a torch.compile mode ("reduce-overhead": CUDA graphs)
            mode = None if self.compile_models is True else self.compile_models
            options = dict(mode=mode, fullgraph=True, dynamic=False, backend=self.compile_backend)
            for module in (self.encoder, self.predictor, self.target_encoder):
                module.compile(**options)
            self.step_loss = torch.compile(step_loss, **options)

    compile_backend = "inductor"  # the torch.compile backend (tests use a cheaper one)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        self.schedule_length = self.optim.schedule_length(self.trainer.estimated_stepping_batches)
        return adamw((self.encoder, self.predictor), self.optim, fused=self.device.type == "cuda")

    def schedule(self) -> dict[str, float]:
        """lr, weight decay and EMA momentum at the current step."""
        return self.optim.at(self.global_step, self.schedule_length)

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)  # runs training_step and backward (the closure)
        # a step whose gradients were discarded (callbacks.NonFiniteGuard) moves no weights
        if any(p.grad is not None for p in self.encoder.parameters()):
            self.update_target_encoder(self.schedule()["ema"])

    @torch.no_grad()
    def update_target_encoder(self, momentum: float) -> None:
        """target <- m * target + (1 - m) * online."""
        target = list(self.target_encoder.parameters())
        online = [p.detach() for p in self.encoder.parameters()]
        torch._foreach_lerp_(target, online, 1.0 - momentum)

    def input_grid(self, shape: tuple[int, ...]) -> tuple[int, int, int]:
        """The token grid of a batch of ``shape`` as the networks see it (2.0 fills a clip with an image)."""
        return self.encoder.input_grid(self.generation.clip_shape(shape, self.hparams.frames_per_clip))

    # -- steps -----------------------------------------------------------------------------
    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Images (1-frame clips) fill a whole clip for a 2.0 model, as the official mixture does
        (on the device, as a view: the loader moves one frame per image)."""
        clips = batch.get("video") if isinstance(batch, dict) else None
        if clips is not None:
            batch["video"] = self.generation.as_clip(clips, self.hparams.frames_per_clip)
        return batch

    def shared_step(self, batch: dict) -> tuple[Tensor, list[Tensor], Tensor, dict[str, Tensor]]:
        """Loss, context features, target features and the loss terms to log (with a context
        loss, 2.1: pred, ctx, lambda)."""
        clips, masks_enc, masks_pred = batch["video"], batch["masks_enc"], batch["masks_pred"]
        grid = self.encoder.input_grid(clips.shape)
        preds, z, h, context_preds = self._predict(clips, masks_enc, masks_pred, grid)
        if context_preds is None:
            return self.step_loss(preds, h, None, masks_enc, masks_pred, grid, self.optim.loss_exp)[0], z, h, {}
        lam = torch.tensor(self.context_loss.weight_at(self.global_step), device=h.device)
        loss, loss_pred, loss_ctx = self.step_loss(preds, h, context_preds, masks_enc, masks_pred, grid,
                                                   self.optim.loss_exp, lam, self.context_loss.distance_weighting)
        terms = {"loss_pred": loss_pred.detach(), "loss_ctx": loss_ctx.detach(), "lambda": lam}
        return loss, z, h, terms

    def _predict(self, clips: Tensor, masks_enc: list[Tensor], masks_pred: list[Tensor], grid) -> tuple:
        """Predictions at the target tokens (one per mask set), the context features z, the
        target features h (every level, each layer-normed on its own) and the predictions at the
        context tokens (None for a generation without a context loss)."""
        with torch.no_grad():
            h = level_norm(self.target_encoder(clips, levels="all"), self.encoder.num_levels)
        z = self.encoder(clips, masks_enc, levels="all")
        modality = "image" if self.encoder.is_image(clips.shape) else "video"
        with_context = self.generation.context_loss
        out = self.predictor(z, masks_enc, masks_pred, mask_index=0, grid=grid, modality=modality,
                             return_context=with_context)
        preds, context_preds = out if with_context else (out, None)
        return preds, z, h, context_preds

    @torch.no_grad()
    def predictions(self, batch: dict) -> tuple[Tensor, Tensor]:
        """(tokens, D) predictor outputs at every target token of a masked batch, and the targets
        there (for collapse monitoring; no gradient)."""
        clips = batch["video"]
        preds, _, h, _ = self._predict(clips, batch["masks_enc"], batch["masks_pred"],
                                       self.encoder.input_grid(clips.shape))
        targets = [gather_tokens(h, m) for m in batch["masks_pred"]]
        real = [valid_slots(m) for m in batch["masks_pred"]]  # a boolean gather: monitoring, not the step
        return torch.cat([p[r] for p, r in zip(preds, real)]), torch.cat([t[r] for t, r in zip(targets, real)])

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        values = self.schedule()
        apply_schedule(self.optimizers().optimizer, values)
        loss, z, _, terms = self.shared_step(batch)
        B = batch["video"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=B)
        if "source" in batch:  # a mixture: each source's mean loss over its own steps of the epoch
            # (per step, Lightning would repeat a source's last value on the other sources' steps)
            self.log(f"train/loss_{batch['source']}", loss.detach(), on_step=False, on_epoch=True, batch_size=B)
        self.log_dict({f"train/{k}": v for k, v in terms.items()}, batch_size=B)
        self.log_dict({"train/lr": values["lr"], "train/wd": values["wd"], "train/ema_momentum": values["ema"],
                       "train/visible_tokens": sum(valid_slots(m).sum(1).float().mean() for m in batch["masks_enc"]),
                       "train/feature_std": feature_std(z[0].detach())}, batch_size=B)
        for key in ("bad_videos", "bad_images"):  # files the data pipeline skipped: per step and summed per epoch
            if key in batch:
                self.log(f"data/{key}", batch[key].sum().float(), on_step=True, on_epoch=True, reduce_fx="sum",
                         batch_size=B)
        return loss

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        """A mixture validates every source: the first logs val/..., the others val/<source>/..."""
        loss, z, _, terms = self.shared_step(batch)
        B = batch["video"].shape[0]
        prefix = "val" if dataloader_idx == 0 else f"val/{batch.get('source', dataloader_idx)}"
        self.log(f"{prefix}/loss", loss, prog_bar=dataloader_idx == 0, sync_dist=True, batch_size=B,
                 add_dataloader_idx=False)
        self.log_dict({f"{prefix}/{k}": v for k, v in terms.items() if k != "lambda"}, sync_dist=True, batch_size=B,
                      add_dataloader_idx=False)
        self.log(f"{prefix}/feature_std", feature_std(z[0]), sync_dist=True, batch_size=B, add_dataloader_idx=False)
