"""prepare: read one raw dataset under data/ into the canonical store + manifest.

Without a task: the pretraining dataset (`prepare:` in params.yaml) into artifacts/prepared, brought to one size
by `prepare.resize`; its shape is written to artifacts/prepared/input.json, the encoder's input. With `--task NAME`:
the labelled task `tasks.NAME` into artifacts/tasks/NAME/prepared, fitted to that input (size and channels), so
"raw pixels" and every transfer protocol of the task see exactly what the encoder sees.
"""

from __future__ import annotations

import time
from typing import Any

from sslops.adapters import tracking
from sslops.config import Project
from sslops.config.schema import PrepareParams, TaskParams
from sslops.data import encoded, resize
from sslops.data.decode import cores, processes
from sslops.data.formats import plan_dataset
from sslops.data.sources import Plan
from sslops.data.store import MANIFEST, RAW, write_store
from sslops.outputs.atomic import atomic_dir, write_json


def run(project: Project, task: str | None = None) -> dict[str, Any]:
    cfg: PrepareParams = project.config("prepare")
    out = project.outputs(task)
    with tracking.stage_run(project, "prepare", _record(project, task), task=task):
        start = time.perf_counter()
        if task is None:
            plan = _plan(project, cfg, cfg, None if cfg.channels == "auto" else cfg.channels)
            plan, fitted = resize.fit_plan(plan, resize.target(plan, cfg.resize.side, cfg.resize.mode))
        else:
            fit = resize.encoder_input(project.prepared_dir)
            plan = _plan(project, project.config("tasks")[task], cfg, fit.channels)
            plan, fitted = resize.fit_plan(plan, fit)
        for note in plan.notes:
            print(f"prepare: {note}")
        workers = processes(plan, cfg.workers or cores())
        codec = encoded.choose(cfg.store.format, cfg.store.quality, plan.parts[0].shape) if plan.parts else RAW
        with atomic_dir(out.prepared) as tmp:
            written = write_store(plan, tmp, workers=workers, codec=codec)
            stored = sum(f.stat().st_size for f in tmp.rglob("*") if f.is_file() and f.name != MANIFEST)
            if task is None:
                height, width, channels = plan.parts[0].shape
                shape = {"height": height, "width": width, "channels": channels, "mode": cfg.resize.mode}
                write_json(tmp / resize.INPUT, shape)
        digest = written.digest
        summary = {
            "images": written.rows,
            **{f"images_{split}": written.splits.get(split, 0) for split in ("train", "test", "unlabeled")},
            "classes": len(plan.classes),
            "shape": list(plan.parts[0].shape),
            "resized": fitted["resized"],
            "seconds": round(time.perf_counter() - start, 2),
            "workers": workers,
            "store": codec.format,
            "store_bytes": stored,
            "manifest_digest": digest,
        }
        tracking.log_manifest(out.prepared / MANIFEST, digest, context="prepare")
        tracking.log_metrics({k: v for k, v in summary.items() if isinstance(v, (int, float))})
        tracking.log_params({"prepare.store.codec": codec.format})  # what `format: auto` became
        tracking.set_tags({"data.manifest_digest": digest, "data.shape": "x".join(map(str, summary["shape"]))})
        write_json(out.metrics / "prepare.json", summary)
    return summary


def _plan(project: Project, source: PrepareParams | TaskParams, cfg: PrepareParams, channels: int | None) -> Plan:
    """The raw dataset `source` names, planned (read lazily); `cfg` gives the limits shared by every dataset."""
    return plan_dataset(
        source.format,
        project.path(source.root),
        list(source.classes),
        channels,
        cfg.unlabeled_dir,
        cfg.max_pixels,
        workers=cfg.workers or cores(),
    )


def _record(project: Project, task: str | None) -> dict[str, Any]:
    """What the run logs as params: the pretraining dataset's section, or the task's entry plus the shared limits."""
    cfg = project.config("prepare")
    if task is None:
        return cfg.record()
    limits = {"max_pixels": cfg.max_pixels, "unlabeled_dir": cfg.unlabeled_dir}
    return {"task": task, **project.config("tasks")[task].record(), **limits}
