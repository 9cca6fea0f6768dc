"""SimSiam (Chen & He, 2021, arXiv:2011.10566): Siamese views without negatives or a momentum network."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from sslops.ml.losses import negative_cosine
from sslops.ml.methods.base import Method, PositiveInt
from sslops.ml.models import Encoder, ProjectionHead


@dataclass(frozen=True)
class SimSiamConfig:
    proj_hidden: PositiveInt
    proj_dim: PositiveInt
    pred_hidden: PositiveInt


class SimSiam(Method):
    """SimSiam: one encoder for both views, a projector and a predictor, and a stop-gradient on the projection the
    prediction is compared with: loss D(p1, z2)/2 + D(p2, z1)/2 with D the negative cosine. The projector ends in
    BatchNorm without affine parameters, as in the paper's code."""

    name, Config = "simsiam", SimSiamConfig

    def __init__(self, encoder: Encoder, image_shape: tuple[int, int, int], cfg: SimSiamConfig):
        super().__init__(encoder, image_shape)
        self.head = nn.Sequential(
            ProjectionHead(encoder.feature_dim, cfg.proj_hidden, cfg.proj_dim),
            nn.BatchNorm1d(cfg.proj_dim, affine=False),
        )
        self.predictor = ProjectionHead(cfg.proj_dim, cfg.pred_hidden, cfg.proj_dim)

    def forward(self, views: list[torch.Tensor]) -> torch.Tensor:
        z = self.head(self.encoder(torch.cat(views, 0)))
        (z1, z2), (p1, p2) = z.chunk(2, 0), self.predictor(z).chunk(2, 0)
        return 0.5 * (negative_cosine(p1, z2) + negative_cosine(p2, z1))
