"""Gradient-free readings of a frozen encoder: a k-nearest-neighbour classifier and RankMe.

k-NN (the DINO protocol, Wu et al. 2018 / Caron et al. 2021): each clip is one feature vector,
the mean of the encoder's output tokens (the views of a multi-view clip averaged), L2-normalised.
A query's ``k`` most cosine-similar training features vote for their labels with weight
``exp(similarity / temperature)``; the class with the largest vote total is the prediction (top-5:
the five largest). It needs no training and no hyperparameter search, so it costs one forward
pass per clip: seconds where an attentive probe takes minutes. It reads what a linear-ish
neighbourhood structure holds, which is less than an attentive probe can extract.

RankMe (Garrido et al. 2023): the effective rank of a feature matrix, exp of the entropy of its
normalised singular values, ``p_i = s_i / sum(s) + eps``. It lies between 1 (every feature on one
line: collapse) and min(N, D) (variance spread evenly). It needs no labels.

Pure PyTorch: a matrix product and a top-k on a few thousand features, no index library.
"""
from __future__ import annotations

from typing import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

DEFAULT_K = 20
DEFAULT_TEMPERATURE = 0.07


@torch.no_grad()
def pooled_features(encoder: torch.nn.Module, video: Tensor, levels: Sequence[int] | None = None) -> Tensor:
    """(B, 3, T, H, W) or (B, V, 3, T, H, W) clips -> (B, D) token-mean features (views averaged)."""
    views = video.shape[1] if video.dim() == 6 else 1
    clips = video.flatten(0, 1) if video.dim() == 6 else video
    kwargs = {} if levels is None else {"levels": list(levels)}
    with torch.autocast(clips.device.type, dtype=torch.bfloat16, enabled=clips.device.type == "cuda"):
        tokens = encoder(clips, **kwargs)
    return tokens.float().mean(dim=1).view(-1, views, tokens.shape[-1]).mean(dim=1)


@torch.no_grad()
def extract(encoder: torch.nn.Module, batches: Iterable[dict], device: torch.device,
            levels: Sequence[int] | None = None) -> tuple[Tensor, Tensor]:
    """Features and labels of every ``{"video", "label"}`` batch, on the CPU."""
    feats, labels = [], []
    for batch in batches:
        feats.append(pooled_features(encoder, batch["video"].to(device), levels).cpu())
        labels.append(torch.as_tensor(batch["label"]).cpu())
    return torch.cat(feats), torch.cat(labels)


@torch.no_grad()
def knn_scores(bank: Tensor, bank_labels: Tensor, queries: Tensor, num_classes: int, k: int = DEFAULT_K,
               temperature: float = DEFAULT_TEMPERATURE, chunk: int = 1024) -> Tensor:
    """(Q, num_classes) vote totals of each query's ``k`` nearest bank features (cosine)."""
    if k < 1 or temperature <= 0:
        raise ValueError(f"k={k} and temperature={temperature} are not allowed; k must be >= 1 and temperature > 0.")
    bank = F.normalize(bank.float(), dim=1)
    k = min(k, len(bank))
    out = []
    for start in range(0, len(queries), chunk):
        q = F.normalize(queries[start:start + chunk].float(), dim=1)
        sims, idx = (q @ bank.T).topk(k, dim=1)
        votes = torch.zeros(len(q), num_classes)
        votes.scatter_add_(1, bank_labels[idx].long(), (sims / temperature).exp())
        out.append(votes)
    return torch.cat(out) if out else torch.zeros(0, num_classes)


def topk_accuracy(scores: Tensor, labels: Tensor, k: int) -> float:
    """Fraction of rows whose label is among the ``k`` highest scores."""
    k = min(k, scores.shape[1])
    hits = (scores.topk(k, dim=1).indices == labels.view(-1, 1)).any(dim=1)
    return float(hits.float().mean()) if len(hits) else float("nan")


def knn_evaluate(bank: Tensor, bank_labels: Tensor, queries: Tensor, query_labels: Tensor, num_classes: int,
                 k: int = DEFAULT_K, temperature: float = DEFAULT_TEMPERATURE) -> dict[str, float]:
    """``{"top1", "top5"}`` of the k-NN classifier on labelled queries."""
    scores = knn_scores(bank, bank_labels, queries, num_classes, k, temperature)
    return {"top1": topk_accuracy(scores, query_labels, 1), "top5": topk_accuracy(scores, query_labels, 5)}


@torch.no_grad()
def rankme(features: Tensor, eps: float = 1e-7) -> float:
    """Effective rank of an (N, D) feature matrix (see the module docstring)."""
    s = torch.linalg.svdvals(features.double())
    p = s / s.sum().clamp_min(torch.finfo(torch.float64).tiny) + eps
    return float(torch.exp(-(p * p.log()).sum()))


def batched(dataset, indices: Sequence[int], batch_size: int, collate: Callable[[list], dict]) -> Iterable[dict]:
    """Batches of ``dataset[i]`` for ``i`` in ``indices``, in order, in this process."""
    for start in range(0, len(indices), batch_size):
        yield collate([dataset[i] for i in indices[start:start + batch_size]])
