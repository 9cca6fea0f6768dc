"""Denoising autoencoder (Vincent et al., 2008, ICML): rebuild the clean image from a corrupted one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import torch
from annotated_types import Interval

from sslops.ml.losses import reconstruction_mse
from sslops.ml.methods.base import Method, NonNegativeFloat, PositiveInt, like, pixel_decoder
from sslops.ml.models import Encoder


@dataclass(frozen=True)
class DAEConfig:
    noise_p: Annotated[float, Interval(ge=0, lt=1)]  # share of pixel values masked to the dataset mean
    noise_std: NonNegativeFloat  # in normalised units (per-channel standard deviations)
    dec_hidden: PositiveInt

    def __post_init__(self) -> None:
        if self.noise_p == 0 and self.noise_std == 0:
            raise ValueError("noise_p and noise_std are both 0: no corruption, a plain autoencoder")


class DenoisingAutoencoder(Method):
    """Denoising autoencoder ("Extracting and composing robust features with denoising autoencoders"): corrupt the
    input, rebuild the *clean* image from the encoder's features; MSE on all pixels.

    Corruption: masking noise (each pixel value, per channel, set with probability `noise_p` to the dataset mean,
    which is 0 after normalisation), then additive Gaussian noise of `noise_std` in normalised units. The decoder
    is the MLP of masked reconstruction (`pixel_decoder`), its target the normalised clean view.
    """

    name, Config = "dae", DAEConfig

    def __init__(self, encoder: Encoder, image_shape: tuple[int, int, int], cfg: DAEConfig):
        super().__init__(encoder, image_shape)
        self.noise_p, self.noise_std = cfg.noise_p, cfg.noise_std
        self.decoder = pixel_decoder(encoder.feature_dim, cfg.dec_hidden, self.image_shape)

    def corrupt(self, x: torch.Tensor) -> torch.Tensor:
        """`x` (raw 0..255 pixels) with masking and Gaussian noise, still in raw pixels."""
        mean, std = self.encoder.normalize.mean.to(x.dtype), self.encoder.normalize.std.to(x.dtype)
        noisy = torch.where(torch.rand_like(x) < self.noise_p, mean, x)
        if self.noise_std:
            noisy = noisy + self.noise_std * std * torch.randn_like(x)
        return like(noisy, x)

    def forward(self, views: list[torch.Tensor]) -> torch.Tensor:
        x = torch.cat(views, 0)
        c, h, w = self.image_shape
        recon = self.decoder(self.encoder(self.corrupt(x))).view(len(x), c, h, w)
        return reconstruction_mse(recon, self.encoder.normalize(x))
