"""augment: the augmentation cache (K views per pretraining image), reused by every pretraining run
whose data and augment params match (DVC skips this stage when only pretrain params change).
"""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np

from sslops import tracking
from sslops.atomic import atomic_dir, atomic_file, write_json
from sslops.config import Project
from sslops.data.store import ImageStore, manifest_digest
from sslops.errors import SslopsError

PRETRAIN_SPLITS = ("train", "unlabeled")  # labels are never read by pretraining


def augment_config(params: dict[str, Any]):
    from sslops.ml.augment import AugmentConfig

    try:
        return AugmentConfig.from_params(params)
    except (TypeError, ValueError) as exc:
        raise SslopsError(f"params.yaml augment: {exc}") from None


def require_validated(project: Project, store: ImageStore) -> None:
    """Refuse to build on data that has not passed the validate stage (DESIGN.md: nothing downstream runs)."""
    marker = project.validated_marker
    passed = json.loads(marker.read_text()).get("manifest_digest") if marker.is_file() else None
    if passed != manifest_digest(store.manifest):
        raise SslopsError(
            f"The prepared data has not passed validation ({marker} is missing or names other data); "
            "run the validate stage first (dvc repro validate)."
        )


def pretrain_rows(store: ImageStore) -> np.ndarray:
    rows = np.flatnonzero(store.manifest["split"].isin(PRETRAIN_SPLITS).to_numpy())
    if len(rows) == 0:
        raise SslopsError("No train or unlabeled images in the prepared store: nothing to pretrain on.")
    return rows


def write_pairs_plot(store: ImageStore, rows: np.ndarray, cfg, seed: int, path) -> None:
    """A grid of (original, view, view) for 8 images, so people can see what the model is trained on."""
    import torch

    from sslops.ml.augment import BatchAugment
    from sslops.plots import view_pairs_grid

    pick = rows[np.random.default_rng(seed).choice(len(rows), min(8, len(rows)), replace=False)]
    batch = torch.from_numpy(np.ascontiguousarray(store.images[np.sort(pick)])).permute(0, 3, 1, 2)
    gen = torch.Generator().manual_seed(seed)
    augment = BatchAugment(cfg)
    with atomic_file(path) as tmp:
        view_pairs_grid(batch.numpy(), augment(batch, gen).numpy(), augment(batch, gen).numpy(), tmp)


def run(project: Project) -> dict[str, Any]:
    params = project.section("augment")
    views, seed = int(params.get("views", 8)), int(params.get("seed", 0))
    if views < 0 or views == 1:
        raise SslopsError(f"augment.views must be 0 (augment on the fly) or at least 2, not {views}.")
    cfg = augment_config(params)
    with tracking.stage_run(project, "augment", params):
        start = time.perf_counter()
        store = ImageStore.open(project.prepared_dir)
        require_validated(project, store)
        rows = pretrain_rows(store)
        out = project.root / "artifacts" / "augment"
        with atomic_dir(out) as tmp:
            from sslops.ml.cache import build_cache

            index = build_cache(store.images, rows, cfg, views, seed, tmp, int(params.get("shard_size", 16384)))
        seconds = time.perf_counter() - start
        write_pairs_plot(store, rows, cfg, seed, project.root / "plots" / "augment_pairs.png")
        summary = {
            "views": views,
            "images": index["images"],
            "bytes_per_view": index["bytes_per_view"],
            "cache_bytes": index["bytes_per_view"] * index["images"] * views,
            "seconds": round(seconds, 2),
            "views_per_s": round(index["images"] * views / seconds, 1) if views else 0.0,
        }
        tracking.log_metrics(summary)
        tracking.log_artifacts(project.root / "plots" / "augment_pairs.png", "augment")
        write_json(project.metrics_dir / "augment.json", summary)
    return summary
