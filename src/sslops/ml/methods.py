"""Self-supervised methods behind one small interface, so the training loop never changes per method.

A method owns the trainable modules (encoder + heads) and turns the two augmented views of a batch into a
loss. Methods with momentum targets override `after_step`.
"""

from __future__ import annotations

import copy
import itertools
import math
from dataclasses import asdict, dataclass, replace
from functools import cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sslops.ml.augment import AugmentConfig, BatchAugment
from sslops.ml.losses import (
    DINOLoss,
    NTXentLoss,
    barlow_twins_loss,
    byol_regression,
    gather_no_grad,
    info_nce_with_queue,
    negative_cosine,
    reconstruction_mse,
    vicreg_loss,
)
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


def cosine_momentum(base_momentum: float, step: int, total_steps: int) -> float:
    """BYOL's target momentum schedule (also DINO's teacher): tau = 1 - (1 - base)(cos(pi k / K) + 1) / 2."""
    return 1 - (1 - base_momentum) * (math.cos(math.pi * step / max(1, total_steps)) + 1) / 2


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
        return cosine_momentum(self.base_momentum, step, total_steps)

    def after_step(self, step: int, total_steps: int) -> None:
        tau = self.momentum(step, total_steps)
        _ema(self.target_encoder, self.encoder, tau)
        _ema(self.target_head, self.head, tau)


class SimSiam(Method):
    """SimSiam (Chen & He, 2021, arXiv:2011.10566): one encoder for both views, a projector and a predictor, and a
    stop-gradient on the projection the prediction is compared with: loss D(p1, z2)/2 + D(p2, z1)/2 with D the
    negative cosine. No negatives, no momentum network. The projector ends in BatchNorm without affine parameters,
    as in the paper's code."""

    def __init__(
        self, encoder: Encoder, image_shape: tuple[int, int, int], proj_hidden: int, proj_dim: int, pred_hidden: int
    ):
        super().__init__(encoder, image_shape)
        self.head = nn.Sequential(
            ProjectionHead(encoder.feature_dim, proj_hidden, proj_dim), nn.BatchNorm1d(proj_dim, affine=False)
        )
        self.predictor = ProjectionHead(proj_dim, pred_hidden, proj_dim)

    def forward(self, views: list[torch.Tensor]) -> torch.Tensor:
        z = self.head(self.encoder(torch.cat(views, 0)))
        (z1, z2), (p1, p2) = z.chunk(2, 0), self.predictor(z).chunk(2, 0)
        return 0.5 * (negative_cosine(p1, z2) + negative_cosine(p2, z1))


class BarlowTwins(Method):
    """Barlow Twins (Zbontar et al., 2021, arXiv:2103.03230): the cross-correlation matrix of the two views'
    standardised embeddings, over the global batch, is pushed to the identity: invariance on the diagonal,
    redundancy reduction (weight `lambda_offdiag`) off it."""

    def __init__(
        self,
        encoder: Encoder,
        image_shape: tuple[int, int, int],
        proj_hidden: int,
        proj_dim: int,
        lambda_offdiag: float,
    ):
        super().__init__(encoder, image_shape)
        self.head = ProjectionHead(encoder.feature_dim, proj_hidden, proj_dim)
        self.lambda_offdiag = lambda_offdiag

    def forward(self, views: list[torch.Tensor]) -> torch.Tensor:
        z1, z2 = self.head(self.encoder(torch.cat(views, 0))).chunk(2, 0)
        return barlow_twins_loss(z1, z2, self.lambda_offdiag)


