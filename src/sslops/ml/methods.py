"""Self-supervised methods behind one small interface, so the training loop never changes per method.

A method owns the trainable modules (encoder + heads) and turns the two augmented views of a batch into a
loss. Methods with momentum targets override `after_step`.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sslops.ml.losses import NTXentLoss, byol_regression, gather_no_grad, info_nce_with_queue
from sslops.ml.models import Encoder, ProjectionHead


class Method(nn.Module):
    """Base class: `encoder` is what gets registered and evaluated; everything else is pretext-only.

    The training loop hands `forward` two augmented views of each image of the batch.

    `image_shape` is (C, H, W) of the views, for methods that reconstruct or transform whole images.
    """

    def __init__(self, encoder: Encoder, image_shape: tuple[int, int, int]):
        super().__init__()
        self.encoder = encoder
        self.image_shape = tuple(image_shape)

    def forward(self, views: list[torch.Tensor]) -> torch.Tensor:  # returns the scalar loss
        raise NotImplementedError

    def after_step(self, step: int, total_steps: int) -> None:
        """Hook after each optimiser step (momentum targets); SimCLR needs none. MoCo's queue is updated in forward."""


class SimCLR(Method):
    """SimCLR (Chen et al., 2020, arXiv:2002.05709): two views, MLP projection head, NT-Xent loss."""

    def __init__(
        self, encoder: Encoder, image_shape: tuple[int, int, int], proj_hidden: int, proj_dim: int, temperature: float
    ):
        super().__init__(encoder, image_shape)
        self.head = ProjectionHead(encoder.feature_dim, proj_hidden, proj_dim)
        self.loss = NTXentLoss(temperature)

    def forward(self, views: list[torch.Tensor]) -> torch.Tensor:
        x = torch.cat(views, 0)  # one forward pass over both views: better BN statistics, fewer kernel calls
        z = self.head(self.encoder(x))
        z1, z2 = z.chunk(2, 0)
        return self.loss(z1, z2)


def _frozen_copy(module: nn.Module) -> nn.Module:
    """A momentum target: same weights, no gradients."""
    target = copy.deepcopy(module)
    for p in target.parameters():
        p.requires_grad_(False)
    return target


