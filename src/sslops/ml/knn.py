"""Weighted kNN classification on frozen features: the standard SSL monitor.

Instance Discrimination (Wu et al., 2018, arXiv:1805.01978): cosine similarity, k nearest neighbours,
votes weighted by exp(similarity / temperature). No training, so it tracks representation quality
every epoch at the cost of one forward pass over the bank and the queries.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def knn_predict(
    bank: torch.Tensor,
    bank_labels: torch.Tensor,
    queries: torch.Tensor,
    n_classes: int,
    k: int,
    temperature: float,
    chunk: int = 1024,
) -> torch.Tensor:
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


def knn_accuracy(
    bank: torch.Tensor,
    bank_labels: np.ndarray,
    queries: torch.Tensor,
    query_labels: np.ndarray,
    k: int,
    temperature: float,
) -> float:
    """Top-1 accuracy of weighted kNN: `bank` features with their labels as the memory, `queries` held out."""
    n_classes = int(max(bank_labels.max(), query_labels.max())) + 1
    pred = knn_predict(
        F.normalize(bank, dim=1),
        torch.as_tensor(bank_labels, dtype=torch.long),
        F.normalize(queries, dim=1),
        n_classes,
        k,
        temperature,
    )
    return float((pred.numpy() == query_labels).mean())
