"""NT-Xent: matches a direct computation, and under DDP (gloo, 2 processes) matches one process."""

from __future__ import annotations

import math
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from sslops.ml.losses import NTXentLoss


def reference_ntxent(z1: torch.Tensor, z2: torch.Tensor, t: float) -> float:
    z = F.normalize(torch.cat([z1, z2]), dim=1).double()
    n = len(z1)
    total = 0.0
    for i in range(2 * n):
        j = (i + n) % (2 * n)
        sims = [math.exp(float(z[i] @ z[k]) / t) for k in range(2 * n) if k != i]
        total += -math.log(math.exp(float(z[i] @ z[j]) / t) / sum(sims))
    return total / (2 * n)


def test_matches_direct_formula():
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    assert abs(NTXentLoss(0.3)(z1, z2).item() - reference_ntxent(z1, z2, 0.3)) < 1e-5


def test_aligned_views_give_lower_loss():
    z = torch.randn(32, 16, generator=torch.Generator().manual_seed(1))
    loss = NTXentLoss(0.2)
    assert loss(z, z + 0.01 * torch.randn_like(z)) < loss(z, torch.randn_like(z))


def _global_batch():
    g = torch.Generator().manual_seed(7)
    return torch.randn(8, 4, generator=g), torch.randn(8, 4, generator=g), torch.randn(4, 3, generator=g)


def _single_process() -> tuple[float, torch.Tensor]:
    x1, x2, weight = _global_batch()
    weight.requires_grad_(True)
    loss = NTXentLoss(0.5)(x1 @ weight, x2 @ weight)
    loss.backward()
    return loss.item(), weight.grad


def _worker(rank: int, port: int, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    x1, x2, weight = _global_batch()
    weight.requires_grad_(True)
    half = slice(rank * 4, rank * 4 + 4)  # this rank's share of the global batch
    loss = NTXentLoss(0.5)(x1[half] @ weight, x2[half] @ weight)
    loss.backward()
    grad = weight.grad.clone()
    dist.all_reduce(grad)  # what DDP does: average gradients across ranks
    mean_loss = loss.detach().clone()
    dist.all_reduce(mean_loss)
    out[rank] = (mean_loss.item() / 2, grad / 2)
    dist.destroy_process_group()


def test_ddp_gather_matches_one_process_on_the_same_global_batch():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    manager = mp.Manager()
    out = manager.dict()
    mp.spawn(_worker, args=(port, out), nprocs=2, join=True)
    expected_loss, expected_grad = _single_process()
    for rank in (0, 1):
        loss, grad = out[rank]
        assert abs(loss - expected_loss) < 1e-5
        torch.testing.assert_close(grad, expected_grad, rtol=1e-4, atol=1e-6)
