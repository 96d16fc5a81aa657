"""A probing job: load and freeze an encoder, train the probe heads, report every head."""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import rich
import rich.table
from hydra.utils import instantiate
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig, OmegaConf

from .config import check_common, check_int, check_machine, data_modality, instantiate_checked, plain
from .errors import ConfigError
from .loggers import build_loggers, close_loggers, flat_config
from .models import ArgumentError
from .probe_module import MultiHeadProbe
from .train_job import quiet_lightning
from .utils.rich_config import print_config_tree
from .weights import load_encoder


def check_probe_config(cfg: DictConfig) -> None:
    check_common(cfg)
    if data_modality(cfg.data) == "mixture":
        raise ConfigError("probe.py probes on one data source; give data=images, data=kinetics or another single "
                          "source instead of data=mixture.")
    if not Path(cfg.ckpt).is_file():
        raise ConfigError(f"ckpt={cfg.ckpt!r} does not exist; give a train.py .ckpt or an official V-JEPA 2 .pt.")
    p = cfg.probe
    if not p.lrs or not p.weight_decays:
        raise ConfigError("probe.lrs and probe.weight_decays must each hold at least one value.")
    if any(v <= 0 for v in p.lrs) or any(v < 0 for v in p.weight_decays):
        raise ConfigError("probe.lrs must be > 0 and probe.weight_decays >= 0.")
    for key in ("num_probe_blocks", "num_heads"):
        check_int(p.get(key), f"probe.{key}")
    check_int(cfg.trainer.get("max_steps"), "trainer.max_steps")
    check_int(cfg.data.get("batch_size"), "data.batch_size")
    check_int(cfg.data.get("frames_per_clip"), "data.frames_per_clip")
    check_int(cfg.data.get("crop_size"), "data.crop_size")


def results_table(results: list[dict], best: dict) -> rich.table.Table:
    table = rich.table.Table(title="Probe heads (validation)")
    for column in ("head", "lr", "weight decay", "top-1", "top-5"):
        table.add_column(column, justify="right")
    for r in results:
        style = "bold green" if r["head"] == best["head"] else None
        table.add_row(str(r["head"]), f"{r['lr']:.0e}", f"{r['weight_decay']:g}", f"{100 * r['top1']:.2f}",
                      f"{100 * r['top5']:.2f}", style=style)
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
    attention = OmegaConf.to_container(cfg.attention, resolve=True) if cfg.get("attention") is not None else None
    try:  # settings that only the checkpoint's architecture can check (layout vs depth, heads vs width)
        encoder = load_encoder(cfg.ckpt, cfg.probe.encoder_key, OmegaConf.to_container(cfg.model, resolve=True),
                               attention, cfg.data.crop_size, cfg.data.frames_per_clip, cfg.probe.random_init)
        datamodule = instantiate_checked(cfg.data)
        datamodule.setup("fit")
        module = MultiHeadProbe(encoder, datamodule.num_classes, list(cfg.probe.lrs), list(cfg.probe.weight_decays),
                                cfg.probe.num_probe_blocks, cfg.probe.num_heads, cfg.probe.warmup_fraction,
                                cfg.probe.final_lr_fraction, cfg.probe.label_smoothing,
                                plain(cfg.probe.get("levels")))
    except ArgumentError as exc:  # the probe heads' settings (probe.num_heads vs the encoder width)
        raise ConfigError(exc.render(lambda arg: f"probe.{arg}")) from None
    loggers = build_loggers(cfg)
    try:
        callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c and "_target_" in c]
        trainer: L.Trainer = instantiate(cfg.trainer, logger=loggers or False, callbacks=callbacks)
        for logger in loggers:
            logger.log_hyperparams(flat_config(cfg))
        trainer.fit(module, datamodule=datamodule)
        trainer.validate(module, datamodule=datamodule, verbose=False)
        return report(cfg, encoder.attention.tag, module, loggers)
    finally:
        close_loggers(loggers)


def report(cfg: DictConfig, attention_tag: str, module: MultiHeadProbe, loggers: list) -> dict[str, Any]:
    """results.json, the rich table, and the best head in W&B's run summary."""
    best = module.best()
    results = {
        "ckpt": str(cfg.ckpt),
        "encoder_key": cfg.probe.encoder_key,
        "random_init": bool(cfg.probe.random_init),
        "attention": attention_tag,
        "num_classes": module.num_classes,
        "chance_top1": 1.0 / module.num_classes,
        "best": {k: best[k] for k in ("head", "lr", "weight_decay", "top1", "top5", "per_class_top1")},
        "heads": module.results,
    }
    out = Path(cfg.paths.output_dir) / "results.json"
    out.write_text(json.dumps(results, indent=2))
    rich.print(results_table(module.results, best))
    rich.print(f"best head {best['head']} (lr {best['lr']:g}, wd {best['weight_decay']:g}): "
               f"top-1 {100 * best['top1']:.2f}%, top-5 {100 * best['top5']:.2f}% "
               f"(chance {100 / module.num_classes:.2f}%); written to {out}")
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            logger.experiment.summary.update({"probe/best_top1": best["top1"], "probe/best_top5": best["top5"],
                                              "probe/best_lr": best["lr"], "probe/best_wd": best["weight_decay"]})
    return results
