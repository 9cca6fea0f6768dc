"""Barlow Twins (Zbontar et al., 2021, arXiv:2103.03230): redundancy reduction between two views' embeddings."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sslops.ml.losses import barlow_twins_loss
from sslops.ml.methods.base import Method, PositiveFloat, PositiveInt
from sslops.ml.models import Encoder, ProjectionHead


@dataclass(frozen=True)
class BarlowConfig:
    proj_hidden: PositiveInt
    proj_dim: PositiveInt
    lambda_offdiag: PositiveFloat


class BarlowTwins(Method):
    """Barlow Twins: the cross-correlation matrix of the two views' standardised embeddings, over the global batch,
    is pushed to the identity: invariance on the diagonal, redundancy reduction (weight `lambda_offdiag`) off it."""

    name, Config = "barlow", BarlowConfig

    def __init__(self, encoder: Encoder, image_shape: tuple[int, int, int], cfg: BarlowConfig):
        super().__init__(encoder, image_shape)
        self.head = ProjectionHead(encoder.feature_dim, cfg.proj_hidden, cfg.proj_dim)
        self.lambda_offdiag = cfg.lambda_offdiag

    def forward(self, views: list[torch.Tensor]) -> torch.Tensor:
        z1, z2 = self.head(self.encoder(torch.cat(views, 0))).chunk(2, 0)
        return barlow_twins_loss(z1, z2, self.lambda_offdiag)
