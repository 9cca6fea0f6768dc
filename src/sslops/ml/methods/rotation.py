"""Rotation prediction (Gidaris et al., 2018, arXiv:1803.07728): which of four rotations was applied."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sslops.ml.methods.base import Method, PositiveInt
from sslops.ml.models import Encoder


@dataclass(frozen=True)
class RotationConfig:
    hidden: PositiveInt


class RotationPrediction(Method):
    """Rotation prediction: classify which of 0/90/180/270 degrees an image was rotated by. Every view gets one
    rotation, cycling through the four across the batch so the classes stay balanced; an MLP head on the encoder's
    features predicts it."""

    name, Config = "rotation", RotationConfig

    def __init__(self, encoder: Encoder, image_shape: tuple[int, int, int], cfg: RotationConfig):
        super().__init__(encoder, image_shape)
        _, h, w = self.image_shape
        if h != w:
            raise ValueError(f"rotation prediction needs square images, got {h}x{w} (set augment.size)")
        self.head = nn.Sequential(
            nn.Linear(encoder.feature_dim, cfg.hidden),
            nn.BatchNorm1d(cfg.hidden),
            nn.ReLU(inplace=True),
            nn.Linear(cfg.hidden, 4),
        )

    def forward(self, views: list[torch.Tensor]) -> torch.Tensor:
        x = torch.cat(views, 0)
        k = torch.arange(len(x), device=x.device) % 4
        rotated = torch.empty_like(x)
        for turns in range(4):
            rotated[k == turns] = torch.rot90(x[k == turns], turns, dims=(2, 3))
        return F.cross_entropy(self.head(self.encoder(rotated)).float(), k)
