"""A probing job: load and freeze an encoder, train the probe heads, report every head; or, with
``sweep=``, the same probe over every finished job of a training sweep."""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import rich
import rich.table
import torch
from hydra.utils import instantiate
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig

from . import hf_format
from .checkpoint_io import atomic_write_text
from .checks import check_int
from .preflight import check_common, check_machine, check_probe_settings, data_modality, instantiate_checked, plain
from .errors import ConfigError
from .knn import extract, knn_scores, rankme, topk_accuracy
from .loggers import build_loggers, close_loggers, flat_config, layout_hparams, wandb_offline
from .networks import RunAttention
from .models import ArgumentError
from .probe_module import MultiHeadProbe, average_views
from .train_job import quiet_lightning
from .utils.rich_config import print_config_tree
from .wandb_runs import training_run_of, write_summary
from .weights import load_encoder, load_networks

RESULTS_FILE = "results.json"


def scored(scores: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict[str, Any]:
    """top-1, top-5 and per-class top-1 of (N, C) class scores against the labels."""
    hits = scores.argmax(1) == labels
    per_class = [float(hits[labels == c].float().mean()) if (labels == c).any() else 0.0 for c in range(num_classes)]
    return {"top1": topk_accuracy(scores, labels, 1), "top5": topk_accuracy(scores, labels, 5),
            "per_class_top1": per_class, "val_clips": len(labels)}


class OneReading:
    """A reading without training, with the attentive probe's reporting interface (one "head").
    No choice is made on the validation clips, so its held-out reading is the reading itself."""

    num_classes: int
    results: list[dict]

    def best(self) -> dict:
        return self.results[0]

    def selected(self) -> dict:
        r = self.results[0]
        return {"top1": r["top1"], "top5": r["top5"], "heads": [0, 0], "fold_sizes": None}


def require_clips(count: int, what: str) -> None:
    if not count:
        raise ConfigError(f"{what} needs validation clips to score; give a data source with a validation set "
                          f"(data.val_size > 0, or validation manifests).")


class KNNProbe(OneReading):
    """A k-NN reading, plus RankMe of the validation features."""

    def __init__(self, encoder, datamodule, k: int, temperature: float, levels, device: torch.device):
        levels = encoder.check_levels(levels)
        self.num_classes = int(datamodule.num_classes)
        encoder = encoder.to(device).eval()
        bank, bank_labels = extract(encoder, datamodule.train_dataloader(), device, levels)
        queries, labels = extract(encoder, datamodule.val_dataloader() or [], device, levels)
        require_clips(len(queries), "probe=knn")
        scores = knn_scores(bank, bank_labels, queries, self.num_classes, k, temperature)
        self.results = [{"head": 0, "k": k, "temperature": temperature, **scored(scores, labels, self.num_classes),
                         "train_clips": len(bank), "rankme": rankme(queries)}]


class ShippedHead(OneReading):
    """The trained attentive probe a transformers VJEPA2ForVideoClassification folder ships
    (pooler + classifier), read as it is: the published numbers' protocol, no training. The
    data's class i must be the head's class i (config.json's id2label)."""

    def __init__(self, encoder, head, datamodule, ckpt: str, device: torch.device):
        self.num_classes = head.linear.out_features
        if int(datamodule.num_classes) != self.num_classes:
            raise ConfigError(f"the classifier shipped in ckpt={ckpt!r} has {self.num_classes} classes (its "
                              f"config.json's id2label) but the data has {datamodule.num_classes}; give data whose "
                              f"class i is the head's id2label[i].")
        encoder, head = encoder.to(device).eval(), head.to(device).eval()
        scores, labels = [], []
        with torch.no_grad():
            for batch in datamodule.val_dataloader() or []:
                video = batch["video"].to(device)
                views = video.shape[1] if video.dim() == 6 else 1
                logits = head(encoder(video.flatten(0, 1) if video.dim() == 6 else video))
                scores.append(average_views(logits, views).float().cpu())
                labels.append(torch.as_tensor(batch["label"]).cpu())
        require_clips(len(labels), "probe=shipped")
        self.results = [{"head": 0, "shipped": True, **scored(torch.cat(scores), torch.cat(labels), self.num_classes)}]


def head_setting(r: dict) -> str:
    """'lr 5e-03, wd 0.01' for an attentive head, 'k 20, T 0.07' for the k-NN."""
    if r.get("shipped"):
        return "as shipped"
    return f"k {r['k']}, T {r['temperature']:g}" if "k" in r else f"lr {r['lr']:.0e}, wd {r['weight_decay']:g}"


def check_probe_config(cfg: DictConfig) -> None:
    check_common(cfg)
    if data_modality(cfg.data) == "mixture":
        raise ConfigError("probe.py probes on one data source; give data=images, data=kinetics or another single "
                          "source instead of data=mixture.")
    if (cfg.get("ckpt") is None) == (cfg.get("sweep") is None):
        raise ConfigError("give either ckpt=path/to/last.ckpt (one checkpoint) or sweep=path/to/multirun (every job "
                          "of a train.py -m sweep), not " + ("both." if cfg.get("ckpt") else "neither."))
    if cfg.get("ckpt") is not None and not Path(cfg.ckpt).exists():
        raise ConfigError(f"ckpt={cfg.ckpt!r} does not exist; give a train.py .ckpt, an official V-JEPA 2 .pt or a "
                          f"transformers V-JEPA 2 folder.")
    check_probe_settings(cfg.probe, "probe")
    if cfg.probe.get("method") == "shipped":
        if cfg.get("ckpt") is None:
            raise ConfigError("probe=shipped scores one checkpoint's shipped classifier; give ckpt=, not sweep=.")
        check_shipped(cfg.ckpt)
    check_int(cfg.trainer.get("max_steps"), "trainer.max_steps")
    check_int(cfg.data.get("batch_size"), "data.batch_size")
    check_int(cfg.data.get("frames_per_clip"), "data.frames_per_clip")
    check_int(cfg.data.get("crop_size"), "data.crop_size")


def results_table(results: list[dict], best: dict) -> rich.table.Table:
    table = rich.table.Table(title="Probe heads (validation)")
    for column in ("head", "setting", "top-1", "top-5"):
        table.add_column(column, justify="right")
    for r in results:
        style = "bold green" if r["head"] == best["head"] else None
        table.add_row(str(r["head"]), head_setting(r), f"{100 * r['top1']:.2f}", f"{100 * r['top5']:.2f}",
                      style=style)
    return table


def probe(cfg: DictConfig) -> dict[str, Any]:
    quiet_lightning()
    # the frozen encoder is in eval mode on purpose (no dropout or drop-path while probing)
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
    check_probe_config(cfg)
    if cfg.get("print_config", True):
        print_config_tree(cfg, order=("ckpt", "probe", "data", "model", "attention", "trainer"))
    check_machine(cfg.trainer)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    # the layout to probe with; None keeps the one the checkpoint was trained with
    attention = RunAttention.create(plain(cfg.attention)) if cfg.get("attention") is not None else None
    try:  # settings that only the checkpoint's architecture can check (layout vs depth, heads vs width)
        encoder = load_encoder(cfg.ckpt, cfg.probe.encoder_key, plain(cfg.get("model")),
                               attention, cfg.data.crop_size, cfg.data.frames_per_clip, cfg.probe.random_init,
                               cfg.probe.get("init_seed"))
        datamodule = instantiate_checked(cfg.data)
        datamodule.setup("fit")
        method = cfg.probe.get("method", "attentive")
        if method in ("knn", "shipped"):
            return reading_probe(cfg, encoder, datamodule, attention)
        module = MultiHeadProbe(encoder, datamodule.num_classes, list(cfg.probe.lrs), list(cfg.probe.weight_decays),
                                cfg.probe.num_probe_blocks, cfg.probe.num_heads, cfg.probe.warmup_fraction,
                                cfg.probe.final_lr_fraction, cfg.probe.label_smoothing,
                                plain(cfg.probe.get("levels")))
    except ArgumentError as exc:  # the probe heads' settings (probe.num_heads vs the encoder width)
        raise ConfigError(exc.render(lambda arg: f"probe.{arg}")) from None
    loggers = build_loggers(cfg, attention)
    try:
        callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c and "_target_" in c]
        trainer: L.Trainer = instantiate(cfg.trainer, logger=loggers or False, callbacks=callbacks)
        for logger in loggers:
            logger.log_hyperparams({**flat_config(cfg), **layout_hparams(attention)})
        trainer.fit(module, datamodule=datamodule)
        trainer.validate(module, datamodule=datamodule, verbose=False)
        return report(cfg, encoder.attention.tag, module, loggers)
    finally:
        close_loggers(loggers)


