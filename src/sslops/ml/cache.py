"""Build the augmentation cache: K augmented views of every pretraining image, as uint8 shards.

View k of image i is a pure function of (seed, shard, k), so the cache is identical on every rebuild.
Bytes per view = C x size x size (784 for Fashion-MNIST at 28 px); the cache holds N x K of them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from sslops.ml.augment import AugmentConfig, BatchAugment
from sslops.ml.views import INDEX
from sslops.outputs.atomic import ensure_space, reserve


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
    """Write shards (n_i, K, C, S, S) for `images[rows]` (NHWC uint8) and index.json into `out_dir`.

    With `views=0` only the index is written: pretraining then augments on the fly.
    """
    from tqdm.auto import tqdm

    augment = BatchAugment(cfg)
    n, (h, _, c) = len(rows), images.shape[1:]
    size = cfg.size or h
    shards = []
    ensure_space(out_dir, n * views * c * size * size, f"the augmentation cache ({n} images x {views} views)")
    with tqdm(total=n * views, desc="augment", unit="view", disable=not progress, mininterval=1.0) as bar:
        for shard, start in enumerate(range(0, n if views else 0, shard_size)):
            shard_rows = rows[start : start + shard_size]
            name = f"shard-{shard:03d}.npy"
            out = np.lib.format.open_memmap(
                out_dir / name, mode="w+", dtype=np.uint8, shape=(len(shard_rows), views, c, size, size)
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
        "size": int(size),
        "bytes_per_view": int(c * size * size),
        "rows": rows.tolist(),
        "shards": shards,
        "seed": seed,
    }
    (out_dir / INDEX).write_text(json.dumps(index))
    return index