class VICReg(Method):
    """VICReg (Bardes et al., 2022, arXiv:2105.04906): invariance (MSE between the views' embeddings), variance (a
    hinge keeping each dimension's standard deviation over the global batch at 1) and covariance (decorrelating the
    dimensions), weighted `sim_weight`, `var_weight`, `cov_weight`."""

    def __init__(
        self,
        encoder: Encoder,
        image_shape: tuple[int, int, int],
        proj_hidden: int,
        proj_dim: int,
        sim_weight: float,
        var_weight: float,
        cov_weight: float,
    ):
        super().__init__(encoder, image_shape)
        if proj_dim < 2:
            raise ValueError(
                f"vicreg.proj_dim must be at least 2 (the covariance term needs two dimensions), got {proj_dim}"
            )
        self.head = ProjectionHead(encoder.feature_dim, proj_hidden, proj_dim)
        self.weights = (sim_weight, var_weight, cov_weight)

    def forward(self, views: list[torch.Tensor]) -> torch.Tensor:
        z1, z2 = self.head(self.encoder(torch.cat(views, 0))).chunk(2, 0)
        return vicreg_loss(z1, z2, *self.weights)


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
    """DINO (Caron et al., 2021, arXiv:2104.14294): self-distillation without labels. The student matches the
    centred, sharpened output distribution of an EMA teacher (BYOL's cosine momentum schedule from
    `base_momentum` to 1) across views.

    Multi-crop (Caron et al., 2020, SwAV, arXiv:2006.09882) on the fly: besides the two global views the loop hands
    in, `local_crops` small views per image are cut from them (alternately from the first and the second view) by
    random resized crops covering `local_scale` of the view's area, resized to `local_fraction` of its side
    (0.43: 12 px for 28-px views, 14 px for 32 px, 96 px for 224 px as in the paper, the same fraction at any size).
    Only the global views go through the teacher; the student's output of every view is matched with the teacher's
    of each *other* global view.
    """

    def __init__(
        self,
        encoder: Encoder,
        image_shape: tuple[int, int, int],
        proj_hidden: int,
        bottleneck_dim: int,
        out_dim: int,
        teacher_temp: float,
        student_temp: float,
        center_momentum: float,
        base_momentum: float,
        local_crops: int,
        local_fraction: float,
        local_scale: tuple[float, float],
    ):
        super().__init__(encoder, image_shape)
        _, h, w = self.image_shape
        if not 0 < local_fraction < 1:
            raise ValueError(f"dino.local_fraction must be in (0, 1), got {local_fraction}")
        side = round(local_fraction * min(h, w))
        if local_crops and not 2 <= side < min(h, w):
            raise ValueError(
                f"dino.local_fraction {local_fraction} gives {side}-px local crops of {h}x{w} views: they must be "
                "at least 2 px and smaller than the views"
            )
        if not 0 < local_scale[0] <= local_scale[1] <= 1:
            raise ValueError(f"dino.local_scale must be [low, high] with 0 < low <= high <= 1, got {list(local_scale)}")
        self.head = DINOHead(encoder.feature_dim, proj_hidden, bottleneck_dim, out_dim)
        self.teacher_encoder, self.teacher_head = _frozen_copy(encoder), _frozen_copy(self.head)
        self.loss = DINOLoss(out_dim, teacher_temp, student_temp, center_momentum)
        self.base_momentum, self.local_crops = base_momentum, local_crops
        self.local_augment = BatchAugment(replace(AugmentConfig.crop_flip(tuple(local_scale), 0.5), size=side))

    def forward(self, views: list[torch.Tensor]) -> torch.Tensor:
        x = torch.cat(views, 0)
        student = list(self.head(self.encoder(x)).chunk(2, 0))
        if self.local_crops:
            sources = torch.cat([views[i % 2] for i in range(self.local_crops)], 0)
            crops = _like(self.local_augment(sources).to(x.dtype), x)
            student += list(self.head(self.encoder(crops)).chunk(self.local_crops, 0))
        with torch.no_grad():
            teacher = list(self.teacher_head(self.teacher_encoder(x)).chunk(2, 0))
        return self.loss(student, teacher)

    def after_step(self, step: int, total_steps: int) -> None:
        tau = cosine_momentum(self.base_momentum, step, total_steps)
        _ema(self.teacher_encoder, self.encoder, tau)
        _ema(self.teacher_head, self.head, tau)


def pixel_decoder(feature_dim: int, hidden: int, image_shape: tuple[int, int, int]) -> nn.Sequential:
    """The light decoder of the reconstruction methods: an MLP from the encoder's features to the whole image."""
    c, h, w = image_shape
    return nn.Sequential(
        nn.Linear(feature_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True), nn.Linear(hidden, c * h * w)
    )


