"""prepare: read the raw data/ folder into the canonical store + manifest (artifacts/prepared)."""

from __future__ import annotations

import time
from typing import Any

from sslops import tracking
from sslops.atomic import atomic_dir, write_json
from sslops.config import Project
from sslops.data.formats import plan_dataset
from sslops.data.store import MANIFEST, manifest_digest, write_store
from sslops.errors import SslopsError


def _channels(value: Any) -> int | None:
    if value in (None, "auto"):
        return None
    if value in (1, 3):
        return int(value)
    raise SslopsError(f"prepare.channels in params.yaml must be auto, 1 or 3, not {value!r}.")


def run(project: Project) -> dict[str, Any]:
    params = project.section("prepare")
    with tracking.stage_run(project, "prepare", params):
        start = time.perf_counter()
        root = project.path(params.get("root", "data"))
        plan = plan_dataset(
            params.get("format", "idx"),
            root,
            list(params.get("classes") or []),
            _channels(params.get("channels", "auto")),
            params.get("unlabeled_dir", "unlabeled"),
        )
        with atomic_dir(project.prepared_dir) as tmp:
            manifest = write_store(plan, tmp)
        seconds = time.perf_counter() - start
        counts = manifest["split"].value_counts().to_dict()
        summary = {
            "images": len(manifest),
            **{f"images_{split}": int(counts.get(split, 0)) for split in ("train", "test", "unlabeled")},
            "classes": len(plan.classes),
            "seconds": round(seconds, 2),
        }
        digest = manifest_digest(manifest)
        summary["manifest_digest"] = digest
        tracking.log_manifest(manifest, project.prepared_dir / MANIFEST, digest, context="prepare")
        tracking.log_metrics({k: v for k, v in summary.items() if k != "manifest_digest"})
        tracking.set_tags({"data.manifest_digest": digest})
        write_json(project.metrics_dir / "prepare.json", summary)
    return summary
