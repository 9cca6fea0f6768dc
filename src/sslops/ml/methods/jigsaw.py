"""Jigsaw puzzles (Noroozi & Favaro, 2016, arXiv:1603.09246): which ordering shuffled an image's tiles."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from functools import cache
from typing import Annotated

import numpy as np
import torch
import torch.nn.functional as F
from annotated_types import Ge
from torch import nn

from sslops.ml.methods.base import Method, PositiveInt, check_divides, like
from sslops.ml.models import Encoder

_PERMUTATION_POOL = 100_000  # candidates for the greedy choice when there are too many orderings to list


@dataclass(frozen=True)
class JigsawConfig:
    grid: Annotated[int, Ge(2)]  # must divide the image side (checked when the method is built)
    permutations: Annotated[int, Ge(2)]  # at most (grid^2)!
    hidden: PositiveInt

    def __post_init__(self) -> None:
        limit = min(math.factorial(self.grid * self.grid), _PERMUTATION_POOL)
        if self.permutations > limit:
            raise ValueError(
                f"permutations {self.permutations} must be between 2 and {limit} (orderings of {self.grid}x{self.grid}"
                " tiles)"
            )


@cache
def jigsaw_permutations(cells: int, count: int, seed: int = 0) -> np.ndarray:
    """`count` distinct orderings of `cells` tiles, (count, cells), far apart in Hamming distance.

    Noroozi & Favaro's Algorithm 1: start from a seeded random ordering, then repeatedly add the candidate with the
    largest summed Hamming distance to those chosen so far. Candidates are all cells! orderings up to 9 cells (a 3x3
    grid), else 100,000 seeded random ones. Deterministic for (cells, count, seed).
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
    """Jigsaw puzzles, a context-prediction task after relative patch position (Doersch et al., 2015,
    arXiv:1505.05192): cut each view into a grid x grid puzzle, shuffle the tiles by one of `permutations` fixed
    orderings (`jigsaw_permutations`), encode every tile on its own with the shared encoder (siamese, as in the
    paper; small tiles work through the encoder's adaptive pooling), concatenate the tile features in the shuffled
    order, and classify which ordering it was with an MLP head. The orderings cycle across the batch so the classes
    stay balanced. `grid` must divide the views' side (2: 14-px tiles at 28 px).
    """

    name, Config = "jigsaw", JigsawConfig

    def __init__(self, encoder: Encoder, image_shape: tuple[int, int, int], cfg: JigsawConfig):
        super().__init__(encoder, image_shape)
        check_divides("jigsaw.grid", cfg.grid, self.image_shape)
        self.grid = cfg.grid
        orders = torch.from_numpy(jigsaw_permutations(cfg.grid * cfg.grid, cfg.permutations))
        self.register_buffer("orders", orders, persistent=False)  # deterministic: rebuilt, never saved
        self.head = nn.Sequential(
            nn.Linear(cfg.grid * cfg.grid * encoder.feature_dim, cfg.hidden),
            nn.BatchNorm1d(cfg.hidden),
            nn.ReLU(inplace=True),
            nn.Linear(cfg.hidden, cfg.permutations),
        )

    def forward(self, views: list[torch.Tensor]) -> torch.Tensor:
        x = torch.cat(views, 0)
        n, c, h, w = x.shape
        k = torch.arange(n, device=x.device) % len(self.orders)
        tiles = shuffle_tiles(to_tiles(x, self.grid), self.orders[k])
        flat = like(tiles.reshape(n * self.grid**2, c, h // self.grid, w // self.grid), x)
        return F.cross_entropy(self.head(self.encoder(flat).reshape(n, -1)).float(), k)
