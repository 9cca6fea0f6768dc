"""Batch sources (cache and on-the-fly) and the optimiser/schedule."""

from __future__ import annotations

import numpy as np
import torch

from conftest import augment_config
from sslops.ml.augment import BatchAugment
from sslops.ml.cache import build_cache
from sslops.ml.optim import LARS, scaled_lr, warmup_cosine
from sslops.ml.views import ViewCache, cached_pairs, epoch_order, on_the_fly_pairs


def test_epoch_order_splits_ranks_disjointly_and_changes_per_epoch():
    a, b = epoch_order(10, 0, 1, rank=0, world=2), epoch_order(10, 0, 1, rank=1, world=2)
    assert len(a) == len(b) == 5 and not set(a) & set(b)
    assert not np.array_equal(epoch_order(10, 0, 1), epoch_order(10, 1, 1))
    assert np.array_equal(epoch_order(10, 3, 1), epoch_order(10, 3, 1))


def test_cache_shards_index_and_two_different_views(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (30, 8, 8, 1), dtype=np.uint8)
    rows = np.arange(2, 27)
    index = build_cache(
        images, rows, augment_config(), views=3, seed=5, out_dir=tmp_path, shard_size=10, progress=False
    )
    assert index["shards"] == ["shard-000.npy", "shard-001.npy", "shard-002.npy"] and index["bytes_per_view"] == 64
    cache = ViewCache.open(tmp_path)
    assert len(cache) == 25 and cache.views == 3 and cache.rows.tolist() == rows.tolist()
    v1, v2 = next(cached_pairs(cache, batch_size=25, epoch=0, seed=0))
    assert v1.shape == (25, 1, 8, 8) and v1.dtype == torch.uint8
    assert all(not torch.equal(a, b) for a, b in zip(v1, v2, strict=True))
    (tmp_path / "again").mkdir()
    again = build_cache(images, rows, augment_config(), 3, 5, tmp_path / "again", 10, progress=False)
    assert again["shards"] == index["shards"]
    assert np.array_equal(np.load(tmp_path / "again" / "shard-001.npy"), np.load(tmp_path / "shard-001.npy"))


def test_on_the_fly_pairs_are_batched_and_distinct():
    images = np.random.default_rng(0).integers(0, 256, (20, 8, 8, 1), dtype=np.uint8)
    pairs = list(on_the_fly_pairs(images, BatchAugment(augment_config()), batch_size=8, epoch=0, seed=0))
    assert len(pairs) == 2 and pairs[0][0].shape == (8, 1, 8, 8)
    assert not torch.equal(pairs[0][0], pairs[0][1])


def test_warmup_then_cosine():
    assert warmup_cosine(0, 100, 10, 1.0) == 0.1
    assert warmup_cosine(9, 100, 10, 1.0) == 1.0
    assert abs(warmup_cosine(55, 100, 10, 1.0) - 0.5) < 1e-9
    assert warmup_cosine(100, 100, 10, 1.0, final_fraction=0.1) == 0.1
    assert scaled_lr(0.3, 512) == 0.6


def test_lars_minimises_a_quadratic():
    w = torch.nn.Parameter(torch.ones(4, 4) * 3)
    opt = LARS([w], lr=50.0, momentum=0.9, weight_decay=0.0)
    for _ in range(200):
        opt.zero_grad()
        (w**2).sum().backward()
        opt.step()
    assert w.abs().max() < 0.5


def test_non_square_images_keep_their_shape_without_augment_size(tmp_path):
    """`augment.size: null` keeps the input size: 8x12 images give 8x12 views, cached and on the fly (they used to
    come out 8x8, squashed, while the stages planned and built the method for 8x12)."""
    images = np.random.default_rng(0).integers(0, 256, (10, 8, 12, 3), dtype=np.uint8)
    index = build_cache(images, np.arange(10), augment_config(), 2, 0, tmp_path, 10, progress=False)
    assert (index["height"], index["width"], index["bytes_per_view"]) == (8, 12, 3 * 8 * 12)
    assert np.load(tmp_path / "shard-000.npy").shape == (10, 2, 3, 8, 12)
    v1, _ = next(on_the_fly_pairs(images, BatchAugment(augment_config()), batch_size=4, epoch=0, seed=0))
    assert v1.shape == (4, 3, 8, 12)
    squared, _ = next(on_the_fly_pairs(images, BatchAugment(augment_config(size=6)), batch_size=4, epoch=0, seed=0))
    assert squared.shape == (4, 3, 6, 6)
