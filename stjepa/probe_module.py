"""Frozen-encoder probing: many attentive-probe heads, one per (lr, weight decay), trained at
once on the same features (the encoder runs once per batch for all heads), as V-JEPA 2 does.

Two readings of the head grid are reported. ``best``: the head with the highest validation
top-1, as V-JEPA 2 reports; picking the best of many heads on the clips it is scored on flatters
every encoder alike. ``selected``: two-fold cross-fitting on the validation clips; the head that
is best on the even-indexed clips is scored on the odd-indexed ones and the other way round, and
the two scores are pooled. Every clip is scored once, by a head chosen without it."""
from __future__ import annotations

import itertools
from typing import Sequence

import lightning as L
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.aggregation import SumMetric
from torchmetrics.classification import MulticlassAccuracy

from .models.attentive_probe import AttentiveClassifier
from .models.vision_transformer import VisionTransformer
from .optim import warmup_cosine


FOLDS = (0, 1)  # validation clips with an even / odd dataset index


def average_views(logits: Tensor, views: int) -> Tensor:
    """(B * views, C) logits of all clips/crops of each video -> (B, C), averaged."""
    return logits.view(-1, views, logits.shape[-1]).mean(dim=1)


class MultiHeadProbe(L.LightningModule):
    def __init__(
        self,
        encoder: VisionTransformer,
        num_classes: int,
        lrs: Sequence[float] = (5e-3, 3e-3, 1e-3, 3e-4, 1e-4),
        weight_decays: Sequence[float] = (0.01, 0.1, 0.4, 0.8),
        num_probe_blocks: int = 1,
        num_heads: int = 16,
        warmup_fraction: float = 0.1,
        final_lr_fraction: float = 0.0,
        label_smoothing: float = 0.0,
        levels: str | Sequence[int] | None = None,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["encoder"])
        self.encoder = encoder.requires_grad_(False).eval()
        self.levels = encoder.check_levels(levels)  # 2.1 encoders: which levels the heads see
        self.grid = [(float(lr), float(wd)) for lr, wd in itertools.product(lrs, weight_decays)]
        if not self.grid:
            raise ValueError("probe.lrs and probe.weight_decays must each hold at least one value.")
        self.heads = nn.ModuleList(
            AttentiveClassifier(encoder.embed_dim * len(self.levels), num_classes, num_heads, num_probe_blocks)
            for _ in self.grid
        )
        self.num_classes = num_classes
        self.top1 = nn.ModuleList(MulticlassAccuracy(num_classes, top_k=1, average="micro") for _ in self.grid)
        self.top5 = nn.ModuleList(MulticlassAccuracy(num_classes, top_k=min(5, num_classes), average="micro")
                                  for _ in self.grid)
        self.per_class = nn.ModuleList(MulticlassAccuracy(num_classes, average=None) for _ in self.grid)
        # the two folds of the validation clips (even and odd dataset index), for ``selected``
        self.fold_top1 = nn.ModuleList(nn.ModuleList(MulticlassAccuracy(num_classes, top_k=1, average="micro")
                                                     for _ in self.grid) for _ in FOLDS)
        self.fold_top5 = nn.ModuleList(nn.ModuleList(
            MulticlassAccuracy(num_classes, top_k=min(5, num_classes), average="micro") for _ in self.grid)
            for _ in FOLDS)
        self.fold_size = nn.ModuleList(SumMetric() for _ in FOLDS)
        self.results: list[dict] = []

    def train(self, mode: bool = True):
        super().train(mode)
        self.encoder.eval()  # frozen: no dropout / drop-path, whatever Lightning toggles
        return self

    @torch.no_grad()
    def features(self, video: Tensor) -> tuple[Tensor, int]:
        """(B, 3, T, H, W) or (B, V, 3, T, H, W) videos -> encoder tokens for all views, V."""
        views = video.shape[1] if video.dim() == 6 else 1
        clips = video.flatten(0, 1) if video.dim() == 6 else video
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            tokens = self.encoder(clips, levels=list(self.levels))
        return tokens.float(), views

    def configure_optimizers(self):
        groups = []
        for head, (lr, wd) in zip(self.heads, self.grid):
            decay = [p for n, p in head.named_parameters() if p.ndim > 1 and not n.endswith(".bias")]
            rest = [p for n, p in head.named_parameters() if p.ndim <= 1 or n.endswith(".bias")]
            groups += [{"params": decay, "lr": lr, "weight_decay": wd, "base_lr": lr},
                       {"params": rest, "lr": lr, "weight_decay": 0.0, "base_lr": lr}]
        return torch.optim.AdamW(groups)

    def _set_lr(self) -> None:
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        warmup = int(self.hparams.warmup_fraction * total)
        for group in self.optimizers().optimizer.param_groups:
            base = group["base_lr"]
            group["lr"] = warmup_cosine(self.global_step, total, warmup, 0.0, base, base * self.hparams.final_lr_fraction)

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        self._set_lr()
        tokens, views = self.features(batch["video"])
        labels = batch["label"].repeat_interleave(views)
        # heads are independent: the sum's gradient for head i is the gradient of its own loss
        losses = torch.stack([F.cross_entropy(h(tokens), labels, label_smoothing=self.hparams.label_smoothing)
                              for h in self.heads])
        self.log("probe/train_loss_mean", losses.mean().detach(), prog_bar=True, batch_size=len(labels))
        self.log("probe/train_loss_best", losses.min().detach(), batch_size=len(labels))
        return losses.sum()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        tokens, views = self.features(batch["video"])
        labels = batch["label"]
        folds = [batch["index"].to(labels.device) % len(FOLDS) == f for f in FOLDS]
        for f, in_fold in zip(FOLDS, folds):
            self.fold_size[f].update(in_fold.sum())
        for i, head in enumerate(self.heads):
            logits = average_views(head(tokens), views)
            for metric in (self.top1[i], self.top5[i], self.per_class[i]):
                metric.update(logits, labels)
            for f, in_fold in zip(FOLDS, folds):
                if in_fold.any():
                    self.fold_top1[f][i].update(logits[in_fold], labels[in_fold])
                    self.fold_top5[f][i].update(logits[in_fold], labels[in_fold])

    def on_validation_epoch_end(self) -> None:
        self.fold_sizes = [int(self.fold_size[f].compute()) for f in FOLDS]
        self.results = []
        for i, (lr, wd) in enumerate(self.grid):
            top1, top5 = float(self.top1[i].compute()), float(self.top5[i].compute())
            per_class = [float(v) for v in self.per_class[i].compute()]
            folds = {name: [float(m[f][i].compute()) if self.fold_sizes[f] else None for f in FOLDS]
                     for name, m in (("fold_top1", self.fold_top1), ("fold_top5", self.fold_top5))}
            self.results.append({"head": i, "lr": lr, "weight_decay": wd, "top1": top1, "top5": top5,
                                 "per_class_top1": per_class, **folds})
            for metric in (self.top1[i], self.top5[i], self.per_class[i], *(m[f][i] for m in (self.fold_top1,
                           self.fold_top5) for f in FOLDS)):
                metric.reset()
        for metric in self.fold_size:
            metric.reset()
        best, selected = self.best(), self.selected()
        logged = {"probe/val_top1_best": best["top1"], "probe/val_top5_best": best["top5"]}
        if selected is not None:
            logged.update({"probe/val_top1_selected": selected["top1"], "probe/val_top5_selected": selected["top5"]})
        self.log_dict(logged, sync_dist=False)

    def best(self) -> dict:
        """The head with the highest validation top-1 (ties: the earlier head)."""
        return max(self.results, key=lambda r: (r["top1"], -r["head"]))

    def selected(self) -> dict | None:
        """Two-fold cross-fitted accuracy (see the module docstring): for each fold, the head
        with the best top-1 on the other fold (ties: the earlier head) is scored on this one;
        the scores are pooled by fold size. None when a fold is empty (fewer than 2 clips)."""
        sizes = self.fold_sizes
        if not all(sizes):
            return None
        heads, top1, top5 = [], 0.0, 0.0
        for fold in FOLDS:
            other = len(FOLDS) - 1 - fold
            chosen = max(self.results, key=lambda r: (r["fold_top1"][other], -r["head"]))
            heads.append(chosen["head"])
            top1 += chosen["fold_top1"][fold] * sizes[fold]
            top5 += chosen["fold_top5"][fold] * sizes[fold]
        total = sum(sizes)
        return {"top1": top1 / total, "top5": top5 / total, "heads": heads, "fold_sizes": list(sizes)}
