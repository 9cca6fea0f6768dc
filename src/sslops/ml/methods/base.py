"""What every pretext method shares: the `Method` interface the training loop calls, the knob types the methods
declare their ranges with, and the parts several methods build from (momentum targets, the pixel decoder).

A method's knobs are a frozen dataclass in the method's own file; each field's range is declared once, in its type
(`Annotated[int, Gt(0)]`, annotated-types' markers: plain data, no validation library in the ML core), and the
config layer checks params.yaml against it. Checks across knobs live in the dataclass's `__post_init__`; checks
that need the data (the image size) in the method's constructor.
"""

from __future__ import annotations

import copy
import math
from typing import Annotated, ClassVar

import torch
from annotated_types import Ge, Gt, Interval
from torch import nn

from sslops.ml.models import Encoder

PositiveInt = Annotated[int, Gt(0)]
NonNegativeInt = Annotated[int, Ge(0)]
PositiveFloat = Annotated[float, Gt(0)]
NonNegativeFloat = Annotated[float, Ge(0)]
Momentum = Annotated[float, Interval(ge=0, lt=1)]  # an EMA's or a centre's keep rate
Share = Annotated[float, Interval(gt=0, le=1)]  # a non-empty share of an area


class Method(nn.Module):
    """Base class: `encoder` is what gets registered and evaluated; everything else is pretext-only.

    The training loop hands `forward` two augmented views of each image of the batch.

    `image_shape` is (C, H, W) of the views, for methods that reconstruct or transform whole images.
    Each subclass names itself (`name`, its params.yaml key) and its knobs' dataclass (`Config`).
    """

    name: ClassVar[str]
    Config: ClassVar[type]

    def __init__(self, encoder: Encoder, image_shape: tuple[int, int, int]):
        super().__init__()
        self.encoder = encoder
        self.image_shape = tuple(image_shape)

    def forward(self, views: list[torch.Tensor]) -> torch.Tensor:  # returns the scalar loss
        raise NotImplementedError

    def after_step(self, step: int, total_steps: int) -> None:
        """Hook after each optimiser step (momentum targets); SimCLR needs none. MoCo's queue is updated in forward."""


def check_divides(knob: str, size: int, image_shape: tuple[int, ...]) -> None:
    """Refuse a patch or tile size (params key `knob`) that does not divide the views' height and width."""
    _, h, w = image_shape
    if h % size or w % size:
        raise ValueError(f"{knob} {size} must divide the image size {h}x{w}")


def frozen_copy(module: nn.Module) -> nn.Module:
    """A momentum target: same weights, no gradients."""
    target = copy.deepcopy(module)
    for p in target.parameters():
        p.requires_grad_(False)
    return target


@torch.no_grad()
def ema(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """target <- momentum * target + (1 - momentum) * online for parameters; BN statistics are copied."""
    for t, o in zip(target.parameters(), online.parameters(), strict=True):
        t.mul_(momentum).add_(o.detach(), alpha=1 - momentum)
    for t, o in zip(target.buffers(), online.buffers(), strict=True):
        t.copy_(o)


def cosine_momentum(base_momentum: float, step: int, total_steps: int) -> float:
    """BYOL's target momentum schedule (also DINO's teacher): tau = 1 - (1 - base)(cos(pi k / K) + 1) / 2."""
    return 1 - (1 - base_momentum) * (math.cos(math.pi * step / max(1, total_steps)) + 1) / 2


def pixel_decoder(feature_dim: int, hidden: int, image_shape: tuple[int, int, int]) -> nn.Sequential:
    """The light decoder of the reconstruction methods: an MLP from the encoder's features to the whole image."""
    c, h, w = image_shape
    return nn.Sequential(
        nn.Linear(feature_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True), nn.Linear(hidden, c * h * w)
    )


def like(images: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """`images` in the memory format of `reference` (channels_last or not), as the training loop set it."""
    channels_last = reference.is_contiguous(memory_format=torch.channels_last)
    return images.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