def reading_probe(cfg: DictConfig, encoder, datamodule, attention: RunAttention | None) -> dict[str, Any]:
    """probe=knn (one pass over the training clips, the bank, and the validation clips) and
    probe=shipped (one pass over the validation clips): no training."""
    device = torch.device("cuda" if torch.cuda.is_available() and str(cfg.trainer.accelerator) != "cpu" else "cpu")
    if cfg.probe.method == "knn":
        reading: OneReading = KNNProbe(encoder, datamodule, int(cfg.probe.k), float(cfg.probe.temperature),
                                       plain(cfg.probe.get("levels")), device)
    else:
        reading = ShippedHead(encoder, shipped_classifier(cfg.ckpt), datamodule, cfg.ckpt, device)
    loggers = build_loggers(cfg, attention)
    try:
        for logger in loggers:
            logger.log_hyperparams({**flat_config(cfg), **layout_hparams(attention)})
            logger.log_metrics({"probe/val_top1_best": reading.best()["top1"],
                                "probe/val_top5_best": reading.best()["top5"]}, step=0)
        return report(cfg, encoder.attention.tag, reading, loggers)
    finally:
        close_loggers(loggers)


def shipped_classifier(ckpt: str):
    return load_networks(ckpt, keys=("classifier",))["classifier"]


