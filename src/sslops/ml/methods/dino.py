"""DINO (Caron et al., 2021, arXiv:2104.14294): self-distillation without labels, with multi-crop."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Annotated

import torch
import torch.nn.functional as F
from annotated_types import Interval
from torch import nn

from sslops.ml.augment import AugmentConfig, BatchAugment
from sslops.ml.losses import DINOLoss
from sslops.ml.methods.base import (
    Method,
    Momentum,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Share,
    cosine_momentum,
    ema,
    frozen_copy,
    like,
)
from sslops.ml.models import Encoder


@dataclass(frozen=True)
class DINOConfig:
    proj_hidden: PositiveInt
    bottleneck_dim: PositiveInt
    out_dim: PositiveInt
    teacher_temp: PositiveFloat
    student_temp: PositiveFloat
    center_momentum: Momentum
    base_momentum: Momentum
    local_crops: NonNegativeInt
    local_fraction: Annotated[float, Interval(gt=0, lt=1)]  # of the views' side: the same share at any image size
    local_scale: tuple[Share, Share]  # of the view's area

    def __post_init__(self) -> None:  # YAML gives a list: one value, one representation (configs compare equal)
        object.__setattr__(self, "local_scale", tuple(self.local_scale))
        if self.local_scale[0] > self.local_scale[1]:
            raise ValueError(f"local_scale must be [low, high] with low <= high, got {list(self.local_scale)}")


class DINOHead(nn.Module):
    """DINO's projection head: MLP -> L2-normalised bottleneck -> weight-normalised linear layer to `out_dim`
    prototypes, its norm fixed at 1 (the paper's default `norm_last_layer`), so each logit is a cosine."""

    def __init__(self, in_dim: int, hidden: int, bottleneck_dim: int, out_dim: int):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.GELU(), nn.Linear(hidden, bottleneck_dim)
        )
        self.prototypes = nn.Parameter(torch.empty(out_dim, bottleneck_dim))
        nn.init.trunc_normal_(self.prototypes, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.mlp(x), dim=1) @ F.normalize(self.prototypes, dim=1).T


class DINO(Method):
    """DINO: the student matches the centred, sharpened output distribution of an EMA teacher (BYOL's cosine
    momentum schedule from `base_momentum` to 1) across views.

    Multi-crop (Caron et al., 2020, SwAV, arXiv:2006.09882) on the fly: besides the two global views the loop hands
    in, `local_crops` small views per image are cut from them (alternately from the first and the second view) by
    random resized crops covering `local_scale` of the view's area, resized to `local_fraction` of its side
    (0.43: 12 px for 28-px views, 14 px for 32 px, 96 px for 224 px as in the paper, the same fraction at any size).
    Only the global views go through the teacher; the student's output of every view is matched with the teacher's
    of each *other* global view.
    """

    name, Config = "dino", DINOConfig

    def __init__(self, encoder: Encoder, image_shape: tuple[int, int, int], cfg: DINOConfig):
        super().__init__(encoder, image_shape)
        _, h, w = self.image_shape
        side = round(cfg.local_fraction * min(h, w))
        if cfg.local_crops and not 2 <= side < min(h, w):
            raise ValueError(
                f"dino.local_fraction {cfg.local_fraction} gives {side}-px local crops of {h}x{w} views: they must be "
                "at least 2 px and smaller than the views"
            )
        self.head = DINOHead(encoder.feature_dim, cfg.proj_hidden, cfg.bottleneck_dim, cfg.out_dim)
        self.teacher_encoder, self.teacher_head = frozen_copy(encoder), frozen_copy(self.head)
        self.loss = DINOLoss(cfg.out_dim, cfg.teacher_temp, cfg.student_temp, cfg.center_momentum)
        self.base_momentum, self.local_crops = cfg.base_momentum, cfg.local_crops
        self.local_augment = BatchAugment(replace(AugmentConfig.crop_flip(tuple(cfg.local_scale), 0.5), size=side))

    def forward(self, views: list[torch.Tensor]) -> torch.Tensor:
        x = torch.cat(views, 0)
        student = list(self.head(self.encoder(x)).chunk(2, 0))
        if self.local_crops:
            sources = torch.cat([views[i % 2] for i in range(self.local_crops)], 0)
            crops = like(self.local_augment(sources).to(x.dtype), x)
            student += list(self.head(self.encoder(crops)).chunk(self.local_crops, 0))
        with torch.no_grad():
            teacher = list(self.teacher_head(self.teacher_encoder(x)).chunk(2, 0))
        return self.loss(student, teacher)

    def after_step(self, step: int, total_steps: int) -> None:
        tau = cosine_momentum(self.base_momentum, step, total_steps)
        ema(self.teacher_encoder, self.encoder, tau)
        ema(self.teacher_head, self.head, tau)
