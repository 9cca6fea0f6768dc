"""Masked-image modelling for CNN encoders: Context Encoders' bottleneck with SimMIM's random patch masks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import torch
from annotated_types import Interval

from sslops.ml.losses import reconstruction_mse
from sslops.ml.methods.base import Method, PositiveInt, check_divides, like, pixel_decoder
from sslops.ml.models import Encoder


@dataclass(frozen=True)
class MIMConfig:
    patch: PositiveInt  # must divide the image side (checked when the method is built)
    mask_ratio: Annotated[float, Interval(gt=0, lt=1)]
    dec_hidden: PositiveInt


class MaskedReconstruction(Method):
    """Masked-image modelling: hide random patches, rebuild the pixels from the features.

    Context Encoders (Pathak et al., 2016, arXiv:1604.07379) for the encode-a-damaged-image, decode-the-
    pixels bottleneck, with SimMIM's (Xie et al., 2021, arXiv:2111.09886) random patch masks and a loss on
    the masked patches only. Masked pixels are set to the dataset mean (0 after normalisation); the light
    decoder is an MLP from the encoder's features to the normalised image.
    """

    name, Config = "mim", MIMConfig

    def __init__(self, encoder: Encoder, image_shape: tuple[int, int, int], cfg: MIMConfig):
        super().__init__(encoder, image_shape)
        check_divides("mim.patch", cfg.patch, self.image_shape)
        self.patch, self.mask_ratio = cfg.patch, cfg.mask_ratio
        self.decoder = pixel_decoder(encoder.feature_dim, cfg.dec_hidden, self.image_shape)

    def forward(self, views: list[torch.Tensor]) -> torch.Tensor:
        x = torch.cat(views, 0)
        c, h, w = self.image_shape
        grid = torch.rand(len(x), 1, h // self.patch, w // self.patch, device=x.device) < self.mask_ratio
        mask = grid.repeat_interleave(self.patch, 2).repeat_interleave(self.patch, 3).to(x.dtype)
        mean = self.encoder.normalize.mean.to(x.dtype)
        damaged = like(x * (1 - mask) + mean * mask, x)
        recon = self.decoder(self.encoder(damaged)).view(len(x), c, h, w)
        return reconstruction_mse(recon, self.encoder.normalize(x), mask)
