"""Where pretraining batches come from: the augmentation cache or on-the-fly batched augmentation.

Both yield pairs of uint8 (B, C, H, W) view tensors for this rank's share of a seeded, per-epoch
permutation, so a run resumed at an epoch boundary sees exactly the batches an uninterrupted run would.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sslops.ml.augment import BatchAugment

INDEX = "index.json"


def epoch_order(n: int, epoch: int, seed: int, rank: int = 0, world: int = 1) -> np.ndarray:
    """This rank's image order for `epoch`: a seeded permutation, split evenly across ranks (drop the tail)."""
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    per_rank = n // world
    return perm[rank * per_rank : (rank + 1) * per_rank]


@dataclass
class ViewCache:
    """K precomputed augmented views per image, as uint8 shards (n_i, K, C, H, W) plus an index.

    `rows[i]` is the prepared-store row of cached image i, so the cache never needs the store again.
    """

    shards: list[np.ndarray]
    offsets: np.ndarray
    rows: np.ndarray
    views: int

    @classmethod
    def open(cls, folder: Path) -> ViewCache:
        index = json.loads((folder / INDEX).read_text())
        shards = [np.load(folder / name, mmap_mode="r") for name in index["shards"]]
        offsets = np.cumsum([0] + [len(s) for s in shards])
        return cls(shards, offsets, np.asarray(index["rows"], dtype=np.int64), int(index["views"]))

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def gather(self, idx: np.ndarray, view_ids: np.ndarray) -> np.ndarray:
        """Views `view_ids[j]` of images `idx[j]`, read shard by shard."""
        shard_of = np.searchsorted(self.offsets, idx, side="right") - 1
        sample = self.shards[0]
        out = np.empty((len(idx), *sample.shape[2:]), dtype=np.uint8)
        for s in np.unique(shard_of):
            mask = shard_of == s
            local = idx[mask] - self.offsets[s]
            out[mask] = self.shards[s][local, view_ids[mask]]
        return out


def cached_pairs(
    cache: ViewCache, batch_size: int, epoch: int, seed: int, rank: int = 0, world: int = 1
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Two *different* cached views of each image per step (drop-last batches)."""
    order = epoch_order(len(cache), epoch, seed, rank, world)
    rng = np.random.default_rng([seed, epoch, rank, 1])
    for start in range(0, len(order) - batch_size + 1, batch_size):
        idx = np.sort(order[start : start + batch_size])  # sorted reads are kinder to the page cache
        first = rng.integers(0, cache.views, len(idx))
        second = (first + rng.integers(1, cache.views, len(idx))) % cache.views
        yield torch.from_numpy(cache.gather(idx, first)), torch.from_numpy(cache.gather(idx, second))


def on_the_fly_pairs(
    images: np.ndarray,
    augment: BatchAugment,
    batch_size: int,
    epoch: int,
    seed: int,
    rank: int = 0,
    world: int = 1,
    device: torch.device | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Two fresh batched augmentations of each image per step, on `device` (GPU augmentation when there)."""
    order = epoch_order(len(images), epoch, seed, rank, world)
    gen = torch.Generator(device=device or "cpu").manual_seed(
        int(np.random.default_rng([seed, epoch, rank, 2]).integers(2**62))
    )
    for start in range(0, len(order) - batch_size + 1, batch_size):
        idx = np.sort(order[start : start + batch_size])
        batch = torch.from_numpy(np.ascontiguousarray(images[idx])).to(device or "cpu").permute(0, 3, 1, 2)
        yield augment(batch, gen), augment(batch, gen)
