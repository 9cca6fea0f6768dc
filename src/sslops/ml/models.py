"""Backbones (encoders) and heads.

`small_cnn` is sized for pretraining on 2 CPU cores; torchvision ResNet-18/50 are for GPUs, with the
CIFAR-style stem (3x3 conv, no max-pool) that small images need (SimCLR paper, Appendix B.9).
An encoder maps (B, C, H, W) float images to (B, feature_dim) features.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class BackboneConfig:
    """Everything needed to rebuild an encoder before loading its state_dict."""

    name: str  # small_cnn | resnet18 | resnet34 | resnet50 | auto (by image size: `resolve_backbone`)
    in_channels: int
    width: int  # small_cnn only
    small_stem: bool  # resnets: 3x3 stem without max-pool, for small images
    pool: int  # small_cnn: average-pool the last feature map to pool x pool cells (1 = global pooling)
    stem_width: int | None  # small_cnn: channels of the first conv (None = width)

    def to_dict(self) -> dict:
        return asdict(self)


def _conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class SmallCNN(nn.Module):
    """A 4-conv VGG-style encoder (stem, 2w, 4w, 8w channels; the last three with stride 2; stem = w by default).

    Sized for 2 CPU cores. `pool` > 1 keeps a coarse spatial layout in the features (8w * pool^2 values):
    global pooling throws away *where* a part is, which matters for small centred images such as
    Fashion-MNIST, at no extra convolution cost. `stem_width` < w narrows the first conv only: it is the one
    layer at full resolution, so its activations dominate memory traffic (BN, ReLU and their backward) while
    its 3x3xC input patches (9 values for grayscale) need few filters.
    """

    def __init__(self, in_channels: int, width: int, pool: int, stem_width: int | None):
        super().__init__()
        w, stem = width, stem_width or width
        self.features = nn.Sequential(
            _conv_bn(in_channels, stem),
            _conv_bn(stem, 2 * w, stride=2),
            _conv_bn(2 * w, 4 * w, stride=2),
            _conv_bn(4 * w, 8 * w, stride=2),
            nn.AdaptiveAvgPool2d(pool),
            nn.Flatten(),
        )
        self.feature_dim = 8 * w * pool * pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


def _resnet(name: str, in_channels: int, small_stem: bool) -> nn.Module:
    import torchvision

    net = getattr(torchvision.models, name)(weights=None)
    if small_stem:
        net.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        net.maxpool = nn.Identity()
    elif in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
    net.feature_dim = net.fc.in_features
    net.fc = nn.Identity()
    return net


BACKBONES = ("small_cnn", "resnet18", "resnet34", "resnet50")
SMALL_IMAGE_SIDE = 48  # `auto`: small_cnn up to this side, ResNet-18 with the standard stem above (docs/benchmarks.md)


def resolve_backbone(cfg: BackboneConfig, side: int) -> BackboneConfig:
    """`name: auto` made concrete for images of `side` px; any other name is kept as configured.

    small_cnn keeps full resolution in its first conv, which suits 28-32 px but costs quadratically more at
    64-224 px; there the standard ResNet stem (7x7 stride-2 conv and max-pool) cuts the side by 4 first.
    """
    if cfg.name != "auto":
        return cfg
    if side <= SMALL_IMAGE_SIDE:
        return replace(cfg, name="small_cnn")
    return replace(cfg, name="resnet18", small_stem=False)


def build_backbone(cfg: BackboneConfig) -> nn.Module:
    """Build an encoder with a `feature_dim` attribute."""
    if cfg.name == "small_cnn":
        return SmallCNN(cfg.in_channels, cfg.width, cfg.pool, cfg.stem_width)
    if cfg.name in BACKBONES:
        return _resnet(cfg.name, cfg.in_channels, cfg.small_stem)
    raise ValueError(f"unknown backbone '{cfg.name}' ({', '.join(BACKBONES)})")


class ProjectionHead(nn.Module):
    """MLP projection head g(.) of SimCLR: Linear-BN-ReLU-Linear (the contrastive loss is applied after it)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden_dim, bias=False),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def pixel_statistics(images: np.ndarray, rows: np.ndarray, sample: int = 10_000) -> tuple[list[float], list[float]]:
    """Per-channel mean and std (in 0..1) of uint8 NHWC `images[rows]`, from a seeded sample of `sample` of them: the
    encoder's input normalisation. A floor of 1e-3 on the std keeps a constant channel finite."""
    picked = images[np.sort(np.random.default_rng(0).choice(rows, min(len(rows), sample), replace=False))]
    pixels = picked.reshape(-1, picked.shape[-1]).astype(np.float64) / 255
    return pixels.mean(0).tolist(), np.maximum(pixels.std(0), 1e-3).tolist()