def _like(images: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """`images` in the memory format of `reference` (channels_last or not), as the training loop set it."""
    channels_last = reference.is_contiguous(memory_format=torch.channels_last)
    return images.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


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
        self.decoder = pixel_decoder(encoder.feature_dim, dec_hidden, self.image_shape)

    def forward(self, views: list[torch.Tensor]) -> torch.Tensor:
        x = torch.cat(views, 0)
        c, h, w = self.image_shape
        grid = torch.rand(len(x), 1, h // self.patch, w // self.patch, device=x.device) < self.mask_ratio
        mask = grid.repeat_interleave(self.patch, 2).repeat_interleave(self.patch, 3).to(x.dtype)
        mean = self.encoder.normalize.mean.to(x.dtype)
        damaged = _like(x * (1 - mask) + mean * mask, x)
        recon = self.decoder(self.encoder(damaged)).view(len(x), c, h, w)
        return reconstruction_mse(recon, self.encoder.normalize(x), mask)


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


class DenoisingAutoencoder(Method):
    """Denoising autoencoder (Vincent et al., 2008, ICML, "Extracting and composing robust features with denoising
    autoencoders"): corrupt the input, rebuild the *clean* image from the encoder's features; MSE on all pixels.

    Corruption: masking noise (each pixel value, per channel, set with probability `noise_p` to the dataset mean,
    which is 0 after normalisation), then additive Gaussian noise of `noise_std` in normalised units. The decoder
    is the MLP of masked reconstruction (`pixel_decoder`), its target the normalised clean view.
    """

    def __init__(
        self, encoder: Encoder, image_shape: tuple[int, int, int], noise_p: float, noise_std: float, dec_hidden: int
    ):
        super().__init__(encoder, image_shape)
        if not 0 <= noise_p < 1 or noise_std < 0:
            raise ValueError(f"dae.noise_p must be in [0, 1) and dae.noise_std >= 0, got {noise_p} and {noise_std}")
        if noise_p == 0 and noise_std == 0:
            raise ValueError("dae.noise_p and dae.noise_std are both 0: no corruption, a plain autoencoder")
        self.noise_p, self.noise_std = noise_p, noise_std
        self.decoder = pixel_decoder(encoder.feature_dim, dec_hidden, self.image_shape)

    def corrupt(self, x: torch.Tensor) -> torch.Tensor:
        """`x` (raw 0..255 pixels) with masking and Gaussian noise, still in raw pixels."""
        mean, std = self.encoder.normalize.mean.to(x.dtype), self.encoder.normalize.std.to(x.dtype)
        noisy = torch.where(torch.rand_like(x) < self.noise_p, mean, x)
        if self.noise_std:
            noisy = noisy + self.noise_std * std * torch.randn_like(x)
        return _like(noisy, x)

    def forward(self, views: list[torch.Tensor]) -> torch.Tensor:
        x = torch.cat(views, 0)
        c, h, w = self.image_shape
        recon = self.decoder(self.encoder(self.corrupt(x))).view(len(x), c, h, w)
        return reconstruction_mse(recon, self.encoder.normalize(x))


_PERMUTATION_POOL = 100_000  # candidates for the greedy choice when there are too many orderings to list


@cache
def jigsaw_permutations(cells: int, count: int, seed: int = 0) -> np.ndarray:
    """`count` distinct orderings of `cells` tiles, (count, cells), far apart in Hamming distance.

    Noroozi & Favaro's Algorithm 1 (arXiv:1603.09246): start from a seeded random ordering, then repeatedly add the
    candidate with the largest summed Hamming distance to those chosen so far. Candidates are all cells! orderings up
    to 9 cells (a 3x3 grid), else 100,000 seeded random ones. Deterministic for (cells, count, seed).
    """
    rng = np.random.default_rng(seed)
    if math.factorial(cells) <= math.factorial(9):
        candidates = np.array(list(itertools.permutations(range(cells))), dtype=np.int64)
    else:
        candidates = np.unique(np.stack([rng.permutation(cells) for _ in range(_PERMUTATION_POOL)]), axis=0)
    if not 2 <= count <= len(candidates):
        raise ValueError(f"{count} permutations of {cells} tiles: must be between 2 and {len(candidates)}")
    chosen = [int(rng.integers(len(candidates)))]
    distance = np.zeros(len(candidates))
    taken = np.zeros(len(candidates), dtype=bool)
    for _ in range(count - 1):
        taken[chosen[-1]] = True
        distance += (candidates != candidates[chosen[-1]]).sum(1)
        chosen.append(int(np.argmax(np.where(taken, -1, distance))))
    return candidates[chosen]


def to_tiles(x: torch.Tensor, grid: int) -> torch.Tensor:
    """(N, C, H, W) images -> (N, grid*grid, C, H/grid, W/grid) tiles in row-major order."""
    n, c, h, w = x.shape
    tiles = x.reshape(n, c, grid, h // grid, grid, w // grid).permute(0, 2, 4, 1, 3, 5)
    return tiles.reshape(n, grid * grid, c, h // grid, w // grid)


def shuffle_tiles(tiles: torch.Tensor, orders: torch.Tensor) -> torch.Tensor:
    """Tiles (N, T, ...) rearranged so that position i of image n holds its tile orders[n, i]."""
    return tiles[torch.arange(len(tiles), device=tiles.device)[:, None], orders]


class Jigsaw(Method):
    """Jigsaw puzzles (Noroozi & Favaro, 2016, arXiv:1603.09246), a context-prediction task after relative patch
    position (Doersch et al., 2015, arXiv:1505.05192): cut each view into a grid x grid puzzle, shuffle the tiles by
    one of `permutations` fixed orderings (`jigsaw_permutations`), encode every tile on its own with the shared
    encoder (siamese, as in the paper; small tiles work through the encoder's adaptive pooling), concatenate the
    tile features in the shuffled order, and classify which ordering it was with an MLP head. The orderings cycle
    across the batch so the classes stay balanced. `grid` must divide the views' side (2: 14-px tiles at 28 px).
    """

    def __init__(self, encoder: Encoder, image_shape: tuple[int, int, int], grid: int, permutations: int, hidden: int):
        super().__init__(encoder, image_shape)
        _, h, w = self.image_shape
        if grid < 2 or h % grid or w % grid:
            raise ValueError(f"jigsaw.grid {grid} must be at least 2 and divide the image size {h}x{w}")
        limit = min(math.factorial(grid * grid), _PERMUTATION_POOL)
        if not 2 <= permutations <= limit:
            raise ValueError(
                f"jigsaw.permutations {permutations} must be between 2 and {limit} (orderings of {grid}x{grid} tiles)"
            )
        self.grid = grid
        orders = torch.from_numpy(jigsaw_permutations(grid * grid, permutations))
        self.register_buffer("orders", orders, persistent=False)  # deterministic: rebuilt, never saved
        self.head = nn.Sequential(
            nn.Linear(grid * grid * encoder.feature_dim, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, permutations),
        )

    def forward(self, views: list[torch.Tensor]) -> torch.Tensor:
        x = torch.cat(views, 0)
        n, c, h, w = x.shape
        k = torch.arange(n, device=x.device) % len(self.orders)
        tiles = shuffle_tiles(to_tiles(x, self.grid), self.orders[k])
        flat = _like(tiles.reshape(n * self.grid**2, c, h // self.grid, w // self.grid), x)
        return F.cross_entropy(self.head(self.encoder(flat).reshape(n, -1)).float(), k)


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


@dataclass(frozen=True)
class SimSiamConfig:
    proj_hidden: int
    proj_dim: int
    pred_hidden: int


@dataclass(frozen=True)
class BarlowConfig:
    proj_hidden: int
    proj_dim: int
    lambda_offdiag: float


@dataclass(frozen=True)
class VICRegConfig:
    proj_hidden: int
    proj_dim: int
    sim_weight: float
    var_weight: float
    cov_weight: float


@dataclass(frozen=True)
class DINOConfig:
    proj_hidden: int
    bottleneck_dim: int
    out_dim: int
    teacher_temp: float
    student_temp: float
    center_momentum: float
    base_momentum: float
    local_crops: int
    local_fraction: float
    local_scale: tuple[float, float]

    def __post_init__(self) -> None:  # YAML gives a list: one value, one representation (configs compare equal)
        object.__setattr__(self, "local_scale", tuple(self.local_scale))


@dataclass(frozen=True)
class DAEConfig:
    noise_p: float
    noise_std: float
    dec_hidden: int


@dataclass(frozen=True)
class JigsawConfig:
    grid: int
    permutations: int
    hidden: int


# Each method's knobs (params.yaml `pretrain.<name>`) and the class they build.
METHOD_CONFIGS: dict[str, type] = {
    "simclr": SimCLRConfig,
    "moco": MoCoConfig,
    "byol": BYOLConfig,
    "mim": MIMConfig,
    "rotation": RotationConfig,
    "simsiam": SimSiamConfig,
    "barlow": BarlowConfig,
    "vicreg": VICRegConfig,
    "dino": DINOConfig,
    "dae": DAEConfig,
    "jigsaw": JigsawConfig,
}
METHODS: dict[str, type[Method]] = {
    "simclr": SimCLR,
    "moco": MoCo,
    "byol": BYOL,
    "mim": MaskedReconstruction,
    "rotation": RotationPrediction,
    "simsiam": SimSiam,
    "barlow": BarlowTwins,
    "vicreg": VICReg,
    "dino": DINO,
    "dae": DenoisingAutoencoder,
    "jigsaw": Jigsaw,
}
_BY_CONFIG = {METHOD_CONFIGS[name]: METHODS[name] for name in METHODS}


def build_method(cfg: object, encoder: Encoder, image_shape: tuple[int, int, int]) -> Method:
    """The method whose knobs `cfg` holds (one of METHOD_CONFIGS' dataclasses), around `encoder`."""
    if type(cfg) not in _BY_CONFIG:
        raise TypeError(
            f"not a method config: {type(cfg).__name__} (one of {', '.join(c.__name__ for c in _BY_CONFIG)})"
        )
    return _BY_CONFIG[type(cfg)](encoder, image_shape, **asdict(cfg))
