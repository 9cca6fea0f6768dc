"""VICReg (Bardes et al., 2022, arXiv:2105.04906): variance-invariance-covariance regularisation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import torch
from annotated_types import Ge

from sslops.ml.losses import vicreg_loss
from sslops.ml.methods.base import Method, NonNegativeFloat, PositiveInt
from sslops.ml.models import Encoder, ProjectionHead


@dataclass(frozen=True)
class VICRegConfig:
    proj_hidden: PositiveInt
    proj_dim: Annotated[int, Ge(2)]  # the covariance term needs two dimensions
    sim_weight: NonNegativeFloat
    var_weight: NonNegativeFloat
    cov_weight: NonNegativeFloat


class VICReg(Method):
    """VICReg: invariance (MSE between the views' embeddings), variance (a hinge keeping each dimension's standard
    deviation over the global batch at 1) and covariance (decorrelating the dimensions), weighted `sim_weight`,
    `var_weight`, `cov_weight`."""

    name, Config = "vicreg", VICRegConfig

    def __init__(self, encoder: Encoder, image_shape: tuple[int, int, int], cfg: VICRegConfig):
        super().__init__(encoder, image_shape)
        self.head = ProjectionHead(encoder.feature_dim, cfg.proj_hidden, cfg.proj_dim)
        self.weights = (cfg.sim_weight, cfg.var_weight, cfg.cov_weight)

    def forward(self, views: list[torch.Tensor]) -> torch.Tensor:
        z1, z2 = self.head(self.encoder(torch.cat(views, 0))).chunk(2, 0)
        return vicreg_loss(z1, z2, *self.weights)
