"""augment: the augmentation cache (K views per pretraining image), reused by every pretraining run
whose data and augment params match (DVC skips this stage when only pretrain params change).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sslops.adapters import tracking
from sslops.config import Project
from sslops.config.schema import AugmentParams
from sslops.data.store import MANIFEST, PRETRAIN_SPLITS, ImageStore, file_digest
from sslops.errors import SslopsError
from sslops.outputs.atomic import atomic_dir, atomic_file, write_json

if TYPE_CHECKING:
    from sslops.ml.cache import CachePlan


def require_validated(project: Project) -> None:
    """Refuse to build on data that has not passed the validate stage (nothing downstream of a failure runs)."""
    marker = project.validated_marker
    passed = json.loads(marker.read_text()).get("manifest_digest") if marker.is_file() else None
    if passed != file_digest(project.prepared_dir / MANIFEST):
        raise SslopsError(
            f"The prepared data has not passed validation ({marker} is missing or names other data); "
            "run the validate stage first (dvc repro validate)."
        )


def pretrain_rows(store: ImageStore) -> np.ndarray:
    rows = np.flatnonzero(store.manifest["split"].isin(PRETRAIN_SPLITS).to_numpy())
    if len(rows) == 0:
        raise SslopsError("No train or unlabeled images in the prepared store: nothing to pretrain on.")
    return rows


def write_pairs_plot(store: ImageStore, rows: np.ndarray, cfg: AugmentParams, path: Path) -> None:
    """A grid of (original, view, view) for 8 images, so people can see what the model is trained on."""
    import torch

    from sslops.ml.augment import AugmentConfig, BatchAugment
    from sslops.outputs.plots import view_pairs_grid

    pick = rows[np.random.default_rng(cfg.seed).choice(len(rows), min(8, len(rows)), replace=False)]
    batch = torch.from_numpy(np.ascontiguousarray(store.images[np.sort(pick)])).permute(0, 3, 1, 2)
    gen = torch.Generator().manual_seed(cfg.seed)
    augment = BatchAugment(cfg.to_core(AugmentConfig))
    with atomic_file(path) as tmp:
        view_pairs_grid(batch.numpy(), augment(batch, gen).numpy(), augment(batch, gen).numpy(), tmp)


def run(project: Project) -> dict[str, Any]:
    from sslops.ml.augment import AugmentConfig
    from sslops.ml.cache import build_cache

    cfg: AugmentParams = project.config("augment")
    with tracking.stage_run(project, "augment", cfg.record()):
        start = time.perf_counter()
        store = ImageStore.open(project.prepared_dir, columns=["split"])  # the splits are all it reads
        require_validated(project)
        rows = pretrain_rows(store)
        plan = _plan(project, cfg, store, len(rows))
        print(f"augment: {plan.reason}")
        with atomic_dir(project.root / "artifacts" / "augment") as tmp:
            index = build_cache(
                store.images, rows, cfg.to_core(AugmentConfig), plan.views, cfg.seed, tmp, cfg.shard_size
            )
        seconds = time.perf_counter() - start
        plot = project.root / "plots" / "augment_pairs.png"
        write_pairs_plot(store, rows, cfg, plot)
        summary = {
            "views": plan.views,
            "images": index["images"],
            "bytes_per_view": index["bytes_per_view"],
            "cache_bytes": plan.cache_bytes,
            "seconds": round(seconds, 2),
            "views_per_s": round(index["images"] * plan.views / seconds, 1) if plan.views else 0.0,
        }
        tracking.log_metrics(summary)
        tracking.set_tags({"augment.cache_plan": plan.reason})
        tracking.log_artifacts(plot, "augment")
        write_json(project.metrics_dir / "augment.json", {**summary, "cache_plan": plan.reason})
    return summary


def _plan(project: Project, cfg: AugmentParams, store: ImageStore, images: int) -> CachePlan:
    """The cache that fits both augment.disk_budget_gb and the disk's free space (augment.over_budget decides);
    none for a JPEG store, which pretraining decodes and augments batch by batch."""
    import shutil

    from sslops.ml.augment import view_size
    from sslops.ml.cache import CachePlan, plan_cache
    from sslops.outputs.atomic import HEADROOM_BYTES

    if store.encoded:  # K raw views of photos would be 50 to 100 times their JPEGs (docs/benchmarks.md)
        return CachePlan(0, 0, "the prepared images are kept as JPEG (prepare.store): views are made on the fly")
    height, width, channels = store.images.shape[1:]
    side_h, side_w = view_size(cfg.size, height, width)
    folder = project.root / "artifacts"
    free = max(shutil.disk_usage(folder if folder.is_dir() else project.root).free - HEADROOM_BYTES, 0)
    budget, limit = int(cfg.disk_budget_gb * 1e9), "augment.disk_budget_gb"
    if free < budget:
        budget, limit = free, f"the free disk space under {folder}"
    return plan_cache(images, int(channels * side_h * side_w), cfg.views, budget, cfg.over_budget, limit)
