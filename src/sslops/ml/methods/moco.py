"""MoCo v2 (Chen et al., 2020, arXiv:2003.04297): momentum key encoder, queue of negatives, InfoNCE."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sslops.ml.losses import gather_no_grad, info_nce_with_queue
from sslops.ml.methods.base import Method, Momentum, PositiveFloat, PositiveInt, ema, frozen_copy
from sslops.ml.models import Encoder, ProjectionHead


@dataclass(frozen=True)
class MoCoConfig:
    proj_hidden: PositiveInt
    proj_dim: PositiveInt
    temperature: PositiveFloat
    queue_size: PositiveInt
    momentum: Momentum


class MoCo(Method):
    """MoCo v2: MLP head and temperature 0.2 as in v2; the loss is symmetrised over the two views (each view is once
    the query, once the key), which doubles the signal per step for the same forward passes. Under DDP the
    keys of all ranks are gathered before they enter the queue, so every rank holds the same queue.
    """

    name, Config = "moco", MoCoConfig

    def __init__(self, encoder: Encoder, image_shape: tuple[int, int, int], cfg: MoCoConfig):
        super().__init__(encoder, image_shape)
        self.head = ProjectionHead(encoder.feature_dim, cfg.proj_hidden, cfg.proj_dim)
        self.key_encoder, self.key_head = frozen_copy(encoder), frozen_copy(self.head)
        self.temperature, self.momentum = cfg.temperature, cfg.momentum
        self.register_buffer("queue", F.normalize(torch.randn(cfg.queue_size, cfg.proj_dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    def forward(self, views: list[torch.Tensor]) -> torch.Tensor:
        q1, q2 = F.normalize(self.head(self.encoder(torch.cat(views, 0))).float(), dim=1).chunk(2, 0)
        with torch.no_grad():
            k1, k2 = F.normalize(self.key_head(self.key_encoder(torch.cat(views, 0))).float(), dim=1).chunk(2, 0)
        negatives = self.queue.clone()  # the queue changes below; the graph must keep this step's copy
        loss = 0.5 * (
            info_nce_with_queue(q1, k2, negatives, self.temperature)
            + info_nce_with_queue(q2, k1, negatives, self.temperature)
        )
        self._enqueue(gather_no_grad(torch.cat([k1, k2], 0)))
        return loss

    @torch.no_grad()
    def _enqueue(self, keys: torch.Tensor) -> None:
        size, ptr = len(self.queue), int(self.queue_ptr)
        keys = keys[:size]
        idx = (torch.arange(len(keys), device=keys.device) + ptr) % size
        self.queue[idx] = keys.to(self.queue.dtype)
        self.queue_ptr.fill_((ptr + len(keys)) % size)

    def after_step(self, step: int, total_steps: int) -> None:
        ema(self.key_encoder, self.encoder, self.momentum)
        ema(self.key_head, self.head, self.momentum)
