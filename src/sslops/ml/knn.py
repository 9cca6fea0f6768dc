"""Weighted kNN classification on frozen features: the standard SSL monitor.

Instance Discrimination (Wu et al., 2018, arXiv:1805.01978): cosine similarity, k nearest neighbours,
votes weighted by exp(similarity / temperature). No training, so it tracks representation quality
every epoch at the cost of one forward pass over the bank and the queries.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


@torch.no_grad()
def embed(encoder: nn.Module, images: np.ndarray, device: torch.device, batch_size: int = 1024) -> torch.Tensor:
    """L2-normalised features of uint8 NHWC `images`, computed in eval mode."""
    was_training = encoder.training
    encoder.eval()
    out = []
    for start in range(0, len(images), batch_size):
        batch = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size])).to(device)
        x = batch.permute(0, 3, 1, 2).float().contiguous(memory_format=torch.channels_last)
        out.append(F.normalize(encoder(x).float(), dim=1).cpu())
    encoder.train(was_training)
    return torch.cat(out)


def knn_predict(bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor, n_classes: int, k: int = 200, temperature: float = 0.1, chunk: int = 1024) -> torch.Tensor:
    """Predicted class for each query from its k most similar bank features."""
    k = min(k, len(bank))
    preds = []
    for start in range(0, len(queries), chunk):
        sim = queries[start : start + chunk] @ bank.T
        top_sim, top_idx = sim.topk(k, dim=1)
        weights = (top_sim / temperature).exp()
        votes = torch.zeros(len(sim), n_classes).scatter_add_(1, bank_labels[top_idx], weights)
        preds.append(votes.argmax(1))
    return torch.cat(preds)


def knn_accuracy(encoder: nn.Module, bank_images: np.ndarray, bank_labels: np.ndarray, query_images: np.ndarray, query_labels: np.ndarray, device: torch.device, k: int = 200, temperature: float = 0.1) -> float:
    """Top-1 accuracy of weighted kNN with `bank_*` as the labelled memory and `query_*` as held-out images."""
    n_classes = int(max(bank_labels.max(), query_labels.max())) + 1
    bank = embed(encoder, bank_images, device)
    queries = embed(encoder, query_images, device)
    pred = knn_predict(bank, torch.as_tensor(bank_labels, dtype=torch.long), queries, n_classes, k, temperature)
    return float((pred.numpy() == query_labels).mean())
