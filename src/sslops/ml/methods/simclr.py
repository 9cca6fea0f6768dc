"""SimCLR (Chen et al., 2020, arXiv:2002.05709): two views, MLP projection head, NT-Xent loss."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sslops.ml.losses import NTXentLoss
from sslops.ml.methods.base import Method, PositiveFloat, PositiveInt
from sslops.ml.models import Encoder, ProjectionHead


@dataclass(frozen=True)
class SimCLRConfig:
    proj_hidden: PositiveInt
    proj_dim: PositiveInt
    temperature: PositiveFloat


class SimCLR(Method):
    """SimCLR: the projections of two views of one image are each other's positive, the batch's other views the
    negatives."""

    name, Config = "simclr", SimCLRConfig

    def __init__(self, encoder: Encoder, image_shape: tuple[int, int, int], cfg: SimCLRConfig):
        super().__init__(encoder, image_shape)
        self.head = ProjectionHead(encoder.feature_dim, cfg.proj_hidden, cfg.proj_dim)
        self.loss = NTXentLoss(cfg.temperature)

    def forward(self, views: list[torch.Tensor]) -> torch.Tensor:
        x = torch.cat(views, 0)  # one forward pass over both views: better BN statistics, fewer kernel calls
        z = self.head(self.encoder(x))
        z1, z2 = z.chunk(2, 0)
        return self.loss(z1, z2)