class Normalize(nn.Module):
    """uint8-range (0..255) input to zero-mean, unit-variance; part of the encoder so users feed raw pixels."""

    def __init__(self, mean: list[float], std: list[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1) * 255)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() - self.mean) / self.std


class Encoder(nn.Module):
    """Normalisation + backbone: takes raw pixels (B, C, H, W) in 0..255, returns features."""

    def __init__(self, cfg: BackboneConfig, mean: list[float], std: list[float]):
        super().__init__()
        self.config, self.channel_mean, self.channel_std = cfg, list(mean), list(std)  # to rebuild it at random init
        self.normalize = Normalize(mean, std)
        self.backbone = build_backbone(cfg)
        self.feature_dim = self.backbone.feature_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.normalize(x))

    def untrained_copy(self) -> Encoder:
        """The same architecture and input normalisation at a fresh random initialisation (seed the RNG first)."""
        return Encoder(self.config, self.channel_mean, self.channel_std)


PIXELS_MAX_SIDE = 32  # the raw-pixel baseline averages larger images down to this side


class Pixels(nn.Module):
    """The raw-pixel baseline as an encoder: the prepared pixels, flattened (a linear probe standardises them).

    Images larger than `PIXELS_MAX_SIDE` are area-averaged down to it first: 224x224x3 pixels as features would
    be 150,528 floats per image (36 GB for 60,000 images), and a linear model on raw pixels gains nothing from the
    detail; at 28-32 px (the default data) the features are the prepared pixels exactly.
    """

    def __init__(self, height: int, width: int, channels: int):
        super().__init__()
        self.size = (min(height, PIXELS_MAX_SIDE), min(width, PIXELS_MAX_SIDE))
        self.feature_dim = self.size[0] * self.size[1] * channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        if tuple(x.shape[-2:]) != self.size:
            x = nn.functional.adaptive_avg_pool2d(x, self.size)
        return x.flatten(1)


def input_shape(spec: dict) -> tuple[int, int, int]:
    """(height, width, channels) of the images an encoder was trained on, from its encoder.json."""
    height, width, channels = spec["image_shape"]
    return int(height), int(width), int(channels)


def load_encoder_dir(folder: Path, sha256: str, spec_sha256: str | None = None) -> tuple[Encoder, dict]:
    """(encoder, spec) from a folder holding encoder.json (how to rebuild it) and encoder.pt (its state_dict).

    Both files must have the given sha256s (the spec's when one was recorded), and the weights are loaded with
    weights_only=True: tensors, never code. A file that does not fit is a named error, not a traceback.
    """
    from sslops.errors import SslopsError

    weights, spec_file = folder / "encoder.pt", folder / "encoder.json"
    if not weights.is_file() or not spec_file.is_file():
        raise SslopsError(f"{folder} lacks encoder.pt or encoder.json: not an sslops encoder.")
    if not sha256:
        raise SslopsError(f"{folder}: no registered sha256 for encoder.pt, so its weights cannot be checked.")
    for path, expected in ((weights, sha256), (spec_file, spec_sha256)):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if expected and digest != expected:
            raise SslopsError(
                f"{path} has sha256 {digest[:12]}..., not the registered {expected[:12]}...: refusing files that are "
                "not the ones registered."
            )
    try:
        spec = json.loads(spec_file.read_text())
        encoder = Encoder(BackboneConfig(**spec["backbone"]), spec["mean"], spec["std"])
        encoder.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    except (
        ValueError,
        KeyError,
        TypeError,
        RuntimeError,
        EOFError,
        pickle.UnpicklingError,
    ) as exc:  # bad JSON or keys,
        # weights of another shape, a file torch's weights_only loader refuses
        raise SslopsError(f"{folder}: encoder.json and encoder.pt do not make an encoder ({exc}).") from None
    return encoder.eval(), spec
