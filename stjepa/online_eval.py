"""Online k-NN evaluation during pretraining: is the representation getting better?

At the start of training (step 0: the weights the run starts from, the random-weight baseline),
every ``every_n_train_steps`` steps and at the end, the chosen encoder embeds a fixed labelled
set of the run's own data, and a k-NN classifier (:mod:`stjepa.knn`) fitted on ``train_clips``
training clips is scored on ``val_clips`` validation clips (the training set's remainder when
the source has no validation set). Logged with the training step: ``online/knn_top1``,
``online/knn_top5``, ``online/knn_seconds``.

The clips are drawn once, by the run's seed, so every evaluation (and a resumed run's) sees the
same ones. The evaluation uses no gradient, no optimizer state, no global random state and no
data-loader state, and puts the encoder back in the mode it found it in: a run ends with the same
weights with or without it. Under DDP only rank 0 evaluates (the others go on and wait for it at
the next gradient all-reduce); FSDP shards the encoder across ranks, so there it is switched off.
"""
from __future__ import annotations

import time
import warnings
from typing import Any, Sequence

import lightning as L
import torch
from lightning.pytorch.strategies import FSDPStrategy

from .data.collate import Collate
from .knn import DEFAULT_K, DEFAULT_TEMPERATURE, batched, extract, knn_evaluate
from .models.arguments import one_of, positive_int

ENCODER_KEYS = ("target_encoder", "encoder")


def labelled_source(datamodule: Any) -> tuple[Any, str | None]:
    """The data module whose clips the k-NN uses (a mixture's first video source, else its first
    source), or None and the sentence saying why there is none."""
    sources = getattr(datamodule, "sources", None) or [datamodule]
    source = next((s for s in sources if getattr(s, "modality", "video") == "video"), sources[0])
    try:
        classes = int(source.num_classes)
    except (NotImplementedError, AttributeError, ValueError):
        classes = 0
    if classes < 2:
        return None, (f"the online k-NN is off: the training data ({type(source).__name__}) has no class labels "
                      f"({classes} class(es)); give labelled data or set callbacks.online_knn=null.")
    return source, None


def evaluation_indices(train_len: int, val_len: int, train_clips: int, val_clips: int,
                       seed: int) -> tuple[list[int], list[int], bool]:
    """(bank indices into the training set, query indices, whether the queries are in the
    training set too): drawn once from ``seed``; the queries come from the validation set
    when it has any clips, else from training clips outside the bank."""
    order = torch.randperm(train_len, generator=torch.Generator().manual_seed(seed)).tolist()
    bank = order[:train_clips]
    if val_len > 0:
        return bank, list(range(min(val_clips, val_len))), False
    return bank, order[train_clips:train_clips + val_clips], True


class OnlineKNN(L.Callback):
    def __init__(self, every_n_train_steps: int | None = 500, train_clips: int = 1024, val_clips: int = 512,
                 k: int = DEFAULT_K, temperature: float = DEFAULT_TEMPERATURE, encoder_key: str = "target_encoder",
                 batch_size: int = 32, levels: Sequence[int] | None = None, at_start: bool = True) -> None:
        if every_n_train_steps is not None:
            positive_int(every_n_train_steps, "every_n_train_steps")
        for name, value in (("train_clips", train_clips), ("val_clips", val_clips), ("k", k),
                            ("batch_size", batch_size)):
            positive_int(value, name)
        if not (isinstance(temperature, (int, float)) and temperature > 0):
            raise ValueError(f"temperature={temperature!r} is not allowed; give a number > 0 (DINO uses 0.07).")
        self.every = every_n_train_steps
        self.train_clips, self.val_clips = train_clips, val_clips
        self.k, self.temperature = k, float(temperature)
        self.encoder_key = one_of(encoder_key, "encoder_key", ENCODER_KEYS)
        self.batch_size = batch_size
        self.levels = None if levels is None else list(levels)
        self.at_start = at_start
        self.source = None
        self.last_step: int | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.source = None
        if stage != "fit":
            return
        if isinstance(trainer.strategy, FSDPStrategy):
            warnings.warn("the online k-NN is off under FSDP (the encoder is sharded across ranks); probe the "
                          "checkpoints with probe.py probe=knn instead.", stacklevel=1)
            return
        datamodule = trainer.datamodule
        if datamodule is None:
            return
        source, why_not = labelled_source(datamodule)
        if why_not is not None:
            warnings.warn(why_not, stacklevel=1)
            return
        source.setup("fit")
        self.source = source
        val_len = len(source.val_set) if source.val_set is not None else 0
        self.bank, self.queries, overlap = evaluation_indices(len(source.train_set), val_len, self.train_clips,
                                                              self.val_clips, int(source.seed))
        if not self.queries:
            warnings.warn(f"the online k-NN is off: the training set's {len(source.train_set)} clips leave none to "
                          f"score after the {self.train_clips} of the bank and there is no validation set; lower "
                          f"callbacks.online_knn.train_clips.", stacklevel=1)
            self.source = None

    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        step = trainer.global_step
        if self.source is None or trainer.global_rank != 0 or step == self.last_step or trainer.sanity_checking:
            return
        self.last_step = step
        encoder = getattr(pl_module, self.encoder_key)
        was_training = encoder.training
        start = time.perf_counter()
        collate = Collate()
        val_set = self.source.val_set if self.source.val_set is not None and len(self.source.val_set) else None
        with torch.random.fork_rng(devices=[pl_module.device] if pl_module.device.type == "cuda" else []):
            encoder.eval()
            try:
                bank, bank_labels = extract(encoder, batched(self.source.train_set, self.bank, self.batch_size,
                                                             collate), pl_module.device, self.levels)
                queries, labels = extract(encoder, batched(val_set or self.source.train_set, self.queries,
                                                           self.batch_size, collate), pl_module.device, self.levels)
            finally:
                encoder.train(was_training)
        scores = knn_evaluate(bank, bank_labels, queries, labels, int(self.source.num_classes), self.k,
                              self.temperature)
        metrics = {"online/knn_top1": scores["top1"], "online/knn_top5": scores["top5"],
                   "online/knn_seconds": time.perf_counter() - start}
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
        self.latest = metrics

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.at_start and trainer.global_step == 0:
            self.evaluate(trainer, pl_module)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.every is not None and trainer.global_step % self.every == 0:
            self.evaluate(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.evaluate(trainer, pl_module)
