"""The losses of SimSiam, Barlow Twins, VICReg, DINO and the reconstruction methods: each against its paper's
formula on a tiny example worked out by hand (the expected numbers are literals, derived in the comments), a
property or two, and, for the losses that use statistics of the whole batch, two gloo processes on halves of
a batch against one process on all of it."""

from __future__ import annotations

import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from sslops.ml.losses import (
    DINOLoss,
    barlow_twins_loss,
    dino_cross_entropy,
    negative_cosine,
    reconstruction_mse,
    vicreg_loss,
    vicreg_terms,
)


def t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def test_negative_cosine_is_simsiam_D_with_a_stop_gradient():
    # cos([1,0], [0,1]) = 0 and cos([1,1], [2,2]) = 1, so D = -(0 + 1) / 2 = -0.5
    p, z = t([[1, 0], [1, 1]]).requires_grad_(), t([[0, 1], [2, 2]]).requires_grad_()
    loss = negative_cosine(p, z)
    assert loss.item() == pytest.approx(-0.5)
    loss.backward()
    assert p.grad is not None and z.grad is None  # stopgrad(z): only the prediction is trained
    # cos([3,4], [4,3]) = (12 + 12) / (5 * 5) = 0.96
    assert negative_cosine(t([[3, 4]]), t([[4, 3]])).item() == pytest.approx(-0.96)


def test_barlow_twins_on_a_hand_checked_example():
    # z1 columns [1,2,3] and [1,3,2], z2 columns [1,3,2] and [1,2,3]. Standardised (mean 2, biased std sqrt(2/3)):
    # u0 = s[-1,0,1], u1 = s[-1,1,0] for z1 and v0 = s[-1,1,0], v1 = s[-1,0,1] for z2, with s^2 = 3/2.
    # C = z1n^T z2n / 3 = (s^2 / 3) [u_i . v_j] = 0.5 [[1, 2], [2, 1]] = [[0.5, 1], [1, 0.5]].
    # Loss = (1 - 0.5)^2 + (1 - 0.5)^2 + lambda (1^2 + 1^2) = 0.5 + 2 lambda = 1.0 for lambda = 0.25.
    z1, z2 = t([[1, 1], [2, 3], [3, 2]]), t([[1, 1], [3, 2], [2, 3]])
    assert barlow_twins_loss(z1, z2, 0.25).item() == pytest.approx(1.0, rel=1e-4)
    assert barlow_twins_loss(z1, z2, 0.0).item() == pytest.approx(0.5, rel=1e-4)


def test_barlow_twins_is_zero_for_identical_decorrelated_embeddings():
    # two independent +-1 dimensions: standardised they are unchanged and C = I, so no term is left
    z = t([[1, 1], [1, -1], [-1, 1], [-1, -1]])
    assert barlow_twins_loss(z, z, 5e-3).item() == pytest.approx(0.0, abs=1e-4)
    assert barlow_twins_loss(3 * z + 7, z, 5e-3).item() == pytest.approx(0.0, abs=1e-4)  # scale and shift invariant


def test_vicreg_terms_on_a_hand_checked_example():
    # z1 = [[0,0],[2,2]], z2 = [[0,1],[2,1]].
    # invariance: differences [[0,-1],[0,1]], mean of squares = 2/4 = 0.5.
    # variance (unbiased, N - 1 = 1): z1's dimensions have Var 2, std 1.414 > 1: hinge 0. z2: dim 0 Var 2 -> 0,
    #   dim 1 Var 0 -> std sqrt(1e-4) = 0.01 -> 1 - 0.01 = 0.99; mean over dims 0.495. Sum over branches 0.495.
    # covariance: z1 centred [[-1,-1],[1,1]] -> Cov [[2,2],[2,2]], off-diagonal 2^2 + 2^2 = 8, / d = 4;
    #   z2 centred [[-1,0],[1,0]] -> Cov [[2,0],[0,0]] -> 0. Sum 4.
    # loss with the paper's weights 25, 25, 1: 25 * 0.5 + 25 * 0.495 + 4 = 28.875.
    z1, z2 = t([[0, 0], [2, 2]]), t([[0, 1], [2, 1]])
    invariance, variance, covariance = vicreg_terms(z1, z2)
    assert (invariance.item(), variance.item(), covariance.item()) == pytest.approx((0.5, 0.495, 4.0), rel=1e-5)
    assert vicreg_loss(z1, z2, 25.0, 25.0, 1.0).item() == pytest.approx(28.875, rel=1e-5)


def test_vicreg_variance_term_vanishes_when_every_std_is_at_least_one():
    z = 2 * torch.randn(64, 8, generator=torch.Generator().manual_seed(0))
    assert (z.std(0) > 1.2).all()
    assert vicreg_terms(z, z.flip(0))[1].item() == 0.0
    assert vicreg_terms(0.1 * z, 0.1 * z)[1].item() > 2 * 0.75  # std about 0.2: a hinge near 0.8 per branch