def check_shipped(ckpt: str) -> None:
    """probe=shipped needs a classification folder (told by its config.json, before any loading)."""
    folder = hf_format.folder_of(ckpt)
    if folder is None or hf_format.CLASSIFICATION not in (hf_format.read_config(folder).get("architectures") or []):
        raise ConfigError(f"probe=shipped scores the trained classifier of a transformers "
                          f"{hf_format.CLASSIFICATION} folder; ckpt={ckpt!r} is none (probe=default trains one).")


def probe_settings(cfg: DictConfig) -> dict[str, Any]:
    """Everything that decides a probe's result except the checkpoint (and the seed of random
    weights, which belongs to the job like its checkpoint): two probes with equal settings are
    comparable (data.num_workers changes only the speed)."""
    data = {k: v for k, v in plain(cfg.data).items() if k != "num_workers"}
    # the random weights' seed is the job's own, like its checkpoint (results.json keeps it)
    probe = {k: v for k, v in plain(cfg.probe).items() if k != "init_seed"}
    return {"probe": probe, "data": data, "seed": cfg.seed, "max_steps": cfg.trainer.max_steps,
            "attention": plain(cfg.get("attention"))}


def wandb_summary(results: dict[str, Any]) -> dict[str, float]:
    """The probe's numbers as W&B summary keys."""
    best, selected = results["best"], results["selected"]
    summary = {"probe/best_top1": best["top1"], "probe/best_top5": best["top5"]}
    if best.get("lr") is not None:
        summary.update({"probe/best_lr": best["lr"], "probe/best_wd": best["weight_decay"]})
    if selected is not None:
        summary.update({"probe/selected_top1": selected["top1"], "probe/selected_top5": selected["top5"]})
    # the k-NN and random weights (the baseline) under their own keys, as in a sweep's probe folders
    prefix = {"knn": "probe_knn", "shipped": "probe_shipped"}.get(results.get("method"), "probe")
    prefix += "_random" if results["random_init"] else ""
    return {k.replace("probe/", prefix + "/", 1): v for k, v in summary.items()}


def report(cfg: DictConfig, attention_tag: str, module: MultiHeadProbe | KNNProbe, loggers: list) -> dict[str, Any]:
    """results.json, the rich table, and the probe's numbers in W&B: the probe's own run (with
    logger=wandb) and the training run the checkpoint came from (if it logged to W&B)."""
    best, selected = module.best(), module.selected()
    results = {
        "ckpt": str(cfg.ckpt),
        "encoder_key": cfg.probe.encoder_key,
        "random_init": bool(cfg.probe.random_init),
        "init_seed": cfg.probe.get("init_seed") if cfg.probe.random_init else None,
        "attention": attention_tag,
        "num_classes": module.num_classes,
        "chance_top1": 1.0 / module.num_classes,
        "method": cfg.probe.get("method", "attentive"),
        "best": {k: best[k] for k in ("head", "lr", "weight_decay", "k", "temperature", "shipped", "top1", "top5",
                                      "per_class_top1", "rankme") if k in best},
        "selected": selected,
        "heads": module.results,
        "settings": probe_settings(cfg),
    }
    out = Path(cfg.paths.output_dir) / RESULTS_FILE
    atomic_write_text(out, json.dumps(results, indent=2))
    rich.print(results_table(module.results, best))
    rich.print(f"best head {best['head']} ({head_setting(best)}): "
               f"top-1 {100 * best['top1']:.2f}%, top-5 {100 * best['top5']:.2f}% "
               f"(chance {100 / module.num_classes:.2f}%); written to {out}")
    if selected is not None and len(module.results) > 1:
        rich.print(f"head chosen on the other half of the validation clips: top-1 {100 * selected['top1']:.2f}%, "
                   f"top-5 {100 * selected['top5']:.2f}% (heads {selected['heads'][0]} and {selected['heads'][1]})")
    summary = wandb_summary(results)
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            logger.experiment.summary.update(summary)
    training_run = training_run_of(cfg.ckpt) if cfg.probe.get("wandb_writeback", True) else None
    if training_run is not None:
        try:  # the results are on disk already; W&B being unreachable must not lose them
            write_summary(training_run, Path(cfg.ckpt).resolve().parent.parent, summary,
                          offline=training_run["offline"] or wandb_offline())
        except Exception as exc:
            warnings.warn(f"the probe's results could not be added to W&B run {training_run['id']} ({exc}); they are "
                          f"in {out}.", stacklevel=1)
    return results
