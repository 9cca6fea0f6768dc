"""Optimisers and the learning-rate schedule used for SSL pretraining."""

from __future__ import annotations

import math

import torch
from torch import nn


class LARS(torch.optim.Optimizer):
    """LARS (You et al., 2017, arXiv:1708.03888) as used by SimCLR: SGD with momentum whose step is
    scaled per layer by trust_coefficient * ||w|| / ||grad + wd * w||. Biases and norm parameters
    (1-D tensors) are excluded from both the adaptation and weight decay, as in the SimCLR code.
    """

    def __init__(
        self, params, lr: float, momentum: float, weight_decay: float, trust_coefficient: float = 0.001
    ):  # trust_coefficient: the LARS paper's constant, not a knob
        super().__init__(
            params,
            {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "trust_coefficient": trust_coefficient},
        )

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if p.ndim > 1:
                    grad = grad.add(p, alpha=group["weight_decay"])
                    w_norm, g_norm = torch.norm(p), torch.norm(grad)
                    trust = torch.where(
                        (w_norm > 0) & (g_norm > 0),
                        group["trust_coefficient"] * w_norm / g_norm,
                        torch.ones_like(w_norm),
                    )
                    grad = grad.mul(trust)
                state = self.state[p]
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = state["momentum_buffer"] = torch.clone(grad).detach()
                else:
                    buf.mul_(group["momentum"]).add_(grad)
                p.add_(buf, alpha=-group["lr"])
        return loss


OPTIMIZERS = ("lars", "sgd", "adamw")


def build_optimizer(
    model: nn.Module, name: str, lr: float, weight_decay: float, momentum: float
) -> torch.optim.Optimizer:
    """SGD (weight decay off for biases and norms) or LARS."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    if name == "lars":
        return LARS([{"params": decay}, {"params": no_decay}], lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "sgd":
        groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=True)
    if name == "adamw":
        groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=lr)
    raise ValueError(f"unknown optimizer '{name}' ({', '.join(OPTIMIZERS)})")


def scaled_lr(base_lr: float, batch_size: int) -> float:
    """Linear scaling rule (Goyal et al., 2017): base_lr is quoted for a global batch of 256."""
    return base_lr * batch_size / 256


def warmup_cosine(step: int, total: int, warmup: int, peak: float, final_fraction: float = 0.0) -> float:
    """Linear warm-up to `peak` over `warmup` steps, then cosine decay to `final_fraction * peak`."""
    if warmup and step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (final_fraction + (1 - final_fraction) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))
