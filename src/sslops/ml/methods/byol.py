"""BYOL (Grill et al., 2020, arXiv:2006.07733): online network + predictor, EMA target, no negatives."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sslops.ml.losses import byol_regression
from sslops.ml.methods.base import Method, Momentum, PositiveInt, cosine_momentum, ema, frozen_copy
from sslops.ml.models import Encoder, ProjectionHead


@dataclass(frozen=True)
class BYOLConfig:
    proj_hidden: PositiveInt
    proj_dim: PositiveInt
    pred_hidden: PositiveInt
    base_momentum: Momentum


class BYOL(Method):
    """BYOL: the target's momentum follows the paper's schedule, tau = 1 - (1 - base)(cos(pi k / K) + 1) / 2."""

    name, Config = "byol", BYOLConfig

    def __init__(self, encoder: Encoder, image_shape: tuple[int, int, int], cfg: BYOLConfig):
        super().__init__(encoder, image_shape)
        self.head = ProjectionHead(encoder.feature_dim, cfg.proj_hidden, cfg.proj_dim)
        self.predictor = ProjectionHead(cfg.proj_dim, cfg.pred_hidden, cfg.proj_dim)
        self.target_encoder, self.target_head = frozen_copy(encoder), frozen_copy(self.head)
        self.base_momentum = cfg.base_momentum

    def forward(self, views: list[torch.Tensor]) -> torch.Tensor:
        x = torch.cat(views, 0)
        p1, p2 = self.predictor(self.head(self.encoder(x))).chunk(2, 0)
        with torch.no_grad():
            z1, z2 = self.target_head(self.target_encoder(x)).chunk(2, 0)
        return 0.5 * (byol_regression(p1, z2) + byol_regression(p2, z1))

    def momentum(self, step: int, total_steps: int) -> float:
        return cosine_momentum(self.base_momentum, step, total_steps)

    def after_step(self, step: int, total_steps: int) -> None:
        tau = self.momentum(step, total_steps)
        ema(self.target_encoder, self.encoder, tau)
        ema(self.target_head, self.head, tau)
