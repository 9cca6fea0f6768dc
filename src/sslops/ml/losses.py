"""Contrastive losses."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate `x` from every rank, keeping the autograd graph (so negatives from other ranks train too)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x), 0)


class NTXentLoss(nn.Module):
    """NT-Xent, the normalised temperature-scaled cross entropy of SimCLR (Chen et al., 2020, eq. 1).

    Each image's two views are positives; the other 2N-2 views of the *global* batch are negatives.
    Under DDP, this rank's views are compared against views gathered from all ranks.
    """

    def __init__(self, temperature: float):
        super().__init__()
        self.temperature = temperature

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        z1, z2 = F.normalize(z1.float(), dim=1), F.normalize(z2.float(), dim=1)
        n = z1.shape[0]
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        all1, all2 = gather_with_grad(z1), gather_with_grad(z2)
        keys = torch.cat([all1, all2], 0)  # (2M, d) with M = global batch
        m = all1.shape[0]
        queries = torch.cat([z1, z2], 0)  # (2n, d)
        logits = queries @ keys.T / self.temperature
        local = torch.arange(n, device=z1.device) + rank * n
        self_index = torch.cat([local, local + m])
        positive = torch.cat([local + m, local])
        logits[torch.arange(2 * n, device=z1.device), self_index] = float("-inf")
        return F.cross_entropy(logits, positive)


@torch.no_grad()
def gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate `x` from every rank without gradients (keys for a queue, targets)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, 0)


def info_nce_with_queue(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE of MoCo (He et al., 2019, arXiv:1911.05722, eq. 1): one positive key per query, the queue as negatives.

    `q`, `k` and `queue` are L2-normalised; `k` and `queue` carry no gradient.
    """
    positive = (q * k).sum(1, keepdim=True)
    negative = q @ queue.T
    logits = torch.cat([positive, negative], 1) / temperature
    return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device))


def byol_regression(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """BYOL's loss (Grill et al., 2020, arXiv:2006.07733, eq. 2): 2 - 2 cos(prediction, target projection)."""
    return (2 - 2 * F.cosine_similarity(p.float(), z.float().detach(), dim=1)).mean()
