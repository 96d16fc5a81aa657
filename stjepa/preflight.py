"""Checks of a composed config before any expensive work. Each problem is one sentence that
names the key and what is allowed. Model and attention settings are checked by building the
encoder and predictor on the meta device (no memory, no time): their constructors are the
one place those rules live, and :mod:`stjepa.networks` names the keys."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from .checks import check_choice, check_int
from .data.manifests import RENAMED_KEYS
from .data.masks import MaskSpec, MultiBlockMaskGenerator, check_slots_rule
from .errors import ConfigError, UserError
from .losses import ContextLoss
from .networks import RunAttention, build_encoder, build_predictor, model_keys_of
from .models.arguments import ArgumentError
from .models.versions import DEFAULT_VERSION, generation
from .optim import LR_SCHEDULES
from .resolvers import launcher_value

# probe.method: a trained attentive pooling | a k-nearest-neighbour vote | the classifier a
# transformers VJEPA2ForVideoClassification folder ships (no training)
PROBE_METHODS = ("attentive", "knn", "shipped")

COMPILE_CHOICES = (False, True, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def instantiate_checked(node: Any, **kwargs: Any) -> Any:
    """Hydra's instantiate, except that bad input the target itself refuses (a UserError) comes
    out as that one sentence, not wrapped in Hydra's InstantiationException with its traceback."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        return instantiate(node, **kwargs)
    except InstantiationException as exc:
        cause = exc.__cause__
        if isinstance(cause, UserError):
            raise cause from None
        raise


def plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def _world_size(trainer: DictConfig) -> int:
    devices = trainer.get("devices", 1)
    if isinstance(devices, str):
        if devices == "auto" or devices == "-1":
            return 1  # decided by Lightning at start; checked again by the data module
        devices = [d for d in devices.split(",") if d.strip()] if "," in devices else int(devices)
    count = len(devices) if OmegaConf.is_list(devices) or isinstance(devices, list) else int(devices)
    return max(count, 1) * int(trainer.get("num_nodes", 1))


