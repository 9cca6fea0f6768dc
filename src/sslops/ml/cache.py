"""Build the augmentation cache: K augmented views of every pretraining image, as uint8 shards.

View k of image i is a pure function of (seed, shard, k), so the cache is identical on every rebuild.
Bytes per view = C x H x W of a view (784 for Fashion-MNIST at 28 px); the cache holds N x K of them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sslops.ml.augment import AugmentConfig, BatchAugment, view_size
from sslops.ml.views import INDEX
from sslops.outputs.atomic import ensure_space, reserve
from sslops.outputs.progress import progress_bar


@dataclass(frozen=True)
class CachePlan:
    """How many views the cache holds, and why: what the augment stage prints and records."""

    views: int  # 0 = no cache: pretraining augments on the fly
    cache_bytes: int
    reason: str


def plan_cache(
    images: int, bytes_per_view: int, views: int, budget_bytes: int, policy: str, limit: str = "the budget"
) -> CachePlan:
    """Fit the cache into `budget_bytes` (the disk budget, or the free space if smaller) before a byte is written.

    `limit` names what set `budget_bytes` in messages ("augment.disk_budget_gb", "the free disk space").

    `policy` decides what happens when `views` views per image do not fit: `fewer_views` keeps as many as fit (at
    least 2, the two different views of a step; else on the fly), `on_the_fly` keeps none, `refuse` stops.
    """
    from sslops.errors import SslopsError

    needed = images * views * bytes_per_view
    if views == 0:
        return CachePlan(0, 0, "augment.views is 0: views are made on the fly")
    if needed <= budget_bytes:
        return CachePlan(views, needed, f"{views} views fit the disk budget ({needed:,} bytes)")
    over = f"{views} views of {images} images need {needed:,} bytes, over {limit} of {budget_bytes:,}"
    if policy == "refuse":
        raise SslopsError(
            f"{over}: refused (augment.over_budget: refuse). Make room ({limit}), lower augment.views, or choose "
            "augment.over_budget fewer_views or on_the_fly."
        )
    fitting = budget_bytes // max(1, images * bytes_per_view)
    if policy == "fewer_views" and fitting >= 2:
        return CachePlan(int(fitting), int(fitting) * images * bytes_per_view, f"{over}: {fitting} views cached")
    return CachePlan(0, 0, f"{over}: no cache, views are made on the fly during pretraining")


def build_cache(
    images: np.ndarray,
    rows: np.ndarray,
    cfg: AugmentConfig,
    views: int,
    seed: int,
    out_dir: Path,
    shard_size: int,
    batch_size: int = 2048,
    progress: bool = True,
) -> dict:
    """Write shards (n_i, K, C, H, W) for `images[rows]` (NHWC uint8) and index.json into `out_dir`.

    With `views=0` only the index is written: pretraining then augments on the fly.
    """
    augment = BatchAugment(cfg)
    n, (h, w, c) = len(rows), images.shape[1:]
    height, width = view_size(cfg.size, h, w)
    shards = []
    ensure_space(out_dir, n * views * c * height * width, f"the augmentation cache ({n} images x {views} views)")
    with progress_bar(n * views, "augment", "view", enabled=progress) as bar:
        for shard, start in enumerate(range(0, n if views else 0, shard_size)):
            shard_rows = rows[start : start + shard_size]
            name = f"shard-{shard:03d}.npy"
            out = np.lib.format.open_memmap(
                out_dir / name, mode="w+", dtype=np.uint8, shape=(len(shard_rows), views, c, height, width)
            )
            reserve(out_dir / name, (out_dir / name).stat().st_size)
            for k in range(views):
                gen = torch.Generator().manual_seed(int(np.random.default_rng([seed, shard, k]).integers(2**62)))
                for b in range(0, len(shard_rows), batch_size):
                    batch = torch.from_numpy(np.ascontiguousarray(images[shard_rows[b : b + batch_size]])).permute(
                        0, 3, 1, 2
                    )
                    out[b : b + len(batch), k] = augment(batch, gen).numpy()
                    bar.update(len(batch))
            out.flush()
            del out
            shards.append(name)
    index = {
        "views": views,
        "images": int(n),
        "channels": int(c),
        "height": int(height),
        "width": int(width),
        "bytes_per_view": int(c * height * width),
        "rows": rows.tolist(),
        "shards": shards,
        "seed": seed,
    }
    (out_dir / INDEX).write_text(json.dumps(index))
    return index
