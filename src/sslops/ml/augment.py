"""Augmentations applied to whole batches of uint8 image tensors, on CPU or GPU.

Per-sample PIL transforms in a DataLoader are the bottleneck of SSL pretraining on a few CPU cores;
expressing every transform as batched tensor maths (one affine grid for crop+flip+rotation, per-sample
colour factors broadcast over the batch) turns augmentation into a handful of vectorised ops.
Recipe after SimCLR (Chen et al., 2020, "A Simple Framework for Contrastive Learning of Visual
Representations", Appendix A): random resized crop, horizontal flip, colour jitter, random grayscale,
Gaussian blur.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentConfig:
    """The augmentation recipe (params.yaml `augment:` holds its values); probabilities are per image."""

    size: int | None  # output side; None keeps the input size
    crop_scale: tuple[float, float]
    crop_ratio: tuple[float, float]
    flip_p: float
    jitter_p: float
    brightness: float
    contrast: float
    saturation: float  # RGB only
    hue: float  # RGB only, fraction of a full turn
    grayscale_p: float  # RGB only
    blur_p: float
    blur_sigma: tuple[float, float]
    rotation: float  # max degrees, uniform in [-rotation, rotation]

    @classmethod
    def crop_flip(cls, crop_scale: tuple[float, float], flip_p: float) -> AugmentConfig:
        """Random resized crop (standard 3/4..4/3 aspect range) and flip only: the mild augmentation of fine-tuning."""
        return cls(
            size=None,
            crop_scale=crop_scale,
            crop_ratio=(3 / 4, 4 / 3),
            flip_p=flip_p,
            jitter_p=0.0,
            brightness=0.0,
            contrast=0.0,
            saturation=0.0,
            hue=0.0,
            grayscale_p=0.0,
            blur_p=0.0,
            blur_sigma=(0.1, 2.0),
            rotation=0.0,
        )


def view_size(size: int | None, height: int, width: int) -> tuple[int, int]:
    """(height, width) of an augmented view of a `height` x `width` image: `size` x `size`, or the image's own
    shape when `size` is None (non-square images stay non-square rather than being squashed)."""
    return (size, size) if size else (height, width)


def _uniform(n: int, low: float, high: float, gen: torch.Generator | None, device) -> torch.Tensor:
    return torch.rand(n, generator=gen, device=device) * (high - low) + low


def _geometry(images: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator | None) -> torch.Tensor:
    """Random resized crop + flip + rotation as one affine grid per image, then one grid_sample."""
    b, _, h, w = images.shape
    dev = images.device
    area = _uniform(b, *cfg.crop_scale, gen, dev)
    log_ratio = _uniform(b, math.log(cfg.crop_ratio[0]), math.log(cfg.crop_ratio[1]), gen, dev)
    ratio = torch.exp(log_ratio) * (h / w)  # aspect ratio in pixels, expressed in normalised units
    cw = torch.sqrt(area * ratio).clamp(max=1.0)
    ch = torch.sqrt(area / ratio).clamp(max=1.0)
    cx = (torch.rand(b, generator=gen, device=dev) * 2 - 1) * (1 - cw)
    cy = (torch.rand(b, generator=gen, device=dev) * 2 - 1) * (1 - ch)
    flip = torch.where(torch.rand(b, generator=gen, device=dev) < cfg.flip_p, -1.0, 1.0)
    angle = _uniform(b, -cfg.rotation, cfg.rotation, gen, dev) * (math.pi / 180)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack(
        [
            torch.stack([cw * flip * cos, -ch * sin, cx], 1),
            torch.stack([cw * flip * sin, ch * cos, cy], 1),
        ],
        1,
    )
    grid = F.affine_grid(theta, [b, images.shape[1], *view_size(cfg.size, h, w)], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def _gray(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    return 0.299 * r + 0.587 * g + 0.114 * b


def _colour(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator | None) -> torch.Tensor:
    """Colour jitter (random order is not needed for SSL quality; a fixed order keeps it vectorised)."""
    b, c = x.shape[:2]
    dev = x.device
    apply = (torch.rand(b, 1, 1, 1, generator=gen, device=dev) < cfg.jitter_p).float()

    def factor(strength: float) -> torch.Tensor:
        f = _uniform(b, max(0.0, 1 - strength), 1 + strength, gen, dev).view(b, 1, 1, 1)
        return apply * f + (1 - apply)

    x = x * factor(cfg.brightness)
    mean = _gray(x).mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * factor(cfg.contrast) + mean
    if c == 3:
        gray = _gray(x)
        x = (x - gray) * factor(cfg.saturation) + gray
        if cfg.hue > 0:
            x = _hue_rotate(x, apply.view(b) * _uniform(b, -cfg.hue, cfg.hue, gen, dev))
        to_gray = (torch.rand(b, 1, 1, 1, generator=gen, device=dev) < cfg.grayscale_p).float()
        x = to_gray * _gray(x).expand_as(x) + (1 - to_gray) * x
    return x


def _hue_rotate(x: torch.Tensor, turns: torch.Tensor) -> torch.Tensor:
    """Rotate hue by `turns` of a full circle per image, as a rotation in YIQ chroma space."""
    to_yiq = x.new_tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    from_yiq = torch.linalg.inv(to_yiq)
    angle = turns * 2 * math.pi
    cos, sin = torch.cos(angle), torch.sin(angle)
    one, zero = torch.ones_like(cos), torch.zeros_like(cos)
    rot = torch.stack(
        [torch.stack([one, zero, zero], 1), torch.stack([zero, cos, -sin], 1), torch.stack([zero, sin, cos], 1)], 1
    )
    mats = from_yiq @ rot @ to_yiq  # (b, 3, 3)
    return torch.einsum("bij,bjhw->bihw", mats, x)


def _blur(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator | None) -> torch.Tensor:
    """Separable Gaussian blur with a per-image sigma, as one grouped convolution per axis."""
    b, c, h, w = x.shape
    dev = x.device
    radius = max(1, int(math.ceil(2 * cfg.blur_sigma[1])))
    sigma = _uniform(b, *cfg.blur_sigma, gen, dev)
    apply = torch.rand(b, generator=gen, device=dev) < cfg.blur_p
    offsets = torch.arange(-radius, radius + 1, device=dev, dtype=x.dtype)
    kernel = torch.exp(-(offsets[None] ** 2) / (2 * sigma[:, None] ** 2))
    kernel = kernel / kernel.sum(1, keepdim=True)
    identity = (offsets == 0).to(x.dtype).expand_as(kernel)
    kernel = torch.where(apply[:, None], kernel, identity).repeat_interleave(c, 0)  # (b*c, k)
    flat = F.pad(x.reshape(1, b * c, h, w), (radius, radius, radius, radius), mode="reflect")
    flat = F.conv2d(flat, kernel.view(b * c, 1, 1, -1), groups=b * c)
    flat = F.conv2d(flat, kernel.view(b * c, 1, -1, 1), groups=b * c)
    return flat.view(b, c, h, w)


class BatchAugment:
    """uint8 (B, C, H, W) -> augmented uint8 (B, C, *view_size(...)); deterministic for a generator state."""

    def __init__(self, cfg: AugmentConfig):
        self.cfg = cfg

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        x = images.float()
        x = _geometry(x, self.cfg, gen)
        x = _colour(x, self.cfg, gen)
        if self.cfg.blur_p > 0:
            x = _blur(x, self.cfg, gen)
        return x.round_().clamp_(0, 255).to(torch.uint8)
