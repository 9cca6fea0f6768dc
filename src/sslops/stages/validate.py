"""validate: Great Expectations over a prepared dataset's manifest; a failed expectation stops the pipeline.

The pretraining dataset and every downstream task (`--task NAME`) get their own suite run, Data Docs and gate, with
the thresholds of `validate:` and the task's own classes. Writes metrics/validate.json (shown by `dvc metrics show`)
and Data Docs under artifacts/validation (a task's under metrics/tasks/NAME and artifacts/tasks/NAME), logs both
to MLflow, and on failure prints a short table of what failed with a few example rows.
"""

from __future__ import annotations

import json
import time
from typing import Any

from sslops.adapters import expectations, tracking
from sslops.config import Project
from sslops.config.schema import ValidateParams
from sslops.data import quality
from sslops.data.store import CLASSES, MANIFEST
from sslops.errors import DataValidationError, SslopsError
from sslops.outputs.atomic import atomic_dir, scratch_dir, write_json


def run(project: Project, task: str | None = None) -> dict[str, Any]:
    cfg: ValidateParams = project.config("validate")
    source = project.config("prepare") if task is None else project.config("tasks")[task]
    classes, out = list(source.classes), project.outputs(task)
    manifest_path = out.prepared / MANIFEST
    if not manifest_path.is_file():
        raise SslopsError(f"{manifest_path} is missing: run the prepare stage first (dvc repro).")
    with tracking.stage_run(project, "validate", cfg.record(), task=task):
        start = time.perf_counter()
        declared = classes or json.loads((out.prepared / CLASSES).read_text())
        pretrained = None if task is None else quality.pretraining_manifest(project.prepared_dir)
        flags = ["duplicate_in_split", "test_in_train", *([] if task is None else ["test_in_pretraining"])]
        # The annotated manifest as a SQLite table beside the outputs (the disk the data is on), gone afterwards.
        with scratch_dir(out.validation.with_name(f"{out.validation.name}-db")) as work:
            db = work / "manifest.db"
            rows, manifest_digest = quality.manifest_table(manifest_path, db, pretrained)
            counts, per_class = quality.table_facts(db, flags)
            frames = {
                "manifest": (
                    expectations.SqliteTable(db, quality.TABLE),
                    expectations.manifest_expectations(cfg, declared, rows, task is not None),
                ),
                "class_balance": (
                    quality.balance(per_class, declared),
                    expectations.balance_expectations(cfg, declared),
                ),
            }
            with atomic_dir(out.validation) as tmp:
                checks = expectations.run_suites(frames, tmp / "data_docs", cfg.examples)
                remote = expectations.serve_assets(tmp / "data_docs", project.root / expectations.ASSETS)
                if remote:
                    print(
                        f"validate: warning: the Data Docs load {len(remote)} files from public CDNs, so they show "
                        "no results without internet; `make setup` (npm) installs them to be served from the project."
                    )
                write_json(tmp / "results.json", [c.__dict__ for c in checks])
        failed = [c for c in checks if not c.success]
        summary = {
            **expectations.outcome(checks),
            **counts,
            "min_class_share": round(float(frames["class_balance"][0]["share"].min()), 6),
            "manifest_digest": manifest_digest,
            "seconds": round(time.perf_counter() - start, 2),
        }
        write_json(out.metrics / "validate.json", summary)
        tracking.log_metrics({k: v for k, v in summary.items() if isinstance(v, (int, float))})
        tracking.set_tags(
            {"validation.success": summary["success"], "data.manifest_digest": summary["manifest_digest"]}
        )
        tracking.log_artifacts(out.validation, "validation")
        if not failed:
            # The gate for downstream stages: stable for the same data, so a change to validation
            # thresholds alone does not make DVC rebuild the augmentation cache.
            write_json(out.validated_marker, {"manifest_digest": summary["manifest_digest"], "success": True})
        else:
            out.validated_marker.unlink(missing_ok=True)
            raise DataValidationError(
                f"data validation failed; downstream stages will not run. Data Docs: "
                f"{out.validation / 'data_docs' / 'index.html'}\n{expectations.failure_report(failed)}"
            )
    return summary
