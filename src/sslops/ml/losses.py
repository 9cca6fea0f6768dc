"""The pretext losses: contrastive, regression, redundancy reduction, self-distillation and reconstruction.

Losses that need statistics of the whole batch (Barlow Twins' cross-correlation, VICReg's variance and
covariance, DINO's centre) see the *global* batch under DDP: embeddings are gathered with their gradient, so
every rank computes the same global loss. The backward of the gather sums each rank's gradient for its own
rows, so after DDP averages the gradients over ranks they equal the one-process gradient on the whole batch.
"""

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


def negative_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """SimSiam's D(p, stopgrad(z)) (Chen & He, 2021, arXiv:2011.10566, eq. 1 with eq. 3's stop-gradient):
    the negative cosine similarity of each prediction with the other view's projection, averaged over the batch."""
    return -F.cosine_similarity(p.float(), z.float().detach(), dim=1).mean()


def _off_diagonal(m: torch.Tensor) -> torch.Tensor:
    """The off-diagonal entries of a square matrix, flattened."""
    d = m.shape[0]
    return m.flatten()[:-1].view(d - 1, d + 1)[:, 1:].flatten()


def _standardise(z: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Each dimension to zero mean and unit (biased) variance over the batch: BatchNorm1d without affine, as the
    official Barlow Twins code does; `eps` guards a constant dimension (it then becomes 0)."""
    return (z - z.mean(0)) / torch.sqrt(z.var(0, unbiased=False) + eps)


def barlow_twins_loss(z1: torch.Tensor, z2: torch.Tensor, lambda_offdiag: float) -> torch.Tensor:
    """Barlow Twins (Zbontar et al., 2021, arXiv:2103.03230, eq. 1): with C the cross-correlation of the two
    standardised embeddings over the global batch (C = z1^T z2 / N), sum_i (1 - C_ii)^2 + lambda sum_{i!=j} C_ij^2."""
    a, b = _standardise(gather_with_grad(z1.float())), _standardise(gather_with_grad(z2.float()))
    c = a.T @ b / len(a)
    return (1 - torch.diagonal(c)).pow(2).sum() + lambda_offdiag * _off_diagonal(c).pow(2).sum()


def vicreg_terms(
    z1: torch.Tensor, z2: torch.Tensor, gamma: float = 1.0, eps: float = 1e-4
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """VICReg's three terms (Bardes et al., 2022, arXiv:2105.04906, Algorithm 1) over the global batch:
    invariance (mean squared error between the views), variance (hinge on each dimension's standard deviation,
    mean of relu(gamma - sqrt(Var + eps)), summed over the two branches) and covariance (squared off-diagonal
    entries of each branch's covariance matrix, summed and divided by the dimension, summed over the branches)."""
    a, b = gather_with_grad(z1.float()), gather_with_grad(z2.float())
    n, d = a.shape
    invariance = F.mse_loss(a, b)
    variance = sum(F.relu(gamma - torch.sqrt(z.var(0) + eps)).mean() for z in (a, b))
    covariance = 0.0
    for z in (a, b):
        centred = z - z.mean(0)
        covariance = covariance + _off_diagonal(centred.T @ centred / (n - 1)).pow(2).sum() / d
    return invariance, variance, covariance


def vicreg_loss(
    z1: torch.Tensor, z2: torch.Tensor, sim_weight: float, var_weight: float, cov_weight: float
) -> torch.Tensor:
    """VICReg's loss, lambda * invariance + mu * variance + nu * covariance (paper: 25, 25, 1)."""
    invariance, variance, covariance = vicreg_terms(z1, z2)
    return sim_weight * invariance + var_weight * variance + cov_weight * covariance


def dino_cross_entropy(
    student: list[torch.Tensor],
    teacher: list[torch.Tensor],
    center: torch.Tensor,
    teacher_temp: float,
    student_temp: float,
) -> torch.Tensor:
    """DINO's loss (Caron et al., 2021, arXiv:2104.14294, Algorithm 1 and eq. 3): the teacher's outputs of the
    global views, centred and sharpened (softmax((t - center) / teacher_temp), no gradient), against the student's
    log-softmax(s / student_temp) of every *other* view; the cross-entropy is averaged over the batch and the
    (teacher view, student view) pairs. `student[i]` and `teacher[i]` are the same view for the global views,
    which come first in `student`."""
    targets = [F.softmax((t.float() - center) / teacher_temp, dim=1).detach() for t in teacher]
    log_probs = [F.log_softmax(s.float() / student_temp, dim=1) for s in student]
    terms = [-(q * log_p).sum(1).mean() for i, q in enumerate(targets) for v, log_p in enumerate(log_probs) if v != i]
    return sum(terms) / len(terms)


class DINOLoss(nn.Module):
    """DINO's cross-entropy with its teacher centre, a buffer updated after each loss by
    center <- m * center + (1 - m) * mean of the teacher's outputs over the global batch (all_reduce under DDP)."""

    def __init__(self, out_dim: int, teacher_temp: float, student_temp: float, center_momentum: float):
        super().__init__()
        self.teacher_temp, self.student_temp, self.center_momentum = teacher_temp, student_temp, center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    def forward(self, student: list[torch.Tensor], teacher: list[torch.Tensor]) -> torch.Tensor:
        loss = dino_cross_entropy(student, teacher, self.center, self.teacher_temp, self.student_temp)
        self.update_center(torch.cat(teacher, 0))
        return loss

    @torch.no_grad()
    def update_center(self, teacher: torch.Tensor) -> None:
        total, count = teacher.float().sum(0, keepdim=True), len(teacher)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(total)
            count *= dist.get_world_size()
        self.center.mul_(self.center_momentum).add_(total / count, alpha=1 - self.center_momentum)


def reconstruction_mse(recon: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error of a reconstruction against its (clean, normalised) target, over all pixels, or over the
    pixels where `mask` (N, 1, H, W) is 1 (masked image modelling: the hidden patches only)."""
    per_pixel = (recon.float() - target.float()).pow(2)
    if mask is None:
        return per_pixel.mean()
    return (per_pixel * mask).sum() / (mask.sum() * recon.shape[1]).clamp_min(1)
