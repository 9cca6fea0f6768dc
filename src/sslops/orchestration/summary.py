"""The run summary a person reads in the orchestrator's UI: what ran, how long, what it produced, where to look.

Built from files the stages leave (metrics/*.json) and from MLflow, never from the orchestrator's own state,
so it tells what the workspace holds after the run.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sslops.config import Project, flatten
from sslops.orchestration.overrides import override_args


@dataclass(frozen=True)
class StageOutcome:
    """What happened to one stage in a run: ran, restored (DVC run-cache), skipped, failed or not run."""

    stage: str
    status: str
    seconds: float


def read_metrics(root: Path, order: list[str]) -> list[dict[str, Any]]:
    """Numeric and boolean values of every metrics/*.json and metrics/tasks/<task>/*.json, as rows (stage, metric,
    value), pretraining stages first in stage order, then each task's; a task's stage reads `evaluate/<task>`."""
    folder = root / "metrics"

    def label(path: Path) -> str:
        task = path.parent.relative_to(folder)
        return path.stem if task == Path() else f"{path.stem}/{task.name}"

    files = sorted(
        folder.rglob("*.json"),
        key=lambda p: (p.parent != folder, order.index(p.stem) if p.stem in order else len(order), label(p)),
    )
    rows = []
    for path in files:
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(data, dict):
            for key, value in flatten(data).items():
                if isinstance(value, (int, float, bool)):
                    rows.append({"stage": label(path), "metric": key, "value": value})
    return rows


def registered_model(root: Path) -> dict[str, Any] | None:
    """The register stage's record (model name, version, promotion), when the pipeline has one."""
    try:
        data = json.loads((root / "metrics" / "register.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def mlflow_runs(project: Project, flow_run_id: str, ui_base: str) -> list[dict[str, str]]:
    """The MLflow stage runs a flow run started (tag `prefect.flow_run_id`), oldest first, with UI links."""
    from sslops.adapters import tracking

    return [
        {
            "stage": r.info.run_name,
            "run_id": r.info.run_id,
            "status": r.info.status,
            # The model-training view: MLflow 3.17's UI would otherwise open a browser's first link in its GenAI view.
            "url": f"{ui_base}/#/experiments/{r.info.experiment_id}/runs/{r.info.run_id}?workflowType=machine_learning",
        }
        for r in tracking.stage_runs_tagged(project, "prefect.flow_run_id", flow_run_id)
    ]


def summary_markdown(
    title: str,
    outcomes: list[StageOutcome],
    overrides: Mapping[str, Any],
    experiment: str | None,
    model: dict[str, Any] | None,
    metrics: list[dict[str, Any]],
    runs: list[dict[str, str]],
) -> str:
    """The summary as markdown: overrides and experiment, stages, registered model, metrics, MLflow runs."""
    lines = [f"# {title}", ""]
    if overrides:
        shown = ", ".join(f"`{a}`" for a in override_args(overrides))
        saved = f"DVC experiment `{experiment}` (`dvc exp show`)" if experiment else "no DVC experiment saved"
        lines.append(f"Overrides: {shown} → {saved}.")
    else:
        lines.append("No overrides: a plain `dvc repro` of the workspace.")
    lines += ["", "## Stages", "", "| stage | result | seconds |", "|---|---|---:|"]
    lines += [f"| {o.stage} | {o.status} | {o.seconds:.1f} |" for o in outcomes]
    if model:
        promoted = (
            "promoted to champion"
            if model.get("promoted")
            else f"not promoted (champion: version {model.get('champion_version')})"
        )
        reason = f": {model['reason']}" if model.get("reason") else ""
        lines += [
            "",
            "## Model",
            "",
            (
                f"`{model.get('model_name')}` version **{model.get('version')}** "
                f"(MLflow run `{model.get('run_id')}`), {promoted}{reason}."
            ),
        ]
    if metrics:
        lines += ["", "## Metrics (workspace after the run)", "", "| stage | metric | value |", "|---|---|---:|"]
        lines += [
            f"| {m['stage']} | {m['metric']} | {m['value']:.4g} |"
            if isinstance(m["value"], float)
            else f"| {m['stage']} | {m['metric']} | {m['value']} |"
            for m in metrics
        ]
    lines += ["", "## MLflow runs started by this flow run", ""]
    if runs:
        lines += ["| stage | run id | status |", "|---|---|---|"]
        lines += [f"| {r['stage']} | [{r['run_id']}]({r['url']}) | {r['status']} |" for r in runs]
    else:
        lines.append("None: every stage was up to date or none got that far.")
    return "\n".join(lines) + "\n"
