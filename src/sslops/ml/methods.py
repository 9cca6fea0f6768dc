"""Self-supervised methods behind one small interface, so the training loop never changes per method.

A method owns the trainable modules (encoder + heads), says how many augmented views a step needs, and
turns a batch of views into a loss. Methods with momentum targets or queues override `after_step`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sslops.ml.losses import NTXentLoss
from sslops.ml.models import Encoder, ProjectionHead


class Method(nn.Module):
    """Base class: `encoder` is what gets registered and evaluated; everything else is pretext-only."""

    views: int = 2

    def __init__(self, encoder: Encoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, views: list[torch.Tensor]) -> torch.Tensor:  # returns the scalar loss
        raise NotImplementedError

    def after_step(self, step: int, total_steps: int) -> None:
        """Hook after each optimiser step (EMA targets, queues); SimCLR needs none."""


class SimCLR(Method):
    """SimCLR (Chen et al., 2020, arXiv:2002.05709): two views, MLP projection head, NT-Xent loss."""

    def __init__(self, encoder: Encoder, proj_hidden: int = 512, proj_dim: int = 128, temperature: float = 0.2):
        super().__init__(encoder)
        self.head = ProjectionHead(encoder.feature_dim, proj_hidden, proj_dim)
        self.loss = NTXentLoss(temperature)

    def forward(self, views: list[torch.Tensor]) -> torch.Tensor:
        x = torch.cat(views, 0)  # one forward pass over both views: better BN statistics, fewer kernel calls
        z = self.head(self.encoder(x))
        z1, z2 = z.chunk(2, 0)
        return self.loss(z1, z2)


METHODS: dict[str, type[Method]] = {"simclr": SimCLR}


def build_method(name: str, encoder: Encoder, options: dict[str, Any]) -> Method:
    """Build the method named in params (`pretrain.method`) with its own knobs (`pretrain.<method>`)."""
    if name not in METHODS:
        raise ValueError(f"unknown pretraining method '{name}' (available: {', '.join(METHODS)})")
    return METHODS[name](encoder, **options)
