"""Where pretraining batches come from: the augmentation cache, on-the-fly batched augmentation of an array, or a
JPEG store decoded by loader workers and augmented on the fly.

All yield pairs of uint8 (B, C, H, W) view tensors for this rank's share of a seeded, per-epoch
permutation, so a run resumed at an epoch boundary sees exactly the batches an uninterrupted run would.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


class _Batches(torch.utils.data.Sampler):
    """The current epoch's batches of store rows, set before each pass: a persistent loader keeps its workers
    across epochs while the order changes."""

    def __init__(self) -> None:
        self.batches: list[np.ndarray] = []

    def __iter__(self) -> Iterator[np.ndarray]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class _Decoded(torch.utils.data.Dataset):
    """A batch of rows of a JPEG store (anything with `blob(row)` and `shape`), decoded by torchvision.io's
    libjpeg-turbo into uint8 (B, C, H, W) in a loader worker; or, for a GPU, the bytes alone (decoded there)."""

    def __init__(self, images: Any, on_gpu: bool) -> None:
        self.images, self.on_gpu = images, on_gpu

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, rows: np.ndarray) -> torch.Tensor | list[torch.Tensor]:
        from torchvision.io import decode_jpeg

        blobs = [torch.frombuffer(bytearray(self.images.blob(int(row))), dtype=torch.uint8) for row in rows]
        return blobs if self.on_gpu else torch.stack(decode_jpeg(blobs, mode=_mode(self.images.shape[3])))


def _mode(channels: int) -> Any:
    from torchvision.io import ImageReadMode

    return ImageReadMode.GRAY if channels == 1 else ImageReadMode.RGB


class JpegStream:
    """Pretraining pairs straight from a JPEG store: each step's rows decoded in `workers` loader processes (on a
    GPU: their bytes read there, decoded by nvJPEG in one batched call), then the batched augmentation twice on
    `device`, as `on_the_fly_pairs` does over an array. Same rows, order and generator: the pairs equal those of
    `on_the_fly_pairs` over the decoded images, whatever the number of workers."""

    def __init__(
        self,
        images: Any,
        rows: np.ndarray,
        augment: BatchAugment,
        batch_size: int,
        seed: int,
        device: torch.device,
        workers: int,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        self.images, self.rows, self.augment, self.batch_size = images, rows, augment, batch_size
        self.seed, self.device, self.rank, self.world = seed, device, rank, world
        self.sampler = _Batches()
        on_gpu = device.type == "cuda"
        self.loader = torch.utils.data.DataLoader(
            _Decoded(images, on_gpu),
            sampler=self.sampler,
            batch_size=None,
            num_workers=workers,
            pin_memory=on_gpu,
            persistent_workers=workers > 0,
            prefetch_factor=4 if workers else None,
            multiprocessing_context="spawn" if workers else None,  # the stage holds an MLflow run and its threads
        )

    def pairs(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        from torchvision.io import decode_jpeg

        order = epoch_order(len(self.rows), epoch, self.seed, self.rank, self.world)
        gen = torch.Generator(device=self.device).manual_seed(
            int(np.random.default_rng([self.seed, epoch, self.rank, 2]).integers(2**62))
        )
        size = self.batch_size
        self.sampler.batches = [self.rows[np.sort(order[s : s + size])] for s in range(0, len(order) - size + 1, size)]
        for batch in self.loader:
            if isinstance(batch, list):  # bytes, for the GPU's decoder
                batch = torch.stack(decode_jpeg(batch, mode=_mode(self.images.shape[3]), device=self.device))
            batch = batch.to(self.device, non_blocking=True)
            yield self.augment(batch, gen), self.augment(batch, gen)