def command_line_keys(group: str) -> set[str] | None:
    """The keys of config group ``group`` set on the command line (``model.pred_depth=12`` gives
    ``pred_depth``); None when the group itself is chosen there (``model=vit_large`` states every
    key of its preset) or outside a Hydra run (a composed config states every key)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    keys = set()
    for override in HydraConfig.get().overrides.task:
        key = override.lstrip("+~").split("=", 1)[0]
        if key == group:
            return None
        if key.startswith(group + "."):
            keys.add(key[len(group) + 1:])
    return keys


def architecture_from_init_file(cfg: DictConfig) -> dict[str, tuple[Any, Any]]:
    """``model.init_from``: the model group's architecture keys come from the file, except
    those stated on the command line (:func:`command_line_keys`), which must agree with it (one
    sentence naming the key, its value and the file's). Presets and experiments are defaults
    here: a ViT-L file builds a ViT-L whatever ``model:`` an experiment chose. Returns the keys
    replaced, ``{key: (group's value, file's value)}``."""
    from .weights import check_model_group, read_architecture  # torch files: only when a file is given

    path = cfg.model.get("init_from")
    if not path or not Path(path).exists():
        return {}  # check_model names a missing file
    architecture, given, model = read_architecture(path), command_line_keys("model"), plain(cfg.model)
    check_model_group(architecture, model if given is None else {k: v for k, v in model.items() if k in given})
    if given is None:
        return {}
    replaced = {key: (model.get(key), value) for key, value in model_keys_of(architecture).items()
                if key not in given and model.get(key) != value}
    with open_dict(cfg.model):
        for key, (_, value) in replaced.items():
            cfg.model[key] = value
    return replaced


def check_model(model: DictConfig, attention: DictConfig | dict | None, frames: Any, crop: Any) -> RunAttention:
    """Model, input size and attention layout; shared by training and probing. Returns the
    run's attention, built once here and handed down."""
    model = plain(model)
    frames, crop = check_int(frames, "data.frames_per_clip"), check_int(crop, "data.crop_size")
    tubelet = check_int(model.get("tubelet_size"), "model.tubelet_size")
    patch = check_int(model.get("patch_size"), "model.patch_size")
    if frames % tubelet:
        raise ConfigError(f"data.frames_per_clip={frames} must be a multiple of model.tubelet_size={tubelet}.")
    if crop % patch:
        raise ConfigError(f"data.crop_size={crop} must be a multiple of model.patch_size={patch}.")
    built = RunAttention.create(plain(attention))
    with torch.device("meta"):  # the constructors check every argument; nothing is allocated
        encoder = build_encoder(model, built, crop, frames)
        build_predictor(model, built, encoder)
    init_from = model.get("init_from")
    if init_from and not Path(init_from).exists():
        raise ConfigError(f"model.init_from={init_from!r} does not exist; give the path of a V-JEPA 2 .pt, "
                          f"a train.py .ckpt or a transformers V-JEPA 2 folder.")
    return built


def check_loss(loss: DictConfig | None) -> None:
    """The ``loss`` group (V-JEPA 2.1's context term)."""
    if loss is None:
        raise ConfigError("loss must hold context_weight, context_ramp and distance_weighting (see conf/train.yaml).")
    try:
        ContextLoss.create(plain(loss))
    except ArgumentError as exc:
        raise ConfigError(exc.render(lambda name: f"loss.{name}")) from None


def settle_renamed_keys(node: DictConfig) -> None:
    """A key marked ??? whose earlier name (:data:`~stjepa.data.manifests.RENAMED_KEYS`) is set
    counts as set: it becomes null, and the data module reads the earlier name (so its
    sentences name the key the user gave)."""
    for key in list(node.keys()):
        if key == "hydra" or OmegaConf.is_missing(node, key):
            continue
        if key in RENAMED_KEYS and node.get(key) is not None and OmegaConf.is_missing(node, RENAMED_KEYS[key]):
            node[RENAMED_KEYS[key]] = None
        elif OmegaConf.is_dict(node._get_node(key)):
            settle_renamed_keys(node[key])


def check_required(cfg: DictConfig) -> None:
    """Keys marked ??? in the YAML that the command line did not set (nor by an earlier name)."""
    settle_renamed_keys(cfg)
    missing = sorted(key for key in cfg if key != "hydra" and OmegaConf.is_missing(cfg, key))
    missing += sorted(m for key in cfg if key != "hydra" and not OmegaConf.is_missing(cfg, key)
                      and OmegaConf.is_config(cfg[key]) for m in OmegaConf.missing_keys(cfg[key]))  # full keys
    if missing:
        raise ConfigError(f"{missing[0]} must be set (it is marked ??? in the config); give it on the command "
                          f"line as {missing[0]}=...")


def check_common(cfg: DictConfig) -> None:
    """What train.py and probe.py share: required keys, the seed, a W&B key where W&B logs online."""
    from .loggers import check_wandb_login  # imports Lightning's loggers: only when a config is checked

    check_required(cfg)
    check_int(cfg.get("seed"), "seed", 0)
    check_wandb_login(cfg)


def check_machine(trainer: DictConfig) -> None:
    """What only the machine running the job can tell (so not part of validating a preset)."""
    accelerator = str(trainer.get("accelerator", "auto"))
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(f"trainer.accelerator={accelerator} but this machine has no CUDA GPU; use trainer=default "
                          f"(CPU) or run on a GPU machine.")


def data_modality(data: DictConfig) -> str:
    """The ``modality`` its data module class declares ("video", "image" or "mixture"), read
    without building it; "video" for a target that does not import (instantiating reports that)."""
    from hydra.utils import get_class

    try:
        return getattr(get_class(str(data.get("_target_", ""))), "modality", "video")
    except Exception:
        return "video"


def data_modalities(data: DictConfig) -> set[str]:
    """What a data config feeds: {"video"}, {"image"} or both (a mixture)."""
    if data_modality(data) == "mixture":
        return set().union(*(data_modalities(s) for s in (data.get("sources") or {}).values()))
    return {data_modality(data)}


def check_modalities(cfg: DictConfig, world: int) -> None:
    """Images need a model that can train on them, and a mixture on several devices a way to
    keep DDP's graph fixed."""
    modalities = data_modalities(cfg.data)
    gen = generation(cfg.model.get("version") or DEFAULT_VERSION)  # check_model has checked it
    if modalities == {"image"} and gen.image_fills_clip:
        raise ConfigError("an image-only data source (data=images, data=synthetic_images) needs a model with an "
                          "image path (model.version=2.1, its 1-frame tokenizer); a 2.0 model sees images only as "
                          "repeated frames inside a mixture: use data=mixture.")
    if modalities == {"image", "video"} and gen.image_tokenizer and world > 1 and cfg.data.get("rank_ratio") is None:
        raise ConfigError(f"a V-JEPA 2.1 image+video mixture on {world} devices needs data.rank_ratio (the share "
                          f"of devices on images, official 0.5): alternating modalities per step changes which "
                          f"tokenizer runs, which DDP's static graph cannot follow.")


def check_train_config(cfg: DictConfig) -> RunAttention:
    """Everything a training run needs, before any work; returns the run's attention, built."""
    check_common(cfg)
    architecture_from_init_file(cfg)
    data, model, trainer, optim = cfg.data, cfg.model, cfg.trainer, cfg.optim
    attention = check_model(model, cfg.attention, data.get("frames_per_clip"), data.get("crop_size"))
    batch = check_int(data.get("batch_size"), "data.batch_size")
    check_int(data.get("num_workers", 0), "data.num_workers", 0)
    world = _world_size(trainer)
    train_size = data.get("train_size")
    if train_size is not None and train_size < batch * world:
        raise ConfigError(f"data.batch_size={batch} per device x {world} devices needs at least {batch * world} "
                          f"training clips; data.train_size is {train_size}.")
    for group in ("mask", "image_mask"):
        if not cfg.get(group):
            raise ConfigError(f"{group} needs at least one mask set (for example {group}="
                              f"{'vjepa2' if group == 'mask' else 'vjepa2_1'}).")
        crop, patch = data.get("crop_size"), model.get("patch_size", 16)
        frames = 1 if group == "image_mask" else data.get("frames_per_clip") // model.get("tubelet_size", 2)
        for name, spec in cfg[group].items():
            try:  # a config that leaves no context in any draw has no bound (and would redraw forever)
                MultiBlockMaskGenerator((frames, crop // patch, crop // patch), MaskSpec.create(plain(spec))).bound()
            except (ValueError, TypeError) as exc:
                raise ConfigError(str(exc).replace("mask.", f"{group}.{name}.", 1)) from None
    check_modalities(cfg, world)
    check_choice(optim.lr_schedule, "optim.lr_schedule", LR_SCHEDULES)
    for key in ("lr", "start_lr", "final_lr", "weight_decay", "final_weight_decay"):
        if isinstance(optim[key], bool) or not isinstance(optim[key], (int, float)) or optim[key] < 0:
            raise ConfigError(f"optim.{key} must be a number >= 0, got {optim[key]!r}.")
    if len(optim.ema) != 2 or not all(0.0 <= m <= 1.0 for m in optim.ema):
        raise ConfigError(f"optim.ema must be [start, end] momenta in [0, 1], got {list(optim.ema)}.")
    check_loss(cfg.get("loss"))
    if cfg.get("static_masks") not in (None, True, False):
        raise ConfigError(f"static_masks={cfg.get('static_masks')!r} is not allowed; allowed values are true, false "
                          "and null (= whether compile is on).")
    if cfg.get("static_slots") is not None:
        try:
            check_slots_rule(cfg.static_slots)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    if cfg.get("compile") not in COMPILE_CHOICES:
        raise ConfigError(f"compile={cfg.get('compile')!r} is not allowed; allowed values are false, true, "
                          f"{', '.join(str(c) for c in COMPILE_CHOICES[2:])}.")
    max_steps = check_int(trainer.get("max_steps", -1), "trainer.max_steps", -1)
    max_epochs = check_int(-1 if trainer.get("max_epochs") is None else trainer.max_epochs, "trainer.max_epochs", -1)
    if max_steps <= 0 and max_epochs <= 0:
        raise ConfigError("trainer.max_steps or trainer.max_epochs must be > 0 (training would never end).")
    if cfg.get("anneal") and not (model.get("init_from") or cfg.get("ckpt_path") or cfg.get("resume")):
        raise ConfigError("anneal=true needs pretrained weights: give model.init_from=path/to/vitl.pt (official) "
                          "or a train.py .ckpt, or ckpt_path= to resume.")
    if cfg.get("ckpt_path") and cfg.get("resume"):
        raise ConfigError("ckpt_path and resume=true both choose a checkpoint to resume from; give one of them.")
    if cfg.get("ckpt_path") and not Path(cfg.ckpt_path).is_file():
        raise ConfigError(f"ckpt_path={cfg.ckpt_path!r} does not exist; give a train.py .ckpt file.")
    for name in ("last_checkpoint", "flop_counter"):
        every = OmegaConf.select(cfg, f"callbacks.{name}.every_n_train_steps")
        if every is not None:
            check_int(every, f"callbacks.{name}.every_n_train_steps")
    check_callbacks(cfg)
    if cfg.get("probe_after"):
        check_probe_after(cfg)
    check_launch(cfg)
    return attention


def check_probe_settings(p: DictConfig, key: str) -> None:
    """The values of a probe group (``probe``, or train.py's ``probe_after``; ``key`` names it)."""
    method = p.get("method", "attentive")
    if method not in PROBE_METHODS:
        raise ConfigError(f"{key}.method={method!r} is not known; allowed values are {', '.join(PROBE_METHODS)} "
                          f"({key}=knn selects the k-NN, probe=shipped the classifier a transformers folder ships).")
    if method == "knn":
        check_int(p.get("k"), f"{key}.k")
        if not (isinstance(p.get("temperature"), (int, float)) and p.temperature > 0):
            raise ConfigError(f"{key}.temperature={p.get('temperature')!r} is not allowed; give a number > 0 "
                              f"(DINO's vote uses 0.07).")
    if not p.lrs or not p.weight_decays:
        raise ConfigError(f"{key}.lrs and {key}.weight_decays must each hold at least one value.")
    if any(v <= 0 for v in p.lrs) or any(v < 0 for v in p.weight_decays):
        raise ConfigError(f"{key}.lrs must be > 0 and {key}.weight_decays >= 0.")
    for name in ("num_probe_blocks", "num_heads", "max_steps"):
        check_int(p.get(name), f"{key}.{name}")


def check_probe_after(cfg: DictConfig) -> None:
    """train.py probe_after=...: the probe a run makes of its own last checkpoint when it ends."""
    if data_modality(cfg.data) == "mixture":
        raise ConfigError("probe_after probes on one data source and this run trains on data=mixture; drop "
                          "probe_after and probe each source with probe.py ckpt=<run>/checkpoints/last.ckpt "
                          "data=<source>.")
    if not OmegaConf.select(cfg, "callbacks.last_checkpoint"):
        raise ConfigError("probe_after probes the run's last.ckpt, which callbacks.last_checkpoint=null turns off; "
                          "keep callbacks.last_checkpoint or drop probe_after.")
    check_probe_settings(cfg.probe_after, "probe_after")
    if cfg.probe_after.get("method") == "shipped":
        raise ConfigError("probe_after.method=shipped scores a transformers classification folder's own classifier, "
                          "which a training run does not have; give probe_after=default, knn or thorough.")


def check_callbacks(cfg: DictConfig) -> None:
    """Build every configured callback once (cheap: they do their work in hooks), so a value one
    refuses stops the run before any work, named by its config key."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    for name, node in (cfg.get("callbacks") or {}).items():
        if not node or "_target_" not in node:
            continue
        try:
            instantiate(node)
        except InstantiationException as exc:
            if isinstance(exc.__cause__, ArgumentError):
                raise ConfigError(exc.__cause__.render(lambda arg: f"callbacks.{name}.{arg}")) from None
            raise


def _is_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def check_launch(cfg: DictConfig) -> None:
    """Multi-process strategies started locally inside a sweep would re-run the whole sweep in
    every child process (Lightning relaunches the command line); under SLURM each task is
    started by srun instead, which is fine."""
    strategy = cfg.trainer.get("strategy", "auto")
    if OmegaConf.is_dict(strategy):  # DDPStrategy / FSDPStrategy objects configured by _target_
        strategy = str(strategy.get("_target_", "")).rsplit(".", 1)[-1].lower()
    strategy = str(strategy)
    spawning = strategy.startswith(("ddp", "fsdp")) and "spawn" not in strategy
    if strategy.startswith("fsdp") and cfg.trainer.get("accelerator") == "cpu":
        raise ConfigError("trainer=fsdp needs GPUs (Lightning's FSDP has no CPU support); use trainer=ddp "
                          "trainer.accelerator=cpu to test data parallelism on CPU.")
    gpus, tasks = launcher_value("gpus_per_node"), launcher_value("tasks_per_node")
    if gpus and tasks is not None and gpus != tasks and strategy.startswith(("ddp", "fsdp")):
        raise ConfigError(f"hydra.launcher.tasks_per_node={tasks} but hydra.launcher.gpus_per_node={gpus}: Lightning "
                          "runs one SLURM task per GPU, so set both to the same number (hydra/launcher=slurm does).")
    if spawning and _world_size(cfg.trainer) > 1 and _is_multirun() and "SLURM_JOB_ID" not in os.environ:
        raise ConfigError(f"trainer.strategy={strategy} with {_world_size(cfg.trainer)} processes cannot start "
                          "inside a local multirun (-m); run each job alone, or sweep with "
                          "hydra/launcher=slurm.")
