"""validate: Great Expectations over the manifest; a failed expectation stops the pipeline.

Writes metrics/validate.json (shown by `dvc metrics show`) and Data Docs under artifacts/validation,
logs both to MLflow, and on failure prints a short table of what failed with a few example rows.
"""

from __future__ import annotations

import json
import time
from typing import Any

from sslops.adapters import expectations, tracking
from sslops.config import Project
from sslops.config.schema import ValidateParams
from sslops.data import quality
from sslops.data.store import CLASSES, MANIFEST, manifest_digest
from sslops.errors import DataValidationError, SslopsError
from sslops.outputs.atomic import atomic_dir, write_json


def failure_report(failed: list[expectations.Check]) -> str:
    """A compact, readable table of failed expectations with counts and example rows."""
    lines = [f"{len(failed)} expectation(s) failed:"]
    for check in failed:
        count = "" if check.unexpected_count is None else f" unexpected={check.unexpected_count}"
        share = "" if check.unexpected_percent is None else f" ({check.unexpected_percent:.3g}%)"
        observed = "" if check.observed is None else f" observed={check.observed}"
        limits = {k: v for k, v in check.kwargs.items() if k in ("min_value", "max_value", "mostly", "value_set")}
        lines.append(f"  - [{check.suite}] {check.title}{count}{share}{observed} expected {limits}")
        lines += [f"      e.g. {row}" for row in check.examples]
    return "\n".join(lines)


def run(project: Project) -> dict[str, Any]:
    cfg: ValidateParams = project.config("validate")
    classes = list(project.config("prepare").classes)
    manifest_path = project.prepared_dir / MANIFEST
    if not manifest_path.is_file():
        raise SslopsError(f"{manifest_path} is missing: run the prepare stage first (dvc repro prepare).")
    with tracking.stage_run(project, "validate", cfg.record()):
        start = time.perf_counter()
        import pandas as pd

        manifest = pd.read_parquet(manifest_path)
        declared = classes or json.loads((project.prepared_dir / CLASSES).read_text())
        frames = {
            "manifest": (quality.annotate(manifest), expectations.manifest_expectations(cfg, declared, len(manifest))),
            "class_balance": (
                quality.class_balance(manifest, declared),
                expectations.balance_expectations(cfg, declared),
            ),
        }
        with atomic_dir(project.validation_dir) as tmp:
            checks = expectations.run_suites(frames, tmp / "data_docs", cfg.examples)
            failed = [c for c in checks if not c.success]
            summary = {
                "success": not failed,
                "evaluated": len(checks),
                "failed": len(failed),
                "failed_expectations": [c.title for c in failed],
                "duplicate_in_split": int(frames["manifest"][0]["duplicate_in_split"].sum()),
                "test_in_train": int(frames["manifest"][0]["test_in_train"].sum()),
                "min_class_share": round(float(frames["class_balance"][0]["share"].min()), 6),
                "manifest_digest": manifest_digest(manifest),
                "seconds": round(time.perf_counter() - start, 2),
            }
            write_json(tmp / "results.json", [c.__dict__ for c in checks])
        write_json(project.metrics_dir / "validate.json", summary)
        tracking.log_metrics({k: v for k, v in summary.items() if isinstance(v, (int, float))})
        tracking.set_tags(
            {"validation.success": summary["success"], "data.manifest_digest": summary["manifest_digest"]}
        )
        tracking.log_artifacts(project.validation_dir, "validation")
        if not failed:
            # The gate for downstream stages: stable for the same data, so a change to validation
            # thresholds alone does not make DVC rebuild the augmentation cache.
            write_json(project.validated_marker, {"manifest_digest": summary["manifest_digest"], "success": True})
        else:
            project.validated_marker.unlink(missing_ok=True)
            raise DataValidationError(
                f"data validation failed; downstream stages will not run. Data Docs: "
                f"{project.validation_dir / 'data_docs' / 'index.html'}\n{failure_report(failed)}"
            )
    return summary