def test_dino_cross_entropy_on_a_two_class_example():
    # center c = [1, 0], teacher temperature 0.5, student temperature 1.
    # teacher view 1: t1 = [1, 0] -> (t1 - c) / 0.5 = [0, 0] -> q1 = [1/2, 1/2]
    # teacher view 2: t2 = [1 + 0.5 ln 3, 0] -> [ln 3, 0] -> q2 = [3/4, 1/4]
    # student: s1 = [0, 0] -> log p = [ln 1/2, ln 1/2]; s2 = [ln 3, 0] -> log p = [ln 3/4, ln 1/4]
    # pairs with different views: H(q1, s2) = -(ln 0.75 + ln 0.25) / 2 = 0.8369882; H(q2, s1) = ln 2 = 0.6931472
    # mean over the 2 pairs: 0.7650677
    center = t([[1, 0]])
    teacher = [t([[1, 0]]), t([[1 + 0.5 * math.log(3), 0]])]
    student = [t([[0, 0]]), t([[math.log(3), 0]])]
    assert dino_cross_entropy(student, teacher, center, 0.5, 1.0).item() == pytest.approx(0.7650677, rel=1e-6)
    # a local view s3 = [0, 0] is matched with both teacher views: H(q1, s3) = H(q2, s3) = ln 2;
    # mean over the 4 pairs (1,2), (1,3), (2,1), (2,3): (0.8369882 + 3 * 0.6931472) / 4 = 0.7291074
    local = [*student, t([[0, 0]])]
    assert dino_cross_entropy(local, teacher, center, 0.5, 1.0).item() == pytest.approx(0.7291074, rel=1e-6)


def test_dino_center_moves_by_momentum_towards_the_teachers_mean():
    # teacher outputs [1, 0] and [3, 2]: mean [2, 1]; center 0 -> 0.9 * 0 + 0.1 * [2, 1] = [0.2, 0.1]
    loss = DINOLoss(2, teacher_temp=0.5, student_temp=1.0, center_momentum=0.9)
    student = [t([[0, 0]]).requires_grad_(), t([[1, 1]]).requires_grad_()]
    loss(student, [t([[1, 0]]), t([[3, 2]])])
    torch.testing.assert_close(loss.center, t([[0.2, 0.1]]))
    loss(student, [t([[1, 0]]), t([[3, 2]])])  # 0.9 * [0.2, 0.1] + 0.1 * [2, 1] = [0.38, 0.19]
    torch.testing.assert_close(loss.center, t([[0.38, 0.19]]))


def test_reconstruction_mse_over_all_pixels_or_the_masked_ones():
    # squared errors [0, 4, 9, 0]: mean 13 / 4 = 3.25; on the mask [[0, 1], [1, 0]]: (4 + 9) / 2 = 6.5
    recon, target = t([[1, 2], [3, 4]]).view(1, 1, 2, 2), t([[1, 0], [0, 4]]).view(1, 1, 2, 2)
    assert reconstruction_mse(recon, target).item() == pytest.approx(3.25)
    assert reconstruction_mse(recon, target, t([[0, 1], [1, 0]]).view(1, 1, 2, 2)).item() == pytest.approx(6.5)


# DDP: 2 gloo processes, each with half of a global batch of 8, against one process on all 8.


def _batch():
    g = torch.Generator().manual_seed(3)
    x = [torch.randn(8, 4, generator=g) for _ in range(3)]  # two global views and one local view
    return x, torch.randn(4, 5, generator=g), torch.randn(4, 5, generator=g)


def _losses(part: slice) -> dict[str, tuple[float, torch.Tensor, torch.Tensor | None]]:
    """name -> (loss, gradient of the student weight, DINO's center) on the rows `part` of the global batch."""
    (x1, x2, x3), weight, teacher_weight = _batch()
    results = {}
    for name in ("barlow", "vicreg", "dino"):
        w = weight.clone().requires_grad_(True)
        center = None
        if name == "barlow":
            loss = barlow_twins_loss(x1[part] @ w, x2[part] @ w, 0.1)
        elif name == "vicreg":
            loss = vicreg_loss(x1[part] @ w, x2[part] @ w, 25.0, 25.0, 1.0)
        else:
            dino = DINOLoss(5, teacher_temp=0.1, student_temp=0.2, center_momentum=0.9)
            dino.center.fill_(0.3)
            student = [x[part] @ w for x in (x1, x2, x3)]
            loss = dino(student, [x1[part] @ teacher_weight, x2[part] @ teacher_weight])
            center = dino.center.clone()
        loss.backward()
        results[name] = (loss.item(), w.grad.clone(), center)
    return results


def _ddp_worker(rank: int, port: int, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    results = {}
    for name, (loss, grad, center) in _losses(slice(rank * 4, rank * 4 + 4)).items():
        both = torch.tensor([loss])
        dist.all_reduce(both)  # what the loop logs and what DDP does: the mean over ranks
        dist.all_reduce(grad)
        results[name] = (both.item() / 2, grad / 2, center, loss)
    out[rank] = results
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def ddp_results() -> dict:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = mp.Manager().dict()
    mp.spawn(_ddp_worker, args=(port, out), nprocs=2, join=True)
    return dict(out)


@pytest.mark.parametrize("name", ["barlow", "vicreg", "dino"])
def test_ddp_matches_one_process_on_the_global_batch(name, ddp_results):
    expected_loss, expected_grad, expected_center = _losses(slice(0, 8))[name]
    for rank in (0, 1):
        loss, grad, center, _ = ddp_results[rank][name]
        assert loss == pytest.approx(expected_loss, rel=1e-4)
        torch.testing.assert_close(grad, expected_grad, rtol=1e-4, atol=1e-6)
        if name == "dino":  # the same on both ranks, and the one-process center
            torch.testing.assert_close(center, expected_center, rtol=1e-5, atol=1e-7)
    if name != "dino":  # batch statistics over the global batch: each rank computes the whole batch's loss
        assert ddp_results[0][name][3] == pytest.approx(ddp_results[1][name][3], rel=1e-6)