@torch.no_grad()
def _ema(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """target <- momentum * target + (1 - momentum) * online for parameters; BN statistics are copied."""
    for t, o in zip(target.parameters(), online.parameters(), strict=True):
        t.mul_(momentum).add_(o.detach(), alpha=1 - momentum)
    for t, o in zip(target.buffers(), online.buffers(), strict=True):
        t.copy_(o)


class MoCo(Method):
    """MoCo v2 (Chen et al., 2020, arXiv:2003.04297): momentum key encoder, queue of negatives, InfoNCE.

    MLP head and temperature 0.2 as in v2; the loss is symmetrised over the two views (each view is once
    the query, once the key), which doubles the signal per step for the same forward passes. Under DDP the
    keys of all ranks are gathered before they enter the queue, so every rank holds the same queue.
    """

    def __init__(
        self,
        encoder: Encoder,
        image_shape: tuple[int, int, int],
        proj_hidden: int,
        proj_dim: int,
        temperature: float,
        queue_size: int,
        momentum: float,
    ):
        super().__init__(encoder, image_shape)
        self.head = ProjectionHead(encoder.feature_dim, proj_hidden, proj_dim)
        self.key_encoder, self.key_head = _frozen_copy(encoder), _frozen_copy(self.head)
        self.temperature, self.momentum = temperature, momentum
        self.register_buffer("queue", F.normalize(torch.randn(queue_size, proj_dim), dim=1))
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
        _ema(self.key_encoder, self.encoder, self.momentum)
        _ema(self.key_head, self.head, self.momentum)


class BYOL(Method):
    """BYOL (Grill et al., 2020, arXiv:2006.07733): online network + predictor, EMA target, no negatives.

    The target's momentum follows the paper's schedule, tau = 1 - (1 - base_momentum)(cos(pi k / K) + 1) / 2.
    """

    def __init__(
        self,
        encoder: Encoder,
        image_shape: tuple[int, int, int],
        proj_hidden: int,
        proj_dim: int,
        pred_hidden: int,
        base_momentum: float,
    ):
        super().__init__(encoder, image_shape)
        self.head = ProjectionHead(encoder.feature_dim, proj_hidden, proj_dim)
        self.predictor = ProjectionHead(proj_dim, pred_hidden, proj_dim)
        self.target_encoder, self.target_head = _frozen_copy(encoder), _frozen_copy(self.head)
        self.base_momentum = base_momentum

    def forward(self, views: list[torch.Tensor]) -> torch.Tensor:
        x = torch.cat(views, 0)
        p1, p2 = self.predictor(self.head(self.encoder(x))).chunk(2, 0)
        with torch.no_grad():
            z1, z2 = self.target_head(self.target_encoder(x)).chunk(2, 0)
        return 0.5 * (byol_regression(p1, z2) + byol_regression(p2, z1))

    def momentum(self, step: int, total_steps: int) -> float:
        return 1 - (1 - self.base_momentum) * (math.cos(math.pi * step / max(1, total_steps)) + 1) / 2

    def after_step(self, step: int, total_steps: int) -> None:
        tau = self.momentum(step, total_steps)
        _ema(self.target_encoder, self.encoder, tau)
        _ema(self.target_head, self.head, tau)


class MaskedReconstruction(Method):
    """Masked-image modelling for CNN encoders: hide random patches, rebuild the pixels from the features.

    Context Encoders (Pathak et al., 2016, arXiv:1604.07379) for the encode-a-damaged-image, decode-the-
    pixels bottleneck, with SimMIM's (Xie et al., 2021, arXiv:2111.09886) random patch masks and a loss on
    the masked patches only. Masked pixels are set to the dataset mean (0 after normalisation); the light
    decoder is an MLP from the encoder's features to the normalised image.
    """

    def __init__(
        self, encoder: Encoder, image_shape: tuple[int, int, int], patch: int, mask_ratio: float, dec_hidden: int
    ):
        super().__init__(encoder, image_shape)
        c, h, w = self.image_shape
        if h % patch or w % patch:
            raise ValueError(f"mim.patch {patch} must divide the image size {h}x{w}")
        if not 0 < mask_ratio < 1:
            raise ValueError(f"mim.mask_ratio must be in (0, 1), got {mask_ratio}")
        self.patch, self.mask_ratio = patch, mask_ratio
        self.decoder = nn.Sequential(
            nn.Linear(encoder.feature_dim, dec_hidden),
            nn.BatchNorm1d(dec_hidden),
            nn.ReLU(inplace=True),
            nn.Linear(dec_hidden, c * h * w),
        )

    def forward(self, views: list[torch.Tensor]) -> torch.Tensor:
        x = torch.cat(views, 0)
        c, h, w = self.image_shape
        grid = torch.rand(len(x), 1, h // self.patch, w // self.patch, device=x.device) < self.mask_ratio
        mask = grid.repeat_interleave(self.patch, 2).repeat_interleave(self.patch, 3).to(x.dtype)
        mean = self.encoder.normalize.mean.to(x.dtype)
        damaged = (x * (1 - mask) + mean * mask).contiguous(
            memory_format=torch.channels_last
            if x.is_contiguous(memory_format=torch.channels_last)
            else torch.contiguous_format
        )
        target = self.encoder.normalize(x)
        recon = self.decoder(self.encoder(damaged)).view(len(x), c, h, w).float()
        per_pixel = (recon - target.float()).pow(2) * mask
        return per_pixel.sum() / (mask.sum() * c).clamp_min(1)


class RotationPrediction(Method):
    """Rotation prediction (Gidaris et al., 2018, arXiv:1803.07728): classify which of 0/90/180/270 degrees
    an image was rotated by. Every view gets one rotation, cycling through the four across the batch so the
    classes stay balanced; an MLP head on the encoder's features predicts it."""

    def __init__(self, encoder: Encoder, image_shape: tuple[int, int, int], hidden: int):
        super().__init__(encoder, image_shape)
        _, h, w = self.image_shape
        if h != w:
            raise ValueError(f"rotation prediction needs square images, got {h}x{w} (set augment.size)")
        self.head = nn.Sequential(
            nn.Linear(encoder.feature_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 4)
        )

    def forward(self, views: list[torch.Tensor]) -> torch.Tensor:
        x = torch.cat(views, 0)
        k = torch.arange(len(x), device=x.device) % 4
        rotated = torch.empty_like(x)
        for turns in range(4):
            rotated[k == turns] = torch.rot90(x[k == turns], turns, dims=(2, 3))
        return F.cross_entropy(self.head(self.encoder(rotated)).float(), k)


@dataclass(frozen=True)
class SimCLRConfig:
    proj_hidden: int
    proj_dim: int
    temperature: float


@dataclass(frozen=True)
class MoCoConfig:
    proj_hidden: int
    proj_dim: int
    temperature: float
    queue_size: int
    momentum: float


@dataclass(frozen=True)
class BYOLConfig:
    proj_hidden: int
    proj_dim: int
    pred_hidden: int
    base_momentum: float


@dataclass(frozen=True)
class MIMConfig:
    patch: int
    mask_ratio: float
    dec_hidden: int


@dataclass(frozen=True)
class RotationConfig:
    hidden: int


# Each method's knobs (params.yaml `pretrain.<name>`) and the class they build.
METHOD_CONFIGS: dict[str, type] = {
    "simclr": SimCLRConfig,
    "moco": MoCoConfig,
    "byol": BYOLConfig,
    "mim": MIMConfig,
    "rotation": RotationConfig,
}
METHODS: dict[str, type[Method]] = {
    "simclr": SimCLR,
    "moco": MoCo,
    "byol": BYOL,
    "mim": MaskedReconstruction,
    "rotation": RotationPrediction,
}
_BY_CONFIG = {METHOD_CONFIGS[name]: METHODS[name] for name in METHODS}


def build_method(cfg: object, encoder: Encoder, image_shape: tuple[int, int, int]) -> Method:
    """The method whose knobs `cfg` holds (one of METHOD_CONFIGS' dataclasses), around `encoder`."""
    if type(cfg) not in _BY_CONFIG:
        raise TypeError(
            f"not a method config: {type(cfg).__name__} (one of {', '.join(c.__name__ for c in _BY_CONFIG)})"
        )
    return _BY_CONFIG[type(cfg)](encoder, image_shape, **asdict(cfg))
