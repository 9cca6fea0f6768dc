"""prepare: read the raw data/ folder into the canonical store + manifest (artifacts/prepared)."""

from __future__ import annotations

import time
from typing import Any

from sslops.adapters import tracking
from sslops.config import Project
from sslops.config.schema import PrepareParams
from sslops.data.formats import plan_dataset
from sslops.data.store import MANIFEST, manifest_digest, write_store
from sslops.outputs.atomic import atomic_dir, write_json


def run(project: Project) -> dict[str, Any]:
    cfg: PrepareParams = project.config("prepare")
    with tracking.stage_run(project, "prepare", cfg.record()):
        start = time.perf_counter()
        channels = None if cfg.channels == "auto" else cfg.channels
        plan = plan_dataset(
            cfg.format, project.path(cfg.root), list(cfg.classes), channels, cfg.unlabeled_dir, cfg.max_pixels
        )
        for note in plan.notes:
            print(f"prepare: {note}")
        with atomic_dir(project.prepared_dir) as tmp:
            manifest = write_store(plan, tmp)
        counts = manifest["split"].value_counts().to_dict()
        digest = manifest_digest(manifest)
        summary = {
            "images": len(manifest),
            **{f"images_{split}": int(counts.get(split, 0)) for split in ("train", "test", "unlabeled")},
            "classes": len(plan.classes),
            "seconds": round(time.perf_counter() - start, 2),
            "manifest_digest": digest,
        }
        tracking.log_manifest(manifest, project.prepared_dir / MANIFEST, digest, context="prepare")
        tracking.log_metrics({k: v for k, v in summary.items() if k != "manifest_digest"})
        tracking.set_tags({"data.manifest_digest": digest})
        write_json(project.metrics_dir / "prepare.json", summary)
    return summary
